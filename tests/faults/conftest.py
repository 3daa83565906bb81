"""Fixtures of the fault-injection suite (every test is marked ``cluster``).

It runs on the local cluster (`hack/local-cluster.sh`), whose processes it stops, freezes and
restarts; on any other cluster (kind) its tests are skipped with the reason, loudly. The suite's
table (wrong, missed and double actions, time to recover, per scenario) is printed at the end of
the run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integration.conftest import Cluster, NamespaceFactory, _probe

from .faultkit import CLUSTER_ROOT, Components, FaultReport, delete_fault_bindings

_unavailable: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FaultReport.rows:
        terminalreporter.write_sep("=", "fault injection: actions counted from the API server's audit log")
        for line in FaultReport.lines():
            terminalreporter.write_line(line)
    if _unavailable:
        terminalreporter.write_sep("#", "SKIPPED: the fault-injection suite did not run", red=True)
        terminalreporter.write_line(f"## reason: {_unavailable[0]}")


def _skip(reason: str) -> pytest.skip.Exception:
    _unavailable.append(reason)
    return pytest.skip.Exception(f"FAULT SUITE NOT RUN: {reason}", _use_item_location=True)


@pytest.fixture(scope="session")
def fault_cluster() -> Cluster:
    if _unavailable:
        pytest.skip(f"FAULT SUITE NOT RUN: {_unavailable[0]}")
    try:
        cluster = _probe()
    except pytest.skip.Exception as exc:
        raise _skip(str(exc)) from None
    if not (CLUSTER_ROOT / "pids").is_dir():
        raise _skip(f"not the local cluster ({CLUSTER_ROOT}/pids missing): the suite stops and restarts the "
                    "cluster's own processes, which only hack/local-cluster.sh can do")
    if cluster.audit_log is None or not cluster.audit_log.exists():
        raise _skip("no API server audit log: the suite counts actions from it")
    return cluster


@pytest.fixture(scope="session")
def components(fault_cluster: Cluster) -> Components:
    return Components()


@pytest.fixture
def fault_ns(fault_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one scenario, deleted after it (with the suite's bindings in it)."""
    factory = NamespaceFactory(fault_cluster.admin)
    name = factory(request.node.name.removeprefix("test_")[:18].replace("_", "-").lower())
    try:
        yield name
    finally:
        delete_fault_bindings(fault_cluster.admin, name)
        factory.delete_all()
