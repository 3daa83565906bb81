"""`memwatch status` (also `kubectl memwatch status`): how close each watched pod is to its watch limit.

One row per pod memwatch would watch, judged by the controller's own code: the record
(:func:`memwatch.podindex.build_record`: the pod's annotations merged with the MemwatchPolicy and
ClusterMemwatchPolicy objects that select it, :meth:`memwatch.policyset.PolicySet.effective`, and
resolved by :func:`memwatch.policy.resolve`; protections by
:class:`memwatch.protections.Protections`), where its watch limit comes from (FROM: ``annotation``
or the policy, e.g. ``MemwatchPolicy shop/limits``), the working set read as the controller
reads it (:func:`memwatch.sources.make_source`: one bulk read of the metrics API, or of each node's
kubelet), the growth rate and projected time to cross (:func:`memwatch.policy.growth_rate`,
:func:`memwatch.policy.seconds_to_cross`), and the last thing memwatch did to the pod, from its own
Events (the reasons of :mod:`memwatch.observability`). Sorted by headroom, nearest first.

It reads with the caller's kubeconfig and RBAC, never memwatch's: pods (list), both kinds of
policy (list), memwatch's Events (list), the usage source's reads, the namespace (get, to tell an
unknown namespace from an empty one) and, only when a ClusterMemwatchPolicy selects namespaces by
label, the namespaces' labels. It writes nothing. Every request has a timeout; every failure is one
line on stderr and a non-zero exit code (2: bad input, 1: the cluster refused or did not answer).
Policies are optional: without their CRDs (404) or the RBAC to list them (403) pods are resolved
from their annotations alone, and one line on stderr says so.

Light to import: the Kubernetes client and the sources are imported when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from memwatch.podindex import PodRecord, build_record
from memwatch.policy import (
    KEY_CONTAINER_LIMIT,
    KEY_LIMIT,
    Action,
    Defaults,
    Limit,
    Usage,
    growth_rate,
    seconds_to_cross,
)
from memwatch.policyset import EMPTY, PolicySet
from memwatch.protections import Protections
from memwatch.quantity import QuantityError, format_bytes, parse_duration

if TYPE_CHECKING:
    from memwatch.kube import ApiError, Kube
    from memwatch.sources import UsageSource

PROG = "memwatch status"
HELP = "show how close each watched pod is to its watch limit"
DESCRIPTION = ("One row per pod memwatch watches: its working set (read as the controller reads it), watch "
               "limit, hard limit, headroom, growth and projected time to cross, the action memwatch would "
               "take and the last one it took. Nearest its limit first. Uses your kubeconfig and RBAC.")
EPILOG = ("The protection and action flags describe the controller: pass the values `memwatch run` runs "
          "with when they differ from its defaults, so that ACTION says what it would do.")
SORTS = ("headroom", "usage", "growth")
OUTPUTS = ("table", "wide", "json")
#: Samples kept per pod with --watch (distinct sample times): the growth rate is fitted over them.
SAMPLES = 6
#: Headroom, in percent of the watch limit, below which a row is red, and yellow.
DANGER, CAUTION = 10.0, 25.0
BAR_WIDTH = 10
#: A namespace name (a DNS label), as the API server accepts it.
NAMESPACE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")

#: Where a watch limit comes from: the pod's own ``memwatch.io/limit*`` annotation, else the ref of
#: the policy that set it (``MemwatchPolicy shop/limits``, ``ClusterMemwatchPolicy base``).
FROM_ANNOTATION = "annotation"

RESET, BOLD, DIM, RED, GREEN, YELLOW = "\x1b[0m", "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[33m"
HOME, CLEAR_LINE, CLEAR_BELOW, CLEAR_SCREEN = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[2J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


class StatusError(Exception):
    """What stops the command: a one-line message and the exit code (2: bad input, 1: the cluster)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(" ".join(message.split()))
        self.code = code


# -- arguments ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument error is one line (exit code 2), not the usage block and a line."""

    def error(self, message: str) -> NoReturn:
        raise StatusError(f"{message} (see --help)", 2)


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except QuantityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return seconds


#: The flags of `memwatch run` that status takes as they are: how usage is read, and what the controller
#: protects and does (they change the ACTION column).
USAGE_FLAGS = ("--source", "--kubelet-ca-file", "--kubelet-insecure-tls", "--kubelet-preferred-address-types")
CONTROLLER_FLAGS = ("--protected-namespace", "--allow-namespace", "--exclude-namespace", "--protected-priority",
                    "--self-selector", "--default-action", "--dry-run")


