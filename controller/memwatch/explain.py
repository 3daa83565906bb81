"""`memwatch explain` (also `kubectl memwatch explain`): why memwatch watches a pod, or not, and with what.

For one pod of the cluster (``memwatch explain shop/web-0``, or ``-n shop web-0``), or every pod and
pod template in manifests (``memwatch explain -f deploy.yaml -f policies.yaml``), judged by the
controller's own code:

* the pod's ``memwatch.io/*`` annotations merged with the MemwatchPolicy and ClusterMemwatchPolicy
  objects that select it, field by field (:meth:`memwatch.policyset.PolicySet.effective`), each field
  naming where it came from: ``annotation``, a policy (``MemwatchPolicy shop/limits``) or ``default``;
* resolved by :func:`memwatch.policy.resolve` (limits in bytes, percentages of limits or requests),
  watched or not as :func:`memwatch.podindex.build_record` decides, protected or not as
  :class:`memwatch.protections.Protections` says (the protection and default flags of `memwatch run`
  are accepted, as by `memwatch status`);
* the conflicts between policies of one level and who won, and the invalid policies that would have
  selected the pod (memwatch ignores them; their problems are those of their ``Ready`` condition);
* the pod's workload and, live, how much of its restart budget is left, counted from memwatch's own
  Events (:func:`budget_use`; offline it is unknown).

Live, it reads with the caller's kubeconfig and RBAC: get the pod, list both kinds of policy, get the
pod's namespace (only when a ClusterMemwatchPolicy selects namespaces by label) and list memwatch's
Events in the namespace. Only the pod is required: what else the caller may not read is said in a
note and left out. It writes nothing. Offline (``-f``) it reads files only, never a cluster.

Light to import: the Kubernetes client is imported only when a live command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from memwatch.budget import workload_of
from memwatch.podindex import FINISHED, build_record, template_policy
from memwatch.policy import (
    KEY_ACTION,
    KEY_CONTAINER_LIMIT,
    KEY_ESCALATE,
    KEY_FOR,
    KEY_GRACE_PERIOD,
    KEY_LIMIT,
    KEY_LIMIT_OF,
    KEY_MIN_POD_AGE,
    KEY_NODE_PRESSURE,
    KEY_PREDICT,
    KEY_RESTART_BUDGET,
    NOT_WATCH_KEYS,
    PREFIX,
    Action,
    Defaults,
    InvalidPolicy,
    Limit,
    Policy,
    RestartBudget,
    format_window,
)
from memwatch.policyset import (
    ANNOTATION,
    API_VERSION,
    CLUSTER,
    FIELDS,
    NAMESPACED,
    PLURALS,
    Effective,
    PolicyObject,
    PolicySet,
    own_settings,
    parse_policy,
)
from memwatch.protections import SYSTEM_CLUSTER_CRITICAL, Protections
from memwatch.quantity import format_bytes, parse_time
from memwatch.status import (
    NAMESPACE,
    StatusError,
    _duration,
    _Parser,
    _printable,
    command_execute,
    command_main,
    garbled,
)
from memwatch.status import explain as api_error

if TYPE_CHECKING:
    from memwatch.kube import Kube

PROG = "memwatch explain"
HELP = "explain a pod's memwatch settings: watched or not and why, each field and where it came from"
DESCRIPTION = ("Why memwatch watches a pod (or not), and with what: each setting's value and where it came from "
               "(the pod's own annotation, a MemwatchPolicy, a ClusterMemwatchPolicy or the default), conflicts "
               "between policies, invalid policies that would have selected it, protections, its workload and "
               "its restart budget. Live (NAMESPACE/POD, or -n NAMESPACE POD) with your kubeconfig and RBAC, or "
               "offline with -f: every pod and pod template in the files, with the policies and Namespaces "
               "they hold.")
EPILOG = ("The protection and default flags describe the controller: pass the values `memwatch run` runs with "
          "when they differ from its defaults.")
OUTPUTS = ("text", "json")
#: A pod name (a DNS subdomain), as the API server accepts it.
POD_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?")
#: The flags of `memwatch run` that explain takes as they are: what the controller protects, and its defaults.
CONTROLLER_FLAGS = ("--protected-namespace", "--allow-namespace", "--exclude-namespace", "--protected-priority",
                    "--self-selector", "--default-action", "--default-grace-period", "--default-for",
                    "--default-restart-budget", "--default-min-pod-age", "--escalate", "--dry-run")
#: The priority the admission plugin gives a pod of these built-in classes (offline: templates name the class).
BUILTIN_PRIORITIES = {"system-cluster-critical": SYSTEM_CLUSTER_CRITICAL, "system-node-critical": 2_000_001_000}
#: Each row of the field table: (name, annotation key); the containers' limits follow ``limit``.
ROWS = (("limit-of", KEY_LIMIT_OF), ("action", KEY_ACTION), ("for", KEY_FOR), ("grace-period", KEY_GRACE_PERIOD),
        ("escalate", KEY_ESCALATE), ("predict", KEY_PREDICT), ("node-pressure", KEY_NODE_PRESSURE),
        ("restart-budget", KEY_RESTART_BUDGET), ("min-pod-age", KEY_MIN_POD_AGE))
SPEC_FIELDS = {key: spec_field for spec_field, key in FIELDS.items()}
API = f"/apis/{API_VERSION}"
UNKNOWN_OFFLINE = "unknown offline (memwatch's Events are on the cluster)"


# -- arguments ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> argparse.ArgumentParser:
    from memwatch.settings import COMMON, RUN, add_options

    parser.add_argument("pod", nargs="?", metavar="[NAMESPACE/]POD",
                        help="the pod (live); with -f, only the pods or templates of this name")
    parser.add_argument("-n", "--namespace", metavar="NS",
                        help="the pod's namespace (default: the kubeconfig context's, as kubectl); with -f, the "
                             "namespace of objects that name none (default: default)")
    parser.add_argument("-f", "--filename", action="append", metavar="FILE",
                        help="explain the pods and pod templates of this manifest (repeatable; '-' for stdin), with "
                             "the MemwatchPolicy, ClusterMemwatchPolicy and Namespace objects of every file; reads "
                             "no cluster")
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="text", help="text, or json (every field)")
    parser.add_argument("--kubeconfig", metavar="PATH",
                        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
    parser.add_argument("--context", metavar="NAME", help="kubeconfig context (default: its current context)")
    parser.add_argument("--request-timeout", type=_duration, default="10s", metavar="DURATION",
                        help="give up on an API server request after this long")
    add_options(parser, [o for o in (*RUN, *COMMON) if o.flag in CONTROLLER_FLAGS], env)
    return parser


def build_parser(prog: str = PROG, env: Mapping[str, str] | None = None,
                 formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter_class)
    return add_arguments(parser, os.environ if env is None else env)


@dataclass(frozen=True)
class Controller:
    """What the controller is assumed to run with: its protections and defaults."""

    protections: Protections
    defaults: Defaults
    dry_run: bool


def controller(args: argparse.Namespace) -> Controller:
    from memwatch.settings import protections_from_args

    defaults = Defaults(action=Action(args.default_action), grace_period=args.default_grace_period,
                        for_seconds=args.default_for, escalate=args.escalate,
                        restart_budget=args.default_restart_budget, min_pod_age=args.default_min_pod_age)
    return Controller(protections_from_args(args), defaults, args.dry_run)


# -- what is explained -------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """A pod, or a pod made of a workload's template (offline)."""

    kind: str  # Pod, or the template's owner: Deployment, CronJob, ...
    namespace: str
    name: str
    pod: Mapping[str, Any]
    workload: str | None

    @property
    def ref(self) -> str:
        what = "Pod" if self.kind == "Pod" else f"{self.kind} (pod template)"
        return f"{what} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Scene:
    """Everything a pod's explanation depends on besides the pod."""

    policies: tuple[PolicyObject, ...]  # valid and invalid, both kinds
    namespace_labels: Mapping[str, Mapping[str, str]]
    events: tuple[Mapping[str, Any], ...] | None  # memwatch's Events in the namespace; None: unknown
    events_unknown: str = UNKNOWN_OFFLINE  # why they are unknown
    now: float = 0.0
    labels_unknown: str = "the files hold no Namespace object of that name"  # why a namespace's labels are unknown


