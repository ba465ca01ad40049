#!/usr/bin/env bash
# make test-e2e: the driver and the examples on a real kubelet.
#
# With Docker and kind on the machine (and MFCP_E2E_CLUSTER unset or "kind"),
# it runs on a kind cluster; otherwise on hack/local-cluster (no Docker).
# MFCP_KEEP_CLUSTER=1 leaves the cluster up afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

cluster="${MFCP_E2E_CLUSTER:-}"
if [ -z "$cluster" ]; then
  if command -v kind >/dev/null && docker info >/dev/null 2>&1; then cluster=kind; else cluster=local; fi
fi

export MFCP_IMAGES_DIR="${MFCP_IMAGES_DIR:-$PWD/_output/images}"
start=$SECONDS

case "$cluster" in
local)
  echo "== starting the local cluster (it builds and imports the images)" >&2
  [ "${MFCP_KEEP_CLUSTER:-0}" = 1 ] || trap 'hack/local-cluster down --wipe' EXIT
  kubeconfig=$(hack/local-cluster up | tail -n 1)
  eval "$(hack/local-cluster env)"
  # The node-driver-registrar image cannot be had here: the driver registers itself.
  export MFCP_E2E_BUILTIN_REGISTRAR=1
  ;;
kind)
  echo "== building images into $MFCP_IMAGES_DIR" >&2
  hack/images/build.sh --out "$MFCP_IMAGES_DIR"
  name="${MFCP_KIND_CLUSTER:-mfcp-e2e}"
  kind get clusters | grep -qx "$name" || kind create cluster --name "$name"
  [ "${MFCP_KEEP_CLUSTER:-0}" = 1 ] || trap 'kind delete cluster --name "$name"' EXIT
  kubeconfig="$(mktemp)"
  kind get kubeconfig --name "$name" > "$kubeconfig"
  for tar in "$MFCP_IMAGES_DIR"/*.tar; do kind load image-archive --name "$name" "$tar"; done
  # The node is a container: read its mount table there.
  export MFCP_E2E_NODE_EXEC="docker exec $name-control-plane"
  ;;
*)
  echo "MFCP_E2E_CLUSTER must be local or kind" >&2; exit 2 ;;
esac
echo "== cluster ready after $((SECONDS - start)) s" >&2

export KUBECONFIG="$kubeconfig" MFCP_E2E=1
go test -count=1 -v -timeout 40m ./test/e2e/
