"""The kill rung's capability probe (issue 10, item 3): fixture inputs first, then this machine for real."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.helpers import real_cgroup_unavailable, real_memory_cgroup
from memwatch.capabilities import (
    CAP_KILL,
    KillCapability,
    has_capability,
    parse_cap_eff,
    parse_pids,
    parse_uid,
    probe,
    sees_host_pids,
)
from memwatch.cgroups import Hierarchy

#: /proc/self/status lines of: the default chart's agent (non-root, no capabilities), the kill-rung
#: chart's agent (uid 0, every capability dropped but KILL), and a root shell on a host.
DEFAULT_CHART = "Name:\tmemwatch\nUid:\t65532\t65532\t65532\t65532\nCapEff:\t0000000000000000\n"
KILL_ONLY = "Name:\tmemwatch\nUid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\nCapEff:\t0000000000000020\n"
HOST_ROOT = "Uid:\t0\t0\t0\t0\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffdf\n"  # all but KILL


def test_capabilities_and_uid_are_read_from_status_text() -> None:
    assert has_capability(parse_cap_eff(KILL_ONLY), CAP_KILL)
    assert not has_capability(parse_cap_eff(DEFAULT_CHART), CAP_KILL)
    assert not has_capability(parse_cap_eff(HOST_ROOT), CAP_KILL)  # uid 0 alone is not enough
    assert (parse_uid(DEFAULT_CHART), parse_uid(KILL_ONLY)) == (65532, 0)
    assert parse_cap_eff("Name:\tx\n") is None and not has_capability(None, CAP_KILL)
    assert parse_cap_eff("CapEff:\tzz\n") is None and parse_uid("Uid:\tx\n") is None


def test_host_pids_are_seen_only_when_a_process_outside_every_pod_is_visible() -> None:
    ours = {1, 7}  # no hostPID: all we see is our own pod, listed in its cgroup.procs
    assert not sees_host_pids(ours, ours | {900, 901}, lambda pid: True)
    assert sees_host_pids(ours | {1234}, ours, lambda pid: True)  # hostPID: kubelet, runtime, init
    assert not sees_host_pids(ours | {1234}, ours, lambda pid: pid != 1234)  # it exited meanwhile
    assert parse_pids(["1", "self", "42", "sys", "٤٢"]) == {1, 42}


def capability(**over: object) -> KillCapability:
    base: dict[str, object] = dict(version=1, host_pids=True, cap_kill=True, pidfd=True, cgroup_kill=False,
                                   events_writable=True, uid=0)
    base.update(over)
    return KillCapability(**base)  # type: ignore[arg-type]


def test_the_reason_names_each_missing_piece_and_what_provides_it() -> None:
    assert capability().can_kill and capability().reason == ""
    default_chart = capability(host_pids=False, cap_kill=False, events_writable=False, uid=65532)
    assert not default_chart.can_kill
    assert "hostPID: true" in default_chart.reason and "KILL capability" in default_chart.reason
    assert default_chart.describe().startswith("kill rung unavailable (cgroup v1, uid 65532): ")
    assert not capability(pidfd=False).can_kill and "Linux 5.3" in capability(pidfd=False).reason
    v2 = capability(version=2, host_pids=False, cap_kill=False, cgroup_kill=True)
    assert v2.can_kill and "cgroup.kill" in v2.describe()  # the kernel kills: no PIDs, no CAP_KILL needed
    v2_old = capability(version=2, cgroup_kill=False, host_pids=False)
    assert not v2_old.can_kill and "cgroup.kill" in v2_old.reason and "hostPID" in v2_old.reason
    assert "no kernel threshold notifications" in capability(events_writable=False).describe()


def fake_proc(tmp_path: Path, pids: list[int], status: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "status").write_text(status)
    for pid in pids:
        (proc / str(pid)).mkdir()
    return proc


def test_probe_from_fixture_inputs_default_chart(v1_tree: Path, tmp_path: Path) -> None:
    kubepods = v1_tree / "memory" / "kubepods"
    (kubepods / "burstable" / "cgroup.procs").write_text("1\n7\n")  # our own pod's processes
    hierarchy = Hierarchy.detect(v1_tree)
    # 4242: another pod's process (listed in the fixture's app container); 31337: a node process
    cap = probe(hierarchy, proc=fake_proc(tmp_path, [1, 7, 4242], DEFAULT_CHART), bases=[kubepods])
    assert (cap.host_pids, cap.cap_kill, cap.uid, cap.can_kill) == (False, False, 65532, False)
    with_host = probe(hierarchy, proc=fake_proc(tmp_path / "h", [1, 7, 4242, 31337], KILL_ONLY), bases=[kubepods])
    assert with_host.host_pids and with_host.cap_kill and with_host.can_kill


def test_probe_from_fixture_inputs_v2_with_and_without_cgroup_kill(v2_tree: Path, tmp_path: Path) -> None:
    kubepods = v2_tree / "kubepods.slice"
    (kubepods / "cgroup.kill").write_text("")
    hierarchy = Hierarchy.detect(v2_tree)
    proc = fake_proc(tmp_path, [], DEFAULT_CHART)
    assert probe(hierarchy, proc=proc, bases=[kubepods]).can_kill
    (kubepods / "cgroup.kill").unlink()  # a kernel before 5.14
    cap = probe(hierarchy, proc=proc, bases=[kubepods])
    assert not cap.can_kill and not cap.cgroup_kill and "cgroup.kill" in cap.reason


def test_probe_of_a_missing_tree_does_not_raise(tmp_path: Path) -> None:
    cap = probe(Hierarchy(1, tmp_path / "nowhere"), proc=tmp_path / "noproc")
    assert not cap.can_kill and not cap.events_writable


# ---------------------------------------------------------------------------------------------
# This machine, for real

needs_real = pytest.mark.skipif(real_cgroup_unavailable() is not None,
                                reason=f"SKIPPED LOUDLY: {real_cgroup_unavailable()}")
PROBE = ("import dataclasses, json, sys; from memwatch.capabilities import probe; "
         "from memwatch.cgroups import Hierarchy; from pathlib import Path; "
         "c = probe(Hierarchy(1, Path(sys.argv[1]))); print(json.dumps([dataclasses.asdict(c), c.reason]))")


@pytest.mark.cgroup
@needs_real
def test_probe_on_this_machine_as_root_outside_any_pod() -> None:
    cap = probe(Hierarchy.detect("/sys/fs/cgroup"))
    assert cap.version == 1 and cap.uid == 0 and cap.pidfd
    assert cap.host_pids and cap.cap_kill and cap.events_writable and cap.can_kill, cap.describe()


@pytest.mark.cgroup
@needs_real
@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("setpriv") is None,
                    reason="SKIPPED LOUDLY: needs unshare and setpriv (util-linux)")
def test_probe_in_the_default_charts_confinement_finds_nothing_it_can_kill_with() -> None:
    """What the default chart gives the agent, made real: its own PID namespace (no hostPID), its
    processes inside a pod's cgroup under kubepods, CAP_KILL dropped, the cgroup mount read-only."""
    with real_memory_cgroup() as root:
        container = root / "kubepods" / "burstable" / "pod0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d" / ("ab" * 32)
        container.mkdir(parents=True)
        script = (f'echo $$ > {container}/cgroup.procs && exec unshare --pid --fork --mount-proc sh -c '
                  f'\'mount -o remount,bind,ro {root.parent} && exec setpriv --bounding-set -kill --inh-caps -kill '
                  f'"$@"\' sh "$@"')
        out = subprocess.run(["sh", "-c", script, "sh", sys.executable, "-c", PROBE, str(root)],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    fields, reason = json.loads(out.stdout)
    assert fields["host_pids"] is False and fields["cap_kill"] is False and fields["events_writable"] is False
    assert fields["pidfd"] is True
    assert "hostPID: true" in reason and "KILL capability" in reason
    # ... and the same probe outside that confinement, against the same kind of tree, can kill
    with real_memory_cgroup() as root:
        (root / "kubepods").mkdir()
        out = subprocess.run([sys.executable, "-c", PROBE, str(root)], capture_output=True, text=True, timeout=60)
    fields, reason = json.loads(out.stdout)
    assert fields["host_pids"] and fields["cap_kill"] and fields["events_writable"] and reason == ""
