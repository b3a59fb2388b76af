#!/usr/bin/env bash
# shellcheck disable=SC2329 # functions are also called indirectly (build_"$c", wait_for ... healthy)
# Local, real Kubernetes control plane for kwasi tests.
#
#   hack/cluster/cluster.sh build [k8s|etcd|kwok|helm ...]  build missing binaries into the cache
#   hack/cluster/cluster.sh up                               build if missing, start, create kwok nodes
#   hack/cluster/cluster.sh down                             stop everything (keeps logs)
#   hack/cluster/cluster.sh status                           show processes and nodes
#   hack/cluster/cluster.sh env                              print shell exports (eval "$(... env)")
#   hack/cluster/cluster.sh paths                            print the cached binary paths
#   hack/cluster/cluster.sh clean                            down + remove the run dir
#   Settings (environment): KWASI_CLUSTER_CACHE, KWASI_CLUSTER_DIR, KWASI_CLUSTER_*_PORT,
#   KWASI_CLUSTER_BUILD_JOBS (go build -p), KWASI_CLUSTER_NICE, KWASI_{K8S,ETCD,KWOK,HELM}_VERSION,
#   KWASI_CLUSTER_WATCH_PID (`up`: stop the cluster when that process exits).
#
# Binaries come from the Go module proxy only (k8s.io/kubernetes with a wrapper go.mod carrying the
# staging `replace` lines, go.etcd.io/etcd/server/v3, sigs.k8s.io/kwok, helm.sh/helm) and are cached
# outside git in ${KWASI_CLUSTER_CACHE:-$HOME/.cache/kwasi-cluster}/<component>-<version>/bin.
# Everything listens on 127.0.0.1 only. See hack/cluster/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.env
source "$HERE/versions.env"
K8S_VERSION="${KWASI_K8S_VERSION:-$K8S_VERSION}"
ETCD_VERSION="${KWASI_ETCD_VERSION:-$ETCD_VERSION}"
KWOK_VERSION="${KWASI_KWOK_VERSION:-$KWOK_VERSION}"
HELM_VERSION="${KWASI_HELM_VERSION:-$HELM_VERSION}"

CACHE="${KWASI_CLUSTER_CACHE:-$HOME/.cache/kwasi-cluster}"
RUN_DIR="${KWASI_CLUSTER_DIR:-${TMPDIR:-/tmp}/kwasi-cluster-$(id -u)}"
# Ports (all on 127.0.0.1). Override to run several clusters side by side.
ETCD_PORT="${KWASI_CLUSTER_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${KWASI_CLUSTER_ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${KWASI_CLUSTER_APISERVER_PORT:-26443}"
KCM_PORT="${KWASI_CLUSTER_KCM_PORT:-20257}"
SCHEDULER_PORT="${KWASI_CLUSTER_SCHEDULER_PORT:-20259}"
KWOK_PORT="${KWASI_CLUSTER_KWOK_PORT:-20247}"
START_TIMEOUT="${KWASI_CLUSTER_START_TIMEOUT:-120}"

K8S_DIR="$CACHE/k8s-$K8S_VERSION"
ETCD_DIR="$CACHE/etcd-$ETCD_VERSION"
KWOK_DIR="$CACHE/kwok-$KWOK_VERSION"
HELM_DIR="$CACHE/helm-$HELM_VERSION"
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

