"""Fixtures for the fast unit suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .fakeapi import FakeApiServer
from .fakekubelet import KubeletApiServer, Pki, make_pki
from .fakes import FakeClock, FakeKube


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's MEMWATCH_* or downward-API variables must not change what these tests see."""
    for name in list(os.environ):
        if name.startswith("MEMWATCH_") or name in ("POD_NAME", "POD_NAMESPACE", "NODE_NAME"):
            monkeypatch.delenv(name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and the certificates of the fake kubelets (made once: RSA keys are slow)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def kubelet_api(pki: Pki) -> Iterator[KubeletApiServer]:
    """The fake API server, whose Nodes' kubelets are fake HTTPS servers with CA-signed certificates."""
    server = KubeletApiServer(pki)
    server.start()
    try:
        yield server
    finally:
        server.stop()
