"""The kubelet source's values (`kubelet.*`) and the agent's `agent.evict`: what they render, and
that memwatch's own parser reads the rendered command lines as the values say."""

from __future__ import annotations

from typing import Any

import pytest

from .chartlib import Obj, args_of, container, flag
from .test_cli_contract import parse

PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def kubelet_flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--kubelet-")]


@pytest.mark.parametrize("source", ["auto", "kubelet"])
def test_kubelet_defaults_verify_against_the_cluster_ca(render: Any, source: str) -> None:
    rendered = render({"source": source})
    args = args_of(rendered.controller)
    assert kubelet_flags(args) == ["--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalIP"]
    assert not rendered.of_kind("ConfigMap")
    settings = parse(rendered.controller)
    assert settings.kubelet_ca_file is None and settings.kubelet_insecure_tls is False


def test_metrics_api_source_renders_no_kubelet_flags(render: Any) -> None:
    rendered = render({"source": "metrics-api", "kubelet": {"caBundle": PEM, "insecureTLS": False}})
    assert kubelet_flags(args_of(rendered.controller)) == []
    assert not rendered.of_kind("ConfigMap")
    assert "kubelet-ca" not in str(rendered.controller)


def test_ca_bundle_is_mounted_and_passed(render: Any) -> None:
    rendered = render({"kubelet": {"caBundle": PEM, "preferredAddressTypes": ["Hostname", "InternalIP"]}})
    (cm,) = rendered.of_kind("ConfigMap")
    assert cm["data"] == {"ca.crt": PEM}
    args = args_of(rendered.controller)
    assert flag(args, "kubelet-ca-file") == ["/etc/memwatch/kubelet-ca/ca.crt"]
    assert flag(args, "kubelet-preferred-address-types") == ["Hostname,InternalIP"]
    (mount,) = [m for m in container(rendered.controller)["volumeMounts"] if m["name"] == "kubelet-ca"]
    assert mount == {"name": "kubelet-ca", "mountPath": "/etc/memwatch/kubelet-ca", "readOnly": True}
    volumes: list[Obj] = rendered.controller["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == "kubelet-ca"]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    assert "--kubelet-insecure-tls" not in args


def test_insecure_tls_is_explicit(render: Any) -> None:
    rendered = render({"kubelet": {"insecureTLS": True}})
    args = args_of(rendered.controller)
    assert "--kubelet-insecure-tls" in args and not flag(args, "kubelet-ca-file")
    assert parse(rendered.controller).kubelet_insecure_tls is True


def test_ca_bundle_and_insecure_exclude_each_other(chart: Any) -> None:
    with pytest.raises(Exception, match=r"kubelet\.caBundle and kubelet\.insecureTLS exclude each other"):
        chart.render({"kubelet": {"caBundle": PEM, "insecureTLS": True}}, name="memwatch", namespace="memwatch")


@pytest.mark.parametrize(("evict", "arg"), [(True, None), (False, "--evict=false")])
def test_agent_evict_reaches_the_agent(render: Any, evict: bool, arg: str | None) -> None:
    agent = render({"agent": {"enabled": True, "evict": evict}}).agent
    assert agent is not None
    args = args_of(agent)
    assert [a for a in args if a.startswith("--evict")] == ([arg] if arg else [])
    assert parse(agent).evict is evict