log() { printf '[cluster %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --------------------------------------------------------------------------------------------- build

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

have_bins() { # dir bin...
  local d="$1"; shift
  local b; for b in "$@"; do [[ -x "$d/bin/$b" ]] || return 1; done
  [[ -f "$d/.complete" ]]
}

record_time() { # component phase seconds
  mkdir -p "$CACHE"
  printf '%s\t%s\t%s\t%ss\t%s\n' "$(date -u +%FT%TZ)" "$1" "$2" "$3" "GOFLAGS=$GOFLAGS nice=${KWASI_CLUSTER_NICE:-10}" \
    >>"$CACHE/build-times.tsv"
  log "$1: $2 took $3 s"
}

finish_bins() { # dir : move bin.tmp -> bin atomically and mark complete
  rm -rf "${1:?}/bin"; mv "$1/bin.tmp" "$1/bin"; date -u +%FT%TZ >"$1/.complete"
}

build_k8s() {
  local d="$K8S_DIR" v="$K8S_VERSION"
  if have_bins "$d" "${K8S_BINS[@]}"; then log "k8s $v: cached in $d"; return; fi
  log "k8s $v: building ${K8S_BINS[*]} into $d"
  mkdir -p "$d/src" && rm -rf "$d/bin.tmp" && cd "$d/src"
  local t0=$SECONDS
  # The staging modules to replace are exactly the `=> ./staging/...` lines of the root go.mod.
  local rootmod dl
  dl="$(gorun mod download -json "k8s.io/kubernetes@$v" 2>&1)" || true
  rootmod="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$dl")"
  [[ -f "$rootmod" ]] || die "could not download k8s.io/kubernetes@$v go.mod: $dl"
  local staging minor="v0.${v#v1.}"
  staging="$(sed -n 's#^[[:space:]]*k8s.io/\([a-z0-9-]*\) => ./staging/.*#\1#p' "$rootmod")"
  [[ -n "$staging" ]] || die "no staging replace lines found in $rootmod"
  {
    echo "// Generated by kwasi hack/cluster/cluster.sh; throw-away wrapper to build k8s $v binaries."
    echo "module kwasi.local/k8sbin"
    echo
    echo "go 1.26.0"
    echo
    echo "godebug default=go1.26"
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    echo "replace ("
    local m; for m in $staging; do echo "	k8s.io/$m => k8s.io/$m $minor"; done
    echo ")"
  } >go.mod
  rm -f go.sum
  local pkgs=() b; for b in "${K8S_BINS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  gorun get "${pkgs[@]/%/@$v}"
  record_time k8s "download+resolve ($(wc -w <<<"$staging") staging replaces)" $((SECONDS - t0))
  t0=$SECONDS
  local maj="${v#v}"; maj="${maj%%.*}"; local mnr="${v#v*.}"; mnr="${mnr%%.*}"
  local date; date="$(date -u +%FT%TZ)"
  local ld="-s -w"
  local p; for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=$maj -X $p.gitMinor=$mnr -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  # One `go build` for all four: shared packages are compiled once.
  mkdir -p "$d/bin.tmp"
  gorun build -trimpath -ldflags "$ld" -o "$d/bin.tmp/" "${pkgs[@]}"
  record_time k8s "compile+link ${K8S_BINS[*]}" $((SECONDS - t0))
  finish_bins "$d"
}

build_etcd() {
  local d="$ETCD_DIR" v="$ETCD_VERSION"
  if have_bins "$d" etcd; then log "etcd $v: cached in $d"; return; fi
  log "etcd $v: building into $d"
  mkdir -p "$d/src" && rm -rf "$d/bin.tmp" && cd "$d/src"
  local t0=$SECONDS
  # server/go.mod has replace lines, so `go install ...@v` is refused; a wrapper that requires it works.
  printf '// Generated by kwasi hack/cluster/cluster.sh\nmodule kwasi.local/etcdbin\n\ngo 1.25.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$v" >go.mod
  rm -f go.sum
  gorun get "go.etcd.io/etcd/server/v3@$v"
  record_time etcd "download+resolve" $((SECONDS - t0))
  t0=$SECONDS
  mkdir -p "$d/bin.tmp"
  gorun build -trimpath -ldflags "-s -w" -o "$d/bin.tmp/etcd" go.etcd.io/etcd/server/v3
  record_time etcd "compile+link etcd" $((SECONDS - t0))
  finish_bins "$d"
}

go_install_to() { # dir pkg@version...
  local d="$1"; shift
  rm -rf "$d/bin.tmp"; mkdir -p "$d/bin.tmp"
  (cd "$d" && GOBIN="$d/bin.tmp" gorun install -trimpath -ldflags "-s -w" "$@")
}

