"""`python -m kwasi_dashboards [--check]`: write the chart's dashboard JSON, or fail if it is stale."""

from __future__ import annotations

import argparse
import sys

from kwasi_dashboards import catalog


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m kwasi_dashboards", description=__doc__)
    p.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs from the code")
    args = p.parse_args()
    if args.check:
        stale = catalog.stale()
        for name in stale:
            print(f"stale: {name} (run: make dashboards)", file=sys.stderr)
        return 1 if stale else 0
    for written in catalog.write():
        print(written.relative_to(catalog.REPO))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
