"""The suite's own instruments must not inject faults of their own.

:class:`ApiTap` once pumped each connection with two threads, one reading a TLS socket while the
other wrote it. OpenSSL does not allow that: under kopf's burst of discovery requests at start-up,
a request reached the API server garbled (it answered ``400 Bad Request`` with the garbage in its
body), and the controller under test stopped before the scenario began. Under a steadier burst it
crashed the test process in libcrypto. This test drives that burst through the tap, every request
on a new connection, and requires every answer to be the API server's own.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from integration.conftest import Cluster

from .faultkit import PKI, ApiTap, service_account_kubeconfig

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

DISCOVERY = ("/api", "/apis", "/api/v1", "/apis/apps/v1", "/apis/policy/v1beta1", "/apis/coordination.k8s.io/v1")


def test_api_tap_relays_a_burst_of_new_connections_intact(fault_cluster: Cluster, fault_ns: str,
                                                         tmp_path: Path) -> None:
    admin = fault_cluster.admin
    server = urlsplit(admin.kube.api.configuration.host)
    with ApiTap((server.hostname or "", server.port or 443)) as tap:
        service_account_kubeconfig(admin, fault_ns, "tap-burst", f"https://127.0.0.1:{tap.port}",
                                   tmp_path / "tap.kc")
        token = yaml.safe_load((tmp_path / "tap.kc").read_text())["users"][0]["user"]["token"]
        ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
        intact: list[str] = []
        wrong: list[str] = []
        lock = threading.Lock()
        deadline = time.monotonic() + 10

        def client(i: int) -> None:
            n = 0
            while time.monotonic() < deadline:
                path = DISCOVERY[(i + n) % len(DISCOVERY)]
                n += 1
                conn = http.client.HTTPSConnection("127.0.0.1", tap.port, context=ctx, timeout=20)
                try:
                    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
                    resp = conn.getresponse()
                    body = resp.read()
                    ok = resp.status == 200 and isinstance(json.loads(body), dict)
                    outcome = "200" if ok else f"{resp.status} {body[:80]!r}"
                except (OSError, ValueError, http.client.HTTPException) as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                finally:
                    conn.close()
                with lock:
                    (intact if outcome == "200" else wrong).append(f"GET {path}: {outcome}")

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads), "a request through the tap hung"
    print(f"\ntap burst: {len(intact)} answers intact, {len(wrong)} not")
    assert len(intact) > 200, f"too few requests got through to judge the tap: {len(intact)} intact, {len(wrong)} not"
    assert not wrong, f"{len(wrong)} of {len(intact) + len(wrong)} answers were not the API server's own: {wrong[:5]}"
