"""The agent finds a pod's cgroups as the kubelet and the runtime make them (memwatch.discovery).

Fixture-tree and inotify tests run anywhere; the ones marked ``cgroup`` make real v1 memory cgroups
(root, writable hierarchy; skipped loudly otherwise) and real processes in them, and include the
race the issue measured on the cluster: a leak from the container's first instruction, judged by
the kernel's ``oom_kill`` counters (harness: ``bench/oom_race.py``, where ``make bench`` runs 20 a rate).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.helpers import make_pod, real_cgroup_unavailable, real_memory_cgroup, spawn_in, wait_comm
from agent.test_oom_race import oom_race
from memwatch.cgroups import CgroupSource, Hierarchy
from memwatch.discovery import CONTAINER, SANDBOX, Inotify, classify, name_containers, short_id
from memwatch.podindex import PodRecord, build_record
from memwatch.policy import Defaults

CID_A = "a" * 64
CID_B = "b" * 64


def record(pod: dict[str, object]) -> PodRecord:
    rec = build_record(pod, Defaults(), lambda _p: None)
    assert rec is not None
    return rec


def test_short_id_takes_the_runtime_id_out_of_every_naming() -> None:
    assert short_id(CID_A) == "a" * 12
    assert short_id(f"cri-containerd-{CID_B}.scope") == "b" * 12
    assert short_id(f"crio-{CID_A}.scope") == "a" * 12


def test_an_unnamed_container_of_a_one_container_pod_is_that_container(tmp_path: Path) -> None:
    new = tmp_path / CID_A
    assert name_containers({}, [new], "app", {}) == {"app": new}
    # Several containers, or init containers: the API must name it; until then a provisional name.
    assert name_containers({}, [new], None, {}) == {"?" + "a" * 12: new}


def test_a_restart_takes_the_name_from_the_ended_instance_not_from_a_live_one(tmp_path: Path) -> None:
    old, new = tmp_path / CID_A, tmp_path / CID_B
    assert name_containers({"app": old}, [new], "app", {old: False}) == {"app": new}  # old one exited
    assert name_containers({"app": old}, [new], "app", {old: True}) == {"?" + "b" * 12: new}  # both live


def _fake_cgroup(path: Path, pids: list[int]) -> Path:
    path.mkdir()
    (path / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    return path


def test_classify_tells_the_sandbox_from_a_container_by_its_processes(tmp_path: Path) -> None:
    pause = tmp_path / "pause"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", pause)
    proc = subprocess.Popen([str(pause), "30"])
    wait_comm(proc.pid, "pause")  # exec'd: before it, the child is still this Python
    try:
        assert classify(_fake_cgroup(tmp_path / "sandbox", [proc.pid])) == SANDBOX
        assert classify(_fake_cgroup(tmp_path / "app", [proc.pid, os.getpid()])) == CONTAINER
        assert classify(_fake_cgroup(tmp_path / "empty", [])) is None  # runc has not moved a process in yet
        assert classify(_fake_cgroup(tmp_path / "gone", [2 ** 22 + 7])) is None  # not visible from here
        assert classify(tmp_path / "missing") is None
        runc = tmp_path / "runc:[2:INIT]"
        shutil.copy(pause, runc)
        setting_up = subprocess.Popen([str(runc), "30"])
        wait_comm(setting_up.pid, "runc:[2:INIT]")
        try:  # the runtime's init process comes first in the sandbox and in containers alike
            assert classify(_fake_cgroup(tmp_path / "creating", [setting_up.pid])) is None
        finally:
            setting_up.kill()
            setting_up.wait()
        assert classify(_fake_cgroup(tmp_path / f"crio-conmon-{CID_A}.scope", [os.getpid()])) == SANDBOX
    finally:
        proc.kill()
        proc.wait()


def test_inotify_reports_a_child_directory_made_under_a_watched_one(tmp_path: Path) -> None:
    notify = Inotify()
    try:
        notify.watch(tmp_path)
        assert notify.read() == (set(), False)
        (tmp_path / "pod").mkdir()
        assert select.select([notify.fd], [], [], 1.0)[0] == [notify.fd]
        assert notify.read() == ({tmp_path}, False)
    finally:
        notify.close()


needs_real = pytest.mark.skipif(real_cgroup_unavailable() is not None,
                                reason=f"SKIPPED LOUDLY: {real_cgroup_unavailable()}")


@pytest.fixture
def real_node() -> Iterator[tuple[Path, CgroupSource, list[subprocess.Popen[bytes]]]]:
    """A scratch real v1 memory root, a CgroupSource on it, and a list whose processes are killed after."""
    procs: list[subprocess.Popen[bytes]] = []
    with real_memory_cgroup() as root:
        source = CgroupSource(Hierarchy(1, root))
        try:
            yield root, source, procs
        finally:
            for p in procs:
                p.kill()
                p.wait()
            source.close()


def _pending_pod(uid: str, containers: tuple[str, ...] = ("app",), ids: dict[str, str] | None = None
                 ) -> dict[str, object]:
    pod = make_pod(uid, containers=tuple((n, "256Mi", (ids or {}).get(n, "")) for n in containers))
    pod["status"]["phase"] = "Pending"  # type: ignore[index]
    return pod


@pytest.mark.cgroup
@needs_real
def test_a_pods_containers_are_found_before_the_api_names_them_and_kept_when_it_does(
        tmp_path: Path, real_node: tuple[Path, CgroupSource, list[subprocess.Popen[bytes]]]) -> None:
    root, source, procs = real_node
    pause = tmp_path / "pause"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", pause)
    uid = str(uuid.uuid4())
    pod_dir = root / "kubepods" / "burstable" / f"pod{uid}"
    (root / "kubepods" / "burstable").mkdir(parents=True)
    rec = record(_pending_pod(uid, ("app", "side")))
    assert source.sample(rec) is None  # bound, nothing made yet
    pod_dir.mkdir()
    usage = source.sample(rec)
    assert usage is not None and usage.containers == {} and usage.pod_bytes is not None
    assert source.notify_fd() is not None and pod_dir in source._pod_dirs
    (pod_dir / ("c" * 64)).mkdir()
    procs.append(spawn_in(pod_dir / ("c" * 64), [str(pause), "60"]))
    (pod_dir / CID_A).mkdir()
    ready, _, _ = select.select([source.notify_fd()], [], [], 1.0)
    assert ready, "inotify did not report the new container cgroup"
    source.changed()
    procs.append(spawn_in(pod_dir / CID_A, ["sleep", "60"]))
    usage = source.sample(rec)
    assert usage is not None and set(usage.containers) == {"?" + "a" * 12}  # the sandbox is left out
    reader = source.pods[uid].containers["?" + "a" * 12]
    named = record(_pending_pod(uid, ("app", "side"), {"app": CID_A}))
    usage = source.sample(named)
    assert usage is not None and set(usage.containers) == {"app"}
    assert source.pods[uid].containers["app"] is reader  # the same open files, thresholds and all


@pytest.mark.cgroup
@needs_real
def test_a_restarted_container_is_picked_up_under_its_name(
        real_node: tuple[Path, CgroupSource, list[subprocess.Popen[bytes]]]) -> None:
    root, source, procs = real_node
    uid = str(uuid.uuid4())
    pod_dir = root / "kubepods" / "burstable" / f"pod{uid}"
    pod_dir.mkdir(parents=True)
    rec = record(_pending_pod(uid, ("app",), {"app": CID_A}))
    (pod_dir / CID_A).mkdir()
    procs.append(spawn_in(pod_dir / CID_A, ["sleep", "60"]))
    usage = source.sample(rec)
    assert usage is not None and set(usage.containers) == {"app"}
    procs[0].kill()
    procs[0].wait()
    (pod_dir / CID_A).rmdir()  # the runtime removes the ended container's cgroup
    (pod_dir / CID_B).mkdir()  # and makes the new one; the API still reports the old ID
    procs.append(spawn_in(pod_dir / CID_B, ["sleep", "60"]))
    assert select.select([source.notify_fd()], [], [], 1.0)[0]
    source.changed()
    usage = source.sample(rec)
    assert usage is not None and set(usage.containers) == {"app"}
    assert source.pods[uid].containers["app"].path == pod_dir / CID_B


@pytest.mark.cgroup
@needs_real
@pytest.mark.parametrize("rate", [500, 1000])
def test_a_leak_from_the_first_instruction_is_preempted_and_the_sandbox_left_alone(rate: int) -> None:
    hog, pause = oom_race.build_hog(), oom_race.pause_program()
    for run in range(3):
        result = oom_race.race_from_start(hog, pause, rate)
        assert result.oom_kill == 0, f"run {run}: the kernel OOM-killed first: {result}"
        assert result.killer == "memwatch" and result.exit_signal == 9, f"run {run}: {result}"
        assert result.sandbox_alive, f"run {run}: the sandbox was killed too: {result}"
        assert result.first_sample is not None, f"run {run}: the agent never held the container: {result}"


def test_v2_systemd_a_new_pods_scopes_are_found_and_the_sandbox_left_out(v2_tree: Path, tmp_path: Path) -> None:
    """cgroup v2 with the systemd driver cannot run for real on this machine (v1 only): the same
    discovery on the v2 fixture tree, with real processes named in the scopes' cgroup.procs."""
    from agent.helpers import set_usage

    pause = tmp_path / "pause"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", pause)
    uid = str(uuid.uuid4())
    burstable = v2_tree / "kubepods.slice" / "kubepods-burstable.slice"
    template = next(burstable.glob("kubepods-burstable-pod*.slice"))
    slice_ = burstable / f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
    shutil.copytree(template, slice_, ignore=shutil.ignore_patterns("*.scope"))
    sandbox = subprocess.Popen([str(pause), "30"])
    wait_comm(sandbox.pid, "pause")
    try:
        for cid, pid in (("c" * 64, sandbox.pid), (CID_A, os.getpid())):
            scope = slice_ / f"cri-containerd-{cid}.scope"
            shutil.copytree(next(template.glob("cri-containerd-*.scope")), scope)
            (scope / "cgroup.procs").write_text(f"{pid}\n")
            set_usage(scope, 100 << 20)
        source = CgroupSource(Hierarchy.detect(v2_tree))
        usage = source.sample(record(_pending_pod(uid)))
        assert usage is not None and usage.containers == {"app": 100 << 20}
        assert source.pods[uid].containers["app"].path.name == f"cri-containerd-{CID_A}.scope"
        source.close()
    finally:
        sandbox.kill()
        sandbox.wait()