# -- the restart budget (kept small and apart: memwatch.budget may later do this count) ----------


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """The actions on one workload within a restart budget's window."""

    budget: RestartBudget
    used: int
    oldest: float | None = None
    frees_at: float | None = None  # when spent: when the next action is allowed again

    @property
    def left(self) -> int:
        return max(0, self.budget.actions - self.used)


def _generated_name(workload: str) -> re.Pattern[str] | None:
    """The names the workload's controller gives its pods (for an Event that names no workload)."""
    kind, _, name = workload.partition("/")
    base = re.escape(name)
    if kind == "Deployment":
        return re.compile(base + r"-[a-z0-9]{1,10}-[a-z0-9]{5}")
    if kind == "StatefulSet":
        return re.compile(base + r"-[0-9]+")
    if kind in ("ReplicaSet", "DaemonSet", "Job", "ReplicationController"):
        return re.compile(base + r"-[a-z0-9]{5}")
    return None


def budget_use(events: Sequence[Mapping[str, Any]], namespace: str, workload: str, pod_uid: str,
               budget: RestartBudget, now: float) -> BudgetUse:
    """How much of ``budget`` memwatch's actions on ``workload`` use in the window ending ``now``.

    An action counts when memwatch's Event reports it (a reason of
    :data:`memwatch.observability.BUDGET_REASONS`) and names the workload in ``related``, as the
    controller counts it; an eviction, deletion or escalation Event without ``related`` counts when
    its pod is this pod or one the workload's controller named. Each Event counts once (by name)."""
    from memwatch.budget import from_reference
    from memwatch.observability import ACTED_REASONS, BUDGET_REASONS, COMPONENT

    pattern = _generated_name(workload)
    seen: set[str] = set()
    times: list[float] = []
    for ev in events:
        if not isinstance(ev, Mapping):
            continue
        reason = str(ev.get("reason") or "")
        if reason not in BUDGET_REASONS or COMPONENT not in (_map(ev.get("source")).get("component"),
                                                             ev.get("reportingComponent")):
            continue
        meta, involved = _map(ev.get("metadata")), _map(ev.get("involvedObject"))
        related = from_reference(ev.get("related"), namespace)
        if related is not None:
            counts = related == (namespace, workload)
        else:
            pod = str(involved.get("name") or "")
            counts = reason in ACTED_REASONS and involved.get("kind", "Pod") == "Pod" and (
                (bool(pod_uid) and involved.get("uid") == pod_uid) or bool(pattern and pattern.fullmatch(pod)))
        at = parse_time(ev.get("firstTimestamp") or ev.get("eventTime") or ev.get("lastTimestamp"))
        ident = str(meta.get("name") or meta.get("uid") or id(ev))
        if not counts or at is None or ident in seen or not (now - budget.window < at <= now + 60):
            continue
        seen.add(ident)
        times.append(min(at, now))
    times.sort()
    used = len(times)
    if not used:
        return BudgetUse(budget, 0)
    frees_at = times[used - budget.actions] + budget.window if 0 < budget.actions <= used else None
    return BudgetUse(budget, used, times[0], frees_at)


