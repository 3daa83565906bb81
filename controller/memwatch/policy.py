"""The policy engine: pure functions, no I/O.

Two steps, both pure and separately tested:

* :func:`resolve` turns a pod's ``memwatch.io/*`` annotations plus its containers' hard memory
  limits into a :class:`Policy`, or raises :class:`InvalidPolicy` listing every problem.
* :func:`breaches` says which limits a usage sample is over; :mod:`memwatch.lifecycle` turns that
  into when to act (``memwatch.io/for``, retries, cancelling).

The controller, the node agent and ``memwatch lint`` all call these; nothing else interprets
annotations.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from memwatch.quantity import QuantityError, format_bytes, parse_bytes, parse_duration, parse_seconds, shown

PREFIX = "memwatch.io/"
KEY_LIMIT = PREFIX + "limit"
KEY_CONTAINER_LIMIT = PREFIX + "limit."  # + container name
KEY_ACTION = PREFIX + "action"
KEY_GRACE_PERIOD = PREFIX + "grace-period"
KEY_FOR = PREFIX + "for"
KEY_ESCALATE = PREFIX + "escalate"
KEY_PREDICT = PREFIX + "predict"
#: The node guard's per-pod choice (:mod:`memwatch.nodeguard`): ``evict`` (pick this pod first) or ``never``.
#: Not a watch annotation: a pod carrying only this key is not watched for its own limit.
KEY_NODE_PRESSURE = PREFIX + "node-pressure"
NODE_PRESSURE_VALUES = ("evict", "never")
#: What a percentage limit is of: the containers' ``limits.memory`` (the default) or ``requests.memory``.
KEY_LIMIT_OF = PREFIX + "limit-of"
LIMIT_OF_VALUES = ("limits", "requests")
#: At most N actions per window on one workload (``3/1h``), or ``off``: :mod:`memwatch.budget`.
KEY_RESTART_BUDGET = PREFIX + "restart-budget"
#: A pod younger than this is never acted on (the restart budget's grace for slow starters).
KEY_MIN_POD_AGE = PREFIX + "min-pod-age"
KNOWN_KEYS = frozenset({KEY_LIMIT, KEY_ACTION, KEY_GRACE_PERIOD, KEY_FOR, KEY_ESCALATE, KEY_PREDICT,
                        KEY_NODE_PRESSURE, KEY_LIMIT_OF, KEY_RESTART_BUDGET, KEY_MIN_POD_AGE})

#: The longest `memwatch.io/for` accepted: a longer one is almost certainly a unit mistake.
MAX_FOR_SECONDS = 24 * 3600.0
#: The longest restart-budget window and `memwatch.io/min-pod-age` accepted.
MAX_WINDOW_SECONDS = 7 * 24 * 3600.0
#: The longest `memwatch.io/grace-period` accepted.
MAX_GRACE_SECONDS = 3600
#: The smallest watch limit accepted (1 MiB): below it the value is a unit mistake (`0.5`, `1e-3`, a few
#: bytes), and memwatch never acts on a mistake.
MIN_LIMIT = 1 << 20
#: Limits from MIN_LIMIT up to this are accepted but warned about: hardly any real workload fits.
SUSPICIOUSLY_SMALL = 4 << 20
#: Percentages: ASCII digits with an optional fraction (`90%`, `12.5%`), nothing else.
_PERCENT = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?%")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class Action(enum.StrEnum):
    """What to do with a pod over its watch limit."""

    EVICT = "evict"  # Eviction API: honours PodDisruptionBudgets
    DELETE = "delete"  # plain delete with the grace period
    DRY_RUN = "dry-run"  # everything but the write: Event, log line, metric
    RESTART = "restart"  # node agent: kill the container in place; the controller evicts instead


#: Keys that ask for no watch limit on their own: a pod carrying only these is not watched.
NOT_WATCH_KEYS = frozenset({KEY_NODE_PRESSURE})


def is_watched(annotations: Mapping[str, str] | None) -> bool:
    """True when a pod carries any ``memwatch.io/`` annotation, valid or not, other than
    ``memwatch.io/node-pressure`` (the node guard's, which asks for no watch limit)."""
    return bool(annotations) and any(key.startswith(PREFIX) and key not in NOT_WATCH_KEYS
                                     for key in annotations or ())


@dataclass(frozen=True, slots=True)
class RestartBudget:
    """At most ``actions`` memwatch actions per ``window`` seconds on one workload."""

    actions: int
    window: float

    def __str__(self) -> str:
        return f"{self.actions}/{format_window(self.window)}"


def format_window(seconds: float) -> str:
    """``3600`` → ``1h``, ``5400`` → ``1h30m``, ``45`` → ``45s``."""
    whole = int(seconds)
    if whole != seconds or whole <= 0:
        return f"{seconds:g}s"
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            out += f"{whole // size}{unit}"
            whole %= size
    return out


_BUDGET = re.compile(r"([0-9]{1,6})/(.+)")


def parse_budget(text: str) -> RestartBudget | None:
    """``3/1h`` → RestartBudget(3, 3600); ``off`` → None. Raises QuantityError with the reason."""
    value = text.strip()
    if value.lower() == "off":
        return None
    match = _BUDGET.fullmatch(value)
    if not match:
        raise QuantityError(f"{shown(text)} is not a restart budget: write N/<duration> such as 3/1h, or off")
    window = parse_duration(match.group(2))
    if window <= 0 or window > MAX_WINDOW_SECONDS:
        raise QuantityError(f"{shown(text)}: the window must be above 0 and at most 7 days")
    return RestartBudget(int(match.group(1)), window)


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """What the policy needs of one container: its name and hard memory limit."""

    name: str
    hard_limit: int | None = None  # resources.limits.memory in bytes
    request: int | None = None  # resources.requests.memory in bytes


@dataclass(frozen=True, slots=True)
class Limit:
    """One watch limit: on the whole pod (``container`` None) or on one container."""

    bytes: int
    text: str  # as written in the annotation: "512Mi" or "90%"
    container: str | None = None

    @property
    def scope(self) -> str:
        return "pod" if self.container is None else f"container:{self.container}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One invalid annotation: which key, which value, and what is wrong with it."""

    key: str
    value: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}={shown(self.value)}: {self.message}"


