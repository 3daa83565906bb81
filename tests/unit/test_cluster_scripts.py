"""The local cluster's scripts never fail silently: each failing step names the command and the
line (issue 9: the first run of `hack/local-cluster.sh up` once exited 1 with no message)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HACK = ROOT / "hack"


def _stub_kubectl(cache: Path, script: str) -> None:
    kubectl = cache / "kubernetes-1.20.2" / "bin" / "kubectl"
    kubectl.parent.mkdir(parents=True)
    kubectl.write_text("#!/bin/sh\n" + script)
    kubectl.chmod(0o755)


def test_smoke_names_the_step_that_failed(tmp_path: Path) -> None:
    # A kubectl that fails without a word: the script must say what failed and where.
    _stub_kubectl(tmp_path, "exit 1\n")
    env = {**os.environ, "MEMWATCH_CACHE": str(tmp_path), "MEMWATCH_CLUSTER_ROOT": str(tmp_path)}
    result = subprocess.run(["bash", str(HACK / "cluster" / "smoke.sh")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "[smoke] ERROR: `\"$KUBECTL\" create namespace \"$NS\" > /dev/null` exited 1" in result.stderr, (
        result.stderr)
    assert "smoke.sh:" in result.stderr


def test_local_cluster_status_answers_without_an_error(tmp_path: Path) -> None:
    # Exit 1 is `status`'s answer for a cluster that is not up, not a failed step.
    env = {**os.environ, "MEMWATCH_CACHE": str(tmp_path / "cache"), "MEMWATCH_CLUSTER_ROOT": str(tmp_path / "root")}
    result = subprocess.run(["bash", str(HACK / "local-cluster.sh"), "status"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "node node1               not Ready" in result.stdout
    assert "ERROR" not in result.stderr, result.stderr


def test_a_cluster_brought_up_with_another_cache_is_still_known_and_stopped(tmp_path: Path) -> None:
    """Its processes run binaries from the cache it was brought up with. `status`, `stop` and `down`
    run with another MEMWATCH_CACHE (or none) once took them for strangers' processes: `down` then
    removed the cluster's root and left kube-apiserver, the kubelet and the rest running."""
    first, other, root = tmp_path / "first-cache", tmp_path / "other-cache", tmp_path / "root"
    kubelet = first / "kubernetes-1.20.2" / "bin" / "kubelet"
    kubelet.parent.mkdir(parents=True)
    shutil.copy("/bin/sleep", kubelet)  # a stand-in the kernel names by its own path in /proc/PID/exe
    env = {**os.environ, "MEMWATCH_CACHE": str(first), "MEMWATCH_CLUSTER_ROOT": str(root)}
    # `start` as `up` runs it (the script's own function, sourced: `help` only prints the usage).
    driver = f'source "{HACK / "local-cluster.sh"}" help >/dev/null; mkdir -p "$PIDS" "$LOGS"; start kubelet 300'
    subprocess.run(["bash", "-c", driver], env=env, check=True, capture_output=True, timeout=60)
    pid = int((root / "pids" / "kubelet.pid").read_text())
    try:
        env["MEMWATCH_CACHE"] = str(other)
        script = ["bash", str(HACK / "local-cluster.sh")]
        status = subprocess.run([*script, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert f"kubelet                  pid {pid:<8} alive" in status.stdout, status.stdout
        stopped = subprocess.run([*script, "stop", "kubelet"], env=env, capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0 and f"stopping kubelet (pid {pid})" in stopped.stderr, stopped.stderr
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1]
        assert not (root / "pids" / "kubelet.exe").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_pip_passthrough_explains_bad_usage(tmp_path: Path) -> None:
    script = str(HACK / "cluster" / "pip_passthrough.py")
    result = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


def test_pip_passthrough_says_when_pip_config_fails(tmp_path: Path) -> None:
    # A `pip` that fails: the build still goes on, but not without a word.
    broken = tmp_path / "site" / "pip"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("")
    (broken / "__main__.py").write_text("import sys\nsys.exit('pip is broken here')\n")
    result = subprocess.run([sys.executable, str(HACK / "cluster" / "pip_passthrough.py"), str(tmp_path)],
                            env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "`pip config list` failed" in result.stderr and "pip is broken here" in result.stderr, result.stderr


def test_every_kubernetes_patch_names_its_component_and_is_documented() -> None:
    """local-cluster.sh rebuilds a component when the patches named after it change."""
    patches = HACK / "cluster" / "patches"
    script = (HACK / "local-cluster.sh").read_text()
    components = script.split("K8S_COMPONENTS=(", 1)[1].split(")", 1)[0].split()
    readme = (patches / "README.md").read_text()
    found = sorted(patches.glob("*.patch"))
    assert found
    for patch in found:
        assert any(patch.name.startswith(f"{c}-") for c in components), patch.name
        assert f"`{patch.name}`" in readme, patch.name
        text = patch.read_text()
        assert "kubernetes/kubernetes#" in text.split("--- a/", 1)[0], f"{patch.name}: say which upstream fix it is"
