"""Fixtures for the integration suite: a real kube-apiserver (the local 1.20 cluster, or kind).

Every test is marked ``cluster``. When no cluster answers, each test is skipped with the reason
and the run ends with a banner saying so: a green run without a cluster must not look like a pass.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import pytest

from .clusterkit import HOG_IMAGE, LOCAL_KUBECONFIG, SESSION, Admin, audit_log_path, kubeconfig_path

_unavailable: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("timeout"):  # pytest-timeout is optional
        config.addinivalue_line("markers", "timeout(seconds): per-test time limit (pytest-timeout)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _unavailable:
        terminalreporter.write_sep("#", "SKIPPED: integration tests did not run against a cluster", red=True)
        terminalreporter.write_line(f"## reason: {_unavailable[0]}")
        terminalreporter.write_line("## bring it up with: bash hack/local-cluster.sh up && "
                                    "bash hack/local-cluster.sh images")


class Cluster:
    """What the tests know about the cluster they run against."""

    def __init__(self, kubeconfig: str, admin: Admin, node: str) -> None:
        self.kubeconfig = kubeconfig
        self.admin = admin
        self.node = node
        self.audit_log = audit_log_path()


def _probe() -> Cluster:
    """The cluster, or a pytest.skip naming exactly what is missing."""
    kubeconfig = kubeconfig_path()
    if kubeconfig is None:
        raise _skip(f"no kubeconfig (MEMWATCH_TEST_KUBECONFIG, {LOCAL_KUBECONFIG} or KUBECONFIG)")
    try:
        admin = Admin(kubeconfig)
        admin.kube.get_json("/version", timeout=5)
        nodes = admin.kube.get_json("/api/v1/nodes", timeout=5)["items"]
    except Exception as exc:  # a stale kubeconfig or a dead server fails in many ways
        raise _skip(f"no kube-apiserver answers for {kubeconfig}: {exc}") from None
    ready = [n for n in nodes if any(c.get("type") == "Ready" and c.get("status") == "True"
                                     for c in (n.get("status") or {}).get("conditions") or ())]
    if not ready:
        raise _skip(f"the cluster of {kubeconfig} has no Ready node")
    node = ready[0]
    images = {name for img in (node.get("status") or {}).get("images") or () for name in img.get("names") or ()}
    if HOG_IMAGE not in images:
        raise _skip(f"node {node['metadata']['name']} lacks the image {HOG_IMAGE} "
                    "(bash hack/local-cluster.sh images)")
    return Cluster(kubeconfig, admin, node["metadata"]["name"])


def _skip(reason: str) -> BaseException:
    _unavailable.append(reason)
    return pytest.skip.Exception(f"CLUSTER NOT AVAILABLE: {reason}", _use_item_location=True)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    if _unavailable:
        pytest.skip(f"CLUSTER NOT AVAILABLE: {_unavailable[0]}")
    return _probe()


@pytest.fixture(scope="session")
def namespaces(cluster: Cluster) -> Iterator[NamespaceFactory]:
    """Creates test namespaces; deletes them (without waiting) when the session ends."""
    factory = NamespaceFactory(cluster.admin)
    yield factory
    factory.delete_all()


class NamespaceFactory:
    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.created: list[str] = []

    def __call__(self, purpose: str) -> str:
        name = f"mwit-{SESSION}-{purpose}-{secrets.token_hex(2)}"
        self.admin.create_namespace(name)
        self.created.append(name)
        return name

    @contextlib.contextmanager
    def scoped(self, purpose: str) -> Iterator[str]:
        name = self(purpose)
        try:
            yield name
        finally:
            self.admin.delete_namespace(name)
            self.created.remove(name)

    def delete_all(self) -> None:
        for name in self.created:
            self.admin.delete_namespace(name)
        self.created.clear()


@pytest.fixture
def namespace(namespaces: NamespaceFactory, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted after it."""
    with namespaces.scoped(request.node.name.removeprefix("test_")[:20].replace("_", "-").lower()) as name:
        yield name
