"""kopf logs in with memwatch's own credentials: the token must reach it without its prefix."""

from __future__ import annotations

import pytest
from kubernetes import client

from memwatch.kube import Kube


@pytest.mark.parametrize("stored", ["bearer abc.def", "Bearer abc.def", "abc.def"])
def test_token_prefix_is_stripped_whatever_its_case(stored: str) -> None:
    cfg = client.Configuration()
    cfg.host = "https://10.0.0.1:6443"
    cfg.api_key = {"BearerToken": stored}  # in-cluster config writes "bearer …", kubeconfig "Bearer …"
    creds = Kube(client.ApiClient(cfg)).credentials()
    assert creds["token"] == "abc.def"
    assert creds["server"] == "https://10.0.0.1:6443"


def test_no_token_means_none() -> None:
    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:1"
    assert Kube(client.ApiClient(cfg)).credentials()["token"] is None
