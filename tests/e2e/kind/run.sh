#!/usr/bin/env bash
# `make e2e`: memwatch's e2e suite on a kind cluster.
#
#   tests/e2e/kind/run.sh [all|up|test|down]
#
#   up     create the kind cluster (tests/e2e/kind/kind-config.yaml), build the memwatch and
#          hog images with docker, `kind load` them, install metrics-server (pinned, with
#          --kubelet-insecure-tls: kind's kubelets serve self-signed certificates) and the chart
#          with tests/e2e/values-e2e.yaml
#   test   run tests/e2e against it
#   down   delete the cluster
#   all    up, test, then down unless KEEP=1 (the default verb)
#
# Needs docker (a running engine), kind, kubectl and helm on PATH; fails at once, saying which
# is missing. Environment: KEEP=1 keeps the cluster; CLUSTER (memwatch-e2e), IMG (memwatch:dev),
# HELM_ARGS (extra `helm upgrade --install` arguments), PYTEST_ARGS (extra pytest arguments),
# PY (the venv's python).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$ROOT"

KIND_VERSION=v0.27.0            # kind-config.yaml pins the node image published with it
METRICS_SERVER_VERSION=v0.7.2
METRICS_SERVER_URL="https://github.com/kubernetes-sigs/metrics-server/releases/download/${METRICS_SERVER_VERSION}/components.yaml"
CLUSTER=${CLUSTER:-memwatch-e2e}
IMG=${IMG:-memwatch:dev}
HOG_IMG=memwatch-hog:dev
NAMESPACE=memwatch
RELEASE=memwatch
KEEP=${KEEP:-0}
PY=${PY:-$ROOT/.venv/bin/python}
STATE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/memwatch/kind
export KUBECONFIG=$STATE_DIR/kubeconfig

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'tests/e2e/kind/run.sh: %s\n' "$*" >&2; exit 1; }

preflight() {
    local missing=()
    for tool in docker kind kubectl helm; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        die "missing on PATH: ${missing[*]}. make e2e needs docker, kind ${KIND_VERSION}, kubectl and helm.
Without Docker, use the local cluster instead: make e2e-local"
    fi
    docker info >/dev/null 2>&1 || die "docker is installed but its engine does not answer (docker info failed).
Start Docker, or use the local cluster instead: make e2e-local"
    local have
    have=$(kind version 2>/dev/null | awk '{print $2}')
    [[ "$have" == "$KIND_VERSION" ]] || echo "warning: kind $have; this config is tested with kind $KIND_VERSION" >&2
    [[ -x "$PY" ]] || die "no virtualenv at $PY: run make install first"
}

agent_values() {
    # The node agent is deployed when this checkout has it (scenario 7 needs it).
    if [[ -f controller/memwatch/agent.py ]]; then echo "--set=agent.enabled=true"; fi
}

cmd_up() {
    preflight
    mkdir -p "$STATE_DIR"
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
        say "kind cluster $CLUSTER exists; reusing it"
        kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
    else
        say "creating kind cluster $CLUSTER"
        kind create cluster --name "$CLUSTER" --config tests/e2e/kind/kind-config.yaml \
            --kubeconfig "$KUBECONFIG" --wait 180s
    fi

    say "building $IMG and $HOG_IMG"
    docker build -t "$IMG" .
    docker build -t "$HOG_IMG" -f tests/e2e/kind/hog.Dockerfile tests/images/hog
    kind load docker-image --name "$CLUSTER" "$IMG" "$HOG_IMG"

    say "installing metrics-server $METRICS_SERVER_VERSION"
    kubectl apply -f "$METRICS_SERVER_URL"
    # kind's kubelets serve self-signed certificates; 10s is metrics-server's finest resolution.
    if ! kubectl -n kube-system get deployment metrics-server -o jsonpath='{.spec.template.spec.containers[0].args}' \
            | grep -q -- --kubelet-insecure-tls; then
        kubectl -n kube-system patch deployment metrics-server --type=json -p '[
          {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--kubelet-insecure-tls"},
          {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--metric-resolution=10s"}]'
    fi
    kubectl -n kube-system rollout status deployment/metrics-server --timeout=180s
    say "waiting for the metrics API to serve pod metrics"
    local deadline=$((SECONDS + 180))
    until kubectl get --raw /apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods 2>/dev/null | grep -q '"containers"'; do
        ((SECONDS < deadline)) || die "metrics.k8s.io served no pod metrics within 180s"
        sleep 3
    done

    say "installing the chart (tests/e2e/values-e2e.yaml)"
    # shellcheck disable=SC2046,SC2086  # agent_values prints zero or one word; HELM_ARGS is a list
    helm upgrade --install "$RELEASE" charts/memwatch --namespace "$NAMESPACE" --create-namespace \
        --values tests/e2e/values-e2e.yaml --set image.tag="${IMG##*:}" $(agent_values) ${HELM_ARGS:-} \
        --wait --timeout 5m
    kubectl -n "$NAMESPACE" rollout status deployment -l app.kubernetes.io/component=controller --timeout=180s
    say "kind cluster $CLUSTER is ready: export KUBECONFIG=$KUBECONFIG"
}

cmd_test() {
    [[ -f "$KUBECONFIG" ]] || die "no kind cluster: run tests/e2e/kind/run.sh up first"
    say "running tests/e2e"
    # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
    MEMWATCH_E2E_INSTALLED=1 "$PY" -m pytest tests/e2e -m e2e ${PYTEST_ARGS:-}
}

cmd_down() {
    command -v kind >/dev/null 2>&1 || die "kind is not on PATH"
    say "deleting kind cluster $CLUSTER"
    kind delete cluster --name "$CLUSTER"
    rm -f "$KUBECONFIG"
}

cmd_all() {
    preflight
    if [[ "$KEEP" != "1" ]]; then
        trap 'cmd_down' EXIT
    fi
    cmd_up
    cmd_test
    if [[ "$KEEP" == "1" ]]; then
        say "KEEP=1: the cluster stays up. export KUBECONFIG=$KUBECONFIG; tear down: tests/e2e/kind/run.sh down"
    fi
}

case "${1:-all}" in
    all) cmd_all ;;
    up) cmd_up ;;
    test) cmd_test ;;
    down) cmd_down ;;
    *) die "usage: tests/e2e/kind/run.sh [all|up|test|down]" ;;
esac
