"""The cgroup reader against fixture trees: v1 + cgroupfs, v2 + systemd (which this host cannot mount)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.helpers import (
    APP_WS,
    CID_APP,
    CID_G,
    CID_SIDE,
    FIXTURES,
    UID_B,
    UID_G,
    MiB,
    fd_count,
    make_pod,
    real_cgroup_unavailable,
    real_memory_cgroup,
    set_usage,
    v1_app,
    v1_container,
    v1_pod,
    v2_app,
)
from memwatch.cgroups import (
    CgroupError,
    CgroupReader,
    CgroupSource,
    Hierarchy,
    Unreadable,
    Vanished,
    _pod_of,
    container_dir_matches,
    container_id,
    find_container_cgroup,
    parse_stat,
    pod_cgroup_candidates,
    working_set,
)
from memwatch.podindex import build_record
from memwatch.policy import Defaults


def record(pod: dict[str, object]):  # type: ignore[no-untyped-def]
    rec = build_record(pod, Defaults(), lambda _: None)
    assert rec is not None
    return rec


def test_detects_v1_on_a_hybrid_host_and_v2_on_a_unified_one() -> None:
    v1 = Hierarchy.detect(FIXTURES / "v1-cgroupfs")
    assert (v1.version, v1.memory_root.name) == (1, "memory")
    v2 = Hierarchy.detect(FIXTURES / "v2-systemd")
    assert (v2.version, v2.memory_root) == (2, FIXTURES / "v2-systemd")
    assert (v1.usage_file, v2.usage_file) == ("memory.usage_in_bytes", "memory.current")


def test_detect_says_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match=r"memory\.usage_in_bytes"):
        Hierarchy.detect(tmp_path)


def test_pod_cgroup_names_for_both_drivers() -> None:
    names = pod_cgroup_candidates("ab-cd", "Burstable")
    assert names[:2] == ["burstable/podab-cd", "kubepods-burstable.slice/kubepods-burstable-podab_cd.slice"]
    guaranteed = pod_cgroup_candidates("ab-cd", "Guaranteed")
    assert guaranteed[:2] == ["podab-cd", "kubepods-podab_cd.slice"]
    assert len(set(names)) == 6 and set(names) == set(guaranteed)


@pytest.mark.parametrize("name, matches", [
    (CID_APP, True), (f"cri-containerd-{CID_APP}.scope", True), (f"docker-{CID_APP}.scope", True),
    (f"crio-{CID_APP}.scope", True), (f"crio-{CID_APP}", True), (f"cri-containerd-{CID_G}.scope", False),
    (CID_APP[:-1], False),
])
def test_container_cgroup_names_of_every_runtime(name: str, matches: bool) -> None:
    assert container_dir_matches(name, CID_APP) is matches


@pytest.mark.parametrize("tree", ["v1-cgroupfs", "v2-systemd"])
def test_finds_pods_and_containers_by_uid_and_cri_id(tree: str) -> None:
    source = CgroupSource(Hierarchy.detect(FIXTURES / tree))
    burstable = record(make_pod())
    pod_dir, containers = source.locate(burstable)
    assert pod_dir is not None and (UID_B in pod_dir.name or UID_B.replace("-", "_") in pod_dir.name)
    assert set(containers) == {"app", "sidecar"}
    assert CID_APP in containers["app"].name
    guaranteed = record(make_pod(UID_G, "g", containers=(("main", "64Mi", CID_G),), qos="Guaranteed"))
    g_dir, g_containers = source.locate(guaranteed)
    assert g_dir is not None and g_dir.parent.name in ("kubepods", "kubepods.slice")
    assert list(g_containers) == ["main"]


@pytest.mark.parametrize("tree", ["v1-cgroupfs", "v2-systemd"])
def test_working_set_is_usage_minus_inactive_file(tree: str) -> None:
    source = CgroupSource(Hierarchy.detect(FIXTURES / tree))
    usage = source.fetch([record(make_pod())])[UID_B]
    assert usage.containers["app"] == APP_WS
    assert usage.containers["sidecar"] == 19 * MiB + 2 * MiB + 1187840
    assert usage.source == "cgroup" and usage.pod_bytes is None


def test_pod_cgroup_is_read_until_a_container_id_is_known() -> None:
    source = CgroupSource(Hierarchy.detect(FIXTURES / "v2-systemd"))
    pod = make_pod()
    pod["status"]["containerStatuses"] = []
    usage = source.fetch([record(pod)])[UID_B]
    assert usage.containers == {} and usage.pod_bytes == 220 * MiB + 10 * MiB + 1187840


def test_parse_stat_matches_whole_keys_only() -> None:
    text = "total_inactive_file 5\ninactive_file 7\n"
    assert parse_stat(text, "inactive_file") == 7
    assert parse_stat(text, "total_inactive_file") == 5
    assert parse_stat(text, "active_file") is None
    with pytest.raises(Unreadable):
        parse_stat("inactive_file lots\n", "inactive_file")
    assert working_set(10, 30) == 0


def test_memory_stat_is_skipped_far_from_thresholds_and_always_read_near_them(v1_tree: Path) -> None:
    app = v1_app(v1_tree)
    reader = CgroupReader(app, Hierarchy.detect(v1_tree))
    reader.gate_bytes = 1 << 40  # far above: the inactive figure may be up to STAT_EVERY samples old
    first = reader.read()
    assert first.fresh and first.working_set == APP_WS
    set_usage(app, 100 * MiB, inactive=50 * MiB)  # usage 150 MiB, inactive file grew to 50
    cheap = reader.read()
    assert not cheap.fresh and cheap.working_set == 150 * MiB - 24 * MiB  # the cached inactive figure
    assert reader.read(fresh=True).working_set == 100 * MiB
    reader.gate_bytes = 150 * MiB  # now near a threshold: every read is fresh
    set_usage(app, 120 * MiB, inactive=10 * MiB)
    near = reader.read()
    assert near.fresh and near.working_set == 120 * MiB
    reader.close()


def test_a_vanished_cgroup_is_not_an_error(v2_tree: Path, caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    source = CgroupSource(Hierarchy.detect(v2_tree))
    rec = record(make_pod())
    assert UID_B in source.fetch([rec])
    shutil.rmtree(v2_app(v2_tree).parent)

    def removed(fd: int, size: int, offset: int) -> bytes:
        # What the kernel answers for an open file of a removed cgroup (checked on this host's v1).
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(os, "pread", removed)
    with caplog.at_level(logging.WARNING):
        assert source.fetch([rec]) == {}
    monkeypatch.undo()
    assert not caplog.records and source.vanished >= 1 and UID_B not in source.problems
    assert source.fetch([rec]) == {}  # and it stays quietly gone
    assert not caplog.records


def test_garbled_files_are_logged_once_per_pod(v1_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = CgroupSource(Hierarchy.detect(v1_tree))
    rec = record(make_pod())
    (v1_app(v1_tree) / "memory.usage_in_bytes").write_text("garbage\n")
    with caplog.at_level(logging.WARNING, logger="memwatch.cgroups"):
        for _ in range(20):
            assert source.fetch([rec]) == {}
    assert len([r for r in caplog.records if "cannot read the cgroup" in r.message]) == 1
    assert "not a number" in source.problems[UID_B]
    set_usage(v1_app(v1_tree), 50 * MiB)  # repaired: read again, problem cleared
    assert source.fetch([rec])[UID_B].containers["app"] == 50 * MiB
    assert UID_B not in source.problems


def test_a_restarted_container_is_found_under_its_new_id(v2_tree: Path) -> None:
    source = CgroupSource(Hierarchy.detect(v2_tree))
    rec = record(make_pod())
    assert source.fetch([rec])[UID_B].containers["app"] == APP_WS
    old = v2_app(v2_tree)
    new_id = "b" * 64
    new = old.with_name(f"cri-containerd-{new_id}.scope")
    shutil.copytree(old, new)
    shutil.rmtree(old)
    set_usage(new, 5 * MiB)
    restarted = record(make_pod(containers=(("app", "256Mi", new_id),)))
    usage = source.fetch([restarted])[UID_B]
    assert usage.containers == {"app": 5 * MiB}


def test_proc_cgroup_lines_map_processes_to_pods() -> None:
    v1 = f"12:memory:/kubepods/burstable/pod{UID_B}/{CID_APP}\n"
    assert _pod_of(v1) == (UID_B, CID_APP)
    v2 = (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_B.replace('-', '_')}.slice/"
          f"cri-containerd-{CID_APP}.scope\n")
    assert _pod_of(v2) == (UID_B, CID_APP)
    assert _pod_of("0::/system.slice/sshd.service\n") is None


def test_reader_of_a_missing_cgroup_vanishes(tmp_path: Path) -> None:
    with pytest.raises(Vanished):
        CgroupReader(tmp_path / "nope", Hierarchy(1, tmp_path))


# ---------------------------------------------------------------------------------------------
# Container IDs and pod UIDs are untrusted (issue 10, item 5)

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize("cri_id", [f"containerd://{HEX}", f"cri-o://{HEX}", f"docker://{HEX}"])
def test_the_runtime_id_grammar_is_accepted(cri_id: str) -> None:
    assert container_id(cri_id) == HEX


@pytest.mark.parametrize("cri_id", [
    "containerd://../../..", "containerd://..", "containerd://", "containerd:///", "cri-o://../" + HEX,
    f"containerd:///sys/fs/cgroup/memory/{HEX}", f"docker://{HEX}/..", f"containerd://{HEX}/../..",
    f"containerd://{HEX.upper()}", f"containerd://{HEX[:-1]}", f"containerd://{HEX}0", f"containerd://{HEX}\n",
    f"containerd:// {HEX}", "containerd://" + "\u0661" * 64, f"rkt://{HEX}", f"Containerd://{HEX}", HEX,
    f"containerd://containerd://{HEX}", f"cri-containerd-{HEX}.scope",
])
def test_anything_else_is_refused(cri_id: str) -> None:
    assert container_id(cri_id) is None


@pytest.mark.parametrize("tree", ["v1-cgroupfs", "v2-systemd"])
@pytest.mark.parametrize("evil", ["../../..", "..", "../" + CID_SIDE, f"{CID_SIDE}/..", "/"])
def test_a_container_id_cannot_point_outside_its_pod(tree: str, evil: str, caplog: pytest.LogCaptureFixture) -> None:
    source = CgroupSource(Hierarchy.detect(FIXTURES / tree))
    rec = record(make_pod(containers=(("app", "256Mi", evil),)))
    with caplog.at_level(logging.WARNING, logger="memwatch.cgroups"):
        for _ in range(5):
            pod_dir, containers = source.locate(rec)
            assert pod_dir is not None and containers == {}  # before: app -> the memory root or the sidecar
            usage = source.fetch([rec])[UID_B]
            assert usage.containers == {} and usage.pod_bytes is not None  # the pod's own cgroup only
    refusals = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    assert len(refusals) == 1 and repr(f"containerd://{evil}") in refusals[0] and "64 hex" in refusals[0]
    source.prune([])
    assert source.refused == {}


def test_a_container_cgroup_that_is_a_symlink_out_of_its_pod_is_refused(v1_tree: Path, tmp_path: Path) -> None:
    pod_dir = v1_app(v1_tree).parent
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(v1_app(v1_tree), elsewhere)
    (pod_dir / HEX).symlink_to(elsewhere)
    assert find_container_cgroup(pod_dir, f"containerd://{HEX}") is None
    (pod_dir / f"cri-containerd-{HEX}.scope").symlink_to(elsewhere)
    assert find_container_cgroup(pod_dir, f"containerd://{HEX}") is None
    assert find_container_cgroup(pod_dir, f"containerd://{CID_APP}") == v1_app(v1_tree)


def test_a_pod_cgroup_that_is_a_symlink_out_of_kubepods_is_refused(v1_tree: Path, tmp_path: Path) -> None:
    pod_dir = v1_app(v1_tree).parent
    elsewhere = tmp_path / "elsewhere"
    shutil.move(pod_dir, elsewhere)
    pod_dir.symlink_to(elsewhere)
    source = CgroupSource(Hierarchy.detect(v1_tree))
    assert source.locate(record(make_pod())) == (None, {})
    assert source.fetch([record(make_pod())]) == {}


@pytest.mark.parametrize("uid", ["../../..", "..", f"{UID_B}/..", UID_B.upper(), UID_B + "\n", "", "x" * 36])
def test_a_pod_uid_that_is_not_a_uid_finds_no_cgroup(uid: str) -> None:
    source = CgroupSource(Hierarchy.detect(FIXTURES / "v1-cgroupfs"))
    assert source.find_pod(uid) is None


# ---------------------------------------------------------------------------------------------
# One bad cgroup cannot stop the agent (issue 10, item 6)

UID_BIG = "11111111-2222-4333-8444-555555555555"
CID_BIG = "c" * 64


def _bad_sidecar(v1_tree: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the burstable pod's sidecar (opened after the app container) fail to open its memory.stat."""
    side = v1_app(v1_tree).parent / CID_SIDE
    if how == "ELOOP":  # a real one, from the kernel
        (side / "memory.stat").unlink()
        (side / "memory.stat").symlink_to(side / "memory.stat")
        return
    code = {"EACCES": errno.EACCES, "EMFILE": errno.EMFILE}[how]
    real_open = os.open

    def failing_open(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: object) -> int:
        if str(path) == str(side / "memory.stat"):
            raise OSError(code, os.strerror(code))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", failing_open)