def _clock(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _budget(subject: Subject, policy: Policy | None, scene: Scene, watched: bool) -> dict[str, Any]:
    workload = subject.workload
    doc: dict[str, Any] = {"budget": None, "workload": workload, "used": None, "left": None,
                           "window_seconds": None, "oldest_action": None, "frees_at": None}
    if not watched:
        doc["text"] = "-: not watched"
        return doc
    if policy is None:
        doc["text"] = "unknown: the settings are invalid"
        return doc
    budget = policy.restart_budget
    doc["budget"] = str(budget) if budget else "off"
    if budget is None:
        doc["text"] = "off: memwatch acts on each breach, however often"
        return doc
    doc["window_seconds"] = budget.window
    if not workload:
        doc["text"] = f"{budget}, but a bare pod has no workload: each of its actions is its own"
        return doc
    if scene.events is None:
        doc["text"] = f"{budget} on {workload}; left: {scene.events_unknown}"
        return doc
    use = budget_use(scene.events, subject.namespace, workload, str((subject.pod.get("metadata") or {}).get("uid")
                                                                    or ""), budget, scene.now)
    doc.update(used=use.used, left=use.left, oldest_action=_clock(use.oldest), frees_at=_clock(use.frees_at))
    window = format_window(budget.window)
    text = f"{use.left} of {budget.actions} left on {workload} (budget {budget}"
    if use.used:
        text += f"; {use.used} action{'s' if use.used != 1 else ''} in the last {window}, the first at " \
                f"{_clock(use.oldest)}"
    if use.frees_at is not None:
        text += f"; the next frees at {_clock(use.frees_at)}"
    doc["text"] = text + ")"
    return doc


# -- one pod's explanation ---------------------------------------------------------------------


def _limit_text(limit: Limit | None, raw: str | None, basis: str) -> str:
    if limit is None:
        return raw if raw is not None else "none"
    size = f"{format_bytes(limit.bytes)} ({limit.bytes} bytes)"
    if "%" in limit.text:
        return f"{limit.text} of resources.{basis}.memory: {size}"
    return size if format_bytes(limit.bytes) == limit.text else f"{limit.text}: {size}"


def _value_text(key: str, policy: Policy | None, raw: str | None, defaults: Defaults, dry_run: bool,
                spec: Mapping[str, Any]) -> str:
    """The effective value of one non-limit field, as memwatch will use it."""
    if policy is None:  # invalid: what is written, else the default
        if raw is not None:
            return raw
        policy = Policy((), defaults.action, defaults.grace_period, defaults.for_seconds, defaults.escalate,
                        defaults.predict, restart_budget=defaults.restart_budget, min_pod_age=defaults.min_pod_age)
    if key == KEY_LIMIT_OF:
        return (raw or "limits").strip().lower()
    if key == KEY_ACTION:
        text = policy.action.value
        if policy.action == Action.RESTART:
            text += " (the node agent kills the container in place; the controller evicts)"
        if dry_run and policy.action != Action.DRY_RUN:
            text += " (the controller runs with --dry-run: dry-run)"
        return text
    if key == KEY_FOR:
        return format_window(policy.for_seconds)
    if key == KEY_GRACE_PERIOD:
        if policy.grace_period is not None:
            return f"{policy.grace_period}s"
        own = spec.get("terminationGracePeriodSeconds")
        return "the pod's own terminationGracePeriodSeconds" + (f" ({own}s)" if isinstance(own, int) else "")
    if key == KEY_ESCALATE:
        return "true" if policy.escalate else "false"
    if key == KEY_PREDICT:
        return "true" if policy.predict else "false"
    if key == KEY_NODE_PRESSURE:
        return raw if raw is not None else "unset (the node guard's usual order)"
    if key == KEY_RESTART_BUDGET:
        return str(policy.restart_budget) if policy.restart_budget else "off"
    if key == KEY_MIN_POD_AGE:
        return format_window(policy.min_pod_age)
    return raw or ""


def _fields(effective: Effective, policy: Policy | None, defaults: Defaults, dry_run: bool,
            spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    settings = effective.annotations
    basis = str(settings.get(KEY_LIMIT_OF) or "limits").strip().lower()
    limits = {KEY_LIMIT if lim.container is None else KEY_CONTAINER_LIMIT + lim.container: lim
              for lim in (policy.limits if policy else ())}
    rows = []
    limit_keys = [KEY_LIMIT, *sorted(k for k in settings if k.startswith(KEY_CONTAINER_LIMIT))]
    for key in limit_keys:
        lim = limits.get(key)
        rows.append({"field": key[len(PREFIX):], "annotation": key,
                     "spec_field": "limit" if key == KEY_LIMIT else "containers." + key[len(KEY_CONTAINER_LIMIT):],
                     "value": settings.get(key), "effective": _limit_text(lim, settings.get(key), basis),
                     "bytes": lim.bytes if lim else None, "source": effective.origin(key)})
    for name, key in ROWS:
        raw = settings.get(key)
        rows.append({"field": name, "annotation": key, "spec_field": SPEC_FIELDS[key], "value": raw,
                     "effective": _value_text(key, policy, raw, defaults, dry_run, spec), "bytes": None,
                     "source": effective.origin(key)})
    return rows


def _selector_problem(policy: PolicyObject) -> bool:
    return any(p.startswith(("spec.podSelector", "spec.namespaceSelector")) for p in policy.problems)


def _invalid_policies(scene: Scene, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """The invalid policies that would select the pod were they valid (``selects`` None: their
    selector itself is invalid, so nobody can say)."""
    out = []
    for policy in scene.policies:
        if policy.valid or (policy.kind == NAMESPACED and policy.namespace != namespace):
            continue
        if policy.kind not in PLURALS:
            continue
        selects: bool | None = None
        if not _selector_problem(policy):
            probe = PolicySet([dataclasses.replace(policy, problems=())], scene.namespace_labels)
            local, cluster = probe.matching(namespace, labels)
            selects = bool(local or cluster)
        if selects is not False:
            out.append({"policy": policy.ref, "selects": selects, "problems": list(policy.problems)})
    return out


def _why(subject: Subject, effective: Effective, watched: bool, problems: Sequence[str],
         own: Mapping[str, str]) -> str:
    """Why the pod is watched or not, in a sentence."""
    status = subject.pod.get("status") or {}
    phase = status.get("phase") if isinstance(status, Mapping) else None
    givers = sorted({effective.sources[k] for k in effective.annotations
                     if (k == KEY_LIMIT or k.startswith(KEY_CONTAINER_LIMIT)) and k in effective.sources})
    from_policies = [g for g in givers if g != ANNOTATION]
    if phase in FINISHED:
        return f"the pod has finished (phase {phase}): memwatch watches only pods that have not"
    if watched:
        if any(k not in NOT_WATCH_KEYS for k in own):
            text = "it carries memwatch.io/ annotations"
            if from_policies:
                text += f"; its watch limit comes from {', '.join(from_policies)}"
        else:
            text = f"{', '.join(from_policies)} give{'s' if len(from_policies) == 1 else ''} it a watch limit"
        if problems:
            text += "; but its settings are invalid, so memwatch will not act on it"
        return text
    if effective.by_policy_only:
        return (f"{', '.join(from_policies)} give{'s' if len(from_policies) == 1 else ''} it a watch limit that "
                f"cannot apply to it: {'; '.join(problems)}")
    if own:
        return ("its only memwatch.io/ annotation is memwatch.io/node-pressure, which asks for no watch limit "
                "(the node guard still reads it)")
    if effective.policies:
        one = len(effective.policies) == 1
        return (f"{', '.join(effective.policies)} select{'s' if one else ''} it but set{'s' if one else ''} no "
                "watch limit (a policy without one only changes pods that a limit already watches)")
    return "it has no memwatch.io/ annotation and no valid policy gives it a watch limit"


def explain_subject(subject: Subject, scene: Scene, ctl: Controller) -> dict[str, Any]:
    """One pod's explanation, as a JSON-ready document (the text output is rendered from it)."""
    pod = subject.pod
    meta, spec, status = _map(pod.get("metadata")), _map(pod.get("spec")), _map(pod.get("status"))
    labels = {str(k): str(v) for k, v in _map(meta.get("labels")).items()}
    annotations = _map(meta.get("annotations"))
    policies = PolicySet(scene.policies, scene.namespace_labels)
    effective = policies.effective(subject.namespace, labels, annotations)
    record = build_record(pod, ctl.defaults, ctl.protections.reason, policies)
    policy: Policy | None = None
    problems: list[str] = []
    warnings: list[str] = []
    try:
        policy = template_policy({"annotations": dict(effective.annotations)}, spec, ctl.defaults)
        warnings = list(policy.warnings)
    except InvalidPolicy as exc:
        problems, warnings = [str(p) for p in exc.problems], list(exc.warnings)
    finished = status.get("phase") in FINISHED
    watched = record is not None and not finished
    protected = ctl.protections.reason(pod)
    own = own_settings(annotations)
    if not watched:
        action = "nothing: not watched"
    elif problems or policy is None:
        action = "nothing: its settings are invalid"
    elif protected:
        action = "nothing: protected"
    elif meta.get("deletionTimestamp") is not None:
        action = "nothing: the pod is terminating"
    else:
        action = Action.DRY_RUN.value if ctl.dry_run else policy.action.value
    notes = []
    ns_known = subject.namespace in scene.namespace_labels
    by_label = [p.ref for p in scene.policies if p.kind == CLUSTER and p.valid
                and (p.namespace_selector.labels or p.namespace_selector.expressions)]
    if by_label and not ns_known:
        one = len(by_label) == 1
        notes.append(f"the labels of namespace {subject.namespace} are unknown ({scene.labels_unknown}), so "
                     f"{', '.join(by_label)} (which select{'s' if one else ''} namespaces by label) "
                     f"{'is' if one else 'are'} taken as not selecting it")
    started = parse_time(status.get("startTime"))
    if policy is not None and policy.min_pod_age and started is not None and scene.now:
        age = scene.now - started
        if age < policy.min_pod_age:
            notes.append(f"the pod started {format_window(round(age))} ago: memwatch.io/min-pod-age "
                         f"{format_window(policy.min_pod_age)} holds any action for "
                         f"{format_window(round(policy.min_pod_age - age))} more")
    conflicts = [{"annotation": c.key, "field": c.key[len(PREFIX):], "winner": c.winner, "value": c.value,
                  "losers": [{"policy": ref, "value": value} for ref, value in c.losers],
                  "moot": effective.origin(c.key) == ANNOTATION} for c in effective.conflicts]
    return {
        "kind": subject.kind, "namespace": subject.namespace, "name": subject.name,
        "uid": str(meta.get("uid") or "") or None,
        "watched": watched,
        "why": _why(subject, effective, record is not None, problems, own),
        "action": action,
        "protected": protected,
        "workload": subject.workload,
        "policies": list(effective.policies),
        "fields": _fields(effective, policy, ctl.defaults, ctl.dry_run, spec),
        "limits": [{"scope": lim.scope, "text": lim.text, "bytes": lim.bytes,
                    "source": effective.origin(KEY_LIMIT if lim.container is None
                                               else KEY_CONTAINER_LIMIT + lim.container)}
                   for lim in (policy.limits if policy else ())],
        "conflicts": conflicts,
        "invalid_policies": _invalid_policies(scene, subject.namespace, labels),
        "problems": problems if (watched or effective.watched) else [],
        "warnings": warnings if (watched or effective.watched) else [],
        "restart_budget": _budget(subject, policy, scene, watched),
        "notes": notes,
    }


# -- text --------------------------------------------------------------------------------------


def render_text(doc: Mapping[str, Any]) -> str:
    lines: list[str] = []
    for pod in doc["pods"]:
        if lines:
            lines.append("")
        what = "Pod" if pod["kind"] == "Pod" else f"{pod['kind']} (pod template)"
        lines.append(f"{what} {pod['namespace']}/{pod['name']}")
        head = [
            ("Watched", ("yes: " if pod["watched"] else "no: ") + pod["why"]),
            ("On a breach", pod["action"]),
            ("Protected", f"yes: {pod['protected']}" if pod["protected"] else "no"),
            ("Workload", pod["workload"] or "none (a bare pod)"),
            ("Restart budget", pod["restart_budget"]["text"]),
            ("Policies", ", ".join(pod["policies"]) + " (in precedence order)" if pod["policies"] else "none"),
        ]
        lines += [f"  {name + ':':<16}{value}" for name, value in head]
        table = [("FIELD", "VALUE", "FROM")] + [(f["field"], f["effective"], f["source"]) for f in pod["fields"]]
        widths = [max(len(row[i]) for row in table) for i in range(2)]
        lines.append("")
        lines += [f"  {a:<{widths[0]}}   {b:<{widths[1]}}   {c}".rstrip() for a, b, c in table]
        sections = [
            ("Conflicts (one field set differently by policies of one level; the first wins)",
             [f"{c['field']}: {c['winner']} ({c['value']!r}) wins over "
              + ", ".join(f"{lo['policy']} ({lo['value']!r})" for lo in c["losers"])
              + ("; moot: the pod's own annotation sets it" if c["moot"] else "") for c in pod["conflicts"]]),
            ("Invalid policies (ignored by memwatch)",
             [f"{p['policy']} {'would select it' if p['selects'] else 'may select it (its selector is invalid)'}: "
              + "; ".join(p["problems"]) for p in pod["invalid_policies"]]),
            ("Problems (memwatch does not act on the pod)", pod["problems"]),
            ("Warnings", pod["warnings"]),
            ("Notes", pod["notes"]),
        ]
        for title, items in sections:
            if items:
                lines += ["", f"  {title}:"] + [f"    {item}" for item in items]
    return "\n".join(_printable(line) for line in lines) + "\n"


# -- offline: manifests ------------------------------------------------------------------------


def _read(path: str) -> Iterator[Any]:
    """Every document of a file ('-': stdin), read as `memwatch lint` reads it (bounded, hostile-proof),
    with values typed as the API server types them."""
    import yaml

    from memwatch import lint

    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            text = sys.stdin.read() if stdin is None else io.TextIOWrapper(stdin, encoding="utf-8-sig").read()
        else:
            with open(path, encoding="utf-8-sig") as fh:
                text = fh.read()
    except UnicodeDecodeError as exc:
        raise StatusError(f"{name}: not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise StatusError(f"{name}: {exc.strerror or exc}") from None
    for first_line, chunk in lint.documents(io.StringIO(text)):
        try:
            for doc in lint.load(chunk):
                yield lint.plain(doc)
        except lint.Refused as exc:
            raise StatusError(f"{name}: document at line {first_line}: {exc}") from None
        except yaml.YAMLError as exc:
            raise StatusError(f"{name}: not valid YAML: {lint._yaml_problem(exc, first_line)}") from None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _template_pod(kind: str, obj: Mapping[str, Any], namespace: str) -> Subject | None:
    from memwatch.lint import TEMPLATE_KINDS

    spec = _map(obj.get("spec"))
    if kind in TEMPLATE_KINDS:
        template = _map(spec.get("template"))
    elif kind == "CronJob":
        template = _map(_map(_map(spec.get("jobTemplate")).get("spec")).get("template"))
    else:
        return None
    name = str(_map(obj.get("metadata")).get("name") or "?")
    tmeta, tspec = _map(template.get("metadata")), dict(_map(template.get("spec")))
    if "priority" not in tspec and tspec.get("priorityClassName") in BUILTIN_PRIORITIES:
        tspec["priority"] = BUILTIN_PRIORITIES[str(tspec["priorityClassName"])]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": dict(_map(tmeta.get("labels"))),
                        "annotations": dict(_map(tmeta.get("annotations")))},
           "spec": tspec}
    return Subject(kind, namespace, name, pod, f"{kind}/{name}")


def read_manifests(paths: Sequence[str], default_namespace: str) -> tuple[list[Subject], Scene]:
    """The pods and templates of the files, and the policies and Namespaces they hold."""
    subjects: list[Subject] = []
    policies: list[PolicyObject] = []
    labels: dict[str, Mapping[str, str]] = {}
    from memwatch.lint import POLICY_KINDS, objects

    for path in paths:
        for doc in _read(path):
            for obj in objects(doc):
                kind = str(obj["kind"])
                meta = _map(obj.get("metadata"))
                namespace = str(meta.get("namespace") or default_namespace)
                if kind == "Namespace":
                    labels[str(meta.get("name") or "")] = {str(k): str(v) for k, v in _map(meta.get("labels")).items()}
                elif kind in POLICY_KINDS:
                    if kind == NAMESPACED:
                        obj = {**obj, "metadata": {**meta, "namespace": namespace}}
                    policies.append(parse_policy(obj))
                elif kind == "Pod":
                    pod = {**obj, "metadata": {**meta, "namespace": namespace}}
                    subjects.append(Subject("Pod", namespace, str(meta.get("name") or "?"), pod, workload_of(pod)))
                else:
                    subject = _template_pod(kind, obj, namespace)
                    if subject is not None:
                        subjects.append(subject)
    return subjects, Scene(tuple(policies), labels, None)


def _matches(subject: Subject, wanted: str) -> bool:
    return wanted in (subject.name, f"{subject.namespace}/{subject.name}", f"{subject.kind}/{subject.name}",
                      f"{subject.kind.lower()}/{subject.name}")


# -- live: the cluster -------------------------------------------------------------------------


def target(pod: str | None, namespace: str | None, default_namespace: str) -> tuple[str, str]:
    """(namespace, name) of the pod asked for: ``NS/POD``, or ``POD`` with -n or the context's namespace."""
    if not pod:
        raise StatusError("name a pod: NAMESPACE/POD or -n NAMESPACE POD (or -f FILE to explain manifests)")
    ns, name = (pod.split("/", 1) if "/" in pod else (namespace or default_namespace, pod))
    if namespace and namespace != ns:
        raise StatusError(f"{pod!r} names namespace {ns!r} but -n says {namespace!r}")
    if not NAMESPACE.fullmatch(ns):
        raise StatusError(f"{ns!r} is not a namespace name (a DNS label: lower-case letters, digits and '-', "
                          "at most 63)")
    if not POD_NAME.fullmatch(name):
        raise StatusError(f"{name!r} is not a pod name (lower-case letters, digits, '-' and '.', at most 253)")
    return ns, name


class Live:
    """The reads of one live explanation, each with the caller's RBAC."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.notes: list[str] = []

    def pod(self, namespace: str, name: str) -> Mapping[str, Any]:
        from memwatch.kube import ApiError

        doing = f"get pod {namespace}/{name}"
        try:
            found = self.kube.get_json_or_none(f"/api/v1/namespaces/{namespace}/pods/{name}")
        except ApiError as exc:
            raise api_error(exc, doing, self.kube.server) from None
        except ValueError as exc:
            raise garbled(exc, doing, self.kube.server) from None
        if found is None:
            raise StatusError(f"pod {namespace}/{name} not found")
        if not isinstance(found, Mapping) or found.get("kind", "Pod") != "Pod":
            raise garbled(ValueError("the answer is not a Pod"), doing, self.kube.server)
        return found

    def _list(self, path: str, doing: str) -> list[Mapping[str, Any]] | None:
        """Every item; None (and a note) when the caller may not list them; raises when unreachable."""
        from memwatch.kube import ApiError

        items: list[Mapping[str, Any]] = []
        try:
            for page in self.kube.list_pages(path):
                items.extend(i for i in page.get("items") or () if isinstance(i, Mapping))
        except ApiError as exc:
            if exc.status == 0:
                raise api_error(exc, doing, self.kube.server) from None
            if exc.status == 404:
                return None
            self.notes.append(f"cannot {doing}: {exc}; the explanation leaves them out")
            return []
        except (ValueError, AttributeError, TypeError) as exc:
            raise garbled(exc, doing, self.kube.server) from None
        return items

    def policies(self, namespace: str) -> list[PolicyObject]:
        out: list[PolicyObject] = []
        missing = 0
        for kind, path, where in ((NAMESPACED, f"{API}/namespaces/{namespace}/{PLURALS[NAMESPACED]}",
                                   f" in namespace {namespace}"),
                                  (CLUSTER, f"{API}/{PLURALS[CLUSTER]}", "")):
            items = self._list(path, f"list {kind} objects{where}")
            if items is None:
                missing += 1
                continue
            out += [parse_policy({**item, "kind": item.get("kind") or kind}) for item in items]
        if missing == 2:
            self.notes.append("the memwatch.io policy CRDs are not installed: no MemwatchPolicy or "
                              "ClusterMemwatchPolicy applies")
        return out

    def namespace_labels(self, namespace: str, policies: Sequence[PolicyObject]) -> dict[str, Mapping[str, str]]:
        """The namespace's labels, read only when a cluster policy selects namespaces by label."""
        from memwatch.kube import ApiError

        if not any(p.kind == CLUSTER and (p.namespace_selector.labels or p.namespace_selector.expressions)
                   for p in policies):
            return {}
        try:
            found = self.kube.get_json_or_none(f"/api/v1/namespaces/{namespace}")
        except ApiError as exc:
            if exc.status == 0:
                raise api_error(exc, f"get namespace {namespace}", self.kube.server) from None
            self.notes.append(f"cannot get namespace {namespace} (for its labels): {exc}")
            return {}
        except ValueError as exc:
            raise garbled(exc, f"get namespace {namespace}", self.kube.server) from None
        labels = _map(_map(found).get("metadata")).get("labels")
        return {namespace: {str(k): str(v) for k, v in _map(labels).items()}} if found is not None else {}

    def events(self, namespace: str) -> tuple[tuple[Mapping[str, Any], ...] | None, str]:
        """memwatch's Events in the namespace (one LIST), or None and why."""
        from memwatch.kube import ApiError
        from memwatch.observability import HISTORY_SELECTOR
        from memwatch.status import _reason

        items: list[Mapping[str, Any]] = []
        try:
            for page in self.kube.list_pages(f"/api/v1/namespaces/{namespace}/events",
                                             {"fieldSelector": HISTORY_SELECTOR}):
                items.extend(i for i in page.get("items") or () if isinstance(i, Mapping))
        except (ApiError, ValueError, AttributeError, TypeError) as exc:
            why = _reason(exc) if isinstance(exc, ApiError) and exc.status == 0 else str(exc)
            return None, f"unknown: cannot read memwatch's Events in namespace {namespace}: {why}"
        return tuple(items), ""


def live(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[list[Subject], Scene, list[str]]:
    from memwatch.kube import ConfigError, Kube, load_user_client

    target(args.pod, args.namespace, "default")  # a bad pod name is refused before the kubeconfig is read
    try:
        api, default_namespace = load_user_client(args.kubeconfig, args.context, env)
    except ConfigError as exc:
        raise StatusError(str(exc)) from None
    namespace, name = target(args.pod, args.namespace, default_namespace)
    reader = Live(Kube(api, timeout=args.request_timeout))
    pod = reader.pod(namespace, name)
    policies = reader.policies(namespace)
    labels = reader.namespace_labels(namespace, policies)
    events, why = reader.events(namespace)
    subject = Subject("Pod", namespace, name, pod, workload_of(pod))
    scene = Scene(tuple(policies), labels, events, why, time.time(), labels_unknown="it could not be read")
    return [subject], scene, reader.notes


# -- the command -------------------------------------------------------------------------------


def run(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO, prog: str = PROG) -> int:
    ctl = controller(args)
    if args.filename:
        if args.namespace is not None and not NAMESPACE.fullmatch(args.namespace):
            raise StatusError(f"--namespace {args.namespace!r} is not a namespace name")
        subjects, scene = read_manifests(args.filename, args.namespace or "default")
        scene = dataclasses.replace(scene, now=time.time())
        notes: list[str] = []
        if args.pod:
            subjects = [s for s in subjects if _matches(s, args.pod)]
            if not subjects:
                raise StatusError(f"no pod or pod template {args.pod!r} in {', '.join(args.filename)}")
        elif not subjects:
            raise StatusError(f"no pod or pod template in {', '.join(args.filename)}")
        mode = "offline"
    else:
        subjects, scene, notes = live(args, env)
        mode = "live"
    doc = {"mode": mode, "notes": notes, "pods": [explain_subject(s, scene, ctl) for s in subjects]}
    for note in notes:
        err.write(f"{prog}: {_printable(note)}\n")
    out.write(json.dumps(doc, indent=2) + "\n" if args.output == "json" else render_text(doc))
    out.flush()
    return 0


def main(argv: Sequence[str], env: Mapping[str, str] | None = None, prog: str = PROG,
         out: TextIO | None = None, err: TextIO | None = None,
         formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> int:
    """`memwatch explain ...` (``argv`` after the word `explain`). Returns the exit code."""
    return command_main(build_parser, run, argv, env, prog, out, err, formatter_class)


def execute(args: argparse.Namespace, env: Mapping[str, str], prog: str = PROG,
            out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run parsed arguments; every failure is one line on ``err`` and an exit code."""
    return command_execute(run, args, env, prog, out, err)
