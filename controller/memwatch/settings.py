"""Settings: every flag of ``memwatch run`` and ``memwatch agent``, each also read from ``MEMWATCH_*``.

One table of options feeds argparse, the environment lookup and ``--help``, so a flag, its
environment variable and its documentation cannot drift apart. Bad values exit with a message
that names the flag or variable and the value; they never start a controller that misbehaves.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memwatch.logformat import LOG_FORMATS
from memwatch.nodeguard import GuardConfig, Line, Mode
from memwatch.policy import MAX_GRACE_SECONDS, MAX_WINDOW_SECONDS, Action, Defaults, RestartBudget, parse_budget
from memwatch.protections import SYSTEM_CLUSTER_CRITICAL, LabelSelector, Protections, SelectorError
from memwatch.quantity import QuantityError, parse_bytes, parse_duration, parse_seconds

ENV_PREFIX = "MEMWATCH_"
SOURCES = ("auto", "metrics-api", "kubelet")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except QuantityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_duration(text: str) -> float:
    value = _duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or more")
    return value


def _grace_period(text: str) -> int:
    """The same rule as `memwatch.io/grace-period`: whole seconds in plain ASCII digits, at most an hour
    (``int()`` would take `1_0`, ` 5 ` and non-ASCII digits)."""
    try:
        seconds = parse_seconds(text)
    except QuantityError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if seconds > MAX_GRACE_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r}: longer than {MAX_GRACE_SECONDS}s")
    return seconds


def _restart_budget(text: str) -> RestartBudget | None:
    """The same rule as `memwatch.io/restart-budget`: ``N/<duration>`` (``3/1h``) or ``off``."""
    try:
        return parse_budget(text)
    except QuantityError as exc:
        hint = "" if "N/<duration>" in str(exc) else f" in {text!r} (write N/<duration> such as 3/1h, or off)"
        raise argparse.ArgumentTypeError(f"{exc}{hint}") from None


def _min_pod_age(text: str) -> float:
    """The same rule as `memwatch.io/min-pod-age`: a duration of at most 7 days."""
    value = _duration(text)
    if value > MAX_WINDOW_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r}: longer than 7 days; is the unit right?")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0 disables)")
    return value


def _bytes(text: str) -> int:
    try:
        return parse_bytes(text)
    except QuantityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def selector_arg(text: str) -> str:
    """An argparse type: a label selector, refused with the parser's own message when malformed."""
    try:
        LabelSelector.parse(text)
    except SelectorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _priority(text: str) -> int | None:
    if text.strip().lower() in ("", "none", "off"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a priority (an integer, or 'none')") from None


def _percent(text: str) -> float:
    value = text.strip().rstrip("%")
    try:
        pct = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage such as 95%") from None
    if not 0 < pct <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0% and at most 100%")
    return pct


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _line(text: str) -> Line:
    try:
        return Line.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _optional_percent(text: str) -> float | None:
    if text.strip().lower() in ("", "none", "off", "0", "0%"):
        return None
    return _percent(text)


ADDRESS_TYPES = ("InternalIP", "Hostname", "InternalDNS", "ExternalIP", "ExternalDNS")


def _address_types(text: str) -> tuple[str, ...]:
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in types if t not in ADDRESS_TYPES]
    if not types or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of {', '.join(ADDRESS_TYPES)}")
    return types


@dataclass(frozen=True)
class Option:
    """One flag: its name, type, default and help. ``repeat`` flags take a list (env: commas)."""

    flag: str
    help: str
    type: Callable[[str], Any] | None = str
    default: Any = None
    choices: Sequence[str] | None = None
    repeat: bool = False
    boolean: bool = False
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