class InvalidPolicy(ValueError):
    """The annotations cannot be turned into a policy; memwatch will not act on the pod."""

    def __init__(self, problems: Sequence[Problem], warnings: Sequence[str] = ()) -> None:
        self.problems = tuple(problems)
        self.warnings = tuple(warnings)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class Defaults:
    """Controller-wide defaults for keys a pod does not set (``--default-*`` flags)."""

    action: Action = Action.EVICT
    grace_period: int | None = None
    for_seconds: float = 0.0
    escalate: bool = False
    predict: bool = True
    restart_budget: RestartBudget | None = RestartBudget(3, 3600.0)
    min_pod_age: float = 0.0


@dataclass(frozen=True, slots=True)
class Policy:
    """A pod's resolved memory-watch policy. Small and immutable: one per watched pod."""

    limits: tuple[Limit, ...]
    action: Action = Action.EVICT
    grace_period: int | None = None
    for_seconds: float = 0.0
    escalate: bool = False
    predict: bool = True
    pod_hard_limit: int | None = None  # sum of containers' limits.memory, when all have one
    container_hard_limits: tuple[tuple[str, int], ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)
    restart_budget: RestartBudget | None = RestartBudget(3, 3600.0)
    min_pod_age: float = 0.0
    #: A sample whose total is at most this is under every limit: the smallest limit, when every
    #: limit is on the whole pod (a container limit needs that container's own figure); else -1, which
    #: no total is at most. Lets the sweep and the agent answer most samples with one comparison.
    under_all: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pod_only = all(lim.container is None for lim in self.limits)
        object.__setattr__(self, "under_all", min((lim.bytes for lim in self.limits), default=-1) if pod_only else -1)

    def describe(self) -> str:
        """One line for `memwatch lint` and logs: every limit and the knobs."""
        parts = [f"{lim.scope}<={format_bytes(lim.bytes)}" + (f" ({lim.text})" if "%" in lim.text else "")
                 for lim in self.limits]
        parts.append(f"action={self.action}")
        if self.grace_period is not None:
            parts.append(f"grace-period={self.grace_period}s")
        if self.for_seconds:
            parts.append(f"for={self.for_seconds:g}s")
        parts.append(f"escalate={'true' if self.escalate else 'false'}")
        if not self.predict:
            parts.append("predict=false")
        parts.append(f"restart-budget={self.restart_budget or 'off'}")
        if self.min_pod_age:
            parts.append(f"min-pod-age={self.min_pod_age:g}s")
        return " ".join(parts)


