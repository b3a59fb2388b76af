#!/usr/bin/env bash
# CustomResourceDefinitions of other projects that kwasi-operator renders children for, for its e2e tests.
#
#   hack/cluster/extra-crds.sh keda             path of KEDA's ScaledObject CRD
#   hack/cluster/extra-crds.sh inference-pool   path of the Gateway API inference extension's InferencePool CRD
#
# Both projects are Go modules, so their CRD manifests come from the Go module proxy like the cluster's own
# binaries: `go mod download MODULE@VERSION` puts the module's source in GOMODCACHE, and each keeps its
# CRDs under config/crd/bases. The file is copied into the cluster cache once (keyed by version) and its
# path printed.
set -euo pipefail

CACHE="${KWASI_CLUSTER_CACHE:-$HOME/.cache/kwasi-cluster}"
case "${1:-}" in
  keda) MODULE=github.com/kedacore/keda/v2 VERSION="${KWASI_KEDA_VERSION:-v2.21.0}"
        FILE=config/crd/bases/keda.sh_scaledobjects.yaml ;;
  inference-pool) MODULE=sigs.k8s.io/gateway-api-inference-extension VERSION="${KWASI_GIE_VERSION:-v1.6.0}"
        FILE=config/crd/bases/inference.networking.k8s.io_inferencepools.yaml ;;
  *) echo "usage: $0 keda|inference-pool" >&2; exit 2 ;;
esac

OUT="$CACHE/crds/${MODULE//\//_}@$VERSION/$(basename "$FILE")"
if [[ ! -s "$OUT" ]]; then
  command -v go >/dev/null || { echo "go is not on PATH (needed to fetch $MODULE@$VERSION)" >&2; exit 1; }
  # Local toolchain, module proxy only (no VCS fallback), as hack/cluster/cluster.sh builds.
  export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod
  proxy="$(go env GOPROXY)"; proxy="${proxy%[,|]direct}"
  [[ -z "$proxy" || "$proxy" == direct || "$proxy" == off ]] || export GOPROXY="$proxy"
  dir="$(cd "${TMPDIR:-/tmp}" && go mod download -json "$MODULE@$VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  [[ -f "$dir/$FILE" ]] || { echo "$MODULE@$VERSION has no $FILE" >&2; exit 1; }
  mkdir -p "$(dirname "$OUT")"
  cp "$dir/$FILE" "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
fi
echo "$OUT"
