"""kwasi's Grafana dashboards as code: plain Python that emits the dashboard JSON the chart ships.

`python -m kwasi_dashboards` writes charts/kwasi-operator/dashboards/*.json; `--check` fails when the committed
files differ from what the code generates. Module map: `promql` (query builders), `grafana` (panels, variables,
layout), `boards/` (one module per dashboard), `catalog` (the dashboards and their files), `evaluate` (every
panel's queries against a real Prometheus, variables resolved as Grafana would), `render` (a dashboard drawn
with matplotlib from that data, for the docs).
"""
