"""Structural guards (issue 6): properties of the design, checked by counting and reading the code.

* Usage requests per sweep do not grow with watched pods: see test_sources_http.py (counted at
  the fake server and through Kube.request_count, for 10/100/1000 pods).
* Architecture: only memwatch/kube.py talks HTTP; only the enforcer evicts or deletes; nothing
  patches or replaces pods; kopf registers no per-pod handlers (they would write to pods).
* No write request ever targets a watched pod except evict or delete (a full cycle over HTTP).
* Memory per tracked pod is bounded, whatever the size of the pod object.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import memwatch
from memwatch.kube import Kube
from memwatch.podindex import build_record
from memwatch.policy import Defaults
from memwatch.protections import Protections
from memwatch.quantity import format_bytes
from memwatch.sources import MetricsApiSource
from memwatch.watcher import PodWatcher

from .fakeapi import FakeApiServer, pod_metrics
from .fakes import FakeClock, Rig, deep_sizeof, iso, make_pod

PACKAGE = Path(memwatch.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))

#: The one module that talks HTTP to the API server.
CLIENT = {"kube.py"}
#: Who may call .evict( / .delete_pod(: the enforcer; kube.py defines them (and retries evict);
#: the node agent's kill rung kills processes, and may reuse the enforcer's ladder.
POD_WRITERS = {"enforcer.py", "kube.py", "agent.py", "cgroups.py"}
#: HTTP and Kubernetes REST internals: only the client module may touch them.
HTTP_MODULES = ("urllib3", "requests", "http.client", "aiohttp", "httpx", "kubernetes.client",
                "kubernetes.config", "kubernetes.watch", "kubernetes.dynamic", "kubernetes.stream")
HTTP_ATTRIBUTES = {"pool_manager", "rest_client", "call_api", "param_serialize", "urlopen", "CoreV1Api",
                   "PolicyV1Api", "PolicyV1beta1Api", "CustomObjectsApi", "CoordinationV1Api"}
#: kopf handlers that would write to the pods memwatch watches (annotations, finalizers) or index them.
KOPF_FORBIDDEN = {"create", "update", "resume", "delete", "field", "event", "timer", "daemon", "index"}


def parsed() -> Iterator[tuple[str, ast.Module]]:
    for path in MODULES:
        yield path.name, ast.parse(path.read_text(), filename=str(path))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    return "?"


def test_the_package_is_where_we_think() -> None:
    names = {p.name for p in MODULES}
    assert {"kube.py", "enforcer.py", "policy.py", "sweep.py", "sources.py", "watcher.py"} <= names


def test_only_kube_py_imports_http_or_rest_internals() -> None:
    offenders = []
    for name, tree in parsed():
        if name in CLIENT:
            continue
        for node in ast.walk(tree):
            modules: list[str] = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for mod in modules:
                if any(mod == h or mod.startswith(h + ".") for h in HTTP_MODULES):
                    offenders.append(f"{name}:{node.lineno} imports {mod}")
    assert offenders == []


def test_only_kube_py_touches_the_connection_pool_or_typed_apis() -> None:
    offenders = [f"{name}:{node.lineno} uses .{node.attr}"
                 for name, tree in parsed() if name not in CLIENT
                 for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr in HTTP_ATTRIBUTES]
    assert offenders == []


def test_only_the_enforcer_evicts_or_deletes() -> None:
    callers = {name for name, tree in parsed() for node in ast.walk(tree)
               if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr in ("evict", "delete_pod")}
    assert "enforcer.py" in callers, "the check must see the enforcer's own calls"
    assert callers <= POD_WRITERS, f"unexpected pod writers: {sorted(callers - POD_WRITERS)}"


def test_nothing_patches_or_replaces_pods() -> None:
    """The one PATCH memwatch makes is Kube.merge_patch, called only by memwatch.policystatus, and
    only on a policy's status subresource (``status_path``): never on a pod."""
    offenders, status_writes = [], 0
    for name, tree in parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "merge_patch":
                path = node.args[0] if node.args else None
                if name == "policystatus.py" and isinstance(path, ast.Call) and _dotted(path.func) == "status_path":
                    status_writes += 1
                    continue
                offenders.append(f"{name}:{node.lineno} merge_patch outside a policy status write")
            elif isinstance(node, ast.Attribute) and re.search(r"patch|replace_.*pod|create_.*pod", node.attr, re.I) \
                    and not (name == "kube.py" or node.attr == "merge_patch" or _dotted(node) == "kopf.Patch"):
                offenders.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.upper() == "PATCH" \
                    and name != "kube.py":
                offenders.append(f"{name}:{node.lineno} {node.value!r}")
    assert offenders == []
    assert status_writes == 1, "the check must see the policy status write"
    source = (PACKAGE / "policystatus.py").read_text()
    assert source.count("/status\"") == 2, "status_path must end every path in /status"


