"""Fixtures of the e2e suite: the cluster (from $KUBECONFIG), memwatch installed on it, and one
fresh namespace per test.

Where memwatch comes from:

The release is always release ``$MEMWATCH_E2E_RELEASE`` in namespace ``$MEMWATCH_E2E_NAMESPACE``
(both `memwatch`, the installers' defaults), never another release found on the cluster:

* already installed (kind: `tests/e2e/kind/run.sh` installs the chart with `helm` and sets
  ``MEMWATCH_E2E_INSTALLED=1``): the suite uses it, and fails if it cannot be found;
* otherwise, with ``MEMWATCH_E2E_INSTALL=1``, or by default on the local cluster's kubeconfig
  (`hack/local-cluster.sh`): the suite installs the chart through `hack/e2e-install.py` with
  `tests/e2e/values-e2e.yaml`, and uninstalls it when the e2e tests are done (``MEMWATCH_TEST_KEEP=1``
  keeps it), so that a cluster-wide memwatch never outlives them into other suites;
* otherwise every e2e test is skipped, loudly.

With no reachable cluster every e2e test is skipped with the reason, and the run ends with a
banner saying so: the suite never passes silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.clusterkit import LOCAL_KUBECONFIG

from .support import E2E_NAMESPACE, E2E_RELEASE, Cluster, Memwatch, PodRecorder, unique

ROOT = Path(__file__).resolve().parents[2]
INSTALLER = ROOT / "hack" / "e2e-install.py"
VALUES = ROOT / "tests" / "e2e" / "values-e2e.yaml"

_SKIPPED: list[str] = []


def _kubeconfig() -> str | None:
    path = os.environ.get("KUBECONFIG")
    if path:
        return path.split(os.pathsep)[0]
    default = Path.home() / ".kube" / "config"
    return str(default) if default.exists() else None


def _truthy(name: str) -> bool | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    return raw.strip().lower() in ("1", "true", "yes", "on")


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("timeout"):
        # Without pytest-timeout the marker is inert; the waits' own deadlines still bound each test.
        config.addinivalue_line("markers", "timeout(seconds): per-test timeout (pytest-timeout)")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every selected e2e test, with the reason, when no cluster answers."""
    e2e = [item for item in items if item.get_closest_marker("e2e")]
    if not e2e:
        return
    kubeconfig = _kubeconfig()
    reason = None
    if kubeconfig is None:
        reason = "no kubeconfig: set KUBECONFIG (make e2e-local or make e2e set it up)"
    elif not Path(kubeconfig).exists():
        reason = f"KUBECONFIG={kubeconfig} does not exist (is the cluster up? `bash hack/local-cluster.sh status`)"
    else:
        version = Cluster(kubeconfig).reachable()
        if version is None:
            reason = f"no Kubernetes API answers for KUBECONFIG={kubeconfig}"
    if reason:
        _SKIPPED.append(reason)
        marker = pytest.mark.skip(reason=f"SKIPPED e2e: {reason}")
        for item in e2e:
            item.add_marker(marker)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for reason in _SKIPPED:
        bar = "#" * 78
        terminalreporter.write_line(bar, red=True, bold=True)
        terminalreporter.write_line(f"## SKIPPED: the e2e suite did not run: {reason}", red=True, bold=True)
        terminalreporter.write_line(bar, red=True, bold=True)
    timings = [(r.nodeid, dict(r.user_properties)) for r in terminalreporter.stats.get("passed", [])
               + terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("xfailed", [])
               + terminalreporter.stats.get("xpassed", []) if r.when == "call" and r.user_properties]
    if timings:
        terminalreporter.write_sep("-", "e2e timings")
        for nodeid, props in timings:
            shown = " ".join(f"{k}={v}" for k, v in props.items())
            terminalreporter.write_line(f"{nodeid.split('::')[-1]}: {shown}")


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    kubeconfig = _kubeconfig()
    c = Cluster(kubeconfig)
    if c.reachable() is None:
        pytest.skip(f"SKIPPED e2e: no Kubernetes API answers for KUBECONFIG={kubeconfig}")
    return c


def _install(kubeconfig: str, verb: str) -> None:
    cmd = [sys.executable, str(INSTALLER), verb, "--kubeconfig", kubeconfig,
           "--namespace", E2E_NAMESPACE, "--release", E2E_RELEASE]
    if verb == "install":
        cmd += ["--values", str(VALUES)]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, timeout=600)


@pytest.fixture(scope="package")
def memwatch(cluster: Cluster) -> Iterator[Memwatch]:
    """memwatch installed on the cluster, ready (its first sweep logged)."""
    found = Memwatch.find(cluster)
    installed_here = False
    if found is None:
        if _truthy("MEMWATCH_E2E_INSTALLED"):
            pytest.fail(f"MEMWATCH_E2E_INSTALLED=1 but release {E2E_RELEASE} has no controller Deployment "
                        f"in namespace {E2E_NAMESPACE} (set MEMWATCH_E2E_NAMESPACE / MEMWATCH_E2E_RELEASE)")
        kubeconfig = cluster.kubeconfig or ""
        on_local = kubeconfig and os.path.realpath(kubeconfig) == os.path.realpath(LOCAL_KUBECONFIG)
        install = _truthy("MEMWATCH_E2E_INSTALL")
        if install is None:
            install = bool(on_local)
        if not install:
            reason = (f"release {E2E_RELEASE} is not installed in namespace {E2E_NAMESPACE}; install the chart "
                      "with tests/e2e/values-e2e.yaml, or set MEMWATCH_E2E_INSTALL=1")
            _SKIPPED.append(reason)
            pytest.skip(f"SKIPPED e2e: {reason}")
        _install(kubeconfig, "install")
        installed_here = True
        found = Memwatch.find(cluster)
        assert found is not None, (f"hack/e2e-install.py succeeded but release {E2E_RELEASE} has no controller "
                                   f"Deployment in namespace {E2E_NAMESPACE}")
    found.wait_ready()
    yield found
    if installed_here and not _truthy("MEMWATCH_TEST_KEEP"):
        _install(cluster.kubeconfig or "", "uninstall")


@pytest.fixture
def ns(cluster: Cluster, memwatch: Memwatch, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (MEMWATCH_E2E_KEEP_NS=1 keeps it on failure)."""
    short = request.node.name.removeprefix("test_").replace("_", "-")[:30].strip("-")
    name = unique(f"e2e-{short}")
    cluster.create_namespace(name)
    yield name
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed and _truthy("MEMWATCH_E2E_KEEP_NS"):
        print(f"\nkept namespace {name} for inspection", flush=True)
        return
    cluster.delete_namespace(name)


@pytest.fixture
def recorder(cluster: Cluster, ns: str) -> Iterator[PodRecorder]:
    """Every status of every pod in the test's namespace, from a watch."""
    with PodRecorder(cluster, ns) as rec:
        yield rec


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> Any:
    """Record a named timing (seconds since the test's start) for the summary at the end."""
    t0 = time.monotonic()

    def mark(name: str, value: float | str | None = None) -> None:
        shown = value if isinstance(value, str) else f"{round(time.monotonic() - t0 if value is None else value, 1)}s"
        request.node.user_properties.append((name, shown))

    return mark


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