# Options shared by the controller and the node agent.
COMMON: tuple[Option, ...] = (
    Option("--kubeconfig", "kubeconfig file (default: in-cluster config, else $KUBECONFIG or ~/.kube/config)"),
    Option("--namespace", "watch only this namespace (repeatable); default: all namespaces", repeat=True,
           metavar="NS"),
    Option("--all-namespaces", "watch every namespace (the default when no --namespace is given)", boolean=True),
    Option("--exclude-namespace", "never act in this namespace (repeatable)", repeat=True, metavar="NS"),
    Option("--protected-namespace", "namespace protected unless allowed (repeatable)",
           repeat=True, default=["kube-system"], metavar="NS"),
    Option("--allow-namespace", "let memwatch act in this protected namespace (repeatable)", repeat=True,
           metavar="NS"),
    Option("--protected-priority", "never touch pods at or above this priority ('none' disables); "
           "default: system-cluster-critical", type=_priority, default=SYSTEM_CLUSTER_CRITICAL, metavar="INT"),
    Option("--self-selector", "label selector of memwatch's own pods, which are never touched",
           type=selector_arg, default="app.kubernetes.io/name=memwatch", metavar="SELECTOR"),
    Option("--label-selector", "server-side label selector: stream only these pods (e.g. memwatch.io/watch=true)",
           type=selector_arg, default="", metavar="SELECTOR"),
    Option("--dry-run", "never evict or delete: log and post Events saying what would happen", boolean=True),
    Option("--default-action", "action for pods without memwatch.io/action", choices=("evict", "delete", "dry-run"),
           default="evict"),
    Option("--default-grace-period", "grace period (seconds) for pods without memwatch.io/grace-period",
           type=_grace_period, metavar="SECONDS"),
    Option("--default-for", "breach duration for pods without memwatch.io/for", type=_duration, default=0.0,
           metavar="DURATION"),
    Option("--default-restart-budget", "restart budget for pods without memwatch.io/restart-budget: at most N "
           "evictions, deletions or kills per window on one workload (Deployment, StatefulSet, DaemonSet, Job), "
           "e.g. 3/1h; 'off': no budget", type=_restart_budget, default="3/1h", metavar="N/DURATION"),
    Option("--default-min-pod-age", "never act on a pod younger than this (since its start), for pods without "
           "memwatch.io/min-pod-age", type=_min_pod_age, default=0.0, metavar="DURATION"),
    Option("--escalate", "delete a pod whose eviction a PodDisruptionBudget keeps blocking "
           "(pods can opt in or out with memwatch.io/escalate)", boolean=True),
    Option("--escalation-timeout", "how long an eviction may stay blocked before escalating", type=_duration,
           default=60.0, metavar="DURATION"),
    Option("--metrics-port", "port for Prometheus /metrics (0 disables)", type=_port, default=9090, metavar="PORT"),
    Option("--liveness", "kopf liveness endpoint URL ('' disables)", default="http://0.0.0.0:8080/healthz",
           metavar="URL"),
    Option("--verbose", "debug logging", boolean=True),
    Option("--log-format", "log output: 'text' (one line per record, action lines as key=value) or 'json' "
           "(one JSON object per line, action fields as keys, for log pipelines)", choices=LOG_FORMATS,
           default="text"),
)

