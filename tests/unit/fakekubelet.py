"""Fake kubelets over real HTTPS on 127.0.0.1, and a fake API server that serves their Node objects.

The certificates are made at test time with `openssl`: a CA, a kubelet serving certificate it
signs (for 127.0.0.1), and a self-signed one such as kind's kubelets serve.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from memwatch.kube import Kube

from .fakeapi import FakeApiServer, status_body

TOKEN = "sa-token-of-memwatch"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate (what --kubelet-ca-file points at)
    signed: tuple[Path, Path]  # kubelet serving certificate and key, signed by the CA
    self_signed: tuple[Path, Path]  # a kubelet's own self-signed certificate and key
    other_ca: Path  # a CA that signed neither


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> Pki:
    """A CA, a serving certificate it signs, a self-signed one and an unrelated CA."""
    if shutil.which("openssl") is None:
        pytest.skip("SKIPPED LOUDLY: openssl is not installed; kubelet TLS is NOT checked")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
                 "-subj", f"/CN=test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    (directory / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    _openssl("req", *ec, "-keyout", "kubelet.key", "-out", "kubelet.csr", "-subj", "/CN=node-0", cwd=directory)
    _openssl("x509", "-req", "-in", "kubelet.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "kubelet.crt", "-days", "2", "-extfile", "ext.cnf", cwd=directory)
    _openssl("req", "-x509", *ec, "-keyout", "self.key", "-out", "self.crt", "-days", "2",
             "-subj", "/CN=node-0@1700000000", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             cwd=directory)
    return Pki(directory / "ca.crt", (directory / "kubelet.crt", directory / "kubelet.key"),
               (directory / "self.crt", directory / "self.key"), directory / "other-ca.crt")


@dataclass(frozen=True)
class KubeletRequest:
    node: str
    path: str
    authorization: str | None


class FakeKubelet:
    """One node's kubelet: HTTPS, answers /stats/summary from the API fake's ``summaries``."""

    def __init__(self, node: str, api: KubeletApiServer, cert: tuple[Path, Path]) -> None:
        self.node = node
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api.record(KubeletRequest(fake.node, self.path, self.headers.get("Authorization")))
                status, payload = api.kubelet_answer(fake.node, self.path, self.headers.get("Authorization"))
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert[0]), str(cert[1]))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        # A client that rejects the certificate ends the handshake: not worth a traceback.
        self.server.handle_error = lambda *_: None  # type: ignore[method-assign]
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class KubeletApiServer(FakeApiServer):
    """The fake API server plus Node objects whose kubelets are fake HTTPS servers.

    A node exists when it has an entry in ``summaries``; its kubelet starts when the Node is first
    read and serves that entry. ``node_gets`` counts Node reads.
    """

    def __init__(self, pki: Pki, self_signed: bool = False) -> None:
        super().__init__()
        self.pki = pki
        self.cert = pki.self_signed if self_signed else pki.signed
        self.kubelets: dict[str, FakeKubelet] = {}
        self.kubelet_log: list[KubeletRequest] = []
        self.address_types = ("Hostname", "InternalIP")  # as kind's Nodes list them

    def kube(self) -> Kube:
        kube = super().kube()
        kube.api.configuration.api_key = {"BearerToken": f"Bearer {TOKEN}"}
        return kube

    def record(self, request: KubeletRequest) -> None:
        with self.lock:
            self.kubelet_log.append(request)

    def kubelet_requests(self) -> list[KubeletRequest]:
        with self.lock:
            return list(self.kubelet_log)

    def kubelet_answer(self, node: str, path: str, authorization: str | None) -> tuple[int, Any]:
        if authorization != f"Bearer {TOKEN}":
            return 401, "Unauthorized"
        if path != "/stats/summary":
            return 403, f"Forbidden (user=memwatch, verb=get, resource=nodes, subresource=proxy) {path}"
        if node not in self.summaries:
            return 404, "404 page not found"
        return 200, self.summaries[node]

    def node_object(self, name: str) -> dict[str, Any]:
        with self.lock:
            kubelet = self.kubelets.get(name)
            if kubelet is None:
                kubelet = self.kubelets[name] = FakeKubelet(name, self, self.cert)
        addresses = {"Hostname": name, "InternalIP": "127.0.0.1"}
        return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name},
                "status": {"addresses": [{"type": t, "address": addresses[t]} for t in self.address_types],
                           "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet.port}}}}

    def _route(self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, str],
               body: Any) -> tuple[int, Any]:
        m = re.fullmatch(r"/api/v1/nodes/([^/]+)", path)
        if method == "GET" and m:
            if m.group(1) not in self.summaries:
                return 404, status_body(404, "NotFound", f'nodes "{m.group(1)}" not found')
            return 200, self.node_object(m.group(1))
        return super()._route(h, method, path, query, body)

    def stop(self) -> None:
        for kubelet in self.kubelets.values():
            kubelet.stop()
        super().stop()