def test_kube_write_surface_is_exactly_known() -> None:
    """Every non-GET request goes through Kube._write, and only these methods call it."""
    tree = dict(parsed())["kube.py"]
    kube_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Kube")
    writers, verbs = set(), {}
    for fn in kube_class.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and _dotted(node.func) == "self._write":
                writers.add(fn.name)
                first = node.args[0]
                verbs[fn.name] = first.value if isinstance(first, ast.Constant) else "?"
            if isinstance(node, ast.Call) and _dotted(node.func) == "self._request" and fn.name != "_write":
                first = node.args[0]
                assert isinstance(first, ast.Constant) and first.value == "GET", \
                    f"Kube.{fn.name} makes a non-GET request outside _write"
    assert verbs == {"evict": "POST", "delete_pod": "DELETE", "create_event": "POST", "create_lease": "POST",
                     "replace_lease": "PUT", "merge_patch": "PATCH"}
    assert writers == set(verbs)


def test_kopf_registers_no_per_pod_handlers() -> None:
    """kopf resource handlers only on memwatch's own objects (the policies, group memwatch.io), never
    on pods: kopf's handlers write annotations and finalizers on what they handle."""
    offenders, own = [], 0
    for name, tree in parsed():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for dec in node.decorator_list:
                    parts = _dotted(dec).split(".")
                    if parts[0] == "kopf" and parts[-1] in KOPF_FORBIDDEN:
                        group = dec.args[0] if isinstance(dec, ast.Call) and dec.args else None
                        if name == "policyhandlers.py" and isinstance(group, ast.Name) and group.id == "GROUP":
                            own += 1
                            continue
                        offenders.append(f"{name}:{node.lineno} @{_dotted(dec)}")
    assert offenders == []
    assert own == 4, "the policies' create, update, resume and delete handlers"
    from memwatch.policyset import GROUP

    assert GROUP == "memwatch.io"


# ---------------------------------------------------------------------------------------------
# No write ever targets a watched pod except evict or delete: a full cycle over HTTP

EVICTION = re.compile(r"/api/v1/namespaces/[^/]+/pods/([^/]+)/eviction")
POD = re.compile(r"/api/v1/namespaces/[^/]+/pods/([^/]+)")
EVENTS = re.compile(r"/api/v1/namespaces/[^/]+/events")