RUN: tuple[Option, ...] = (
    Option("--source", "where pod memory is read from", choices=SOURCES, default="auto"),
    Option("--interval", "time between sweeps", type=_positive_duration, default=5.0, metavar="DURATION"),
    Option("--max-sample-age", "never act on a usage sample older than this", type=_positive_duration,
           default=60.0, metavar="DURATION"),
    Option("--max-evictions-per-minute", "cluster-wide cap on the controller's evictions and deletions per "
           "minute (0: none); node agents have their own --node-max-evictions-per-minute",
           type=_non_negative_int, default=20, metavar="N"),
    Option("--max-evictions-per-namespace-per-minute", "the controller's per-namespace cap per minute (0: none)",
           type=_non_negative_int, default=5, metavar="N"),
    Option("--defer-to-agents", "leave pods on nodes with a Ready memwatch agent to that agent: 'all' (agents "
           "that may evict), 'restart' (kill-only agents: only memwatch.io/action: restart pods), or 'none'",
           choices=("none", "restart", "all"), default="none"),
    Option("--agent-selector", "label selector of the memwatch agent pods (in the controller's namespace)",
           type=selector_arg, default="app.kubernetes.io/name=memwatch,app.kubernetes.io/component=agent",
           metavar="SELECTOR"),
    Option("--kubelet-ca-file", "CA bundle (PEM) that signs the kubelets' serving certificates, for the kubelet "
           "source (default: the cluster CA memwatch trusts for the API server)", metavar="PATH"),
    Option("--kubelet-insecure-tls", "do not verify the kubelets' serving certificates: only for clusters whose "
           "kubelets serve self-signed certificates (kind, kubeadm's default)", boolean=True),
    Option("--kubelet-preferred-address-types", "the Node address types tried, in order, to reach its kubelet",
           type=_address_types, default="InternalIP,Hostname,InternalDNS,ExternalIP", metavar="TYPES"),
    Option("--leader-elect", "run several replicas; only the holder of a Lease acts", boolean=True),
    Option("--leader-election-namespace", "namespace of the Lease (default: $POD_NAMESPACE)", metavar="NS"),
    Option("--leader-election-name", "name of the Lease", default="memwatch", metavar="NAME"),
)

AGENT: tuple[Option, ...] = (
    Option("--node-name", "this node's name (default: $NODE_NAME, set from the downward API)", metavar="NODE"),
    Option("--cgroup-root", "where the host's cgroup filesystem is mounted", default="/sys/fs/cgroup",
           metavar="PATH"),
    Option("--sample-period", "how often pod cgroups are read", type=_positive_duration, default=0.1,
           metavar="DURATION"),
    Option("--max-sample-age", "never act on a usage sample older than this (cgroup samples are fresh; "
           "the psutil fallback's are up to 1s old)", type=_positive_duration, default=2.0, metavar="DURATION"),
    Option("--evict", "let the agent evict or delete pods itself; false: it only kills in place (kill rung) and "
           "leaves every API action to the controller (for agents without eviction RBAC)", type=_boolean,
           default=True, metavar="BOOL"),
    Option("--kill", "enable the last-resort kill rung: SIGKILL a container's processes when usage passes "
           "--kill-ceiling and the eviction has not taken effect within --kill-after, or at once when its "
           "hard limit is about to be crossed (needs hostPID)", boolean=True),
    Option("--kill-ceiling", "with --kill (or memwatch.io/action: restart): percent of the container's hard "
           "limit at which the agent kills it itself", type=_percent, default=95.0, metavar="PERCENT"),
    Option("--kill-after", "with --kill: how long an eviction may take before the kill rung fires",
           type=_duration, default=1.0, metavar="DURATION"),
    Option("--controller-runs", "a memwatch controller runs too: it announces invalid annotations and "
           "annotation warnings, so the agent does not post the same Events again", boolean=True),
    Option("--node-max-evictions-per-minute", "this node's agent: cap on its evictions and deletions per minute "
           "(0: none); each node has its own, so the cluster-wide total is up to nodes x N",
           type=_non_negative_int, default=5, metavar="N"),
    Option("--memory-ceiling", "the agent's own RSS ceiling: above it, it sheds history and warns",
           type=_bytes, default=100 << 20, metavar="BYTES"),
    Option("--node-guard", "the node guard: act on one pod at a time when the node (or kubepods) runs short of "
           "memory: off, dry-run (log and Event what it would do) or on", choices=tuple(m.value for m in Mode),
           default="dry-run"),
    Option("--node-guard-soft", "soft line: evict (PDB-aware) when free memory falls below this, in bytes (500Mi) "
           "or as a percentage of the node's memory (MemAvailable) and of kubepods' hard limit",
           type=_line, default="10%", metavar="FREE"),
    Option("--node-guard-hard", "hard line: kill in place (with --kill) or delete with grace 0, without waiting, "
           "when free memory falls below this (bytes or percent, as --node-guard-soft)",
           type=_line, default="5%", metavar="FREE"),
    Option("--node-guard-psi-full", "also act at the soft line's rung when memory pressure 'full avg10' reaches "
           "this percent ('none': off)", type=_optional_percent, default="none", metavar="PERCENT"),
    Option("--node-guard-grace", "cap on the grace period (seconds) of the node guard's evictions",
           type=_non_negative_int, default=5, metavar="SECONDS"),
    Option("--node-guard-wait", "how long the node guard waits for a victim's memory to be freed before it "
           "chooses again", type=_positive_duration, default="30s", metavar="DURATION"),
    Option("--node-guard-max-per-minute", "this node's cap on node guard victims per minute (an escalation is "
           "the same victim; 0: none), separate from --node-max-evictions-per-minute", type=_non_negative_int,
           default=5, metavar="N"),
)


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option], env: Mapping[str, str]) -> None:
    """Add ``options`` to ``parser``; a set MEMWATCH_* variable replaces the built-in default."""
    for opt in options:
        help_text = f"{opt.help} [env {opt.env}]"
        raw = env.get(opt.env)
        if opt.boolean:
            default = opt.default or False
            if raw is not None:
                lowered = raw.strip().lower()
                if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
                    parser.error(f"{opt.env}={raw!r}: expected true or false")
                default = lowered in ("1", "true", "yes", "on")
            parser.add_argument(opt.flag, action="store_true", default=default, help=help_text)
            continue
        default = opt.default
        if raw is not None:
            items = [p.strip() for p in raw.split(",") if p.strip()] if opt.repeat else [raw]
            try:
                converted = [opt.type(p) if opt.type else p for p in items]
            except argparse.ArgumentTypeError as exc:
                parser.error(f"{opt.env}={raw!r}: {exc}")
            if opt.choices and any(c not in opt.choices for c in converted):
                parser.error(f"{opt.env}={raw!r}: choose from {', '.join(opt.choices)}")
            default = converted if opt.repeat else converted[0]
        kwargs: dict[str, Any] = {"help": help_text, "default": default, "dest": opt.dest}
        if opt.type:
            kwargs["type"] = opt.type
        if opt.choices:
            kwargs["choices"] = opt.choices
        if opt.metavar:
            kwargs["metavar"] = opt.metavar
        if opt.repeat:
            kwargs["action"] = "append"
            kwargs["default"] = None
            kwargs["help"] = help_text + (f" (default: {', '.join(opt.default)})" if opt.default else "")
            parser.set_defaults(**{f"_{opt.dest}_default": default})
        parser.add_argument(opt.flag, **kwargs)


