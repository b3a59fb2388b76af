# shellcheck shell=bash
# Helpers shared by cluster.sh and images.sh (sourced, not run).

log() { printf '[%s %(%H:%M:%S)T] %s\n' "${LOG_TAG:-cluster}" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# need_debs cmd:package... : install the Debian packages whose command is missing (CI starts from a
# bare Debian 12; `apt-get update` once per call that installs anything).
need_debs() {
  local pair missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [[ -x "${pair%%:*}" ]] || missing+=("${pair#*:}")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "missing Debian packages ${missing[*]} (run as root, or install them)"
  log "installing Debian packages: ${missing[*]}"
  local t0=$SECONDS
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
  log "installed ${missing[*]} in $((SECONDS - t0)) s"
}

# record_time component phase seconds : one line in $CACHE/build-times.tsv (every cold build is measured)
record_time() {
  mkdir -p "$CACHE"
  printf '%s\t%s\t%s\t%ss\t%s\n' "$(date -u +%FT%TZ)" "$1" "$2" "$3" "GOFLAGS=${GOFLAGS:-} nice=${KWASI_CLUSTER_NICE:-10}" \
    >>"$CACHE/build-times.tsv"
  log "$1: $2 took $3 s"
}

# with_lock file cmd... : run cmd holding an exclusive flock on file (waits, and says so).
with_lock() {
  local file="$1"; shift
  mkdir -p "$(dirname "$file")"
  (
    exec 9>"$file"
    if ! flock -n 9; then log "waiting for another build holding $file"; flock 9; fi
    "$@"
  )
}

# Go settings for every build: local toolchain only (fail fast rather than download another Go),
# no workspace, static binaries, stripped, path-independent. KWASI_CLUSTER_BUILD_JOBS limits the
# number of parallel compile jobs (go build -p), KWASI_CLUSTER_NICE the CPU priority.
go_env() {
  export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
  # Module proxy only: drop the `direct` (VCS) fallback so nothing is fetched from code hosts.
  local proxy; proxy="$(go env GOPROXY 2>/dev/null || true)"; proxy="${proxy%[,|]direct}"
  [[ -z "$proxy" || "$proxy" == direct || "$proxy" == off ]] || export GOPROXY="$proxy"
  if [[ -n "${KWASI_CLUSTER_BUILD_JOBS:-}" ]]; then GOFLAGS+=" -p=$KWASI_CLUSTER_BUILD_JOBS"; fi
  export GOFLAGS
}
gorun() {
  command -v go >/dev/null || die "go is not on PATH (needed to build the cluster binaries)"
  nice -n "${KWASI_CLUSTER_NICE:-10}" go "$@"; }

