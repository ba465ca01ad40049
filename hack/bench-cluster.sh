#!/usr/bin/env bash
# hack/bench-cluster.sh: benchmark (d) of docs/benchmarks.md, pod start-up on
# a real kubelet: a pod with a FUSE sidecar against the same pod with an
# emptyDir only (BenchmarkPodReady in test/e2e/bench_test.go).
#
# `MFCP_BENCH_CLUSTER=1 make bench` runs it; it can also run on its own (as root):
#   hack/bench-cluster.sh                 # BENCHTIME=5x pods of each kind
#
# The cluster: KUBECONFIG if set (its node must be this machine), otherwise
# hack/local-cluster, brought up if it is not running (about 5 s warm, 4-5 min
# cold) and taken down again at the end if this script started it
# (MFCP_KEEP_CLUSTER=1 keeps it). The driver is deployed from deploy/ as the
# E2E tests deploy it. The benchmark's output (its result line included) goes
# to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

runs=${BENCHTIME:-5x}
ns=mfcp-system

if [ -z "${KUBECONFIG:-}" ]; then
  started=0
  if ! hack/local-cluster status >/dev/null 2>&1; then
    started=1
  fi
  echo "== hack/local-cluster up (it builds and imports the project's images)" >&2
  if [ $started = 1 ] && [ "${MFCP_KEEP_CLUSTER:-0}" != 1 ]; then
    trap 'echo "== hack/local-cluster down" >&2; hack/local-cluster down' EXIT
  fi
  hack/local-cluster up | tail -n 1 >/dev/null
  eval "$(hack/local-cluster env)"
  builtin_registrar=1
else
  builtin_registrar=${MFCP_E2E_BUILTIN_REGISTRAR:-0}
  # hack/local-cluster has no node-driver-registrar image either.
  case "$KUBECONFIG" in /var/lib/mfcp-local-cluster/*) builtin_registrar=${MFCP_E2E_BUILTIN_REGISTRAR:-1} ;; esac
fi

echo "== deploying the driver (deploy/)" >&2
kubectl -n "$ns" delete ds meta-fuse-csi-plugin --ignore-not-found --wait=true >&2
for f in csi-driver.yaml csi-driver-daemonset.yaml; do
  for try in $(seq 10); do
    if kubectl apply -f "deploy/$f" >&2; then break; fi
    [ "$try" = 10 ] && exit 1
    sleep 1
  done
done
if [ "$builtin_registrar" = 1 ]; then
  # No node-driver-registrar image here: the driver registers itself (as in hack/test-e2e.sh).
  kubectl -n "$ns" patch ds meta-fuse-csi-plugin --type json -p '[
{"op":"remove","path":"/spec/template/spec/containers/1"},
{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--register-with-kubelet"},
{"op":"add","path":"/spec/template/spec/containers/0/volumeMounts/-","value":{"name":"registration-dir","mountPath":"/var/lib/kubelet/plugins_registry"}}
]' >&2
fi
kubectl -n "$ns" rollout status ds/meta-fuse-csi-plugin --timeout=180s >&2
for i in $(seq 120); do
  if kubectl get csinode -o jsonpath='{.items[*].spec.drivers[*].name}' | grep -q meta-fuse-csi-plugin.csi.storage.pfn.io; then break; fi
  [ "$i" = 120 ] && { echo "the driver did not register with kubelet" >&2; exit 1; }
  sleep 1
done

echo "== BenchmarkPodReady (-benchtime $runs)" >&2
MFCP_E2E=1 go test -count=1 -timeout 30m -run '^$' -bench '^BenchmarkPodReady$' -benchtime "$runs" ./test/e2e/