def _repeat(args: argparse.Namespace, dest: str) -> list[str]:
    given = getattr(args, dest, None)
    if given is not None:
        return list(given)
    return list(getattr(args, f"_{dest}_default", None) or [])


def protections_from_args(args: argparse.Namespace, namespaces: Sequence[str] = (),
                          self_pod: tuple[str, str] | None = None) -> Protections:
    """The never-touch rules from the protection flags (`memwatch run`, `agent` and `status` alike)."""
    return Protections(
        protected_namespaces=frozenset(_repeat(args, "protected_namespace")),
        allowed_namespaces=frozenset(_repeat(args, "allow_namespace")),
        excluded_namespaces=frozenset(_repeat(args, "exclude_namespace")),
        included_namespaces=frozenset(namespaces),
        protected_priority=args.protected_priority,
        self_selector=LabelSelector.parse(args.self_selector) if args.self_selector else None,
        self_pod=self_pod,
    )


@dataclass(frozen=True)
class Settings:
    """Everything the controller and the agent are configured with, validated."""

    kubeconfig: str | None
    namespaces: tuple[str, ...]
    label_selector: str
    protections: Protections
    defaults: Defaults
    dry_run: bool
    escalation_timeout: float
    metrics_port: int
    liveness: str
    verbose: bool
    max_sample_age: float
    log_format: str = "text"  # text or json (memwatch.logformat)
    # controller
    source: str = "auto"
    interval: float = 5.0
    max_per_minute: int = 20
    max_per_namespace_per_minute: int = 5
    defer_to_agents: str = "none"
    agent_selector: str = "app.kubernetes.io/name=memwatch,app.kubernetes.io/component=agent"
    kubelet_ca_file: str | None = None
    kubelet_insecure_tls: bool = False
    kubelet_preferred_address_types: tuple[str, ...] = ("InternalIP", "Hostname", "InternalDNS", "ExternalIP")
    leader_elect: bool = False
    leader_election_namespace: str | None = None
    leader_election_name: str = "memwatch"
    # agent
    node_name: str | None = None
    cgroup_root: str = "/sys/fs/cgroup"
    sample_period: float = 0.1
    evict: bool = True
    kill: bool = False
    kill_ceiling: float = 95.0
    kill_after: float = 1.0
    memory_ceiling: int = 100 << 20
    node_max_per_minute: int = 5
    controller_runs: bool = False
    node_guard: GuardConfig = field(default_factory=lambda: GuardConfig(mode=Mode.OFF))  # CLI: dry-run
    pod_name: str | None = None
    pod_namespace: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        namespaces = tuple(_repeat(args, "namespace"))
        if namespaces and args.all_namespaces:
            raise ValueError("--namespace and --all-namespaces exclude each other")
        pod_name, pod_namespace = env.get("POD_NAME"), env.get("POD_NAMESPACE")
        protections = protections_from_args(args, namespaces,
                                            (pod_namespace, pod_name) if pod_name and pod_namespace else None)
        defaults = Defaults(action=Action(args.default_action), grace_period=args.default_grace_period,
                            for_seconds=args.default_for, escalate=args.escalate,
                            restart_budget=args.default_restart_budget, min_pod_age=args.default_min_pod_age)
        extra: dict[str, Any] = {}
        for name in ("source", "interval", "leader_elect", "leader_election_name", "cgroup_root",
                     "defer_to_agents", "agent_selector", "controller_runs", "evict",
                     "kubelet_ca_file", "kubelet_insecure_tls", "kubelet_preferred_address_types",
                     "sample_period", "kill", "kill_ceiling", "kill_after", "memory_ceiling"):
            if hasattr(args, name):
                extra[name] = getattr(args, name)
        for name, dest in (("max_evictions_per_minute", "max_per_minute"),
                           ("max_evictions_per_namespace_per_minute", "max_per_namespace_per_minute"),
                           ("node_max_evictions_per_minute", "node_max_per_minute")):
            if hasattr(args, name):
                extra[dest] = getattr(args, name)
        if getattr(args, "kubelet_ca_file", None) and getattr(args, "kubelet_insecure_tls", False):
            raise ValueError("--kubelet-ca-file and --kubelet-insecure-tls exclude each other")
        if hasattr(args, "leader_election_namespace"):
            extra["leader_election_namespace"] = args.leader_election_namespace or pod_namespace
        if hasattr(args, "node_name"):
            extra["node_name"] = args.node_name or env.get("NODE_NAME")
        if hasattr(args, "node_guard"):
            extra["node_guard"] = GuardConfig(  # raises ValueError naming the flags that disagree
                Mode(args.node_guard), args.node_guard_soft, args.node_guard_hard, args.node_guard_psi_full,
                args.node_guard_grace, args.node_guard_wait, args.node_guard_max_per_minute)
        return cls(
            kubeconfig=args.kubeconfig or None,
            namespaces=namespaces,
            label_selector=args.label_selector,
            protections=protections,
            defaults=defaults,
            dry_run=args.dry_run,
            escalation_timeout=args.escalation_timeout,
            metrics_port=args.metrics_port,
            liveness=args.liveness,
            verbose=args.verbose,
            max_sample_age=args.max_sample_age,
            log_format=args.log_format,
            pod_name=pod_name,
            pod_namespace=pod_namespace,
            **extra,
        )