def _parse_limit(key: str, value: str, hard: int | None, container: str | None,
                 problems: list[Problem], warnings: list[str], base: int | None = None,
                 basis: str = "limits") -> Limit | None:
    """Parse one limit annotation: a quantity, or a percentage of ``base`` (the hard limit, or the
    memory request with ``memwatch.io/limit-of: requests``); at least MIN_LIMIT, at most ``hard``."""
    whom = "the pod" if container is None else f"container {container!r}"
    if basis == "limits":
        base = hard
    if value.endswith("%"):
        if not _PERCENT.fullmatch(value):
            problems.append(Problem(key, value, "not a percentage (example: 90%)"))
            return None
        percent = float(value[:-1])
        if not (0 < percent <= 100):
            problems.append(Problem(key, value, "a percentage must be above 0% and at most 100%"))
            return None
        if base is None:
            field_name = f"resources.{basis}.memory"
            what = (f"every container to set {field_name}" if container is None
                    else f"container {container!r} to set {field_name}")
            problems.append(Problem(key, value, f"a percentage needs {what}; use a quantity such as 512Mi"))
            return None
        limit = int(base * percent / 100)
    else:
        try:
            limit = parse_bytes(value)
        except QuantityError as exc:
            problems.append(Problem(key, value, str(exc)))
            return None
    if limit < MIN_LIMIT:
        problems.append(Problem(key, value, f"is only {format_bytes(limit)}, below the smallest watch limit of "
                                f"{format_bytes(MIN_LIMIT)}; is the unit right? (example: 512Mi)"))
        return None
    if hard is not None and limit > hard:
        problems.append(Problem(
            key, value,
            f"{format_bytes(limit)} is above the hard memory limit of {whom} ({format_bytes(hard)}): "
            "the kernel OOM killer would always fire first"))
        return None
    if hard is not None and limit == hard:
        warnings.append(f"{key}={shown(value)} equals the hard memory limit of {whom}; "
                        "leave headroom or the kernel may act before memwatch")
    if limit < SUSPICIOUSLY_SMALL:
        warnings.append(f"{key}={shown(value)} is only {format_bytes(limit)}; is the unit right?")
    return Limit(limit, value, container)


def _parse_grace_period(key: str, value: str, problems: list[Problem]) -> int | None:
    """`memwatch.io/grace-period`: whole seconds in plain ASCII digits, at most MAX_GRACE_SECONDS."""
    try:
        seconds = parse_seconds(value)
    except QuantityError as exc:
        problems.append(Problem(key, value, str(exc)))
        return None
    if seconds > MAX_GRACE_SECONDS:
        problems.append(Problem(key, value, f"longer than {MAX_GRACE_SECONDS}s; a pod over its memory "
                                "limit cannot wait that long"))
        return None
    return seconds


def _parse_for(key: str, value: str, problems: list[Problem]) -> float | None:
    """`memwatch.io/for`: a duration (`5s`, `500ms`, `1m30s`) of at most MAX_FOR_SECONDS."""
    try:
        seconds = parse_duration(value)
    except QuantityError as exc:
        problems.append(Problem(key, value, str(exc)))
        return None
    if seconds > MAX_FOR_SECONDS:
        problems.append(Problem(key, value, "longer than 24h; is the unit right?"))
        return None
    return seconds


def _parse_bool(key: str, value: str, problems: list[Problem]) -> bool | None:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    problems.append(Problem(key, value, 'must be "true" or "false"'))
    return None


