#!/usr/bin/env bash
# `make demo`: memwatch's main job, end to end, on a real cluster.
#
#   1. brings up a cluster: kind where Docker runs (tests/e2e/kind/run.sh up), else the
#      Docker-less local cluster (hack/local-cluster.sh up + images);
#   2. installs memwatch (kind: helm; local: hack/e2e-install.py, the Python Helm engine),
#      with tests/e2e/values-e2e.yaml;
#   3. starts a memory hog annotated `memwatch.io/limit: 120Mi` that grows 8 MiB/s towards its
#      400Mi kernel limit;
#   4. streams the hog's growth, then the moment memwatch evicts it: the log line of the
#      component that acted (controller or node agent) and the Event on the pod;
#   5. leaves the cluster running and prints `export KUBECONFIG=...` and how to tear it down.
#
# Environment: PY (the venv's python, default .venv/bin/python), DEMO_TIMEOUT (seconds, 240);
# MEMWATCH_CACHE and MEMWATCH_CLUSTER_ROOT as hack/local-cluster.sh reads them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
[[ -x "$PY" ]] || { echo "hack/demo.sh: no virtualenv at $PY: run make install (make demo does)" >&2; exit 1; }

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    say "Docker runs here: using kind"
    # The e2e values stream memwatch only the suite's pods; the demo watches every pod.
    HELM_ARGS="--set=labelSelector=" bash tests/e2e/kind/run.sh up
    KUBECONFIG=${XDG_CACHE_HOME:-$HOME/.cache}/memwatch/kind/kubeconfig
    KUBECTL=kubectl
    TEARDOWN="bash tests/e2e/kind/run.sh down"
else
    say "No Docker engine here: using the Docker-less local cluster (hack/local-cluster.sh)"
    bash hack/local-cluster.sh up
    bash hack/local-cluster.sh images
    DEFAULT_ROOT=/var/lib/memwatch-cluster  # hack/local-cluster.sh's
    CLUSTER_ROOT=${MEMWATCH_CLUSTER_ROOT:-$DEFAULT_ROOT}
    KUBECONFIG=$CLUSTER_ROOT/kubeconfig
    say "installing memwatch with the Python Helm engine"
    # The e2e values stream memwatch only the suite's pods; the demo watches every pod.
    "$PY" hack/e2e-install.py install --kubeconfig "$KUBECONFIG" --values tests/e2e/values-e2e.yaml \
        --set labelSelector=
    # The kubectl built with the cluster matches its version; any other kubectl will do.
    KUBECTL=$(ls "${MEMWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memwatch}"/kubernetes-*/bin/kubectl 2>/dev/null \
        | tail -n 1 || true)
    KUBECTL=${KUBECTL:-kubectl}
    # A run dir other than the default must be given to the teardown too.
    ROOT_SET=
    [[ "$CLUSTER_ROOT" == "$DEFAULT_ROOT" ]] || ROOT_SET="MEMWATCH_CLUSTER_ROOT=$CLUSTER_ROOT "
    TEARDOWN="${ROOT_SET}make cluster-down   # or: ${ROOT_SET}bash hack/local-cluster.sh down"
fi
export KUBECONFIG

say "starting an annotated memory hog and watching memwatch"
DEMO_TIMEOUT=${DEMO_TIMEOUT:-240} "$PY" - <<'PYTHON'
"""Start the demo hog, stream its growth, and stop at memwatch's eviction: log line and Event."""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd() / "tests"))
from e2e.support import Cluster, Memwatch, hog_pod, oom_killed, wait_for  # noqa: E402

NS, NAME = "memwatch-demo", "demo-hog"
cluster = Cluster(os.environ["KUBECONFIG"])
memwatch = Memwatch.find(cluster)
if memwatch is None:
    sys.exit("memwatch is not installed on this cluster")
memwatch.wait_ready()

if cluster.get_or_none(f"/api/v1/namespaces/{NS}") is None:
    cluster.create_namespace(NS)
if cluster.pod(NS, NAME):  # a hog left by an earlier demo
    cluster.remove_pod(NS, NAME, grace=0)
    wait_for(f"the earlier {NAME} to go", lambda: cluster.pod(NS, NAME) is None, 60)
pod = cluster.create(hog_pod(NS, NAME, ["--rate", "8", "--max", "1000"], "400Mi", {"memwatch.io/limit": "120Mi"}))
uid = pod["metadata"]["uid"]
print(f"pod {NS}/{NAME}: memwatch.io/limit=120Mi, kernel limit 400Mi, growing 8 MiB/s "
      f"(memwatch sweeps every {memwatch.interval:g}s; usage samples are ~10-15s old)\n", flush=True)
cluster.wait_running(NS, NAME)

printed, deadline = 0, time.monotonic() + float(os.environ.get("DEMO_TIMEOUT", "240"))
while time.monotonic() < deadline:
    lines = [line for line in cluster.pod_log(NS, NAME).splitlines() if line.startswith("hog:")]
    for line in lines[printed:]:
        print(f"  [{NAME}] {line}", flush=True)
    printed = max(printed, len(lines))
    hits = [e for e in cluster.memwatch_events(NS, uid) if e["reason"] == "MemwatchEvicted"]
    if hits:
        kill = memwatch.lines(rf"action=evicted pod={NS}/{NAME} ")
        print("\nmemwatch evicted the hog before the kernel's OOM killer fired.\n")
        # The agent, when installed, usually acts first: name the component from its pod's label.
        component = {p["metadata"]["name"]: p["metadata"]["labels"].get("app.kubernetes.io/component", "?")
                     for p in memwatch.all_pods()}
        for pod_name, line in kill[-1:]:
            print(f"memwatch {component.get(pod_name, '?')} log (pod {pod_name}):\n  {line}\n")
        ev = hits[0]
        print(f"Event on the pod:\n  {ev['type']}  {ev['reason']}  {ev['message']}")
        sys.exit(0)
    problem = oom_killed(cluster.pod(NS, NAME))
    if problem:
        sys.exit(f"the kernel OOM-killed the hog first ({problem}): memwatch did not act in time")
    time.sleep(1)
sys.exit("memwatch did not evict the hog in time; its logs: kubectl logs -n memwatch "
         "-l app.kubernetes.io/name=memwatch --prefix --tail=-1")
PYTHON

say "the cluster keeps running"
cat <<EOF
  export KUBECONFIG=$KUBECONFIG
  $KUBECTL get events -n memwatch-demo
  # every action of every memwatch component; the [pod/.../controller|agent] prefix says which acted
  $KUBECTL logs -n memwatch -l app.kubernetes.io/name=memwatch --prefix --tail=-1 | grep action=

Tear it down with:
  $TEARDOWN
EOF
