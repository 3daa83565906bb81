"""The kill rung (issue 10, item 4 and the "0 processes" half of item 3): pidfds on v1, cgroup.kill on v2.

Fixture trees stand in for cgroupfs where the kernel is not the judge of membership; the real-cgroup
tests (root, v1) let the kernel judge, including a PID reused by an unrelated process.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import memwatch.kill
from agent.helpers import (
    ApiDouble,
    make_pod,
    real_cgroup_unavailable,
    real_memory_cgroup,
    spawn_in,
    v1_app,
    v2_app,
)
from agent.test_agent import make_agent, step
from memwatch.cgroups import CgroupReader, Hierarchy, Unreadable
from memwatch.kill import KillResult, kill_cgroup, member_pids
from memwatch.observability import REASON_FAILED, REASON_KILLED


@contextlib.contextmanager
def sleepers(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def test_every_listed_process_is_killed_through_pidfds(v1_tree: Path) -> None:
    with sleepers(2) as (a, b):
        (v1_app(v1_tree) / "cgroup.procs").write_text(f"{a.pid}\n{b.pid}\n")
        result = kill_cgroup(v1_app(v1_tree), Hierarchy.detect(v1_tree))
        assert (a.wait(timeout=10), b.wait(timeout=10)) == (-signal.SIGKILL, -signal.SIGKILL)
    assert result == KillResult(v1_app(v1_tree), "pidfd", 2) and result.ok
    assert result.describe() == "SIGKILL to 2 process(es) through pidfds"


def test_a_pid_reused_between_listing_and_signal_is_never_signalled(
        v1_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cgroup.procs listed PID X; X's process exited and an unrelated process now holds X (it is not in
    the cgroup, so the kernel no longer lists X there). Before: SIGKILL to X killed the unrelated one."""
    procs = v1_app(v1_tree) / "cgroup.procs"
    real_open = os.pidfd_open

    def pidfd_open(pid: int, flags: int = 0) -> int:
        fd = real_open(pid, flags)
        procs.write_text("")  # the kernel's answer from now on: X is not in this cgroup
        return fd

    monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    with sleepers(1) as (innocent,):
        procs.write_text(f"{innocent.pid}\n")
        reader = CgroupReader(v1_app(v1_tree), Hierarchy.detect(v1_tree))
        with pytest.raises(Unreadable, match="nothing killed"):
            reader.kill()  # 0.1's interface: used to answer 1 and kill the innocent process
        reader.close()
        assert alive(innocent)


def test_zero_processes_is_a_failure_never_a_kill(v1_tree: Path) -> None:
    (v1_app(v1_tree) / "cgroup.procs").write_text("")
    result = kill_cgroup(v1_app(v1_tree), Hierarchy.detect(v1_tree))
    assert not result.ok and result.signalled == 0 and not result.vanished
    assert result.describe().startswith("nothing killed: no process in ") and "hostPID" in result.describe()
    reader = CgroupReader(v1_app(v1_tree), Hierarchy.detect(v1_tree))
    with pytest.raises(Unreadable, match="nothing killed"):
        reader.kill()  # before: returned 0, and the agent logged action=killed
    reader.close()