build_kwok() {
  local d="$KWOK_DIR" v="$KWOK_VERSION"
  if have_bins "$d" kwok kwokctl && [[ -f "$d/bin/stages.yaml" ]]; then log "kwok $v: cached in $d"; return; fi
  log "kwok $v: building kwok, kwokctl into $d"
  local t0=$SECONDS
  go_install_to "$d" "sigs.k8s.io/kwok/cmd/kwok@$v" "sigs.k8s.io/kwok/cmd/kwokctl@$v"
  record_time kwok "download+compile+link kwok kwokctl" $((SECONDS - t0))
  # The kwok controller needs Stage documents; take the "fast" set that kwokctl uses from the same
  # module version: node-initialize + heartbeat-with-lease, pod-ready/-complete/-delete.
  local src dl
  dl="$(cd "$d" && gorun mod download -json "sigs.k8s.io/kwok@$v" 2>&1)" || true
  src="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$dl")"
  [[ -d "$src/kustomize/stage" ]] || die "kwok module source for stages not found: $dl"
  local f first=1
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ $first == 1 ]] || echo "---"; first=0
    echo "# from sigs.k8s.io/kwok@$v kustomize/stage/$f"
    cat "$src/kustomize/stage/$f"
  done >"$d/bin.tmp/stages.yaml"
  finish_bins "$d"
}

build_helm() {
  local d="$HELM_DIR" v="$HELM_VERSION" major="${HELM_VERSION%%.*}"
  if have_bins "$d" helm; then log "helm $v: cached in $d"; return; fi
  log "helm $v: building into $d"
  local t0=$SECONDS
  go_install_to "$d" "helm.sh/helm/$major/cmd/helm@$v"
  record_time helm "download+compile+link helm" $((SECONDS - t0))
  finish_bins "$d"
}