def test_full_cycle_writes_only_evictions_deletions_and_events(api: FakeApiServer, clock: FakeClock) -> None:
    limit = {"memwatch.io/limit": "512Mi"}
    pods = [
        make_pod("ok", "shop", annotations=limit),
        make_pod("pdb", "shop", annotations={**limit, "memwatch.io/escalate": "true"}),
        make_pod("pdb-stuck", "shop", annotations=limit),
        make_pod("dry", "shop", annotations={**limit, "memwatch.io/action": "dry-run"}),
        make_pod("del", "shop", annotations={**limit, "memwatch.io/action": "delete", "memwatch.io/grace-period": "5"}),
        make_pod("gone", "shop", annotations=limit),
        make_pod("fail", "blog", annotations=limit),
        make_pod("bad", "shop", annotations={"memwatch.io/limit": "lots"}),
        make_pod("typo", "shop", annotations={**limit, "memwatch.io/acton": "delete"}),
        make_pod("coredns", "kube-system", annotations=limit),
        make_pod("under", "shop", annotations={"memwatch.io/limit": "1000Mi"}),
        make_pod("plain", "shop", annotations={}),
    ]
    api.pods = pods
    for name, codes in {"pdb": [429], "pdb-stuck": [429], "gone": [404], "fail": [500, 500, 201]}.items():
        api.eviction[name] = deque(codes)
    kube = api.kube()
    rig = Rig(kube, clock, source=MetricsApiSource(kube), escalation_timeout=20.0)
    rig.recorder.load_history()
    PodWatcher(kube, rig.index).list_once()
    assert len(rig.index) == 11

    def refresh() -> None:
        api.pod_metrics = [pod_metrics(p["metadata"]["namespace"], p["metadata"]["name"], iso(clock() - 1),
                                       {"app": "900Mi"}) for p in pods]

    for tick in range(60):
        clock.advance(1)
        refresh()
        if tick % 5 == 0:
            rig.sweeper.sweep_once()
        else:
            rig.sweeper.retry_due()

    writes = api.writes()
    assert writes, "the scenario must write something, or it proves nothing"
    evicted, deleted, events = [], [], []
    for req in writes:
        if req.method == "POST" and (m := EVICTION.fullmatch(req.path)):
            evicted.append(m.group(1))
            assert req.body["kind"] == "Eviction" and req.body["deleteOptions"]["preconditions"]["uid"]
        elif req.method == "DELETE" and (m := POD.fullmatch(req.path)):
            deleted.append(m.group(1))
            assert req.body["preconditions"]["uid"]
        elif req.method == "POST" and EVENTS.fullmatch(req.path):
            events.append((req.body["involvedObject"]["name"], req.body["reason"]))
        else:
            raise AssertionError(f"unexpected write: {req.method} {req.path}")
    assert set(evicted) == {"ok", "pdb", "pdb-stuck", "gone", "fail", "typo"}
    assert sorted(deleted) == ["del", "pdb"]  # the delete action, and the escalation
    assert {name for name, _ in events} == {"ok", "pdb", "pdb-stuck", "dry", "del", "fail", "bad", "typo", "coredns"}
    assert ("bad", "InvalidMemwatchAnnotation") in events and ("typo", "MemwatchAnnotationWarning") in events
    assert ("coredns", "MemwatchProtected") in events and ("dry", "MemwatchDryRun") in events
    assert ("pdb", "MemwatchEscalated") in events and ("fail", "MemwatchActionFailed") in events
    # Every GET went to a read path; nothing else ever touched a pod object.
    assert all(r.method in ("GET", "POST", "DELETE") for r in api.requests())


# ---------------------------------------------------------------------------------------------
# Memory per tracked pod is bounded


def _huge_pod(uid: str) -> dict[str, Any]:
    pod = make_pod("web-7d9f8c6b5-x2x4k", "shop", uid=uid,
                   labels={f"example.com/label-{i}": f"value-{i}" for i in range(1000)})
    pod["metadata"]["annotations"].update({f"example.com/note-{i}": "x" * 1000 for i in range(100)})  # 100 KB
    pod["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {f"f:{i}": {} for i in range(500)}}]
    pod["spec"]["volumes"] = [{"name": f"v{i}", "emptyDir": {}} for i in range(100)]
    pod["spec"]["containers"][0]["env"] = [{"name": f"E{i}", "value": "v" * 100} for i in range(200)]
    return pod


def test_pod_record_does_not_hold_the_pod_object() -> None:
    small = build_record(make_pod("web-7d9f8c6b5-x2x4k", "shop", uid="5f0c1e9a-0000-4000-8000-000000000001"),
                         Defaults(), Protections().reason)
    big_pod = _huge_pod("5f0c1e9a-0000-4000-8000-000000000002")
    big = build_record(big_pod, Defaults(), Protections().reason)
    assert small is not None and big is not None
    small_size, big_size = deep_sizeof(small), deep_sizeof(big)
    assert big_size < 4096, f"a PodRecord takes {format_bytes(big_size)}"
    assert abs(big_size - small_size) <= 64, (small_size, big_size)
    # And nothing in it references the raw object's big parts.
    assert deep_sizeof(big_pod) > 100 * 1024


def test_index_memory_grows_with_watched_pods_only() -> None:
    from memwatch.podindex import PodIndex

    index = PodIndex(Defaults(), Protections().reason)
    for i in range(200):
        unwatched = _huge_pod(f"u{i}")
        unwatched["metadata"]["annotations"] = {"example.com/x": "y" * 1000}
        index.upsert(unwatched)
    assert len(index) == 0 and deep_sizeof(index._pods) < 1024
    for i in range(100):
        index.upsert(_huge_pod(f"w{i}"))
    assert len(index) == 100
    assert deep_sizeof(index._pods) / 100 < 4096


def test_kube_is_the_real_client_here(api: FakeApiServer) -> None:
    assert isinstance(api.kube(), Kube)  # the HTTP-level tests exercise the production client