def resolve(annotations: Mapping[str, str], containers: Sequence[ContainerSpec],
            defaults: Defaults | None = None) -> Policy:
    """Resolve a pod's annotations into its policy.

    Raises :class:`InvalidPolicy` naming every bad key and value. Never raises anything else,
    whatever the annotation strings are.
    """
    defaults = defaults or Defaults()
    problems: list[Problem] = []
    warnings: list[str] = []
    by_name = {c.name: c for c in containers}
    hards = [c.hard_limit for c in containers]
    pod_hard = sum(h for h in hards if h is not None) if hards and all(h is not None for h in hards) else None
    requests = [c.request for c in containers]
    pod_request = (sum(r for r in requests if r is not None)
                   if requests and all(r is not None for r in requests) else None)
    basis = "limits"
    raw_basis = annotations.get(KEY_LIMIT_OF)
    if raw_basis is not None:
        lowered = str(raw_basis).strip().lower()
        if lowered in LIMIT_OF_VALUES:
            basis = lowered
        else:
            problems.append(Problem(KEY_LIMIT_OF, str(raw_basis), "must be limits or requests"))

    limits: list[Limit] = []
    action, grace, for_seconds = defaults.action, defaults.grace_period, defaults.for_seconds
    escalate, predict = defaults.escalate, defaults.predict
    budget, min_age = defaults.restart_budget, defaults.min_pod_age
    for key in sorted(annotations):
        if not key.startswith(PREFIX):
            continue
        raw = annotations[key]
        value = raw if isinstance(raw, str) else str(raw)
        if key == KEY_LIMIT:
            lim = _parse_limit(key, value, pod_hard, None, problems, warnings, pod_request, basis)
            if lim:
                limits.append(lim)
        elif key == KEY_LIMIT_OF:
            continue  # read above: the limits need it
        elif key.startswith(KEY_CONTAINER_LIMIT):
            name = key[len(KEY_CONTAINER_LIMIT):]
            spec = by_name.get(name)
            if spec is None:
                known = ", ".join(sorted(by_name)) or "none"
                problems.append(Problem(key, value, f"no container named {name!r} (containers: {known})"))
                continue
            lim = _parse_limit(key, value, spec.hard_limit, name, problems, warnings, spec.request, basis)
            if lim:
                limits.append(lim)
        elif key == KEY_ACTION:
            try:
                action = Action(value.strip().lower())
            except ValueError:
                choices = ", ".join(a.value for a in Action)
                problems.append(Problem(key, value, f"unknown action; choose one of {choices}"))
        elif key == KEY_GRACE_PERIOD:
            seconds = _parse_grace_period(key, value, problems)
            grace = grace if seconds is None else seconds
        elif key == KEY_FOR:
            duration = _parse_for(key, value, problems)
            for_seconds = for_seconds if duration is None else duration
        elif key == KEY_ESCALATE:
            parsed = _parse_bool(key, value, problems)
            escalate = escalate if parsed is None else parsed
        elif key == KEY_PREDICT:
            parsed = _parse_bool(key, value, problems)
            predict = predict if parsed is None else parsed
        elif key == KEY_RESTART_BUDGET:
            try:
                budget = parse_budget(value)
            except QuantityError as exc:
                problems.append(Problem(key, value, str(exc)))
        elif key == KEY_MIN_POD_AGE:
            try:
                age = parse_duration(value)
            except QuantityError as exc:
                problems.append(Problem(key, value, str(exc)))
            else:
                if age > MAX_WINDOW_SECONDS:
                    problems.append(Problem(key, value, "longer than 7 days; is the unit right?"))
                else:
                    min_age = age
        elif key == KEY_NODE_PRESSURE:
            if value.strip().lower() not in NODE_PRESSURE_VALUES:
                warnings.append(f"{key}={shown(value)} is neither evict nor never; the node guard treats it as "
                                "never (it does not act on a mistake)")
        else:
            hint = _closest(key)
            warnings.append(f"unknown annotation {key!r} is ignored" + (f"; did you mean {hint!r}?" if hint else ""))

    if not limits and not problems:
        problems.append(Problem(KEY_LIMIT, "", "no watch limit: set memwatch.io/limit "
                                "or memwatch.io/limit.<container>"))
    if problems:
        raise InvalidPolicy(problems, warnings)
    container_hards = tuple((c.name, c.hard_limit) for c in containers if c.hard_limit is not None)
    return Policy(tuple(limits), action, grace, for_seconds, escalate, predict, pod_hard,
                  container_hards, tuple(warnings), budget, min_age)