@pytest.mark.parametrize("how", ["ELOOP", "EACCES", "EMFILE"])
def test_an_unopenable_cgroup_skips_only_its_pod_leaks_nothing_and_is_logged_once(
        v1_tree: Path, how: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    v1_pod(v1_tree, UID_BIG, CID_BIG, 900 * MiB)  # far over any limit: must be sampled every tick
    big = record(make_pod(UID_BIG, "big", containers=(("main", "1Gi", CID_BIG),)))
    bad = record(make_pod())
    source = CgroupSource(Hierarchy.detect(v1_tree))
    _bad_sidecar(v1_tree, how, monkeypatch)
    before = fd_count()
    with caplog.at_level(logging.WARNING, logger="memwatch.cgroups"):
        for _ in range(50):  # before: the first tick raised out of fetch(), and leaked 2 fds per tick
            usages = source.fetch([bad, big])
            assert set(usages) == {UID_BIG} and usages[UID_BIG].containers == {"main": 900 * MiB}
            assert fd_count() == before + 2 + _notify(source)  # the big pod's two files; none of the bad pod's
    # Only the reader's own lines: with inotify instances used up (another suite running beside this
    # one), discovery warns that it scans instead, which is not what this test is about.
    lines = [r.getMessage() for r in caplog.records if r.name == "memwatch.cgroups"]
    assert len(lines) == 1 and "pod=default/app" in lines[0] and CID_SIDE in lines[0]
    assert UID_B in source.problems
    monkeypatch.undo()
    if how == "ELOOP":
        (v1_app(v1_tree).parent / CID_SIDE / "memory.stat").unlink()
        shutil.copy(v1_app(v1_tree) / "memory.stat", v1_app(v1_tree).parent / CID_SIDE / "memory.stat")
    assert set(source.fetch([bad, big])) == {UID_B, UID_BIG}  # repaired: sampled again, problem cleared
    assert UID_B not in source.problems
    source.prune([])
    assert fd_count() == before + _notify(source) and source.pods == {} and source.problems == {}


def test_a_read_error_on_open_files_skips_only_that_pod(v1_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1_pod(v1_tree, UID_BIG, CID_BIG, 900 * MiB)
    big = record(make_pod(UID_BIG, "big", containers=(("main", "1Gi", CID_BIG),)))
    bad = record(make_pod())
    source = CgroupSource(Hierarchy.detect(v1_tree))
    assert set(source.fetch([bad, big])) == {UID_B, UID_BIG}
    bad_fds = {fd for r in source.pods[UID_B].readers() for fd in (r._usage_fd, r._stat_fd)}
    real_pread = os.pread

    def pread(fd: int, size: int, offset: int) -> bytes:
        if fd in bad_fds:
            raise OSError(errno.EIO, "Input/output error")
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", pread)
    assert set(source.fetch([bad, big])) == {UID_BIG}
    assert "Input/output error" in source.problems[UID_B]


def test_a_locator_that_raises_does_not_escape_sample(v1_tree: Path) -> None:
    def locate(rec: object) -> tuple[Path | None, dict[str, Path]]:
        raise PermissionError(errno.EACCES, "Permission denied")

    source = CgroupSource(Hierarchy.detect(v1_tree), locate=locate)
    assert source.fetch([record(make_pod())]) == {}
    assert "Permission denied" in source.problems[UID_B]


def _notify(source: CgroupSource) -> int:
    """The source's one inotify descriptor (opened with the first pod directory found), if open."""
    return int(source.notify_fd() is not None)


def _churn(source: CgroupSource, make: Callable[[str, str], None], remove: Callable[[str, str], None],
           pods: int, batches: int, real: bool) -> None:
    """Pods come, are sampled, restart once under a new container ID, and go (half of them leaving
    the watch, half removed by the kubelet); the descriptor count must come back to where it was.
    A real pod cgroup has its own files, open beside the container's: 4 descriptors a pod, not 2."""
    per_pod = 4 if real else 2
    baseline = fd_count()
    for batch in range(batches):
        recs = []
        for i in range(pods):
            uid, cid = f"{batch:08x}-0000-4000-8000-{i:012x}", f"{batch:032x}{i:032x}"
            make(uid, cid)
            recs.append(record(make_pod(uid, f"p{batch}-{i}", containers=(("c", "1Gi", cid),))))
        assert len(source.fetch(recs)) == pods
        assert fd_count() == baseline + _notify(source) + per_pod * pods
        restarted = []
        for i, rec in enumerate(recs):  # a new container ID: the old container's files are closed
            old, new = dict(rec.container_ids)["c"].split("://")[1], f"{batch:032x}{i + pods:032x}"
            make(rec.uid, new)
            remove(rec.uid, old)
            restarted.append(record(make_pod(rec.uid, rec.name, containers=(("c", "1Gi", new),))))
        assert len(source.fetch(restarted)) == pods
        assert fd_count() == baseline + _notify(source) + per_pod * pods
        half = pods // 2
        source.prune([r.uid for r in restarted[:half]])  # these left the node (the watch says so)
        assert fd_count() == baseline + _notify(source) + per_pod * half
        for rec in restarted[:half]:  # these were removed under us (the kubelet was faster)
            remove(rec.uid, dict(rec.container_ids)["c"].split("://")[1])
        if real:  # the kernel fails reads of a removed cgroup (a fixture's unlinked file still reads)
            for rec in restarted[:half]:
                (Path(source.find_pod(rec.uid) or "/nonexistent")).rmdir()  # and the kubelet removes the pod's
            assert source.fetch(restarted[:half]) == {}
            assert fd_count() == baseline + _notify(source) and source.pods == {}
        source.prune([])
        assert fd_count() == baseline + _notify(source) and source.pods == {} and source.problems == {}
        assert source.refused == {}


def test_churning_pods_leaves_no_descriptor_open(v1_tree: Path) -> None:
    base = v1_tree / "memory" / "kubepods" / "burstable"

    def make(uid: str, cid: str) -> None:
        (base / f"pod{uid}").mkdir(exist_ok=True)
        v1_container(base / f"pod{uid}" / cid, MiB)

    def remove(uid: str, cid: str) -> None:
        shutil.rmtree(base / f"pod{uid}" / cid)

    _churn(CgroupSource(Hierarchy.detect(v1_tree)), make, remove, pods=100, batches=1, real=False)


needs_real = pytest.mark.skipif(real_cgroup_unavailable() is not None,
                                reason=f"SKIPPED LOUDLY: {real_cgroup_unavailable()}")


@pytest.mark.cgroup
@needs_real
def test_churning_1000_real_pod_cgroups_leaves_no_descriptor_open() -> None:
    """On real v1 cgroups: a removed cgroup's open files fail with ENODEV (or read empty), not ENOENT."""
    with real_memory_cgroup() as root:
        base = root / "kubepods" / "burstable"
        base.mkdir(parents=True)

        def make(uid: str, cid: str) -> None:
            (base / f"pod{uid}" / cid).mkdir(parents=True)

        def remove(uid: str, cid: str) -> None:
            (base / f"pod{uid}" / cid).rmdir()

        _churn(CgroupSource(Hierarchy(1, root)), make, remove, pods=250, batches=4, real=True)


def test_the_agent_evicts_a_pod_far_over_its_limit_while_another_pods_cgroup_is_unreadable(
        v1_tree: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's measurement, as a test: before, the bad pod's Unreadable ended every tick, leaked
    two descriptors a tick, and the big pod was never evicted."""
    from agent.helpers import ApiDouble
    from agent.test_agent import make_agent, step

    v1_pod(v1_tree, UID_BIG, CID_BIG, 900 * MiB)
    _bad_sidecar(v1_tree, "ELOOP", monkeypatch)
    api = ApiDouble()
    agent = make_agent(v1_tree, api)
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit": "300Mi"}))  # the bad one, under it
    agent.index.upsert(make_pod(UID_BIG, "big", annotations={"memwatch.io/limit": "300Mi"},
                                containers=(("main", "1Gi", CID_BIG),)))
    with caplog.at_level(logging.WARNING, logger="memwatch.cgroups"):
        step(agent)
        before = fd_count()
        for _ in range(50):
            step(agent)
    assert api.evictions == [("default", "big", UID_BIG)]
    assert fd_count() <= before  # the big pod's files are closed once it is evicted; nothing leaked
    assert len([r for r in caplog.records if "cannot read the cgroup of pod=default/app" in r.getMessage()]) == 1
