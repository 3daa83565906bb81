"""The cgroup reader against fixture trees: v1 + cgroupfs, v2 + systemd (which this host cannot mount)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import pytest

from agent.helpers import (
    APP_WS,
    CID_APP,
    CID_G,
    FIXTURES,
    UID_B,
    UID_G,
    MiB,
    make_pod,
    set_usage,
    v1_app,
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
