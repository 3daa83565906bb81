#!/usr/bin/env bash
# Proves that the local cluster does what memwatch's tests rely on:
#   - a memory hog (100 MiB/s) in a pod limited to 200Mi is OOM-killed by the
#     kernel and the kubelet reports OOMKilled (exit 137);
#   - `kubectl logs` works (apiserver -> kubelet);
#   - the kubelet Summary API through the node proxy reports working-set bytes;
#   - a pod reaches kube-apiserver through the `kubernetes` service IP with its
#     service-account token (kube-proxy, pod network).
# Needs `hack/local-cluster.sh up` and `images`. Runs in its own namespace,
# deleted at the end. Exit 0 when every check passes.
set -Eeuo pipefail
shopt -s inherit_errexit
# A failing step never exits silently: name the command, its status and where.
on_err() {
    local rc=$?
    printf '[smoke] ERROR: `%s` exited %s at %s:%s\n' "$BASH_COMMAND" "$rc" "${BASH_SOURCE[1]:-$0}" "${BASH_LINENO[0]}" >&2
}
trap on_err ERR

ROOT=${MEMWATCH_CLUSTER_ROOT:-/var/lib/memwatch-cluster}
CACHE=${MEMWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memwatch}
KUBECTL=$CACHE/kubernetes-1.20.2/bin/kubectl
NS=memwatch-smoke
export KUBECONFIG=$ROOT/kubeconfig

k() { "$KUBECTL" -n "$NS" "$@"; }
fail() { echo "FAIL: $*" >&2; k get pods -o wide >&2 || true; exit 1; }
pass() { echo "ok: $*"; }

# poll SECONDS CMD...: until CMD succeeds, or fail.
poll() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

cleanup() { "$KUBECTL" delete namespace "$NS" --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT

"$KUBECTL" create namespace "$NS" >/dev/null
poll 30 k get serviceaccount default || fail "no default service account in $NS"

k apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  containers:
  - name: hog
    image: memwatch-hog:dev
    imagePullPolicy: Never
    args: ["--rate", "100", "--step", "1024"]
    resources: {limits: {memory: 200Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: api-client}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: memwatch-hog:dev
    imagePullPolicy: Never
    command: ["/bin/sh", "-c"]
    args:
    - >-
      t=/var/run/secrets/kubernetes.io/serviceaccount/token;
      /bin/busybox wget -q -O - --no-check-certificate
      --header "Authorization: Bearer $(cat $t)"
      "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version"
EOF

oomkilled() {
    [ "$(k get pod hog -o jsonpath='{.status.containerStatuses[0].lastState.terminated.reason}')" = OOMKilled ]
}
poll 60 oomkilled || fail "hog was not OOMKilled within 60 s"
exit_code=$(k get pod hog -o jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}')
[ "$exit_code" = 137 ] || fail "hog exit code $exit_code, want 137"
pass "hog OOMKilled (exit 137) at its 200Mi limit"

hog_logs() { k logs hog | grep -q '^hog: start'; }
poll 30 hog_logs || fail "kubectl logs hog shows no 'hog: start'"
pass "kubectl logs"

working_set() {
    "$KUBECTL" get --raw /api/v1/nodes/node1/proxy/stats/summary | python3 -c '
import json, sys
pods = json.load(sys.stdin)["pods"]
ws = [p["memory"]["workingSetBytes"] for p in pods
      if p["podRef"]["namespace"] == sys.argv[1] and p["podRef"]["name"] == "hog" and "memory" in p]
sys.exit(0 if ws and ws[0] > 0 else 1)' "$NS"
}
poll 60 working_set || fail "the Summary API reports no working set for the hog"
pass "Summary API through the node proxy reports the hog's working-set bytes"

succeeded() { [ "$(k get pod api-client -o jsonpath='{.status.phase}')" = Succeeded ]; }
poll 60 succeeded || { k logs api-client >&2 || true; fail "api-client did not reach the apiserver"; }
k logs api-client | grep -q '"gitVersion": "v1.20.2"' || fail "api-client got no version from the apiserver"
pass "a pod reached kube-apiserver through the kubernetes service IP with its token"
echo "smoke: all checks passed"