def test_the_agent_never_reports_a_kill_of_zero_processes(v2_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The default chart (no hostPID): cgroup.procs reads empty. Before: action=killed and a
    MemwatchKilled Warning every sample."""
    api = ApiDouble()
    agent = make_agent(v2_tree, api)
    (v2_app(v2_tree) / "cgroup.procs").write_text("")
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "200Mi", "memwatch.io/action": "restart"}))
    with caplog.at_level(logging.INFO):
        for _ in range(10):
            step(agent)
    messages = [r.getMessage() for r in caplog.records]
    assert not any("action=killed" in m for m in messages), messages
    assert REASON_KILLED not in api.reasons() and REASON_FAILED in api.reasons()
    assert any("action=failed" in m and "nothing killed" in m for m in messages)


def test_no_permission_to_signal_is_a_failure_naming_cap_kill(v1_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(fd: int, sig: int, siginfo: None = None, flags: int = 0) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(memwatch.kill.signal, "pidfd_send_signal", refused)
    with sleepers(2) as (a, b):
        (v1_app(v1_tree) / "cgroup.procs").write_text(f"{a.pid}\n{b.pid}\n")
        result = kill_cgroup(v1_app(v1_tree), Hierarchy.detect(v1_tree))
        assert alive(a) and alive(b)
    assert not result.ok and result.signalled == 0
    assert "Operation not permitted" in (result.error or "") and "and 1 more" in (result.error or "")
    assert "CAP_KILL" in result.describe()


def test_a_kernel_without_pidfds_is_refused_not_signalled_by_bare_pid(
        v1_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    with sleepers(1) as (a,):
        (v1_app(v1_tree) / "cgroup.procs").write_text(f"{a.pid}\n")
        result = kill_cgroup(v1_app(v1_tree), Hierarchy.detect(v1_tree))
        assert alive(a)
    assert not result.ok and "pidfd_open" in result.describe()


def test_a_gone_cgroup_is_vanished_not_a_kill(tmp_path: Path) -> None:
    for version in (1, 2):
        result = kill_cgroup(tmp_path / "gone", Hierarchy(version, tmp_path))
        assert result.vanished and not result.ok and "gone" in result.describe()


def test_v2_writes_cgroup_kill_for_the_whole_cgroup(v2_tree: Path) -> None:
    app = v2_app(v2_tree)
    (app / "cgroup.kill").write_text("")  # stands in for the kernel's file (Linux 5.14+)
    result = kill_cgroup(app, Hierarchy.detect(v2_tree))
    assert result.ok and result.method == "cgroup.kill" and (app / "cgroup.kill").read_text() == "1"
    assert "whole cgroup" in result.describe()


def test_v2_an_unpopulated_cgroup_is_nothing_killed(v2_tree: Path) -> None:
    app = v2_app(v2_tree)
    (app / "cgroup.kill").write_text("")
    (app / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    result = kill_cgroup(app, Hierarchy.detect(v2_tree))
    assert not result.ok and (app / "cgroup.kill").read_text() == "" and "no process left" in result.describe()


def test_v2_without_cgroup_kill_falls_back_to_pidfds_and_never_creates_the_file(v2_tree: Path) -> None:
    app = v2_app(v2_tree)
    with sleepers(1) as (a,):
        (app / "cgroup.procs").write_text(f"{a.pid}\n")
        result = kill_cgroup(app, Hierarchy.detect(v2_tree))
        assert a.wait(timeout=10) == -signal.SIGKILL
    assert result == KillResult(app, "pidfd", 1) and not (app / "cgroup.kill").exists()


def test_v2_a_refused_cgroup_kill_falls_back_and_says_so(v2_tree: Path) -> None:
    app = v2_app(v2_tree)
    (app / "cgroup.kill").mkdir()  # the write fails (EISDIR), as a read-only mount's would (EROFS)
    (app / "cgroup.procs").write_text("")
    result = kill_cgroup(app, Hierarchy.detect(v2_tree))
    assert not result.ok and result.method == "pidfd" and "cgroup.kill refused" in result.describe()


# ---------------------------------------------------------------------------------------------
# Real cgroups: the kernel is the judge

needs_real = pytest.mark.skipif(real_cgroup_unavailable() is not None,
                                reason=f"SKIPPED LOUDLY: {real_cgroup_unavailable()}")


@pytest.mark.cgroup
@needs_real
def test_real_cgroup_every_process_and_descendant_dies_and_nothing_else() -> None:
    with real_memory_cgroup() as cg, sleepers(1) as (outside,):
        child = cg / "child"
        child.mkdir()
        inside = [spawn_in(cg, ["sleep", "60"]) for _ in range(3)]
        inside.append(spawn_in(child, ["sleep", "60"]))
        forker = spawn_in(cg, ["sh", "-c", "sleep 60 & sleep 60 & wait"])
        deadline = time.monotonic() + 10
        while len(member_pids(cg)) < 7 and time.monotonic() < deadline:
            os.sched_yield()  # the forker's two children are on their way
        assert len(member_pids(cg)) == 7
        result = kill_cgroup(cg, Hierarchy(1, cg.parent))
        assert result.ok and result.signalled >= 7, result
        for p in [*inside, forker]:
            assert p.wait(timeout=10) == -signal.SIGKILL
        assert alive(outside)


@pytest.mark.cgroup
@needs_real
def test_real_pid_reuse_by_a_process_outside_the_cgroup_is_never_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real reused PID: the listed process dies, an unrelated process is given its PID
    (``ns_last_pid``), and then the kill runs on the stale listing."""
    last_pid = Path("/proc/sys/kernel/ns_last_pid")
    if not last_pid.exists():
        pytest.skip("SKIPPED LOUDLY: no /proc/sys/kernel/ns_last_pid (CONFIG_CHECKPOINT_RESTORE)")
    with real_memory_cgroup() as cg:
        victim = spawn_in(cg, ["sleep", "60"])
        stale = member_pids(cg)
        assert stale == {victim.pid}
        victim.kill()
        victim.wait()
        innocent = None
        for _ in range(50):  # other processes on the machine may take the PID first: try again
            last_pid.write_text(str(victim.pid - 1))
            candidate = subprocess.Popen(["sleep", "60"])
            if candidate.pid == victim.pid:
                innocent = candidate
                break
            candidate.kill()
            candidate.wait()
        if innocent is None:
            pytest.skip("SKIPPED LOUDLY: could not get the victim's PID reused (a busy machine)")
        try:
            calls = iter([stale])
            real_members = memwatch.kill.member_pids
            monkeypatch.setattr(memwatch.kill, "member_pids", lambda path: next(calls, None) or real_members(path))
            result = kill_cgroup(cg, Hierarchy(1, cg.parent))
            assert alive(innocent) and not result.ok and result.signalled == 0
        finally:
            innocent.kill()
            innocent.wait()


@pytest.mark.cgroup
@needs_real
def test_real_pod_kill_takes_its_containers_and_leaves_the_sandbox(tmp_path: Path) -> None:
    """The node guard's hard line: every application container of the pod dies, the pause sandbox
    lives on (the kubelet restarts the containers in place, with the pod's network intact)."""
    import shutil

    from memwatch.kill import kill_pod

    pause = tmp_path / "pause"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", pause)
    with real_memory_cgroup() as pod:
        (pod / ("a" * 64)).mkdir()
        (pod / ("b" * 64)).mkdir()
        (pod / ("c" * 64)).mkdir()
        sandbox = spawn_in(pod / ("a" * 64), [str(pause), "60"])
        apps = [spawn_in(pod / ("b" * 64), ["sleep", "60"]), spawn_in(pod / ("c" * 64), ["sleep", "60"])]
        try:
            result = kill_pod(pod, Hierarchy(1, pod.parent))
            assert result.ok and result.signalled == 2, result
            for p in apps:
                assert p.wait(timeout=10) == -signal.SIGKILL
            assert sandbox.poll() is None, "the sandbox was killed"
            nothing = kill_pod(pod, Hierarchy(1, pod.parent))
            assert not nothing.ok, nothing  # only the sandbox left: a failure, never a kill
        finally:
            sandbox.kill()
            sandbox.wait()
