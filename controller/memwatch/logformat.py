"""Log output: ``--log-format text`` (kopf's one-line format, the default) or ``json`` (one JSON object a line).

The one place an action line is formatted. The controller (:class:`memwatch.observability.ActionLine`),
the node agent (the same class) and the node guard build an :class:`ActionFields` — named values, in
order — and log it with :func:`log_action`. The text form is the ``action=... key=value ...`` line
``kubectl logs | grep action=`` has always shown; the record also carries the fields themselves, and
:class:`JsonFormatter` writes each one as its own JSON key, with the same name and value (never parsed
back out of the text).

A JSON line holds ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger`` and ``msg`` (the message
text mode shows) for every record; the action fields for action lines; ``object`` for kopf's per-object
records; ``exc`` (the traceback as one string) when an exception is logged.

Only the standard library here: ``memwatch lint`` and the CLI import it before anything heavy.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

TEXT = "text"
JSON = "json"
LOG_FORMATS = (TEXT, JSON)

#: The LogRecord attribute that carries an action line's fields (``extra=`` of the logging call).
ACTION_ATTR = "memwatch_action"
#: Keys every JSON line has (or may have): an action field never takes one of these names.
RESERVED = frozenset({"ts", "level", "logger", "msg", "exc", "stack", "object"})


@dataclass(frozen=True, slots=True)
class Field:
    """One ``name=value`` of an action line. ``quoted``: the text form shows ``repr(value)`` (free text
    that may hold spaces); the JSON value is the string itself either way."""

    name: str
    value: str
    quoted: bool = False
    json_name: str | None = None  # the JSON key, when ``name`` is one of the line's own keys (RESERVED)

    @property
    def key(self) -> str:
        return self.json_name or self.name

    def text(self) -> str:
        return f"{self.name}={self.value!r}" if self.quoted else f"{self.name}={self.value}"


class ActionFields:
    """An action line's fields, in order. ``note``: free text after the fields in the text form only."""

    __slots__ = ("_fields", "note")

    def __init__(self, note: str = "") -> None:
        self._fields: list[Field] = []
        self.note = note

    def add(self, name: str, value: object, *, quoted: bool = False, json_name: str | None = None) -> ActionFields:
        """Append ``name=value`` (``value`` as ``str()`` shows it); returns self, to chain."""
        key = json_name or name
        if key in RESERVED:
            raise ValueError(f"action field {name!r} would overwrite the JSON line's own {key!r}: give a json_name")
        if any(f.key == key for f in self._fields):
            raise ValueError(f"action field {key!r} given twice")
        self._fields.append(Field(name, str(value), quoted, json_name))
        return self

    def __iter__(self) -> Iterator[Field]:
        return iter(self._fields)

    def text(self) -> str:
        """The text form: ``action=evicted pod=ns/name ... detail='...'`` (and the note, if any)."""
        line = " ".join(f.text() for f in self._fields)
        return f"{line} {self.note}" if self.note else line

    __str__ = text

    def as_json(self) -> dict[str, str]:
        """The fields as JSON keys and string values: the same names and values as the text form."""
        return {f.key: f.value for f in self._fields}


def log_action(logger: logging.Logger, fields: ActionFields, warning: bool = False, stacklevel: int = 1) -> None:
    """Log one action line: its text form as the message, its fields on the record for JSON.
    ``stacklevel``: as for :meth:`logging.Logger.log`, counted from the caller of this function."""
    # The text is the whole message (no %-args), exactly what `logger.info(line)` logged before.
    logger.log(logging.WARNING if warning else logging.INFO, fields.text(), extra={ACTION_ATTR: fields},
               stacklevel=stacklevel + 1)


def rfc3339(epoch: float) -> str:
    """``2024-06-10T06:22:15.640Z``."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in values are escaped by the encoder)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, ACTION_ATTR, None)
        if isinstance(fields, ActionFields):
            entry.update(fields.as_json())
        ref = getattr(record, "k8s_ref", None)  # kopf's per-object loggers (kopf.objects)
        if isinstance(ref, dict):
            entry["object"] = {k: v for k, v in ref.items() if v is not None}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class NoTraceback(logging.Filter):
    """Text mode: records of the named loggers stay one line; their exception's traceback is dropped
    (the message already holds the error's text). ``--verbose`` does not install it."""

    def __init__(self, *loggers: str) -> None:
        super().__init__()
        self.loggers = frozenset(loggers)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in self.loggers:
            record.exc_info = None
            record.exc_text = None
        return True


class JsonHandler(logging.StreamHandler[TextIO]):
    """memwatch's stderr handler in JSON mode (its own class, so a re-configuration finds and replaces it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(JsonFormatter())


def use_json(root: logging.Logger, replace: list[logging.Handler]) -> JsonHandler:
    """Write ``root``'s records as JSON lines: ``replace`` (the text handler kopf installed) goes."""
    for h in [*replace, *(h for h in root.handlers if isinstance(h, JsonHandler))]:
        root.removeHandler(h)
    handler = JsonHandler()
    root.addHandler(handler)
    _route_uncaught_exceptions()
    return handler


def drop_json(root: logging.Logger) -> None:
    """Back to text: remove a JSON handler an earlier configuration installed (tests re-configure), and
    give the uncaught-exception hooks back."""
    for h in [h for h in root.handlers if isinstance(h, JsonHandler)]:
        root.removeHandler(h)
    if _saved_hooks:
        sys.excepthook, threading.excepthook = _saved_hooks.pop()


#: The hooks in place before JSON mode routed uncaught exceptions to the log (at most one entry).
_saved_hooks: list[tuple[Any, Any]] = []


def _route_uncaught_exceptions() -> None:
    """An uncaught exception (main thread or another) is one JSON line with ``exc``, not a bare
    multi-line traceback on stderr between the JSON lines."""
    crash = logging.getLogger("memwatch")
    if not _saved_hooks:
        _saved_hooks.append((sys.excepthook, threading.excepthook))

    def main_hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        crash.critical("uncaught exception: %s", exc, exc_info=(kind, exc, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        name = args.thread.name if args.thread is not None else "?"
        crash.error("uncaught exception in thread %s: %s", name, args.exc_value,
                    exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = main_hook
    threading.excepthook = thread_hook
