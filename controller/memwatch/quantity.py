"""Memory quantities and durations: parsing (via the Kubernetes client) and human formatting."""

from __future__ import annotations

import math
import re
from datetime import datetime
from decimal import Decimal, InvalidOperation

from kubernetes.utils import parse_quantity

#: Kubernetes' quantity grammar (no spaces, no underscores), which Python's Decimal is laxer than.
_QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class QuantityError(ValueError):
    """A value that is not a valid quantity or duration; the message says why."""


def parse_bytes(text: str, allow_zero: bool = False) -> int:
    """Parse a Kubernetes memory quantity (`512Mi`, `1.5Gi`, `600M`) to whole bytes.

    Rejects zero, negatives, anything outside Kubernetes' quantity grammar, and the milli suffix
    (`512m` is 0.512 bytes, almost always a typo for `512Mi`). A fraction of a byte rounds up.
    """
    value = text.strip()
    if not value:
        raise QuantityError("empty quantity")
    if value.endswith("m") and value[:-1].replace(".", "", 1).isdigit():
        number = value[:-1]
        raise QuantityError(f"{text!r} means {number} thousandths of a byte (suffix m); did you mean {number}Mi?")
    if not _QUANTITY.match(value):
        raise QuantityError(f"{text!r} is not a Kubernetes quantity (examples: 512Mi, 1.5Gi, 600M)")
    try:
        parsed = parse_quantity(value)
    except (ValueError, TypeError, InvalidOperation, ArithmeticError) as exc:
        raise QuantityError(f"{text!r} is not a Kubernetes quantity (examples: 512Mi, 1.5Gi, 600M)") from exc
    if not isinstance(parsed, Decimal) or not parsed.is_finite():
        raise QuantityError(f"{text!r} is not a finite quantity")
    if parsed < 0 or (parsed == 0 and not allow_zero):
        raise QuantityError(f"{text!r} must be greater than zero")
    if parsed > Decimal(2) ** 63:
        raise QuantityError(f"{text!r} is larger than any memory size")
    whole = int(parsed.to_integral_value(rounding="ROUND_CEILING"))
    return whole


def parse_duration(text: str) -> float:
    """Parse a duration such as `5s`, `500ms`, `1m30s` or a plain number of seconds, to seconds.

    Negative, empty and garbled values raise QuantityError.
    """
    value = text.strip()
    if not value:
        raise QuantityError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value) or pos == 0:
            raise QuantityError(
                f"{text!r} is not a duration (examples: 5s, 500ms, 1m30s, or a number of seconds)"
            ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise QuantityError(f"{text!r} must be a non-negative, finite duration")
    return seconds


def format_bytes(value: int | float | None) -> str:
    """Human form used in log lines and Events: `612Mi`, `1.50Gi`, `900Ki`, `12B`."""
    if value is None:
        return "?"
    v = float(value)
    for unit, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if abs(v) >= size:
            n = v / size
            number = f"{n:.0f}" if n >= 100 else f"{n:.2f}".rstrip("0").rstrip(".")
            return number + unit
    return f"{v:.0f}B"


def format_duration(seconds: float | None) -> str:
    """Compact duration for log lines: `35ms`, `1.2s`, `3m05s`."""
    if seconds is None:
        return "?"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def parse_time(text: str | None) -> float | None:
    """RFC 3339 timestamp (as the API writes them) to epoch seconds; None when absent or malformed."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