def add_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command's flags; those it shares with `memwatch run` come from the same option table."""
    from memwatch.settings import COMMON, RUN, add_options, selector_arg

    sweep = next(o.default for o in RUN if o.flag == "--interval")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", metavar="NS",
                       help="only this namespace (default: the kubeconfig context's namespace, as kubectl)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    parser.add_argument("-l", "--selector", type=selector_arg, metavar="SELECTOR",
                        help="only pods with these labels (e.g. app=web), filtered by the API server")
    parser.add_argument("--sort", choices=SORTS, default="headroom",
                        help="headroom: nearest the watch limit first; usage: largest working set first; "
                             "growth: fastest growing first")
    parser.add_argument("-w", "--watch", action="store_true",
                        help="read again every --interval and redraw in place, until Ctrl-C")
    parser.add_argument("--interval", type=_duration, default=f"{sweep:g}s", metavar="DURATION",
                        help="time between reads with --watch (the controller's default sweep interval)")
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table",
                        help="table; wide (also the limit's scope, the usage source, the sample's age and "
                             "notes); json (every field, raw bytes and seconds)")
    parser.add_argument("--kubeconfig", metavar="PATH",
                        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
    parser.add_argument("--context", metavar="NAME", help="kubeconfig context (default: its current context)")
    parser.add_argument("--request-timeout", type=_duration, default="10s", metavar="DURATION",
                        help="give up on an API server or kubelet request after this long")
    wanted = USAGE_FLAGS + CONTROLLER_FLAGS
    add_options(parser, [o for o in (*RUN, *COMMON) if o.flag in wanted], env)
    return parser


def build_parser(prog: str = PROG, env: Mapping[str, str] | None = None,
                 formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter_class)
    return add_arguments(parser, os.environ if env is None else env)


@dataclass(frozen=True)
class Options:
    """What one run needs, validated."""

    namespace: str | None  # None: every namespace (-A)
    selector: str
    sort: str
    watch: bool
    interval: float
    output: str
    source: str
    kubelet_ca_file: str | None
    kubelet_insecure_tls: bool
    kubelet_address_types: tuple[str, ...]
    protections: Protections
    defaults: Defaults
    dry_run: bool
    timeout: float


def options(args: argparse.Namespace, default_namespace: str) -> Options:
    """The run's options from parsed arguments; ``default_namespace`` is the kubeconfig context's."""
    from memwatch.settings import protections_from_args

    if args.kubelet_ca_file and args.kubelet_insecure_tls:
        raise StatusError("--kubelet-ca-file and --kubelet-insecure-tls exclude each other", 2)
    if args.namespace is not None and not NAMESPACE.fullmatch(args.namespace):
        raise StatusError(f"--namespace {args.namespace!r} is not a namespace name (a DNS label: lower-case "
                          "letters, digits and '-', at most 63; -A for every namespace)", 2)
    return Options(
        namespace=None if args.all_namespaces else (args.namespace or default_namespace),
        selector=args.selector or "", sort=args.sort, watch=args.watch, interval=args.interval, output=args.output,
        source=args.source, kubelet_ca_file=args.kubelet_ca_file, kubelet_insecure_tls=args.kubelet_insecure_tls,
        kubelet_address_types=tuple(args.kubelet_preferred_address_types),
        # This process is nobody's memwatch pod: no self pod by name (the self selector still applies).
        protections=protections_from_args(args),
        defaults=Defaults(action=Action(args.default_action)), dry_run=args.dry_run,
        timeout=args.request_timeout)


# -- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LastAction:
    """The last thing memwatch did (or refused to do) to a pod, from its Events."""

    reason: str  # the Event reason, e.g. MemwatchEvicted
    result: str  # in a word: evicted, blocked, ...
    time: float | None
    message: str


def action_words() -> dict[str, str]:
    """The Event reasons that report an action on a pod, and the word shown for each. Annotation
    findings (InvalidMemwatchAnnotation, MemwatchAnnotationWarning) are not actions: ACTION shows them."""
    from memwatch import observability as o
    from memwatch.nodeguard import REASON_NODE_PRESSURE

    return {o.REASON_EVICTED: "evicted", o.REASON_DELETED: "deleted", o.REASON_DRY_RUN: "dry-run",
            o.REASON_BLOCKED: "blocked", o.REASON_ESCALATED: "escalated", o.REASON_KILLED: "killed",
            o.REASON_FAILED: "failed", o.REASON_CAPPED: "rate-limited", o.REASON_PROTECTED: "protected",
            o.REASON_KILL_UNAVAILABLE: "kill-unavailable", o.REASON_BUDGET_EXHAUSTED: "budget-exhausted",
            REASON_NODE_PRESSURE: "node-pressure"}


def last_actions(events: Sequence[Mapping[str, Any]], words: Mapping[str, str]) -> dict[str, LastAction]:
    """The latest action Event of memwatch's on each pod, by pod UID."""
    from memwatch.observability import COMPONENT
    from memwatch.quantity import parse_time

    out: dict[str, LastAction] = {}
    for ev in events:
        if not isinstance(ev, Mapping):
            continue
        involved = ev.get("involvedObject") or {}
        reason = str(ev.get("reason") or "")
        by_memwatch = COMPONENT in ((ev.get("source") or {}).get("component"), ev.get("reportingComponent"))
        uid = involved.get("uid") if isinstance(involved, Mapping) else None
        if not uid or reason not in words or not by_memwatch or involved.get("kind", "Pod") != "Pod":
            continue
        when = parse_time(ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("firstTimestamp"))
        known = out.get(str(uid))
        if known is None or (when or 0.0) >= (known.time or 0.0):
            out[str(uid)] = LastAction(reason, words[reason], when, str(ev.get("message") or ""))
    return out


@dataclass
class Snapshot:
    """One read of the cluster."""

    time: float  # epoch
    records: list[PodRecord]
    samples: dict[str, Usage]
    source: str  # the source that answered (auto: the one it chose)
    usage_error: str | None = None
    actions: dict[str, LastAction] | None = None  # None: memwatch's Events could not be read
    events_error: str | None = None
    notes: list[str] = field(default_factory=list)
    #: Where each record's settings come from, by UID: annotation key -> ``annotation`` or a policy ref.
    origins: dict[str, Mapping[str, str]] = field(default_factory=dict)


class _Notes(logging.Handler):
    """Collects the warnings memwatch's modules log while a read runs (a kubelet that fails, an
    insecure TLS setting), so the command says them in its own place instead of as log lines."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(" ".join(record.getMessage().split()))

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines

    @contextlib.contextmanager
    def attached(self) -> Iterator[_Notes]:
        logger = logging.getLogger("memwatch")
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)


def _reason(exc: ApiError) -> str:
    """The gist of an unreachable server's error (urllib3's is a paragraph)."""
    detail = exc.body or exc.reason
    m = re.search(r"\[Errno -?\d+\] [^'\")]*", detail)
    if m:
        return m.group(0).strip()
    if "timed out" in detail.lower():
        m = re.search(r"(?:Read|Connect) timed out[^)]*\)?", detail)
        return m.group(0) if m else "timed out"
    return " ".join(detail.split())[:300]


def garbled(exc: Exception, doing: str, server: str) -> StatusError:
    """One line for an answer that is not the Kubernetes API's (a proxy's HTML page, a wrong URL)."""
    return StatusError(f"cannot {doing}: the server at {server} did not answer as a Kubernetes API server "
                       f"({type(exc).__name__}: {exc})")


def explain(exc: ApiError, doing: str, server: str) -> StatusError:
    """One line for a failed request the command cannot go on without."""
    if exc.status == 0:
        return StatusError(f"cannot reach the API server at {server} ({doing}): {_reason(exc)}")
    if exc.status == 401:
        return StatusError(f"the API server at {server} refused your credentials ({doing}): {exc}; "
                           "check your kubeconfig (an expired token or certificate?)")
    if exc.status == 403:
        return StatusError(f"forbidden: cannot {doing}: {exc}")
    return StatusError(f"cannot {doing}: {exc}")


class Reader:
    """Reads the cluster for one view: the policies, pods, usage (one bulk read) and memwatch's Events."""

    def __init__(self, kube: Kube, opts: Options, source: UsageSource, notes: _Notes | None = None) -> None:
        self.kube, self.opts, self.source = kube, opts, source
        self.notes = notes or _Notes()
        self.words = action_words()
        self._said: set[str] = set()  # the policy notes said already: each once, also with --watch
        self._pending: list[str] = []

    def _once(self, line: str) -> None:
        """A note for the next snapshot, unless it was said already."""
        if line not in self._said:
            self._said.add(line)
            self._pending.append(line)

    def _where(self) -> str:
        return f"in namespace {self.opts.namespace}" if self.opts.namespace else "in any namespace"

    def check_namespace(self) -> None:
        """An unknown namespace is an error, not an empty list. A caller who may not read
        Namespace objects (RBAC) is taken at their word."""
        from memwatch.kube import ApiError

        ns = self.opts.namespace
        if ns is None:
            return
        try:
            found = self.kube.get_json_or_none(f"/api/v1/namespaces/{ns}")
        except ApiError as exc:
            if exc.status == 403:
                return
            raise explain(exc, f"get namespace {ns}", self.kube.server) from None
        except ValueError as exc:
            raise garbled(exc, f"get namespace {ns}", self.kube.server) from None
        if found is None:
            raise StatusError(f"namespace {ns!r} not found")

    def _list_policies(self, path: str, doing: str) -> list[Mapping[str, Any]] | str | None:
        """Every item of one kind of policy; None when the kind is not served (404: no CRD), or why
        it cannot be listed (403: no RBAC). Unreachable, or credentials refused: the error that stops
        the command, as for pods."""
        from memwatch.kube import ApiError

        items: list[Mapping[str, Any]] = []
        try:
            for page in self.kube.list_pages(path):
                items.extend(i for i in page.get("items") or () if isinstance(i, Mapping))
        except ApiError as exc:
            if exc.status in (0, 401):
                raise explain(exc, doing, self.kube.server) from None
            return None if exc.status == 404 else f"cannot {doing}: {exc}"
        except (ValueError, AttributeError, TypeError) as exc:
            return f"cannot {doing}: not a list ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        return items

    def policies(self) -> PolicySet:
        """The MemwatchPolicy objects of the namespace (or of all) and the ClusterMemwatchPolicy objects,
        as the controller resolves pods with them; with the namespaces' labels when a cluster policy
        selects namespaces by label. What cannot be read (no CRDs, no RBAC) is no policy, said once."""
        from memwatch.policyset import API_VERSION, CLUSTER, NAMESPACED, PLURALS, PolicyObject, parse_policy

        ns = self.opts.namespace
        api = f"/apis/{API_VERSION}"
        local = f"{api}/namespaces/{ns}/{PLURALS[NAMESPACED]}" if ns else f"{api}/{PLURALS[NAMESPACED]}"
        reads = ((NAMESPACED, local, f"list {NAMESPACED} objects {self._where()}"),
                 (CLUSTER, f"{api}/{PLURALS[CLUSTER]}", f"list {CLUSTER} objects"))
        found: list[PolicyObject] = []
        absent: list[str] = []
        refused: list[str] = []
        for kind, path, doing in reads:
            items = self._list_policies(path, doing)
            if items is None:
                absent.append(kind)
            elif isinstance(items, str):
                refused.append(items)
            else:
                found += [parse_policy({**item, "kind": item.get("kind") or kind}) for item in items]
        if len(absent) == len(reads):
            self._once("the memwatch.io policy CRDs are not installed: no MemwatchPolicy or ClusterMemwatchPolicy "
                       "applies; watch limits come from annotations only")
        elif absent or refused:
            missing = [f"the {kind} CRD is not installed" for kind in absent]
            self._once("; ".join(missing + refused) + "; pods are resolved without them")
        policies = PolicySet(found)
        if policies.needs_namespaces:
            policies = PolicySet(found, self.namespace_labels())
        return policies

    def namespace_labels(self) -> dict[str, Mapping[str, str]]:
        """The labels of the namespace (or of every namespace), for ClusterMemwatchPolicy namespaceSelectors.
        Unreadable: none, so those policies select nothing here (unknown never widens a policy), said once."""
        from memwatch.kube import ApiError

        ns = self.opts.namespace
        doing = f"get namespace {ns}" if ns else "list namespaces"
        try:
            if ns:
                found = self.kube.get_json_or_none(f"/api/v1/namespaces/{ns}")
                items = [found] if isinstance(found, Mapping) else []
            else:
                items = [i for page in self.kube.list_pages("/api/v1/namespaces") for i in page.get("items") or ()]
        except ApiError as exc:
            if exc.status in (0, 401):
                raise explain(exc, doing, self.kube.server) from None
            self._once(f"cannot {doing} (for their labels): {exc}; ClusterMemwatchPolicies that select "
                       "namespaces by label are left out")
            return {}
        except (ValueError, AttributeError, TypeError) as exc:
            raise garbled(exc, doing, self.kube.server) from None
        out: dict[str, Mapping[str, str]] = {}
        for item in items:
            meta = item.get("metadata") if isinstance(item, Mapping) else None
            if isinstance(meta, Mapping) and meta.get("name"):
                labels = meta.get("labels")
                out[str(meta["name"])] = {str(k): str(v) for k, v in (labels or {}).items()} \
                    if isinstance(labels, Mapping) else {}
        return out

    def pods(self, policies: PolicySet = EMPTY) -> tuple[list[PodRecord], dict[str, Mapping[str, str]]]:
        """Every pod memwatch would watch, as the controller's index would hold it (with ``policies``),
        and where each record's settings come from, by UID."""
        from memwatch.kube import ApiError
        from memwatch.watcher import ACTIVE_PODS

        ns = self.opts.namespace
        path = f"/api/v1/namespaces/{ns}/pods" if ns else "/api/v1/pods"
        query = {"labelSelector": self.opts.selector, "fieldSelector": ACTIVE_PODS}
        records = []
        origins: dict[str, Mapping[str, str]] = {}
        try:
            for page in self.kube.list_pages(path, query):
                for pod in page.get("items") or ():
                    record = build_record(pod, self.opts.defaults, self.opts.protections.reason, policies)
                    if record is not None:
                        records.append(record)
                        meta = pod.get("metadata") or {}
                        origins[record.uid] = policies.effective(record.namespace, meta.get("labels"),
                                                                 meta.get("annotations")).sources
        except ApiError as exc:
            if exc.status == 400 and self.opts.selector:
                raise StatusError(f"invalid label selector {self.opts.selector!r}: {exc}", 2) from None
            raise explain(exc, f"list pods {self._where()}", self.kube.server) from None
        except (ValueError, AttributeError, TypeError) as exc:
            raise garbled(exc, f"list pods {self._where()}", self.kube.server) from None
        return records, origins

    def usage(self, records: Sequence[PodRecord]) -> tuple[dict[str, Usage], str | None, list[str]]:
        """(samples by UID, why there are none or None, warnings) from one bulk read."""
        from memwatch.sources import SourceError

        on_nodes = [r for r in records if r.node]
        if not on_nodes:
            return {}, None, []
        self.notes.take()
        try:
            samples = self.source.fetch(on_nodes)
        except SourceError as exc:
            self.notes.take()  # the error says it all: no per-node warnings besides it
            return {}, self._why(str(exc)), []
        return samples, None, self.notes.take()

    def _why(self, error: str) -> str:
        current = getattr(self.source, "current", None)
        if self.source.name == "auto" and current is not None:
            error = f"source auto chose {current.name}: {error}"
        hint = ""
        if "metrics-api: HTTP 404" in error or "metrics-api: HTTP 503" in error:
            hint = " (is metrics-server installed? --source kubelet reads each node's kubelet instead)"
        elif "metrics-api: HTTP 403" in error:
            hint = " (reading usage needs list on pods.metrics.k8s.io)"
        elif "kubelet:" in error and ("HTTP 403" in error or "HTTP 401" in error):
            hint = " (reading usage from the kubelets needs get on nodes and nodes/stats)"
        return f"no usage source reachable: {error}{hint}"

    def events(self) -> tuple[dict[str, LastAction] | None, str | None]:
        """memwatch's last action on each pod, from its own Events (one LIST); None and why when
        they cannot be read."""
        from memwatch.kube import ApiError
        from memwatch.observability import HISTORY_SELECTOR

        ns = self.opts.namespace
        path = f"/api/v1/namespaces/{ns}/events" if ns else "/api/v1/events"
        items: list[Mapping[str, Any]] = []
        try:
            for page in self.kube.list_pages(path, {"fieldSelector": HISTORY_SELECTOR}):
                items.extend(page.get("items") or ())
        except (ApiError, ValueError, AttributeError, TypeError) as exc:
            why = _reason(exc) if isinstance(exc, ApiError) and exc.status == 0 else str(exc)
            return None, f"cannot read memwatch's Events {self._where()}: {why}; LAST ACTION shows '?'"
        return last_actions(items, self.words), None

    def read(self) -> Snapshot:
        started = time.time()
        policies = self.policies()
        records, origins = self.pods(policies)
        samples, usage_error, notes = self.usage(records)
        actions, events_error = self.events()
        current = getattr(self.source, "current", None)
        name = current.name if self.source.name == "auto" and current is not None else self.source.name
        said, self._pending = self._pending, []
        return Snapshot(started, records, samples, name, usage_error, actions, events_error, [*said, *notes],
                        origins)