def _closest(key: str) -> str | None:
    """The known key a typo most likely meant (a cheap edit-distance check)."""
    import difflib

    # Compare what follows the shared prefix: with it, every memwatch.io/ key looked "close".
    known = {k[len(PREFIX):]: k for k in KNOWN_KEYS}
    matches = difflib.get_close_matches(key[len(PREFIX):], sorted(known), n=1, cutoff=0.6)
    return known[matches[0]] if matches else None


# ---------------------------------------------------------------------------------------------
# Decisions


@dataclass(slots=True, init=False)
class Usage:
    """One memory sample of a pod: working-set bytes, when it was measured, and by what.

    Never changed once made (sources hand the same object back for an unchanged sample, and the
    sweep keeps it), but not a frozen dataclass: a frozen ``__init__`` sets each field through
    ``object.__setattr__``, twice the cost of this one, and the sweep makes 10,000 a pass.
    """

    containers: Mapping[str, int]
    timestamp: float  # epoch seconds when the sample was taken (not when we read it)
    source: str
    pod_bytes: int | None  # the pod cgroup's own figure, when the source has it
    #: What the pod's limits are held against: the containers' sum, or the pod cgroup's own figure
    #: when that is larger. The pod cgroup holds its containers' cgroups, so a pod figure below their
    #: sum is older than theirs: the kubelet refreshes pod stats less often, and reports 0 for a new
    #: pod's first ~15 s. Worked out once here; every limit of every policy reads it.
    total: int

    def __init__(self, containers: Mapping[str, int], timestamp: float, source: str,
                 pod_bytes: int | None = None) -> None:
        self.containers = containers
        self.timestamp = timestamp
        self.source = source
        self.pod_bytes = pod_bytes
        summed = sum(containers.values())
        self.total = summed if pod_bytes is None or pod_bytes < summed else pod_bytes


@dataclass(frozen=True, slots=True)
class Breach:
    """A limit that a sample exceeds."""

    limit: Limit
    usage: int

    @property
    def over(self) -> int:
        return self.usage - self.limit.bytes


def breaches(policy: Policy, usage: Usage) -> list[Breach]:
    """Every limit the sample is over, worst (largest relative overshoot) first.

    A container limit with no sample for that container is not a breach: missing data never acts.
    """
    found: list[Breach] = []
    for limit in policy.limits:
        if limit.container is None:
            used: int | None = usage.total
        else:
            used = usage.containers.get(limit.container)
        if used is not None and used > limit.bytes:
            found.append(Breach(limit, used))
    found.sort(key=lambda b: b.usage / b.limit.bytes, reverse=True)
    return found


def is_over(policy: Policy, usage: Usage) -> bool:
    """Whether the sample is over any of the policy's limits: ``bool(breaches(policy, usage))``
    without building the list (the sweep asks it of every new sample)."""
    total = None
    for limit in policy.limits:
        if limit.container is None:
            if total is None:
                total = usage.total
            if total > limit.bytes:
                return True
        else:
            used = usage.containers.get(limit.container)
            if used is not None and used > limit.bytes:
                return True
    return False


def growth_rate(samples: Sequence[tuple[float, int]]) -> float | None:
    """Bytes per second over recent (time, bytes) samples: the least-squares slope, robust to one
    noisy sample. None with fewer than two samples or no time between them; negative when shrinking."""
    n = len(samples)
    if n < 2:
        return None
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var <= 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in samples) / var


def seconds_to_cross(samples: Sequence[tuple[float, int]], ceiling: int) -> float | None:
    """Predict how long until usage crosses ``ceiling``, from recent (time, bytes) samples.

    Uses the growth rate over the window (:func:`growth_rate`).
    None when usage is not growing or there are too few samples. 0 when already over.
    """
    if not samples:
        return None
    _last_t, last_v = samples[-1]
    if last_v >= ceiling:
        return 0.0
    slope = growth_rate(samples)
    if slope is None or slope <= 0:
        return None
    return (ceiling - last_v) / slope
