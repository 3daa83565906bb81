"""Tools of the fault-injection suite: break the real cluster, then count what memwatch did from outside.

* :class:`Components` stops, freezes (SIGSTOP), kills and restarts the local cluster's own processes
  through ``hack/local-cluster.sh`` (the one place that knows how each is started).
* :func:`pod_writes` reads the kube-apiserver's audit log: every eviction and delete of a pod, by
  whom, with the UID it was aimed at (the audit policy logs those two requests with their bodies,
  whose ``preconditions.uid`` names the pod instance), when, and what the server answered.
* :func:`tally` turns those writes into the suite's figures: wrong, missed and double actions.
* :class:`KubeletFaultProxy` stands between memwatch and the real kubelet and answers 500s, garbage,
  truncated bodies or late, on command. :class:`ApiTap` stands between a memwatch process and the
  real API server and runs a callback the moment the answer to one chosen request arrives (to kill
  the process between its eviction and its Event).
* :class:`MemwatchProcess` runs ``memwatch run`` / ``memwatch agent`` as a real process under its
  own ServiceAccount token, so it can be SIGSTOPped and SIGKILLed and the audit log names it.

Nothing here fakes the cluster: the proxies forward to the real kubelet and API server, and every
count comes from the API server's audit log, the Events and the pods, not from memwatch's word.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.server
import json
import os
import select
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

from integration.clusterkit import LOCAL_ROOT, Admin, audit_code, audit_entries, audit_user, hog_pod, holding, wait_for

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "hack" / "local-cluster.sh"
CLUSTER_ROOT = LOCAL_ROOT
PKI = CLUSTER_ROOT / "pki"
#: The answers that mean the server carried the write out.
ACCEPTED = frozenset({200, 201, 202})


# ---------------------------------------------------------------------------------------------
# The cluster's processes


class Components:
    """The local cluster's processes (etcd, kube-apiserver, the kubelet...), by name."""

    def _script(self, *args: str, timeout: float = 240) -> str:
        proc = subprocess.run(["bash", str(CLUSTER_SCRIPT), *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"hack/local-cluster.sh {' '.join(args)} failed (rc={proc.returncode}):\n"
                                 f"{proc.stderr[-3000:]}")
        return proc.stdout

    def pid(self, name: str) -> int:
        return int(self._script("pid", name).strip())

    def stop(self, name: str, kill: bool = False) -> None:
        self._script("stop", name, *(["--kill"] if kill else []))

    def start(self, name: str) -> None:
        self._script("start", name)

    def restart(self, name: str, kill: bool = False) -> None:
        self._script("restart", name, *(["--kill"] if kill else []))

    @contextlib.contextmanager
    def frozen(self, name: str) -> Iterator[int]:
        """SIGSTOP the component for the ``with`` block; SIGCONT however the block ends."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGSTOP)
        try:
            yield pid
        finally:
            os.kill(pid, signal.SIGCONT)


def api_answers(admin: Admin, timeout: float = 90) -> None:
    """Wait until the API server answers again (after a restart or a freeze)."""
    def ok() -> bool:
        try:
            admin.kube.get_json("/version", timeout=2)
            return True
        except Exception:
            return False
    wait_for("the API server to answer", ok, timeout)


# ---------------------------------------------------------------------------------------------
# The audit log: every write to a pod, by anyone


@dataclass(frozen=True, slots=True)
class PodWrite:
    """One eviction or delete of a pod, as the API server logged it."""

    at: float  # epoch, when the API server received it
    user: str
    verb: str  # "create" (an eviction) or "delete"
    subresource: str
    namespace: str
    name: str
    uid: str | None  # the pod instance it was aimed at (preconditions.uid, else by name and time)
    code: int

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED

    def __str__(self) -> str:
        what = "evict" if self.subresource == "eviction" else "delete"
        return (f"{what} {self.namespace}/{self.name} uid={self.uid} by {self.user} -> {self.code} "
                f"at {dt.datetime.fromtimestamp(self.at, dt.UTC):%H:%M:%S.%f}")


def _epoch(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _precondition_uid(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    options = body.get("deleteOptions") if body.get("kind") == "Eviction" else body
    uid = ((options or {}).get("preconditions") or {}).get("uid")
    return uid if isinstance(uid, str) else None


#: Every pod instance the suite created: (namespace, name) -> [(creation epoch, UID)], oldest first.
INSTANCES: dict[tuple[str, str], list[tuple[float, str]]] = {}


def _instance_at(namespace: str, name: str, at: float) -> str | None:
    """The UID of the pod called ``name`` that existed at ``at``: the newest created by then.

    Kubernetes 1.20's audit log leaves the request body out of eviction entries (deletes have it),
    so an eviction is tied to its pod instance by name and time. That is exact for the evictions
    that count, the accepted ones: the API server evicts whichever pod has the name at that moment.
    """
    candidates = [uid for created, uid in INSTANCES.get((namespace, name), ()) if created <= at + 1.0]
    return candidates[-1] if candidates else None


def pod_writes(audit_log: Path, namespace: str, user: Callable[[str], bool] = lambda _: True) -> list[PodWrite]:
    """Every completed eviction/delete of a pod in ``namespace`` by a user ``user`` accepts."""
    out = []
    for ev in audit_entries(audit_log, f'"namespace":"{namespace}"'):
        ref = ev.get("objectRef") or {}
        if ev.get("stage") != "ResponseComplete" or ref.get("namespace") != namespace or ref.get("resource") != "pods":
            continue
        verb, sub = ev.get("verb", ""), ref.get("subresource", "")
        if not ((verb == "create" and sub == "eviction") or (verb == "delete" and not sub)):
            continue
        who = audit_user(ev)
        if not user(who):
            continue
        at, name = _epoch(ev.get("requestReceivedTimestamp")), ref.get("name", "")
        out.append(PodWrite(at=at, user=who, verb=verb, subresource=sub, namespace=namespace, name=name,
                            uid=_precondition_uid(ev.get("requestObject")) or _instance_at(namespace, name, at),
                            code=audit_code(ev)))
    return sorted(out, key=lambda w: w.at)


# ---------------------------------------------------------------------------------------------
# The figures


@dataclass
class Tally:
    """Wrong, missed and double actions of one scenario, from the audit log (and the Events)."""

    scenario: str
    wrong: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    double: list[str] = field(default_factory=list)
    recovery: float | None = None  # seconds from the end of the fault to the first due action
    note: str = ""

    def check(self) -> None:
        problems = [f"{kind}: {item}" for kind, items in (("wrong", self.wrong), ("missed", self.missed),
                                                           ("double", self.double)) for item in items]
        assert not problems, f"{self.scenario}:\n  " + "\n  ".join(problems)


def tally(scenario: str, writes: Iterable[PodWrite], due: Mapping[str, str], spared: Mapping[str, str],
          fault_ended: float | None = None) -> Tally:
    """Judge ``writes`` (one namespace) against what should have happened.

    ``due``: pod UID -> name of every pod instance that must be acted on exactly once (one accepted
    eviction or delete). ``spared``: UID -> name of every instance that must never be the target of
    a write, accepted or not. A write aimed at any other UID, or at none, is wrong too.
    """
    result = Tally(scenario)
    accepted: Counter[str] = Counter()
    first: dict[str, float] = {}
    for w in writes:
        if w.uid in spared:
            result.wrong.append(f"{w} (pod {spared[w.uid]} was under its limit or not the pod in breach)")
        elif w.uid not in due:
            result.wrong.append(f"{w} (a pod instance memwatch had no reason to act on)")
        elif w.accepted:
            accepted[w.uid] += 1
            first.setdefault(w.uid, w.at)
            if accepted[w.uid] == 2:
                result.double.append(f"{w} (second accepted write to the same pod instance)")
    for uid, name in due.items():
        if not accepted[uid]:
            result.missed.append(f"{name} uid={uid}: never evicted or deleted")
    if fault_ended is not None and first:
        result.recovery = max(0.0, max(first.values()) - fault_ended)
    return result


class FaultReport:
    """The suite's table, printed at the end of the run (and kept as rows for the note)."""

    rows: list[Tally] = []

    @classmethod
    def add(cls, t: Tally) -> Tally:
        cls.rows.append(t)
        return t

    @classmethod
    def lines(cls) -> list[str]:
        out = [f"{'scenario':58} {'wrong':>5} {'missed':>6} {'double':>6} {'recovery':>9}  note"]
        for t in cls.rows:
            rec = "-" if t.recovery is None else f"{t.recovery:.1f}s"
            out.append(f"{t.scenario[:58]:58} {len(t.wrong):>5} {len(t.missed):>6} {len(t.double):>6} "
                       f"{rec:>9}  {t.note}")
        return out


# ---------------------------------------------------------------------------------------------
# Pods under test


def wait_gone(admin: Admin, namespace: str, name: str, uid: str, timeout: float = 90) -> None:
    """Wait until the pod ``uid`` is removed from the API (its name free). Removal is the kubelet's
    work after memwatch's eviction: a timeout says where the pod stood, so a failure tells whether
    the kubelet never killed it or killed it and never finished removing it."""
    last: dict[str, Any] = {}

    def gone() -> bool:
        pod = admin.pod(namespace, name)
        if pod is None or pod["metadata"]["uid"] != uid:
            return True
        last.clear()
        last.update(pod)
        return False

    try:
        wait_for(f"pod {namespace}/{name} ({uid}) to be gone", gone, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; where it stood: {_pod_state(last)}") from None


def _pod_state(pod: Mapping[str, Any]) -> str:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    containers = [f"{c.get('name')}={next(iter(c.get('state') or {'?': 0}))}"
                  for c in status.get("containerStatuses") or ()]
    return (f"deletionTimestamp={meta.get('deletionTimestamp')} phase={status.get('phase')} "
            f"containers={','.join(containers) or 'none'} finalizers={meta.get('finalizers')}")


def wait_write(audit_log: Path, namespace: str, uid: str, timeout: float = 90) -> PodWrite:
    """The first accepted write aimed at pod ``uid``."""
    def found() -> PodWrite | None:
        return next((w for w in pod_writes(audit_log, namespace) if w.uid == uid and w.accepted), None)
    return wait_for(f"an accepted eviction/delete of pod {uid}", found, timeout)


def no_write_for(audit_log: Path, namespace: str, uids: Iterable[str], seconds: float) -> list[PodWrite]:
    """Watch the audit log for ``seconds``; return any write aimed at ``uids`` (should be none)."""
    targets = set(uids)
    time.sleep(seconds)
    return [w for w in pod_writes(audit_log, namespace) if w.uid in targets]


# ---------------------------------------------------------------------------------------------
# A usage source that fails on command: a TLS proxy in front of the real kubelet


class KubeletFaultProxy:
    """HTTPS on the node's address with the kubelet's own serving certificate (so memwatch verifies
    it against the cluster CA as usual), forwarding each GET to the real kubelet with the caller's
    credentials, unless told to fail:

    * ``ok``: the kubelet's answer, byte for byte;
    * ``500``: HTTP 500 with a Status body;
    * ``garbage``: 200 with a body that is not JSON;
    * ``truncated``: 200 with the real body cut in half (the connection closed early);
    * ``slow``: the real answer, 10 s late.
    """

    MODES = ("ok", "500", "garbage", "truncated", "slow")

    def __init__(self, host: str, kubelet_port: int, delay: float = 10.0) -> None:
        self.mode = "ok"
        self.delay = delay
        self.requests: Counter[str] = Counter()
        self.kubelet = f"https://{host}:{kubelet_port}"
        # The caller's token is passed on; a client certificate cannot be, so the proxy presents
        # the admin's (the in-process controller authenticates with that same certificate).
        self._pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(PKI / "ca.crt"),
                                         cert_file=str(PKI / "admin.crt"), key_file=str(PKI / "admin.key"))
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                mode = proxy.mode
                proxy.requests[mode] += 1
                if mode == "500":
                    self._answer(500, b'{"kind":"Status","status":"Failure","code":500,"message":"injected"}')
                    return
                if mode == "garbage":
                    self._answer(200, b"\x00\xffthis is <not> json{{{" * 50)
                    return
                if mode == "slow":
                    time.sleep(proxy.delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "accept")}
                resp = proxy._pool.request("GET", proxy.kubelet + self.path, headers=headers, retries=False,
                                           timeout=urllib3.Timeout(connect=5, read=30))
                body = resp.data
                if mode == "truncated":
                    self.send_response(resp.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._answer(resp.status, body)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server((host, 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(PKI / "kubelet-serving.crt"), str(PKI / "kubelet-serving.key"))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.host, self.port = host, self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="kubelet-fault-proxy", daemon=True)

    def __enter__(self) -> KubeletFaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------
# A tap on one process's API connection


class ApiTap:
    """TLS in front of the real API server for one memwatch process (127.0.0.1, the API server's own
    certificate, so the client verifies it as usual), pumping bytes both ways. When a request whose
    first line contains ``trigger`` (for example ``POST /api/v1/namespaces/x/pods/y/eviction``) has
    been sent upstream, the first byte of its answer runs ``on_answer`` *before* it is forwarded:
    the API server has carried the request out, and the client has not heard so. With
    ``on_request`` set instead, that runs when the request is seen, and the request is dropped; with
    ``reply`` set, the tap answers it with those raw bytes (an HTTP response) and closes the
    connection. Each fires once per tap.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.trigger: bytes | None = None
        self.on_answer: Callable[[], None] | None = None
        self.on_request: Callable[[], None] | None = None  # runs *instead of* forwarding the request
        self.reply: bytes | None = None  # answers the request instead of the API server, then hangs up
        self.fired = threading.Event()
        self._server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_ctx.load_cert_chain(str(PKI / "apiserver.crt"), str(PKI / "apiserver.key"))
        self._client_ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._accept = threading.Thread(target=self._serve, name="api-tap", daemon=True)

    def __enter__(self) -> ApiTap:
        self._accept.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(raw,), daemon=True).start()

    def _connection(self, raw: socket.socket) -> None:
        try:
            client = self._server_ctx.wrap_socket(raw, server_side=True)
            up = self._client_ctx.wrap_socket(socket.create_connection(self.upstream, timeout=10),
                                              server_hostname=self.upstream[0])
        except (OSError, ssl.SSLError):
            raw.close()
            return
        # One thread per connection pumps both ways: an OpenSSL connection must not be read in one
        # thread while another writes it. Two threads per connection (recv on one, sendall on the
        # other) garbled requests (the API server answered ``400 Bad Request``) and could crash
        # the test process in libcrypto.
        for sock in (client, up):  # a relay must not hold a small write back for the peer's ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(_SEND_TIMEOUT)  # bounds sendall(); reads never wait (_read_ready)
        try:
            self._pump(client, up)
        except (OSError, ssl.SSLError):
            pass  # either side hung up or broke off: so does the tap
        finally:
            for s in (client, up):
                with contextlib.suppress(OSError):
                    s.close()

    def _pump(self, client: ssl.SSLSocket, up: ssl.SSLSocket) -> None:
        """Relay both ways until upstream closes or the trigger fires."""
        armed = False  # the trigger's request went upstream: its answer fires on_answer
        open_ways = [client, up]
        while open_ways:
            # Bytes OpenSSL has already decrypted are not readable to select(): serve them first.
            ready = [s for s in open_ways if s.pending()] or select.select(open_ways, [], [], 1.0)[0]
            for sock in ready:
                data = _read_ready(sock)
                if data is None:
                    continue
                if sock is up:
                    if not data or (armed and self._intercept_answer()):
                        return  # upstream is done, or the answer never reaches the client
                    client.sendall(data)
                elif not data:  # the client is done sending: so is the tap, upstream
                    open_ways.remove(client)
                    with contextlib.suppress(OSError):
                        up.shutdown(socket.SHUT_WR)
                else:
                    if self.trigger is not None and not self.fired.is_set() and self.trigger in data:
                        if self._intercept_request(client):
                            return  # the request never reaches the API server
                        armed = True
                    up.sendall(data)

    def _intercept_request(self, client: ssl.SSLSocket) -> bool:
        """The trigger's request, seen: with ``on_request`` or ``reply`` set, fire (answering it with
        ``reply``) and say so: the request is dropped. Otherwise it goes upstream, armed."""
        if self.on_request is None and self.reply is None:
            return False
        self.fired.set()
        if self.on_request is not None:
            self.on_request()
        if self.reply is not None:
            client.sendall(self.reply)
        return True

    def _intercept_answer(self) -> bool:
        """The first bytes of the armed request's answer: fire ``on_answer`` before they are passed
        on, and say so: they never are. Once per tap."""
        if self.fired.is_set():
            return False
        self.fired.set()
        if self.on_answer is not None:
            self.on_answer()
        return True


#: How long the tap's sendall() may wait on a peer that does not read.
_SEND_TIMEOUT = 30.0


def _read_ready(sock: ssl.SSLSocket) -> bytes | None:
    """The application bytes a socket that select() found readable holds, ``b""`` at its end, or
    None when what arrived was not application data (a TLS 1.3 session ticket, a partial record).
    A blocking read there would wait for an answer while the request it answers sits unforwarded
    on the other socket."""
    sock.settimeout(0)
    try:
        return sock.recv(65536)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None
    finally:
        sock.settimeout(_SEND_TIMEOUT)


# ---------------------------------------------------------------------------------------------
# memwatch as a real process, under its own ServiceAccount


def service_account_kubeconfig(admin: Admin, namespace: str, name: str, server: str, path: Path) -> str:
    """Create ServiceAccount ``name`` (cluster-admin: the suite judges actions, not RBAC), wait for its
    token, write a kubeconfig for it at ``path``; returns the user name the audit log will show."""
    admin.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
                  {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
    admin.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": f"{namespace}-{name}", "labels": {"memwatch.io/fault-suite": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})

    def token() -> str | None:
        sa = admin.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
        for ref in sa.get("secrets") or ():
            secret = admin.get(f"/api/v1/namespaces/{namespace}/secrets/{ref['name']}")
            if (secret.get("data") or {}).get("token"):
                return base64.b64decode(secret["data"]["token"]).decode()
        return None

    tok = wait_for(f"a token for ServiceAccount {namespace}/{name}", token, 60)
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": str(PKI / "ca.crt")}}],
        "users": [{"name": "u", "user": {"token": tok}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}), encoding="utf-8")
    path.chmod(0o600)
    return f"system:serviceaccount:{namespace}:{name}"


def delete_fault_bindings(admin: Admin, namespace: str) -> None:
    with contextlib.suppress(Exception):
        for item in admin.get("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                              {"labelSelector": "memwatch.io/fault-suite=true"})["items"]:
            if item["metadata"]["name"].startswith(f"{namespace}-"):
                admin.request("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/"
                                        f"{item['metadata']['name']}")


class MemwatchProcess:
    """``python -m memwatch <argv>`` as its own process; its output goes to ``log_path``."""

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        self.argv = argv
        self.log_path = log_path
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MemwatchProcess:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "memwatch", *self.argv], stdout=out,
                                         stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (a rolling upgrade's stop), then SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, needle: str, timeout: float = 60) -> None:
        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"memwatch exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            return needle in self.log()
        wait_for(f"{needle!r} in {self.log_path.name}", seen, timeout)


# ---------------------------------------------------------------------------------------------
# The scenario's pods, and who counts as memwatch


#: What a breaching pod holds, and the watch limit it is over.
OVER_MIB, LIMIT = 120, "80Mi"


def breaching(name: str, **annotations: str) -> dict[str, Any]:
    """A hog holding 120Mi with a watch limit of 80Mi: memwatch must act on it, once."""
    return hog_pod(name, holding(OVER_MIB), {"memwatch.io/limit": LIMIT, **annotations})


def healthy(name: str, mib: int = 40, limit: str = "200Mi", **annotations: str) -> dict[str, Any]:
    """A hog holding ``mib`` under a watch limit it never reaches: memwatch must never touch it."""
    return hog_pod(name, holding(mib), {"memwatch.io/limit": limit, **annotations})


def create_running(admin: Admin, namespace: str, manifests: Iterable[Mapping[str, Any]],
                   timeout: float = 120) -> dict[str, str]:
    """Create the pods, wait until they all run; returns name -> UID."""
    names = []
    for m in manifests:
        admin.create_pod(namespace, m)
        names.append(m["metadata"]["name"])
    pods = admin.wait_running(namespace, names, timeout)
    for name, pod in pods.items():
        INSTANCES.setdefault((namespace, name), []).append(
            (_epoch(pod["metadata"]["creationTimestamp"]), pod["metadata"]["uid"]))
        INSTANCES[(namespace, name)].sort()
    return {name: pod["metadata"]["uid"] for name, pod in pods.items()}


def create(admin: Admin, namespace: str, manifest: Mapping[str, Any]) -> str:
    """Create one pod without waiting for it (memwatch may act on it before it is Ready); its UID."""
    pod = admin.create_pod(namespace, manifest)
    meta = pod["metadata"]
    INSTANCES.setdefault((namespace, meta["name"]), []).append((_epoch(meta["creationTimestamp"]), meta["uid"]))
    return str(meta["uid"])


def not_the_cluster(user: str) -> bool:
    """Writes by anyone but the cluster itself: not the test's admin, not the kubelet (which deletes
    pods it has finished), not kube-system's controllers (the namespace controller). That leaves
    memwatch, and anything else that should not be touching the suite's pods."""
    return not (user == "admin" or user.startswith(("system:node:", "system:serviceaccount:kube-system:",
                                                    "system:kube-")))


def acted_events(admin: Admin, namespace: str, uid: str) -> int:
    """memwatch's "I acted" Events on one pod instance (summing an Event's count)."""
    return sum(int(e.get("count") or 1) for e in admin.events(namespace, uid)
               if e.get("reason") in ("MemwatchEvicted", "MemwatchDeleted", "MemwatchKilled", "MemwatchEscalated"))


def writes_by(audit_log: Path, user: str, since: float) -> list[tuple[str, str, str, int, float]]:
    """Every write (not get/list/watch) ``user`` made from ``since`` on:
    (verb, resource, name, answer code, epoch)."""
    out = []
    for ev in audit_entries(audit_log, f'"{user}"'):
        if ev.get("stage") != "ResponseComplete" or ev.get("verb") in ("get", "list", "watch"):
            continue
        if (ev.get("user") or {}).get("username") != user:
            continue
        at = _epoch(ev.get("requestReceivedTimestamp"))
        if at >= since:
            ref = ev.get("objectRef") or {}
            out.append((ev["verb"], ref.get("resource", ""), ref.get("name", ""), audit_code(ev), at))
    return sorted(out, key=lambda w: w[4])