def connect(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[Kube, Options, UsageSource]:
    """The client (the caller's kubeconfig), the options, and the usage source as `memwatch run` makes it."""
    from memwatch.kube import ConfigError, Kube, load_user_client
    from memwatch.sources import make_source

    try:
        api, default_namespace = load_user_client(args.kubeconfig, args.context, env)
    except ConfigError as exc:
        raise StatusError(str(exc)) from None
    opts = options(args, default_namespace)
    kube = Kube(api, timeout=opts.timeout)
    try:
        source = make_source(opts.source, kube, (opts.namespace,) if opts.namespace else (), opts.selector,
                             kubelet_ca_file=opts.kubelet_ca_file, kubelet_insecure_tls=opts.kubelet_insecure_tls,
                             kubelet_address_types=opts.kubelet_address_types, kubelet_timeout=opts.timeout)
    except ValueError as exc:
        raise StatusError(str(exc), 2) from None
    return kube, opts, source


# -- rows --------------------------------------------------------------------------------------


class History:
    """Recent samples per pod (distinct sample times), for the growth rate with --watch."""

    def __init__(self, size: int = SAMPLES) -> None:
        self.size = size
        self._samples: dict[str, deque[Usage]] = {}

    def add(self, snapshot: Snapshot) -> None:
        live = {r.uid for r in snapshot.records}
        for uid in [u for u in self._samples if u not in live]:
            del self._samples[uid]
        for uid, usage in snapshot.samples.items():
            ring = self._samples.setdefault(uid, deque(maxlen=self.size))
            if not ring or usage.timestamp > ring[-1].timestamp:
                ring.append(usage)

    def samples(self, uid: str) -> list[Usage]:
        return list(self._samples.get(uid, ()))


def limit_origin(record: PodRecord, limit: Limit, sources: Mapping[str, str] | None = None) -> str:
    """Where a watch limit comes from: ``annotation`` (the pod's own ``memwatch.io/limit`` or
    ``memwatch.io/limit.<container>``) or the ref of the policy that set it, as ``sources`` (the
    record's :attr:`memwatch.policyset.Effective.sources`) says; ``annotation`` without them."""
    key = KEY_LIMIT if limit.container is None else KEY_CONTAINER_LIMIT + limit.container
    return (sources or {}).get(key) or FROM_ANNOTATION


def scope_usage(limit: Limit, usage: Usage | None) -> int | None:
    """The bytes a limit is judged on (as :func:`memwatch.policy.breaches` judges them)."""
    if usage is None:
        return None
    return usage.total if limit.container is None else usage.containers.get(limit.container)


@dataclass(frozen=True, slots=True)
class Row:
    """One pod's line."""

    record: PodRecord
    action: str
    limit: Limit | None
    limit_from: str | None
    hard_limit: int | None
    usage: Usage | None  # the latest sample
    used: int | None  # bytes in the limit's scope
    growth: float | None  # bytes per second, over the samples
    crosses_in: float | None  # seconds from the latest sample; 0: over already
    last: LastAction | None
    events_known: bool

    @property
    def key(self) -> tuple[str, str]:
        return self.record.namespace, self.record.name

    @property
    def headroom(self) -> int | None:
        return None if self.limit is None or self.used is None else self.limit.bytes - self.used

    @property
    def headroom_percent(self) -> float | None:
        room = self.headroom
        return None if room is None or self.limit is None else 100.0 * room / self.limit.bytes

    @property
    def note(self) -> str:
        r = self.record
        if r.problems:
            return "invalid: " + "; ".join(str(p) for p in r.problems)
        if r.protected:
            return f"protected: {r.protected}"
        return "; ".join(r.warnings)


def tightest(limits: Sequence[Limit], usage: Usage | None) -> Limit:
    """The limit with the least headroom left; unmeasured, the pod's own limit, else the smallest."""
    def tightness(lim: Limit) -> tuple[int, float]:
        used = scope_usage(lim, usage)
        if used is None:
            return 1, (lim.container is not None) * 1e30 + lim.bytes
        return 0, (lim.bytes - used) / lim.bytes

    return min(limits, key=tightness)


def _action(record: PodRecord, dry_run: bool) -> str:
    """What memwatch would do when the pod crosses its limit (the enforcer's rules)."""
    if record.policy is None:
        return "invalid"
    if record.terminating:
        return "terminating"
    if record.protected:
        return "protected"
    if dry_run:
        return Action.DRY_RUN.value
    return record.policy.action.value


def build_rows(snapshot: Snapshot, history: History, dry_run: bool = False) -> list[Row]:
    """One row per record: the limit nearest to being crossed, and how fast it is approached."""
    rows = []
    for record in snapshot.records:
        usage = snapshot.samples.get(record.uid)
        samples = (history.samples(record.uid) or [usage]) if usage else []
        policy = record.policy
        limit = tightest(policy.limits, usage) if policy is not None and policy.limits else None
        hard: int | None
        if limit is not None and policy is not None:
            hard = policy.pod_hard_limit if limit.container is None else \
                dict(policy.container_hard_limits).get(limit.container)
        else:
            hards = [c.hard_limit for c in record.containers]
            hard = sum(h for h in hards if h is not None) if hards and None not in hards else None
        used = scope_usage(limit, usage) if limit is not None else None
        growth = crosses = None
        if limit is not None:
            series = [(u.timestamp, b) for u in samples if (b := scope_usage(limit, u)) is not None]
            growth = growth_rate(series)
            crosses = seconds_to_cross(series, limit.bytes)
        known = snapshot.actions is not None
        origin = limit_origin(record, limit, snapshot.origins.get(record.uid)) if limit is not None else None
        rows.append(Row(record, _action(record, dry_run), limit, origin, hard, usage, used, growth,
                        crosses, (snapshot.actions or {}).get(record.uid), known))
    return rows


def sort_rows(rows: Sequence[Row], by: str = "headroom") -> list[Row]:
    """headroom: nearest the limit first (over it first of all); usage: largest first; growth:
    fastest first. Rows without the figure come last, by namespace and name."""
    def key(row: Row) -> tuple[int, float, tuple[str, str]]:
        value = {"headroom": row.headroom_percent,
                 "usage": None if row.used is None else -float(row.used),
                 "growth": None if row.growth is None else -row.growth}[by]
        return (1, 0.0, row.key) if value is None else (0, value, row.key)

    return sorted(rows, key=key)


# -- output ------------------------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def short_duration(seconds: float) -> str:
    """`12s`, `4m10s`, `3h12m`, `2d3h`: kubectl's style, two units at most."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _printable(text: str) -> str:
    """Control characters from the cluster (an Event message) never reach the terminal as such."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _growth_text(rate: float | None) -> str:
    if rate is None:
        return "-"
    if abs(rate) < 1:
        return "0B/s"
    return ("+" if rate > 0 else "-") + format_bytes(abs(rate)) + "/s"


def _crosses_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return "now" if seconds <= 0 else short_duration(seconds)


def _level(percent: float | None) -> str:
    if percent is None:
        return ""
    if percent < 0:
        return BOLD + RED
    if percent < DANGER:
        return RED
    if percent < CAUTION:
        return YELLOW
    return GREEN


def _bar(percent: float | None, full: str, empty: str) -> str:
    """Usage against the watch limit: the empty part is the headroom."""
    if percent is None:
        return " " * BAR_WIDTH
    used = min(1.0, max(0.0, 1 - percent / 100))
    filled = round(used * BAR_WIDTH)
    return full * filled + empty * (BAR_WIDTH - filled)


Cell = tuple[str, str]  # (text, SGR style or "")


def table_cells(row: Row, now: float, wide: bool, bar: tuple[str, str] | None) -> list[Cell]:
    r, lim = row.record, row.limit
    pct = row.headroom_percent
    headroom = "-"
    if pct is not None and row.headroom is not None:
        headroom = f"{pct:.0f}% " + ("-" if row.headroom < 0 else "") + format_bytes(abs(row.headroom))
    if bar is not None:
        headroom = _bar(pct, *bar) + " " + headroom
    if row.last is not None:
        last = row.last.result + (f" {short_duration(now - row.last.time)} ago" if row.last.time else "")
    else:
        last = "-" if row.events_known else "?"
    limit_text = "-"
    if lim is not None:
        limit_text = format_bytes(lim.bytes) + (f" ({lim.text})" if "%" in lim.text else "")
    action_style = YELLOW if row.action == "invalid" else DIM if row.action in ("protected", "terminating") else ""
    cells: list[Cell] = [
        (f"{r.namespace}/{r.name}", ""),
        (r.node or "-", ""),
        (format_bytes(row.used) if row.used is not None else "-", ""),
        (limit_text, ""),
    ]
    if wide:
        cells.append((lim.scope if lim is not None else "-", ""))
    cells += [
        (row.limit_from or "-", ""),
        (format_bytes(row.hard_limit) if row.hard_limit is not None else "-", ""),
        (headroom, _level(pct)),
        (_growth_text(row.growth), ""),
        (_crosses_text(row.crosses_in), "" if row.crosses_in is None else BOLD + RED if row.crosses_in <= 0
         else YELLOW),
        (row.action, action_style),
        (_printable(last), ""),
    ]
    if wide:
        usage = row.usage
        cells += [
            (usage.source if usage else "-", ""),
            (f"{short_duration(now - usage.timestamp)} ago" if usage else "-", ""),
            (_printable(row.note) or "-", ""),
        ]
    return cells


def headers(wide: bool) -> list[str]:
    names = ["POD", "NODE", "WORKING SET", "WATCH LIMIT"] + (["SCOPE"] if wide else [])
    names += ["FROM", "HARD LIMIT", "HEADROOM", "GROWTH", "CROSSES IN", "ACTION", "LAST ACTION"]
    return names + (["SOURCE", "SAMPLED", "NOTE"] if wide else [])


def _bar_chars(out: TextIO) -> tuple[str, str]:
    try:
        "█░".encode(out.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "#", "."
    return "█", "░"


def render_table(rows: Sequence[Row], now: float, wide: bool = False, tty: bool = False,
                 bar: tuple[str, str] = ("█", "░"), width: int | None = None) -> list[str]:
    """The table's lines. On a terminal (``tty``): colours, a headroom bar, lines cut at ``width``."""
    lines: list[list[Cell]] = [[(h, BOLD) for h in headers(wide)]]
    lines += [table_cells(row, now, wide, bar if tty else None) for row in rows]
    widths = [max(len(line[i][0]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for line in lines:
        parts: list[Cell] = []
        for i, (text, style) in enumerate(line):
            last = i == len(line) - 1
            parts.append((text if last else text.ljust(widths[i]), style))
            if not last:
                parts.append(("   ", ""))
        out.append(_join(parts, tty, width))
    return out


def _join(parts: Sequence[Cell], tty: bool, width: int | None) -> str:
    text, room = "", width if width is not None else sys.maxsize
    for chunk, style in parts:
        chunk = chunk[:room]
        room -= len(chunk)
        text += f"{style}{chunk}{RESET}" if tty and style and chunk.strip() else chunk
        if room <= 0:
            break
    return text.rstrip()


def json_row(row: Row, now: float) -> dict[str, Any]:
    r, lim, usage = row.record, row.limit, row.usage
    return {
        "namespace": r.namespace, "name": r.name, "uid": r.uid, "node": r.node, "phase": r.phase,
        "working_set_bytes": row.used,
        "watch_limit_bytes": lim.bytes if lim else None,
        "watch_limit": lim.text if lim else None,
        "limit_from": row.limit_from,
        "policies": list(r.policies),
        "workload": r.workload,
        "scope": lim.scope if lim else None,
        "hard_limit_bytes": row.hard_limit,
        "headroom_bytes": row.headroom,
        "headroom_percent": None if row.headroom_percent is None else round(row.headroom_percent, 2),
        "growth_bytes_per_second": None if row.growth is None else round(row.growth, 1),
        "seconds_to_limit": None if row.crosses_in is None else round(row.crosses_in, 1),
        "action": row.action,
        "last_action": None if row.last is None else {
            "reason": row.last.reason, "result": row.last.result, "time": _iso(row.last.time),
            "message": row.last.message},
        "usage_source": usage.source if usage else None,
        "sample_time": _iso(usage.timestamp) if usage else None,
        "sample_age_seconds": round(now - usage.timestamp, 1) if usage else None,
        "containers": dict(usage.containers) if usage else None,
        "protected": r.protected,
        "problems": [str(p) for p in r.problems],
        "warnings": list(r.warnings),
    }


def render_json(snapshot: Snapshot, rows: Sequence[Row], opts: Options, indent: int | None = 2) -> str:
    doc = {
        "time": _iso(snapshot.time),
        "namespace": opts.namespace,
        "selector": opts.selector,
        "source": opts.source,
        "source_used": snapshot.source,
        "usage_error": snapshot.usage_error,
        "events_error": snapshot.events_error,
        "notes": snapshot.notes,
        "pods": [json_row(row, snapshot.time) for row in rows],
    }
    return json.dumps(doc, indent=indent)


# -- the command -------------------------------------------------------------------------------


def _is_tty(out: TextIO, env: Mapping[str, str]) -> bool:
    """Colours and the bar only on a terminal (and not with NO_COLOR set, no-color.org, or TERM=dumb)."""
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


def _scope_text(opts: Options) -> str:
    where = f"namespace {opts.namespace}" if opts.namespace else "all namespaces"
    return where + (f", -l {opts.selector}" if opts.selector else "")


def _problems(snapshot: Snapshot) -> list[str]:
    """What the read could not do, one line each."""
    lines = [*snapshot.notes]
    for line in (snapshot.usage_error, snapshot.events_error):
        if line:
            lines.append(line)
    unmeasured = sum(1 for r in snapshot.records if r.node and r.policy and r.uid not in snapshot.samples)
    if unmeasured and not snapshot.usage_error:
        lines.append(f"no usage sample for {unmeasured} pod{'s' if unmeasured != 1 else ''} from source "
                     f"{snapshot.source} (a pod's first sample comes 10-20 s after it starts)")
    return lines


class View:
    """Draws snapshots: once, or refreshed in place on a terminal (--watch)."""

    def __init__(self, opts: Options, out: TextIO, err: TextIO, env: Mapping[str, str], prog: str = PROG) -> None:
        self.opts, self.out, self.err, self.prog = opts, out, err, prog
        self.tty = _is_tty(out, env)
        self.bar = _bar_chars(out)
        self.history = History()
        self.frames = 0
        self.last_rows: list[Row] = []

    def rows(self, snapshot: Snapshot) -> list[Row]:
        self.history.add(snapshot)
        return sort_rows(build_rows(snapshot, self.history, self.opts.dry_run), self.opts.sort)

    def once(self, snapshot: Snapshot) -> None:
        rows = self.rows(snapshot)
        for line in _problems(snapshot):
            self.err.write(f"{self.prog}: {line}\n")
        if self.opts.output == "json":
            self.out.write(render_json(snapshot, rows, self.opts) + "\n")
        elif not rows:
            self.err.write(f"No watched pods in {_scope_text(self.opts)}.\n")
        else:  # whole lines, as kubectl writes them: only a redrawn screen (--watch) is cut to fit
            lines = render_table(rows, snapshot.time, self.opts.output == "wide", self.tty, self.bar)
            self.out.write("\n".join(lines) + "\n")
        self.out.flush()

    def frame(self, snapshot: Snapshot, error: str | None = None) -> None:
        """One --watch frame: in place on a terminal, appended otherwise (JSON: one document a line)."""
        rows = self.rows(snapshot) if error is None else self.last_rows
        self.last_rows = rows
        if self.opts.output == "json":
            if error is None:
                self.out.write(render_json(snapshot, rows, self.opts, indent=None) + "\n")
            else:
                self.err.write(f"{self.prog}: {error}\n")
            self.out.flush()
            return
        size = shutil.get_terminal_size()
        stamp = datetime.now().strftime("%H:%M:%S")
        every = f"{self.opts.interval:g}s" if self.opts.interval < 60 else short_duration(self.opts.interval)
        title = (f"Every {every}: {self.prog} ({_scope_text(self.opts)}; "
                 f"source {snapshot.source})   {stamp}   Ctrl-C to stop")
        problems = [f"! {error}; showing the last read"] if error else [f"! {p}" for p in _problems(snapshot)]
        # One column short of the edge: a terminal holding its cursor at the last column would let
        # the line-clearing sequence erase that column's character.
        width = size.columns - 1
        body = render_table(rows, snapshot.time, self.opts.output == "wide", self.tty, self.bar,
                            width if self.tty else None) if rows else [f"No watched pods in {_scope_text(self.opts)}."]
        if self.tty:
            # Every line ends with a newline: one line fewer than the screen, or the top scrolls away.
            room = max(3, size.lines - 3 - len(problems))
            if len(body) > room:
                body = [*body[:room - 1], f"... and {len(body) - room + 1} more"]
            lines = [title[:width], "", *body, *(p[:width] for p in problems)]
            start = HOME if self.frames else CLEAR_SCREEN + HOME
            self.out.write(start + "".join(line + CLEAR_LINE + "\n" for line in lines) + CLEAR_BELOW)
        else:
            self.out.write("\n".join([title, *body, *problems]) + "\n\n")
        self.out.flush()
        self.frames += 1


def watch(reader: Reader, view: View, first: Snapshot, sleep: Callable[[float], None] | None = None) -> int:
    """Redraw every interval until Ctrl-C (exit 0). A failed read keeps the last rows and says why."""
    sleep = sleep or time.sleep
    snapshot, error = first, None
    try:
        if view.tty and view.opts.output != "json":
            view.out.write(HIDE_CURSOR)
        while True:
            started = time.monotonic()
            view.frame(snapshot, error)
            sleep(max(0.0, view.opts.interval - (time.monotonic() - started)))
            try:
                snapshot, error = reader.read(), None
            except StatusError as exc:
                error = str(exc)
    except KeyboardInterrupt:
        return 0
    finally:
        if view.tty and view.opts.output != "json":
            view.out.write(SHOW_CURSOR)
            view.out.flush()


def run(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO, prog: str = PROG) -> int:
    notes = _Notes()
    with notes.attached():
        kube, opts, source = connect(args, env)
        said = notes.take()  # while setting up (an insecure TLS setting)
        reader = Reader(kube, opts, source, notes)
        reader.check_namespace()
        snapshot = reader.read()
        snapshot.notes[:0] = said
        view = View(opts, out, err, env, prog)
        if not opts.watch:
            view.once(snapshot)
            return 0
        return watch(reader, view, snapshot)


def main(argv: Sequence[str], env: Mapping[str, str] | None = None, prog: str = PROG,
         out: TextIO | None = None, err: TextIO | None = None,
         formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> int:
    """`memwatch status ...` (``argv`` after the word `status`). Returns the exit code."""
    return command_main(build_parser, run, argv, env, prog, out, err, formatter_class)


def execute(args: argparse.Namespace, env: Mapping[str, str], prog: str = PROG,
            out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run parsed arguments; every failure is one line on ``err`` and an exit code."""
    return command_execute(run, args, env, prog, out, err)


#: A read-only command's body: ``run(args, env, out, err, prog)`` -> exit code.
Runner = Callable[[argparse.Namespace, Mapping[str, str], TextIO, TextIO, str], int]


def command_main(build: Callable[[str, Mapping[str, str], type[argparse.HelpFormatter]], argparse.ArgumentParser],
                 runner: Runner, argv: Sequence[str], env: Mapping[str, str] | None, prog: str,
                 out: TextIO | None, err: TextIO | None, formatter_class: type[argparse.HelpFormatter]) -> int:
    """Parse ``argv`` with the parser ``build`` makes and run it: the shell `memwatch status` and
    `memwatch explain` share (and the kubectl plugin with them)."""
    env = os.environ if env is None else env
    try:
        args = build(prog, env, formatter_class).parse_args(argv)
    except StatusError as exc:
        (sys.stderr if err is None else err).write(f"{prog}: error: {exc}\n")
        return exc.code
    return command_execute(runner, args, env, prog, out, err)


def command_execute(runner: Runner, args: argparse.Namespace, env: Mapping[str, str], prog: str,
                    out: TextIO | None, err: TextIO | None) -> int:
    """Run a read-only command; every failure is one line on ``err`` and an exit code, never a traceback."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        return runner(args, env, out, err, prog)
    except StatusError as exc:
        err.write(f"{prog}: error: {_printable(str(exc))}\n")
        return exc.code
    except KeyboardInterrupt:  # Ctrl-C while a single read is under way
        err.write("\n")
        return 130
    except BrokenPipeError:  # `memwatch status | head`: the reader left; say nothing more
        if out is sys.stdout:
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug, or an answer nobody foresaw: still one line, never a traceback
        err.write(f"{prog}: error: unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:500]} "
                  "(please report it)\n")
        return 1
