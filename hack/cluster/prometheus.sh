#!/usr/bin/env bash
# Prometheus and promtool for the metrics and dashboard tests: `cluster.sh build prometheus` (built once from
# the Go module proxy into the cluster cache) and the two binary paths.
#
#   hack/cluster/prometheus.sh build   build prometheus + promtool if missing (cold: ~5-11 min on 2 cores)
#   hack/cluster/prometheus.sh paths   print the two binary paths
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-}" in
  build) exec "$HERE/cluster.sh" build prometheus ;;
  paths) "$HERE/cluster.sh" paths | grep -E '/(prometheus|promtool)$' ;;
  *) sed -n '2,6p' "$0" >&2; exit 2 ;;
esac
