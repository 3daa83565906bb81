"""Feeds the :class:`~memwatch.podindex.PodIndex` from the API: a paged LIST, then a WATCH.

Why not ``@kopf.index`` or ``@kopf.on.event``: measured on this kind of machine, kopf's pod index
is superlinear in the pods of the cluster (2k pods: 39 s; 10k: never finished) and kopf lists
unpaginated, with no server-side selectors. Here the LIST is paged (500 a page), parsed as raw
JSON, narrowed server-side by field and label selectors, and only pods with ``memwatch.io/``
annotations are kept. The WATCH resumes from the LIST's resourceVersion with bookmarks, and a
410 Gone re-lists. Nothing is ever written to the pods.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import quote

from memwatch.kube import ApiError, Gone, Kube, TooLargeResourceVersion
from memwatch.podindex import PodIndex, PodRecord

log = logging.getLogger("memwatch.watcher")

#: Finished pods use no memory: the API server need not send them at all.
ACTIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"
#: A watch stream with nothing on it for this long is treated as stalled and reconnected. The API
#: server ends every WATCH at its ``timeoutSeconds``, which memwatch draws below this (see
#: :func:`watch_timeout`): a quiet resource's watch ends cleanly first (before 1.27 the server sends
#: its only bookmark just before that deadline), so the silence means a connection that stalled.
WATCH_SILENCE = 120.0


def watch_timeout(silence: float = WATCH_SILENCE) -> int:
    """A WATCH's ``timeoutSeconds``: drawn between half and 0.9 of ``silence`` (60-108 s by default),
    so that watchers do not all reconnect at once (client-go draws its own the same way) and a quiet
    watch ends, cleanly and silently, before its silence counts as a stall."""
    return max(1, int(random.uniform(0.5, 0.9) * silence))
#: How often an optional resource that is not served (policies without their CRDs) is looked for.
OPTIONAL_RETRY = 60.0


class Sink(Protocol):
    """What a watcher feeds: :class:`~memwatch.podindex.PodIndex`, or any other in-memory view."""

    def upsert(self, obj: Mapping[str, Any]) -> None: ...

    def remove(self, obj: Mapping[str, Any]) -> None: ...

    def replace(self, objs: Iterable[Mapping[str, Any]], scope: Callable[[Any], bool]) -> None: ...

    def __len__(self) -> int: ...


class Tee:
    """One watch, several sinks: every event goes to each, in order; its length is the first's."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    def __len__(self) -> int:
        return len(self.sinks[0])

    @property
    def policies(self) -> Any:
        """The first sink's policies (a pod index's), which a LIST records it was resolved with."""
        return getattr(self.sinks[0], "policies", None)

    @policies.setter
    def policies(self, value: Any) -> None:
        for sink in self.sinks:
            if hasattr(sink, "policies"):
                sink.policies = value

    def upsert(self, obj: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.upsert(obj)

    def remove(self, obj: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.remove(obj)

    def replace(self, objs: Iterable[Mapping[str, Any]], scope: Callable[[Any], bool]) -> None:
        items = list(objs)
        for sink in self.sinks:
            sink.replace(items, scope)


class PodWatcher:
    """One LIST+WATCH loop over one scope (cluster-wide, or one namespace), in its own thread.

    Pods by default; ``resource`` names another core/v1 resource (memwatch also follows its own
    Events and its agents' pods this way)."""

    def __init__(self, kube: Kube, index: PodIndex | Sink, namespace: str | None = None,
                 label_selector: str = "", field_selector: str = ACTIVE_PODS,
                 page_size: int = 500, watch_timeout: int | None = None, silence: float = WATCH_SILENCE,
                 resource: str = "pods", api: str = "/api/v1", optional: bool = False) -> None:
        self.kube = kube
        self.index = index
        self.resource = resource
        self.api = api
        #: A resource that may not be served (a CRD not installed, or not readable): 404 and 403 are
        #: "none of them", in sync, retried every OPTIONAL_RETRY seconds, said once in the log.
        self.optional = optional
        self.absent: str | None = None
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.page_size = page_size
        #: timeoutSeconds of each WATCH; None: a new draw of :func:`watch_timeout` for each.
        self.watch_timeout = watch_timeout
        self.silence = silence
        self.synced = threading.Event()  # listed, and no re-list needed since
        self.last_contact = -1e18  # monotonic: the last LIST page, watch connect, event or bookmark
        self.resource_version = ""
        self.lists = 0
        self.policy_generation = 0
        self._stop = threading.Event()
        self._relist = threading.Event()
        self._stream: Any = None  # the open WATCH response, so request_relist can end it
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        if self.namespace:
            return f"{self.api}/namespaces/{quote(self.namespace)}/{self.resource}"
        return f"{self.api}/{self.resource}"

    def request_relist(self) -> None:
        """LIST again now (what the index keeps depends on something else that changed: the
        policies). The index stays in use meanwhile; the open WATCH is ended so the LIST starts
        at once, and the WATCH resumes from the new LIST's resourceVersion."""
        self._relist.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):  # already closed: the loop re-lists anyway
                stream.shutdown()

    def _query(self) -> dict[str, Any]:
        return {"labelSelector": self.label_selector, "fieldSelector": self.field_selector}

    def _contact(self) -> None:
        self.last_contact = time.monotonic()

    def in_sync(self) -> bool:
        """Whether the index reflects the API server closely enough to act on: listed, no re-list
        pending, and heard from within a stalled stream's detection time (plus a margin)."""
        return self.synced.is_set() and time.monotonic() - self.last_contact <= self.silence + 15.0

    def _in_scope(self, record: PodRecord) -> bool:
        return self.namespace is None or getattr(record, "namespace", None) == self.namespace

    def _pages(self) -> Iterator[Mapping[str, Any]]:
        for page in self.kube.list_pages(self.path, self._query(), limit=self.page_size):
            self.last_contact = time.monotonic()
            self.resource_version = (page.get("metadata") or {}).get("resourceVersion", "")
            yield from page.get("items") or ()

    def list_once(self) -> None:
        """LIST every page and make the index match it."""
        policies = getattr(self.index, "policies", None)
        self.index.replace(self._pages(), self._in_scope)
        # The policies the list was resolved with (a swap while listing asks for another list).
        self.policy_generation = getattr(policies, "generation", 0)
        self.lists += 1
        self.synced.set()

    def watch_once(self) -> None:
        """Follow the WATCH until it times out (returns) or expires (raises Gone)."""
        timeout = self.watch_timeout if self.watch_timeout is not None else watch_timeout(self.silence)
        events = self.kube.watch(self.path, self.resource_version, self._query(), timeout,
                                 silence=self.silence, on_connect=self._contact, hold=self._hold)
        for event in events:
            self.last_contact = time.monotonic()
            if self._stop.is_set() or self._relist.is_set():
                return
            kind = event.get("type")
            obj = event.get("object") or {}
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if kind in ("ADDED", "MODIFIED"):
                self.index.upsert(obj)
            elif kind == "DELETED":
                self.index.remove(obj)
            if rv and kind in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                self.resource_version = rv

    @property
    def _noun(self) -> str:
        return "pod" if self.resource == "pods" else self.resource

    def _hold(self, stream: Any) -> None:
        self._stream = stream
        if stream is not None and self._relist.is_set():
            # A re-list asked for while this WATCH was connecting (or while the LIST ran): end it now
            # rather than at its first event, which on a quiet resource may be minutes away.
            with contextlib.suppress(Exception):
                stream.shutdown()

    def _absent(self, exc: ApiError) -> bool:
        """An optional resource the API server does not serve (404) or lets memwatch read (403):
        treated as none, in sync, said once; looked for again every OPTIONAL_RETRY seconds."""
        if not self.optional or exc.status not in (404, 403):
            return False
        why = ("not installed (no such resource)" if exc.status == 404
               else "not readable by memwatch's ServiceAccount (403)")
        if self.absent != why:
            log.warning("%s scope=%s %s: treated as none; looking again every %.0fs", self.resource,
                        self.namespace or "cluster", why, OPTIONAL_RETRY)
        self.absent = why
        self.index.replace((), self._in_scope)
        self.last_contact = time.monotonic() + OPTIONAL_RETRY  # in sync until the next look
        self.synced.set()
        return True

    def run(self) -> None:
        """LIST, then WATCH forever; re-LIST after a 410 or an error (with backoff), or when asked."""
        backoff = 1.0
        need_list = True
        while not self._stop.is_set():
            try:
                if self._relist.is_set():
                    self._relist.clear()
                    need_list = True
                if need_list:
                    self.list_once()
                    if self.absent:
                        log.info("%s scope=%s can be read now", self.resource, self.namespace or "cluster")
                        self.absent = None
                    log.info("listed %s scope=%s watched=%d resourceVersion=%s", self.resource,
                             self.namespace or "cluster", len(self.index), self.resource_version)
                    need_list = False
                if self._relist.is_set():
                    continue  # asked while listing: list again before watching
                self.watch_once()
                backoff = 1.0
            except Gone as exc:
                why = "resourceVersion too large" if isinstance(exc, TooLargeResourceVersion) else "expired"
                log.info("watch %s scope=%s; listing again", why, self.namespace or "cluster")
                self.synced.clear()  # not acted on until the re-list is in
                need_list = True
            except Exception as exc:  # the watch must outlive any error; it re-lists
                if self._relist.is_set() and not self._stop.is_set():
                    continue  # request_relist ended the stream: list at once, no backoff, no warning
                if isinstance(exc, ApiError) and self._absent(exc):
                    need_list = True
                    if self._stop.wait(OPTIONAL_RETRY):
                        return
                    continue
                log.warning("%s watch failed scope=%s: %s%s; retrying in %.0fs", self._noun,
                            self.namespace or "cluster",
                            "" if isinstance(exc, ApiError) else type(exc).__name__ + ": ", exc, backoff)
                need_list = need_list or not self.resource_version
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 30.0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"watch-{self.resource}-{self.namespace or 'all'}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
