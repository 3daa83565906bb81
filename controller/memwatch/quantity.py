"""Memory quantities and durations: parsing (Kubernetes' own grammar, no client needed) and formatting."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from decimal import Decimal

#: Kubernetes' quantity grammar, as ``resource.ParseQuantity`` reads it: ASCII digits only (``[0-9]``;
#: ``\d`` would match any script's digits), no spaces, no underscores; ``1.`` and ``.5`` are allowed.
_QUANTITY = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?")
#: The common forms (``512Mi``, ``1073741824``, the metrics API's ``123456Ki``), parsed without Decimal.
_PLAIN = re.compile(r"([0-9]{1,15})(Ki|Mi|Gi)?")
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
#: Suffixes that make a fraction of a byte: always a typo in a memory size.
_FRACTIONS = {"m": "thousandths", "u": "millionths", "n": "billionths"}
_MAX_BYTES = 2**63
_INT64_DIGITS = 19
_NOT_A_QUANTITY = "is not a Kubernetes quantity (examples: 512Mi, 1.5Gi, 600M)"
#: Durations: ASCII digits with an optional fraction, then a unit; or a plain number of seconds.
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
#: How much of an offending value a message quotes: a 256 KiB annotation must not become the message.
SHOWN_CHARS = 60


class QuantityError(ValueError):
    """A value that is not a valid quantity or duration; the message says why."""


def shown(text: str) -> str:
    """``repr(text)``, cut to :data:`SHOWN_CHARS` characters with the length named when it is longer."""
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return repr(text[:SHOWN_CHARS]) + f"… ({len(text)} characters)"


def parse_bytes(text: str, allow_zero: bool = False) -> int:
    """Parse a Kubernetes memory quantity (`512Mi`, `1.5Gi`, `600M`, `1e9`) to whole bytes.

    Accepts exactly the grammar of the API server's ``resource.ParseQuantity`` (ASCII digits, no
    spaces), then refuses zero (unless ``allow_zero``), negatives, values above 2^63 and the fraction
    suffixes ``m``, ``u``, ``n`` (`512m` is 0.512 bytes, almost always a typo for `512Mi`). A
    fraction of a byte rounds up, as Kubernetes rounds any non-zero quantity up.
    """
    # Fastest path: `<digits>Ki`, what metrics-server and the kubelet write (no regex: ~0.3 us).
    if text[-2:] == "Ki" and 2 < len(text) <= 17:
        digits = text[:-2]
        if digits.isascii() and digits.isdigit():
            value = int(digits) << 10
            if value == 0 and not allow_zero:
                raise QuantityError(f"{shown(text)} must be greater than zero")
            return value
    plain = _PLAIN.fullmatch(text)
    if plain:  # fast path; 15 digits shifted by at most 30 bits stays far below 2^63
        number, suffix = plain.groups()
        value = int(number) << _BINARY.get(suffix or "", 0)
        if value == 0 and not allow_zero:
            raise QuantityError(f"{shown(text)} must be greater than zero")
        return value
    if not text:
        raise QuantityError("empty quantity")
    if text != text.strip():
        raise QuantityError(f"{shown(text)} has spaces around it; a Kubernetes quantity has none")
    match = _QUANTITY.fullmatch(text)
    amount = _amount(*match.groups()[1:]) if match else None
    if match is None or amount is None:
        raise QuantityError(f"{shown(text)} {_NOT_A_QUANTITY}")
    sign, whole, fraction, suffix = match.groups()
    if (amount == 0 and not allow_zero) or (amount != 0 and sign == "-"):
        raise QuantityError(f"{shown(text)} must be greater than zero")
    if suffix in _FRACTIONS:
        number = whole + ("." + fraction if fraction is not None else "")
        raise QuantityError(f"{shown(text)} means {number} {_FRACTIONS[suffix]} of a byte (suffix {suffix}); "
                            f"did you mean {number}Mi?")
    if amount > _MAX_BYTES:
        raise QuantityError(f"{shown(text)} is larger than any memory size")
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))


def _amount(whole: str, fraction: str | None, suffix: str | None) -> Decimal | None:
    """The exact value of a quantity that matched :data:`_QUANTITY`, or None where Kubernetes
    refuses the suffix (an exponent outside int64)."""
    suffix = suffix or ""
    if suffix in _BINARY:
        base, exponent = 2, _BINARY[suffix]
    elif suffix in _DECIMAL:
        base, exponent = 10, _DECIMAL[suffix]
    else:
        digits = suffix[1:].lstrip("+-").lstrip("0")
        if len(digits) > _INT64_DIGITS:
            return None
        exponent = int(suffix[1:])
        if not -(2**63) <= exponent < 2**63:
            return None
        # Kubernetes keeps the exponent in an int32, so a larger one wraps; do the same.
        base, exponent = 10, (exponent + 2**31) % 2**32 - 2**31
    # Imported here: `memwatch lint` starts faster, and the fast path above never needs it.
    from decimal import MAX_EMAX, MIN_EMIN, Decimal, localcontext

    with localcontext() as ctx:
        # Exact arithmetic: enough precision for every digit written plus 2^60, and room for any exponent.
        ctx.prec = len(whole) + len(fraction or "") + 25
        ctx.Emax, ctx.Emin = MAX_EMAX, MIN_EMIN
        amount = Decimal(f"{whole or '0'}.{fraction or '0'}")
        return amount.scaleb(exponent) if base == 10 else amount * (1 << exponent)


def parse_duration(text: str) -> float:
    """Parse a duration such as `5s`, `500ms`, `1m30s` or a plain number of seconds, to seconds.

    ASCII digits only, no spaces, no sign, no exponent: empty, negative and garbled values raise
    QuantityError.
    """
    if not text:
        raise QuantityError("empty duration")
    if _SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        pos = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or pos == 0:
            raise QuantityError(
                f"{shown(text)} is not a duration (examples: 5s, 500ms, 1m30s, or a number of seconds)")
    if not math.isfinite(seconds):
        raise QuantityError(f"{shown(text)} must be a finite duration")
    return seconds


def parse_seconds(text: str) -> int:
    """Parse a whole number of seconds written as plain ASCII digits (`30`), as Kubernetes'
    ``terminationGracePeriodSeconds`` is: no unit, sign, exponent, underscore, fraction or space."""
    if not text:
        raise QuantityError("empty number of seconds")
    if not text.isascii() or not text.isdigit():
        raise QuantityError(f"{shown(text)} is not a whole number of seconds written in digits (example: 30)")
    significant = text.lstrip("0")
    if len(significant) > _INT64_DIGITS:  # int() refuses very long digit strings; no such value is useful
        raise QuantityError(f"{shown(text)} is too large")
    return int(significant or "0")


#: The binary units :func:`format_bytes` and :func:`format_beside` show, largest first.
_SHOWN_UNITS = (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10))


def format_bytes(value: int | float | None) -> str:
    """Human form used in log lines and Events: `612Mi`, `1.50Gi`, `900Ki`, `12B`."""
    if value is None:
        return "?"
    v = float(value)
    for unit, size in _SHOWN_UNITS:
        if abs(v) >= size:
            n = v / size
            number = f"{n:.0f}" if n >= 100 else f"{n:.2f}".rstrip("0").rstrip(".")
            return number + unit
    return f"{v:.0f}B"


def format_beside(value: int | None, other: int | None) -> str:
    """:func:`format_bytes` of ``value``, with as many more decimals as it takes to tell it from
    ``other`` when the two differ but would read the same: a usage of 120.3 MiB over a limit of
    120 MiB reads `120.3Mi`, not `120Mi` over `120Mi`. Exact bytes when three decimals are not enough."""
    text = format_bytes(value)
    if value is None or other is None or value == other or text != format_bytes(other):
        return text
    for unit, size in _SHOWN_UNITS:
        if abs(value) >= size:
            for places in (1, 2, 3):
                number = f"{value / size:.{places}f}"
                if number != f"{other / size:.{places}f}":
                    return number + unit
            break
    return f"{value}B"


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
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
