#!/usr/bin/env python3
"""Install or uninstall memwatch's chart with the Python Helm engine (helm-python-sdk), for
clusters without a `helm` binary: `make e2e-local`, `make demo` and the e2e suite use it.

    e2e-install.py install   [--kubeconfig K] [--values F]... [--set key.path=value]... [--agent auto|on|off]
    e2e-install.py uninstall [--kubeconfig K]
    e2e-install.py status    [--kubeconfig K]

`install` installs (or upgrades) the release, then waits until the controller Deployment is
Available (and the agent DaemonSet is ready, when enabled). On a timeout it prints the pods'
states and the controller's last log lines, and exits 1. `--agent auto` (the default) enables the
node agent when this checkout has it (controller/memwatch/agent.py). `uninstall` removes the
release, then the namespace if this script created it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "memwatch"
CREATED_BY = "memwatch.io/created-by"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _set(values: dict[str, Any], assignment: str) -> dict[str, Any]:
    path, sep, raw = assignment.partition("=")
    if not sep:
        raise SystemExit(f"--set {assignment!r}: expected key.path=value")
    nested: Any = yaml.safe_load(raw) if raw else ""
    for part in reversed(path.split(".")):
        nested = {part: nested}
    return _merge(values, nested)


def _values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in args.values or []:
        values = _merge(values, yaml.safe_load(Path(path).read_text()) or {})
    for assignment in args.set or []:
        values = _set(values, assignment)
    if args.agent == "on" or (args.agent == "auto" and (ROOT / "controller" / "memwatch" / "agent.py").exists()):
        values = _merge(values, {"agent": {"enabled": True}})
    elif args.agent == "off":
        values = _merge(values, {"agent": {"enabled": False}})
    return values


#: Container waiting reasons after which a pod will not start by itself: fail at once.
HOPELESS = ("ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
            "CreateContainerConfigError", "CrashLoopBackOff")


#: The DaemonSet's template generation (annotation), which its pods carry as a label.
TEMPLATE_GENERATION = "deprecated.daemonset.template.generation"


class Hopeless(Exception):
    """A memwatch pod that will not start without help."""


class Kubectl:
    """The few reads and writes the installer makes, through memwatch's own raw-JSON client."""

    def __init__(self, kubeconfig: str) -> None:
        from memwatch.kube import Kube, load_client

        self.kube = Kube(load_client(kubeconfig))

    def get(self, path: str, **query: Any) -> Any:
        return self.kube.get_json_or_none(path, query)

    def ensure_namespace(self, name: str, timeout: float = 180.0) -> None:
        ns = self.get(f"/api/v1/namespaces/{name}")
        if ns is not None and ns["metadata"].get("deletionTimestamp"):
            # An earlier uninstall's namespace still terminating: nothing can be created in it.
            print(f"waiting for namespace {name} to finish terminating")
            deadline = time.monotonic() + timeout
            while ns is not None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"e2e-install: namespace {name} is still terminating after {timeout:.0f}s")
                time.sleep(1)
                ns = self.get(f"/api/v1/namespaces/{name}")
        if ns is None:
            body = {"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": {CREATED_BY: "e2e-install"}}}
            self.kube._request("POST", "/api/v1/namespaces", body=body)
            print(f"created namespace {name}")

    def delete_namespace_if_ours(self, name: str) -> None:
        ns = self.get(f"/api/v1/namespaces/{name}")
        if ns and (ns["metadata"].get("labels") or {}).get(CREATED_BY) == "e2e-install":
            self.kube._request("DELETE", f"/api/v1/namespaces/{name}")
            print(f"deleting namespace {name}")

    def report(self, namespace: str, selector: str) -> None:
        """Print each pod's state and its last log lines (why it is not ready)."""
        for pod in (self.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector) or {}).get("items", []):
            name, status = pod["metadata"]["name"], pod.get("status") or {}
            states = [(s["name"], s.get("state"), s.get("restartCount")) for s in status.get("containerStatuses") or []]
            print(f"  pod {name}: phase={status.get('phase')} containers={states}", file=sys.stderr)
            try:
                log = self.kube._request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}/log",
                                         {"tailLines": 20}).data.decode("utf-8", "replace")
            except Exception:  # no log yet
                continue
            for line in log.splitlines():
                print(f"    | {line}", file=sys.stderr)

    def not_ready(self, namespace: str, selector: str, agent: bool) -> list[str]:
        """What is not ready yet: the controller Deployment (Available, rolled out), the agent."""
        problems = []
        deps = self.get(f"/apis/apps/v1/namespaces/{namespace}/deployments",
                        labelSelector=selector + ",app.kubernetes.io/component=controller")["items"]
        if not deps:
            problems.append("no controller Deployment")
        for dep in deps:
            st = dep.get("status") or {}
            available = any(c["type"] == "Available" and c["status"] == "True" for c in st.get("conditions") or [])
            rolled_out = (st.get("observedGeneration", 0) >= dep["metadata"].get("generation", 0)
                          and st.get("updatedReplicas", 0) >= dep["spec"].get("replicas", 1))
            if not (available and rolled_out):
                problems.append(f"Deployment {dep['metadata']['name']} is not Available yet")
        if agent:
            problems += self.agent_not_ready(namespace, selector)
        for pod in (self.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector) or {}).get("items", []):
            # A pod of the previous install or revision still shutting down may still act (or look
            # ready): memwatch is available only once only the new pods run.
            if pod["metadata"].get("deletionTimestamp"):
                problems.append(f"pod {pod['metadata']['name']} of a previous revision is still terminating")
            for st in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (st.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in HOPELESS:
                    raise Hopeless(f"pod {pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}")
        return problems

    def wait_pods_gone(self, namespace: str, selector: str, timeout: float) -> None:
        """Wait until the release's pods are gone: a controller still shutting down could act."""
        deadline = time.monotonic() + timeout
        while (self.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector) or {}).get("items"):
            if time.monotonic() > deadline:
                raise SystemExit(f"memwatch's pods are still there {timeout:.0f}s after the uninstall")
            time.sleep(1)

    def agent_not_ready(self, namespace: str, selector: str) -> list[str]:
        """Nodes that are Ready but have no ready agent pod. (Nodes that are not Ready, such as the
        benchmarks' fake nodes, never run one: the DaemonSet's own counts include them.)"""
        nodes = [n["metadata"]["name"] for n in self.get("/api/v1/nodes")["items"]
                 if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions") or [])
                 and not n["spec"].get("unschedulable")]
        problems: list[str] = []
        generations: set[str | None] = set()
        for ds in self.get(f"/apis/apps/v1/namespaces/{namespace}/daemonsets",
                           labelSelector=selector + ",app.kubernetes.io/component=agent")["items"]:
            generation = ds["metadata"].get("generation", 0)
            # What the DaemonSet controller labels each pod with (pod-template-generation): it
            # counts template changes, unlike metadata.generation.
            generations.add((ds["metadata"].get("annotations") or {}).get(TEMPLATE_GENERATION))
            st = ds.get("status") or {}
            if st.get("observedGeneration", 0) < generation:
                problems.append(f"DaemonSet {ds['metadata']['name']} has not seen its new revision yet")
        if not generations:
            return ["no agent DaemonSet"]
        pods = self.get(f"/api/v1/namespaces/{namespace}/pods",
                        labelSelector=selector + ",app.kubernetes.io/component=agent")["items"]
        # Only a pod of the DaemonSet's current template counts, and none that is going away.
        ready = {p["spec"].get("nodeName") for p in pods
                 if not p["metadata"].get("deletionTimestamp")
                 and (None in generations
                      or (p["metadata"].get("labels") or {}).get("pod-template-generation") in generations)
                 and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])}
        return problems + [f"no ready agent pod of the current revision on node {n}" for n in nodes if n not in ready]

    def wait_available(self, namespace: str, release: str, agent: bool, timeout: float) -> None:
        selector = f"app.kubernetes.io/instance={release}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                problems = self.not_ready(namespace, selector, agent)
            except Hopeless as exc:
                print(f"memwatch cannot start: {exc}", file=sys.stderr)
                if "Pull" in str(exc):
                    print("  the image must be loaded into the node: `bash hack/local-cluster.sh images` "
                          "(or `kind load docker-image`)", file=sys.stderr)
                self.report(namespace, selector)
                raise SystemExit(1) from None
            if not problems:
                return
            if time.monotonic() > deadline:
                print(f"memwatch is not ready after {timeout:.0f}s: {'; '.join(problems)}", file=sys.stderr)
                self.report(namespace, selector)
                raise SystemExit(1)
            time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("verb", choices=("install", "uninstall", "status"))
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: $KUBECONFIG")
    parser.add_argument("--namespace", default="memwatch")
    parser.add_argument("--release", default="memwatch")
    parser.add_argument("--values", action="append", help="values file (repeatable)")
    parser.add_argument("--set", action="append", help="key.path=value (YAML value; repeatable)")
    parser.add_argument("--agent", choices=("auto", "on", "off"), default="auto",
                        help="enable the node agent (auto: when controller/memwatch/agent.py exists)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the Deployment")
    args = parser.parse_args(argv)
    if not args.kubeconfig:
        parser.error("no kubeconfig: pass --kubeconfig or set KUBECONFIG")

    from helm_python import Config, HelmNotFoundError

    helm = Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace)
    kube = Kubectl(args.kubeconfig)
    if args.verb == "status":
        try:
            rel = helm.status(args.release)
        except HelmNotFoundError:
            print(f"release {args.release} not installed in {args.namespace}")
            return 1
        print(f"release {args.release}: {_status(rel)}")
        return 0
    if args.verb == "uninstall":
        helm.uninstall(args.release, ignore_not_found=True, wait="watcher", timeout=120)
        print(f"uninstalled release {args.release} from {args.namespace}")
        kube.wait_pods_gone(args.namespace, f"app.kubernetes.io/instance={args.release}", args.timeout)
        kube.delete_namespace_if_ours(args.namespace)
        return 0

    values = _values(args)
    kube.ensure_namespace(args.namespace)
    try:
        helm.status(args.release)
        exists = True
    except HelmNotFoundError:
        exists = False
    t0 = time.monotonic()
    if exists:
        rel = helm.upgrade(str(CHART), args.release, values, namespace=args.namespace, timeout=int(args.timeout))
    else:
        rel = helm.install(str(CHART), args.release, values, namespace=args.namespace, timeout=int(args.timeout))
    print(f"{'upgraded' if exists else 'installed'} release {args.release} in {args.namespace}: {_status(rel)}")
    agent = bool((values.get("agent") or {}).get("enabled"))
    kube.wait_available(args.namespace, args.release, agent, args.timeout)
    print(f"memwatch is available ({time.monotonic() - t0:.0f}s){' with the node agent' if agent else ''}")
    return 0


def _status(release: dict[str, Any]) -> str:
    """The release's status word (`deployed`, `failed`, ...), from helm-python-sdk's release dict."""
    for holder in (release, release.get("release") or {}, release.get("summary") or {}):
        info = holder.get("info")
        if isinstance(info, dict) and info.get("status"):
            return str(info["status"])
        if isinstance(holder.get("status"), str):
            return str(holder["status"])
    return "status unknown (keys: " + ", ".join(sorted(release)) + ")"


if __name__ == "__main__":
    sys.exit(main())
