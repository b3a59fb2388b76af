#!/usr/bin/env bash
# Prometheus and promtool for the metrics and dashboard tests, built from the Go module proxy into the
# cluster cache with cluster.sh's conventions (same cache, lock, .complete marker, build-times.tsv), so
# it folds into `cluster.sh build prometheus` once that exists.
#
#   hack/cluster/prometheus.sh build   build prometheus + promtool if missing (cold: ~5-11 min on 2 cores)
#   hack/cluster/prometheus.sh paths   print the two binary paths
#   Settings: KWASI_CLUSTER_CACHE, KWASI_CLUSTER_NICE, KWASI_CLUSTER_BUILD_JOBS, KWASI_PROMETHEUS_VERSION.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.env
source "$HERE/versions.env"
# The Go module of Prometheus 3.16.0 is tagged v0.316.0.
PROMETHEUS_VERSION="${KWASI_PROMETHEUS_VERSION:-${PROMETHEUS_VERSION:-v0.316.0}}"
CACHE="${KWASI_CLUSTER_CACHE:-$HOME/.cache/kwasi-cluster}"
DIR="$CACHE/prometheus-$PROMETHEUS_VERSION"

log() { printf '[prometheus %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

build() {
  if [[ -x "$DIR/bin/prometheus" && -x "$DIR/bin/promtool" && -f "$DIR/.complete" ]]; then
    log "$PROMETHEUS_VERSION: cached in $DIR"; return
  fi
  command -v go >/dev/null || die "go is not on PATH (needed to build Prometheus)"
  export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
  local proxy; proxy="$(go env GOPROXY 2>/dev/null || true)"; proxy="${proxy%[,|]direct}"
  [[ -z "$proxy" || "$proxy" == direct || "$proxy" == off ]] || export GOPROXY="$proxy"
  if [[ -n "${KWASI_CLUSTER_BUILD_JOBS:-}" ]]; then GOFLAGS+=" -p=$KWASI_CLUSTER_BUILD_JOBS"; fi
  mkdir -p "$DIR"
  exec 9>"$CACHE/.build.lock"
  if ! flock -n 9; then log "waiting for another build in $CACHE to finish"; flock 9; fi
  if [[ -f "$DIR/.complete" ]]; then log "$PROMETHEUS_VERSION: built meanwhile in $DIR"; return; fi
  log "$PROMETHEUS_VERSION: building prometheus, promtool into $DIR"
  local t0=$SECONDS m=github.com/prometheus/prometheus
  rm -rf "$DIR/bin.tmp"; mkdir -p "$DIR/bin.tmp"
  # Only Kubernetes discovery (static and file targets are always in): the cloud SDKs of the other
  # discovery plugins are most of the build time. No web UI assets: the HTTP API is what tests use.
  (cd "$DIR" && GOBIN="$DIR/bin.tmp" nice -n "${KWASI_CLUSTER_NICE:-10}" go install -trimpath \
    -tags "netgo remove_all_sd enable_kubernetes_sd" -ldflags "-s -w" \
    "$m/cmd/prometheus@$PROMETHEUS_VERSION" "$m/cmd/promtool@$PROMETHEUS_VERSION")
  printf '%s\t%s\t%s\t%ss\t%s\n' "$(date -u +%FT%TZ)" prometheus "download+compile+link prometheus promtool" \
    $((SECONDS - t0)) "GOFLAGS=$GOFLAGS nice=${KWASI_CLUSTER_NICE:-10}" >>"$CACHE/build-times.tsv"
  rm -rf "$DIR/bin"; mv "$DIR/bin.tmp" "$DIR/bin"; date -u +%FT%TZ >"$DIR/.complete"
  log "$PROMETHEUS_VERSION: built in $((SECONDS - t0)) s"
}

case "${1:-}" in
  build) build ;;
  paths) echo "$DIR/bin/prometheus"; echo "$DIR/bin/promtool" ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
