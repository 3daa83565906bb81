"""The judge of the node guard's cluster benchmark (``bench/node_guard_cluster.py``): who ended each hog.

A kubepods-level OOM kill leaves the container with exit 137 and no ``OOMKilled`` (the runtime only
reports an OOM of the container's own cgroup), exactly like the kill rung's SIGKILL: only the
kernel's own records tell them apart. These tests feed the judge the shapes the API server sends,
and prove the kernel-log reader on a real memcg OOM kill (root, cgroup v1; skips loudly otherwise).
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from typing import Any

import pytest

from .helpers import load_bench

ngc = load_bench("node_guard_cluster")
UID = "0b6c1f8e-3a52-4f55-9d6e-2f1b7f0c9a11"


def _event(kind: str = "MODIFIED", name: str = "hog", *, deleting: bool = False, reason: str | None = None,
           terminated: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": UID}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T05:00:00Z"
    status: dict[str, Any] = {"phase": "Failed" if reason else "Running"}
    if reason:
        status["reason"] = reason
    if terminated is not None:
        status["containerStatuses"] = [{"name": "hog", "state": {"terminated": terminated}}]
    return {"type": kind, "object": {"metadata": meta, "status": status}}


def _judge(events: list[dict[str, Any]], oom: list[str] = (), cleared_after: int | None = None) -> tuple[str, Any]:
    ends = ngc.Ends()
    for i, ev in enumerate(events):
        if cleared_after is not None and i == cleared_after:
            ends.clear(["hog"])
        ends.on_event(ev, 100.0 + i)
    facts = ends.facts["hog"]
    return facts.who(ngc.killed_uids([facts.uid], oom))


def test_the_kubelets_eviction_is_the_kubelets_even_when_the_sigkill_is_seen_first() -> None:
    assert _judge([_event(terminated={"exitCode": 137, "reason": "Error"}),
                   _event(reason="Evicted", terminated={"exitCode": 137, "reason": "Error"})]) == ("kubelet", 100.0)


def test_an_eviction_or_delete_by_memwatch_is_memwatchs() -> None:
    assert _judge([_event(deleting=True), _event("DELETED", deleting=True)]) == ("memwatch", 100.0)


def test_a_sigkill_the_kernel_did_not_record_is_the_kill_rung() -> None:
    assert _judge([_event(), _event(terminated={"exitCode": 137, "reason": "Error"})]) == ("memwatch", 101.0)


def test_a_kubepods_oom_kill_is_the_kernels_although_the_pod_says_error_137() -> None:
    memcg = f"/kubepods/besteffort/pod{UID}/4f1c9e0d2b7a"
    assert _judge([_event(terminated={"exitCode": 137, "reason": "Error"})], [memcg]) == ("kernel", 100.0)
    systemd = f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/x"
    assert _judge([_event(terminated={"exitCode": 137, "reason": "Error"})], [systemd])[0] == "kernel"
    assert _judge([_event(terminated={"exitCode": 137, "reason": "OOMKilled"})])[0] == "kernel"
    other = "/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/4f1c9e0d2b7a"
    assert _judge([_event(terminated={"exitCode": 137, "reason": "Error"})], [other])[0] == "memwatch"


def test_the_benchmarks_own_clean_up_is_nobodys_action() -> None:
    assert _judge([_event(), _event(deleting=True), _event("DELETED", deleting=True)], cleared_after=1) == ("-", None)


def test_kernel_log_records_are_read_for_the_subtree_only() -> None:
    line = ("3,1234,5678,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
            "oom_memcg=/kubepods,task_memcg={},task=hog,pid=4242,uid=0")
    log = ngc.KernelLog.__new__(ngc.KernelLog)
    log.under = "/kubepods"
    got = {m: log.killed_in(line.format(m)) for m in
           ("/kubepods/besteffort/podA/c1", "/kubepodsX/c", "/system.slice/x", "/kubepods")}
    assert got == {"/kubepods/besteffort/podA/c1": "/kubepods/besteffort/podA/c1", "/kubepodsX/c": None,
                   "/system.slice/x": None, "/kubepods": "/kubepods"}
    assert log.killed_in("6,1,2,-;Memory cgroup out of memory: Killed process 4242 (hog)") is None


def _real_memcg_unavailable() -> str | None:
    from realcgroup import v1_unavailable  # bench/, on the path through .helpers

    return v1_unavailable() or (None if os.access("/dev/kmsg", os.R_OK) else "cannot read /dev/kmsg")


@pytest.mark.skipif(_real_memcg_unavailable() is not None,
                    reason=f"SKIPPED LOUDLY: no real memcg OOM kill here: {_real_memcg_unavailable()}")
def test_a_real_memcg_oom_kill_is_read_from_the_kernels_log() -> None:
    from realcgroup import V1_MEMORY, remove_tree, spawn

    name = f"memwatch-judge-{uuid.uuid4().hex[:8]}"
    cgroup = V1_MEMORY / name / f"pod{UID}"
    cgroup.mkdir(parents=True)
    log = ngc.KernelLog(f"/{name}")
    try:
        (cgroup / "memory.limit_in_bytes").write_text(str(16 << 20))
        with contextlib.suppress(OSError):
            (cgroup / "memory.memsw.limit_in_bytes").write_text(str(16 << 20))
        hog = spawn(cgroup, [sys.executable, "-c", "b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096])"])
        assert hog.wait(30) == -9  # the kernel's SIGKILL
        got = log.oom_kills()
        assert got and all(m.startswith(f"/{name}/pod{UID}") for m in got), got
        assert ngc.killed_uids([UID, "other"], got) == {UID}
        assert log.oom_kills() == []  # each record once
    finally:
        log.close()
        remove_tree(V1_MEMORY / name)


def test_a_hog_refused_at_admission_never_raced() -> None:
    """Under MemoryPressure the kubelet refuses a BestEffort pod (Failed, reason Evicted, no container
    ever ran): that race does not count, for anyone."""
    ends = ngc.Ends()
    ends.on_event({"type": "MODIFIED", "object": {"metadata": {"name": "hog", "uid": UID},
                                                  "status": {"phase": "Failed", "reason": "Evicted"}}}, 1.0)
    assert ends.facts["hog"].who(set()) == ("refused", None)
    assert not ngc.Race("kubelet", 1, 50, [], {"hog": "refused"}, None, "-").valid
