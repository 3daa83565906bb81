"""The kubelet source's flags and the agent's --evict: parsed, validated, and refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from memwatch.cli import _parser, main
from memwatch.settings import Settings

from .fakekubelet import make_pki


def settings(*argv: str, env: dict[str, str] | None = None) -> Settings:
    return Settings.from_args(_parser(env or {}).parse_args(list(argv)), env or {})


def test_kubelet_defaults() -> None:
    s = settings("run")
    assert s.kubelet_ca_file is None and s.kubelet_insecure_tls is False
    assert s.kubelet_preferred_address_types == ("InternalIP", "Hostname", "InternalDNS", "ExternalIP")


def test_kubelet_flags_and_env(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    s = settings("run", f"--kubelet-ca-file={pki.ca}", "--kubelet-preferred-address-types=Hostname,InternalIP")
    assert s.kubelet_ca_file == str(pki.ca)
    assert s.kubelet_preferred_address_types == ("Hostname", "InternalIP")
    s = settings("run", env={"MEMWATCH_KUBELET_INSECURE_TLS": "true",
                             "MEMWATCH_KUBELET_PREFERRED_ADDRESS_TYPES": "ExternalIP"})
    assert s.kubelet_insecure_tls is True and s.kubelet_preferred_address_types == ("ExternalIP",)


@pytest.mark.parametrize(("argv", "message"), [
    (["--kubelet-preferred-address-types=InternalIP,Elsewhere"], "give a comma-separated list of"),
    (["--kubelet-preferred-address-types="], "give a comma-separated list of"),
])
def test_bad_kubelet_flags_are_refused_with_a_message(argv: list[str], message: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        settings("run", *argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_bad_ca_file_stops_the_start_with_a_message(tmp_path: Path, content: str | None,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Missing or not PEM: `memwatch run` exits 1 saying so, before it watches or acts on anything."""
    ca = tmp_path / "ca.crt"
    if content is not None:
        ca.write_text(content)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n")
    code = main(["run", f"--kubeconfig={kubeconfig}", f"--kubelet-ca-file={ca}", "--metrics-port=0",
                 "--liveness="], {})
    assert code == 1
    assert f"--kubelet-ca-file '{ca}' is not a readable PEM file of CA certificates" in caplog.text
    assert "Traceback" not in caplog.text


def test_ca_file_and_insecure_exclude_each_other(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with pytest.raises(ValueError, match="exclude each other"):
        settings("run", f"--kubelet-ca-file={pki.ca}", "--kubelet-insecure-tls")


@pytest.mark.parametrize(("argv", "env", "evict"), [
    ([], {}, True),
    (["--evict=false"], {}, False),
    (["--evict=true"], {}, True),
    ([], {"MEMWATCH_EVICT": "false"}, False),
])
def test_agent_evict_flag(argv: list[str], env: dict[str, str], evict: bool) -> None:
    assert settings("agent", "--node-name=n1", *argv, env=env).evict is evict


def test_agent_evict_flag_refuses_garbage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings("agent", "--evict=maybe")
    assert "'maybe' is not true or false" in capsys.readouterr().err