cmd_build() {
  local what=("$@"); [[ ${#what[@]} -gt 0 ]] || what=(k8s etcd kwok helm)
  mkdir -p "$CACHE"
  ( # subshell: the lock (fd 9) is released on exit and not inherited by cluster processes
    go_env
    exec 9>"$CACHE/.build.lock"
    if ! flock -n 9; then log "waiting for another build in $CACHE to finish"; flock 9; fi
    local t0=$SECONDS c
    for c in "${what[@]}"; do
      case "$c" in
        k8s | etcd | kwok | helm) (build_"$c") || die "building $c failed (see output above)" ;;
        *) die "unknown component '$c' (k8s|etcd|kwok|helm)" ;;
      esac
    done
    if ((SECONDS - t0 > 5)); then log "build took $((SECONDS - t0)) s; cache: $(du -sh "$CACHE" | cut -f1) in $CACHE"; fi
  )
}

cmd_paths() {
  local b
  for b in "${K8S_BINS[@]}"; do echo "$K8S_DIR/bin/$b"; done
  echo "$ETCD_DIR/bin/etcd"; echo "$KWOK_DIR/bin/kwok"; echo "$KWOK_DIR/bin/kwokctl"; echo "$HELM_DIR/bin/helm"
}

# ------------------------------------------------------------------------------------------- run

KUBECTL="$K8S_DIR/bin/kubectl"
KUBECONFIG_PATH="$RUN_DIR/kubeconfig"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_of() { [[ -f "$RUN_DIR/pids/$1.pid" ]] && cat "$RUN_DIR/pids/$1.pid"; }
alive() { local p; p="$(pid_of "$1")" && [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; }

gen_pki() {
  local p="$RUN_DIR/pki"
  mkdir -p "$p"
  (
    cd "$p"
    umask 077
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    mkca() { # name CN
      openssl req -x509 "${ec[@]}" -keyout "$1.key" -out "$1.crt" -days 3650 -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    }
    mkca ca kwasi-local-ca
    mkca front-proxy-ca kwasi-local-front-proxy-ca
    local CA=ca
    leaf() { # name subject extendedKeyUsage [subjectAltName]; signed by $CA
      openssl req -new "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$3"
        [[ -z "${4:-}" ]] || echo "subjectAltName=$4"
      } >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA "$CA.crt" -CAkey "$CA.key" -CAcreateserial -out "$1.crt" -days 825 \
        -extfile "$1.ext" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    local sans="IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default"
    sans+=",DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    leaf apiserver "/CN=kube-apiserver" serverAuth "$sans"
    leaf kwok "/CN=kwok-controller" serverAuth,clientAuth "IP:127.0.0.1,DNS:localhost"
    leaf admin "/O=system:masters/CN=kwasi-admin" clientAuth
    leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
    leaf controller-manager "/CN=system:kube-controller-manager" clientAuth
    leaf scheduler "/CN=system:kube-scheduler" clientAuth
    # Request-header (front proxy) identity for aggregated APIs (e.g. a metrics adapter).
    CA=front-proxy-ca leaf front-proxy-client "/CN=front-proxy-client" clientAuth
    # ServiceAccount token signing key pair (RS256).
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub
  )
}

write_kubeconfig() { # file user cert key
  local pki="$RUN_DIR/pki"
  cat >"$1" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: kwasi-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$3")
    client-key-data: $(base64 -w0 <"$pki/$4")
contexts:
- name: kwasi-local
  context:
    cluster: kwasi-local
    user: $2
current-context: kwasi-local
KCFG
  chmod 600 "$1"
}

start_proc() { # name cmd...
  local name="$1"; shift
  echo "# $(date -u +%FT%TZ) $*" >>"$RUN_DIR/logs/$name.log"
  # setsid: not in the caller's process group, so a Ctrl-C in the caller does not kill the cluster
  # half-way; `down` stops it by pid.
  setsid "$@" >>"$RUN_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/pids/$name.pid"
}

wait_for() { # name description timeout command...
  local name="$1" desc="$2" timeout="$3"; shift 3
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name"; then
      log "$name exited while waiting for $desc; last log lines ($RUN_DIR/logs/$name.log):"
      tail -n 40 "$RUN_DIR/logs/$name.log" >&2 || true
      return 1
    fi
    if ((SECONDS - t0 > timeout)); then
      log "timed out after ${timeout}s waiting for $desc; last log lines ($RUN_DIR/logs/$name.log):"
      tail -n 40 "$RUN_DIR/logs/$name.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  log "$desc ready after $((SECONDS - t0)) s"
}

healthy() { curl -fsSk --max-time 3 "$1" | grep -q "${2:-ok}"; }

cmd_up() {
  if [[ -f "$RUN_DIR/cluster.env" ]] && alive kube-apiserver && kc get --raw /readyz >/dev/null 2>&1; then
    log "already running ($RUN_DIR); use 'down' first for a fresh cluster"
    return 0
  fi
  cmd_down quiet
  cmd_build k8s etcd kwok # what `up` runs; `build` without arguments also builds helm
  local t0=$SECONDS
  command -v openssl >/dev/null || die "openssl is needed to create the cluster PKI"
  command -v curl >/dev/null || die "curl is needed for health checks"
  local port
  for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KCM_PORT" "$SCHEDULER_PORT" "$KWOK_PORT"; do
    ! port_in_use "$port" || die "127.0.0.1:$port is already in use (another cluster? set KWASI_CLUSTER_*_PORT)"
  done
  # Fresh state every time; the previous logs are kept as logs.prev.
  mkdir -p "$RUN_DIR"
  rm -rf "$RUN_DIR/logs.prev" "$RUN_DIR/etcd" "$RUN_DIR/pki" "$RUN_DIR/pids"
  [[ ! -d "$RUN_DIR/logs" ]] || mv "$RUN_DIR/logs" "$RUN_DIR/logs.prev"
  mkdir -p "$RUN_DIR/logs" "$RUN_DIR/pids" "$RUN_DIR/etcd"
  chmod 700 "$RUN_DIR" "$RUN_DIR/etcd"
  gen_pki
  local pki="$RUN_DIR/pki"
  write_kubeconfig "$KUBECONFIG_PATH" kwasi-admin admin.crt admin.key
  write_kubeconfig "$RUN_DIR/controller-manager.kubeconfig" system:kube-controller-manager controller-manager.crt controller-manager.key
  write_kubeconfig "$RUN_DIR/scheduler.kubeconfig" system:kube-scheduler scheduler.crt scheduler.key
  cat >"$RUN_DIR/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $RUN_DIR/scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOF
  cat >"$RUN_DIR/cluster.env" <<EOF
KWASI_CLUSTER_DIR=$RUN_DIR
KUBECONFIG=$KUBECONFIG_PATH
KWASI_CLUSTER_APISERVER=https://127.0.0.1:$APISERVER_PORT
KWASI_CLUSTER_ETCD=http://127.0.0.1:$ETCD_PORT
KWASI_CLUSTER_K8S_VERSION=$K8S_VERSION
KWASI_CLUSTER_BIN=$K8S_DIR/bin:$ETCD_DIR/bin:$KWOK_DIR/bin:$HELM_DIR/bin
EOF

  start_proc etcd "$ETCD_DIR/bin/etcd" --name=kwasi --data-dir="$RUN_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="kwasi=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync=true \
    --quota-backend-bytes=2147483648 --log-level=warn
  wait_for etcd "etcd" 30 healthy "http://127.0.0.1:$ETCD_PORT/health" '"health":"true"' || die "etcd did not start"

  start_proc kube-apiserver "$K8S_DIR/bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" --etcd-prefix=/registry \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" --proxy-client-key-file="$pki/front-proxy-client.key" \
    --authorization-mode=Node,RBAC --anonymous-auth=false \
    --allow-privileged=true --profiling=false --endpoint-reconciler-type=none
  wait_for kube-apiserver "kube-apiserver /readyz" "$START_TIMEOUT" kc get --raw /readyz \
    || die "kube-apiserver did not become ready"

  start_proc kube-controller-manager "$K8S_DIR/bin/kube-controller-manager" \
    --kubeconfig="$RUN_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$RUN_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$RUN_DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --leader-elect=false \
    --root-ca-file="$pki/ca.crt" --service-account-private-key-file="$pki/sa.key" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --service-cluster-ip-range=10.96.0.0/16 --profiling=false
  start_proc kube-scheduler "$K8S_DIR/bin/kube-scheduler" --config="$RUN_DIR/scheduler.yaml" \
    --authentication-kubeconfig="$RUN_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$RUN_DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --profiling=false
  start_proc kwok "$KWOK_DIR/bin/kwok" --kubeconfig="$KUBECONFIG_PATH" --config="$KWOK_DIR/bin/stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-ip=127.0.0.1 --node-port="$KWOK_PORT" --server-address="127.0.0.1:$KWOK_PORT" \
    --tls-cert-file="$pki/kwok.crt" --tls-private-key-file="$pki/kwok.key" \
    --node-lease-duration-seconds=40 --cidr=10.244.0.0/16
  wait_for kube-controller-manager "kube-controller-manager /healthz" "$START_TIMEOUT" \
    healthy "https://127.0.0.1:$KCM_PORT/healthz" || die "kube-controller-manager did not become healthy"
  wait_for kube-scheduler "kube-scheduler /healthz" "$START_TIMEOUT" \
    healthy "https://127.0.0.1:$SCHEDULER_PORT/healthz" || die "kube-scheduler did not become healthy"
  wait_for kwok "kwok /healthz" "$START_TIMEOUT" healthy "https://127.0.0.1:$KWOK_PORT/healthz" \
    || die "kwok did not become healthy"

  kc apply -f "$HERE/nodes.yaml" >/dev/null
  wait_for kwok "nodes Ready" "$START_TIMEOUT" kc wait --for=condition=Ready node --all --timeout=5s \
    || die "kwok nodes did not become Ready"
  # Pods cannot be created before the controller-manager has made the namespace's ServiceAccount.
  wait_for kube-controller-manager "ServiceAccount default/default" "$START_TIMEOUT" \
    kc -n default get serviceaccount default || die "no default ServiceAccount"
  if [[ -n "${KWASI_CLUSTER_WATCH_PID:-}" ]]; then
    # Tie the cluster to a process (the pytest fixture passes its pid): when that process is gone
    # without calling `down` (SIGKILL, crash), stop the cluster instead of leaking five daemons.
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && [[ -f "$2/cluster.env" ]]; do sleep 2; done
      if [[ -f "$2/cluster.env" ]]; then echo "process $1 is gone, stopping the cluster"; KWASI_CLUSTER_DIR="$2" "$3" down; fi' \
      watchdog "$KWASI_CLUSTER_WATCH_PID" "$RUN_DIR" "$HERE/cluster.sh" >>"$RUN_DIR/logs/watchdog.log" 2>&1 </dev/null &
  fi
  log "cluster up in $((SECONDS - t0)) s: export KUBECONFIG=$KUBECONFIG_PATH (logs in $RUN_DIR/logs)"
}

stop_procs() { # quiet|loud name... : SIGTERM all, wait up to 15 s, then SIGKILL what is left
  local mode="$1"; shift
  local name p pids=() names=()
  for name in "$@"; do
    p="$(pid_of "$name")" || continue
    if [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      pids+=("$p"); names+=("$name")
    fi
  done
  local i k left
  for ((i = 0; i < 75; i++)); do
    left=0
    for p in "${pids[@]}"; do ! kill -0 "$p" 2>/dev/null || left=1; done
    ((left)) || break
    sleep 0.2
  done
  for k in "${!pids[@]}"; do
    if kill -0 "${pids[k]}" 2>/dev/null; then
      log "${names[k]} (${pids[k]}) did not stop in 15 s, killing"; kill -KILL "${pids[k]}" 2>/dev/null || true
    fi
    [[ "$mode" == quiet ]] || log "stopped ${names[k]} (${pids[k]})"
  done
  for name in "$@"; do rm -f "$RUN_DIR/pids/$name.pid"; done
}

cmd_down() {
  local mode="${1:-loud}"
  # Clients first (in parallel), then the apiserver, then its storage.
  stop_procs "$mode" kwok kube-scheduler kube-controller-manager
  stop_procs "$mode" kube-apiserver
  stop_procs "$mode" etcd
  rm -f "$RUN_DIR/cluster.env"
  [[ "$mode" == quiet ]] || log "down (logs kept in $RUN_DIR/logs)"
}

cmd_clean() { cmd_down; rm -rf "$RUN_DIR"; log "removed $RUN_DIR"; }

cmd_status() {
  local c
  for c in "${COMPONENTS[@]}"; do
    if alive "$c"; then echo "$c: running (pid $(pid_of "$c"))"; else echo "$c: not running"; fi
  done
  if alive kube-apiserver; then kc get nodes -o wide || true; fi
}

cmd_env() {
  [[ -f "$RUN_DIR/cluster.env" ]] || die "no cluster in $RUN_DIR (run: $0 up)"
  local line
  while IFS= read -r line; do printf 'export %s\n' "$line"; done <"$RUN_DIR/cluster.env"
  # shellcheck disable=SC2016 # $PATH is expanded by the shell that evals this
  printf 'export PATH=%s:$PATH\n' "$K8S_DIR/bin:$ETCD_DIR/bin:$KWOK_DIR/bin:$HELM_DIR/bin"
}

# ------------------------------------------------------------------------------------------- dispatch
main() {
  local cmd="${1:-}"; shift || true
  case "$cmd" in
    build) cmd_build "$@" ;;
    up) cmd_up ;;
    down) cmd_down ;;
    clean) cmd_clean ;;
    status) cmd_status ;;
    env) cmd_env ;;
    paths) cmd_paths ;;
    -h | --help | help) sed -n '3,19p' "$0" ;;
    *) sed -n '3,19p' "$0" >&2; exit 2 ;;
  esac
}
main "$@"; exit $?
