"""Log set-up: text or JSON lines, context bound once, secrets masked in every line.

- :func:`configure_logging` installs one handler on the root logger. Text lines look like the
  seed's (``<ISO timestamp> [info] message key=value ...``); JSON lines are one object per line
  with ``timestamp``, ``level``, ``logger``, ``message``, ``pid`` and the context fields.
- Context is bound, not passed by hand: :func:`log_context` for the current task (a contextvar,
  so it ends with the ``with`` block) and :func:`bind` for the whole process (a worker's role and
  pid). A filter on the handler adds both to every record; ``extra={...}`` fields show up too.
- :func:`secret_values` masks values (a task's environment: API keys, passwords) as ``***`` in
  every formatted line, text and JSON, including tracebacks.

python-json-logger is imported only for ``fmt="json"``: the CLI's import time matters.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import IO, Any

from .environment import MIN_SECRET_LENGTH, REDACTED
from .environment import secret_values as _secret_forms

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# -- context ------------------------------------------------------------------------------------

# Holds an immutable snapshot (never mutated in place), so ``None`` as the default is enough.
_task_context: ContextVar[dict[str, Any] | None] = ContextVar("boefje_runtime_log_context", default=None)
_process_context: dict[str, Any] = {}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (task_id, boefje_id, organisation, ...) to every line logged in the block.

    Nested blocks add to (and may override) the outer fields; a field set to None is dropped.
    A contextvar, so threads and asyncio tasks each see their own.
    """
    merged = {**(_task_context.get() or {}), **fields}
    token = _task_context.set({key: value for key, value in merged.items() if value is not None})
    try:
        yield
    finally:
        _task_context.reset(token)


def bind(**fields: Any) -> None:
    """Add ``fields`` to every line this process logs from now on (e.g. ``role="worker"``).

    A field set to None is removed. Process-wide on purpose: a forked worker calls it once at
    start-up and every thread's lines carry it.
    """
    for key, value in fields.items():
        if value is None:
            _process_context.pop(key, None)
        else:
            _process_context[key] = value


def unbind_all() -> None:
    """Forget every :func:`bind` field (e.g. in a forked child before binding its own)."""
    _process_context.clear()


def current_context() -> dict[str, Any]:
    """The fields a line logged here and now would carry: process-wide first, then the task's."""
    return {**_process_context, **(_task_context.get() or {})}


class ContextFilter(logging.Filter):
    """Puts the bound context on each record as ``record.context`` (a dict)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(getattr(record, "context", None), dict):
            record.context = current_context()
        return True


# -- secrets ------------------------------------------------------------------------------------


class _SecretRegistry:
    """The values to mask, process-wide, counted so nested or concurrent blocks can share a value.

    Process-wide rather than per context: a line about a task may be logged by another thread
    (an HTTP library, a heartbeat) that never saw the task's contextvars, and masking a value
    in a line that did not need it costs nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._pattern: re.Pattern[str] | None = None

    def add(self, forms: Iterable[str]) -> None:
        with self._lock:
            self._counts.update(forms)
            self._pattern = None

    def remove(self, forms: Iterable[str]) -> None:
        with self._lock:
            self._counts.subtract(forms)
            self._counts = +self._counts  # drop values no block holds any more
            self._pattern = None

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._pattern = None

    def mask(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None:
            with self._lock:
                if not self._counts:
                    return text
                # Longest first, so a secret that contains another is masked whole.
                forms = sorted(self._counts, key=len, reverse=True)
                pattern = self._pattern = re.compile("|".join(map(re.escape, forms)))
        return pattern.sub(REDACTED, text)


_secrets = _SecretRegistry()


def _forms(values: Iterable[Any] | Mapping[str, Any] | str | None) -> list[str]:
    """Each value of at least 4 characters, its escaped forms (repr, JSON) and its longer lines."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    elif isinstance(values, Mapping):
        values = values.values()
    expanded: list[str] = []
    for value in values:
        if not isinstance(value, str):
            continue
        expanded.append(value)
        lines = [line.strip() for line in value.splitlines()]
        # A multi-line secret (a key file) may be logged one line at a time.
        expanded.extend(line for line in lines if len(lines) > 1 and len(line) >= MIN_SECRET_LENGTH)
    return _secret_forms(expanded)


@contextmanager
def secret_values(values: Iterable[Any] | Mapping[str, Any] | str | None) -> Iterator[None]:
    """Mask ``values`` (strings of at least 4 characters; a mapping's values) as ``***`` in every
    line formatted by our handlers while the block runs: text, JSON and tracebacks alike."""
    forms = _forms(values)
    _secrets.add(forms)
    try:
        yield
    finally:
        _secrets.remove(forms)


def register_secrets(values: Iterable[Any] | Mapping[str, Any] | str | None) -> None:
    """Mask ``values`` for the rest of the process (e.g. the Boefje API header values)."""
    _secrets.add(_forms(values))


def mask_secrets(text: str) -> str:
    """``text`` with every currently registered secret replaced by ``***``."""
    return _secrets.mask(text)


# -- formatters ---------------------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "context", "taskName",
}
_BARE_VALUE = re.compile(r"^[^\s\"'=\\]+$")


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The key/value fields of a record: bound context, then ``extra=`` fields."""
    fields = dict(getattr(record, "context", None) or {})
    fields.update((key, value) for key, value in record.__dict__.items() if key not in _RECORD_FIELDS)
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="microseconds")


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if _BARE_VALUE.match(text) else json.dumps(text, ensure_ascii=False)


def _single_line(text: str) -> str:
    """Line breaks as ``\\n``: one event is one line, whatever a message (a boefje's) holds."""
    return text.replace("\r\n", "\n").replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    """``<ISO timestamp> [info] message key=value ...``, like the seed, with secrets masked.

    One event is one line, so ``grep`` and log shippers see whole events and the lines of several
    workers never interleave mid-event: a traceback becomes a quoted ``traceback="..."`` field
    (``\\n`` between its lines) instead of lines of its own.
    """

    def format(self, record: logging.LogRecord) -> str:
        # Masked before escaping too: an escaped secret is no longer in the forms masking looks for.
        message = _single_line(mask_secrets(record.getMessage()))
        fields = " ".join(f"{key}={_text_value(value)}" for key, value in record_fields(record).items())
        line = f"{_timestamp(record)} [{record.levelname.lower()}] {message}"
        if fields:
            line += " " + fields
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += " traceback=" + json.dumps(mask_secrets(record.exc_text), ensure_ascii=False)
        if record.stack_info:
            line += " stack=" + json.dumps(mask_secrets(self.formatStack(record.stack_info)), ensure_ascii=False)
        return mask_secrets(line)


def _json_formatter_class() -> type[logging.Formatter]:
    """python-json-logger's formatter: ``pythonjsonlogger.json`` since v3 (importing the old
    ``jsonlogger`` module there warns), ``pythonjsonlogger.jsonlogger`` in v2."""
    try:
        from pythonjsonlogger.json import JsonFormatter
    except ImportError:
        from pythonjsonlogger.jsonlogger import JsonFormatter
    return JsonFormatter


_JSON_RESERVED = ("timestamp", "level", "logger", "message", "pid")


def _mask_json(value: Any) -> Any:
    """Mask secrets inside the values (not in the serialised text, where a secret that looks like
    JSON punctuation could break the line). Objects JSON cannot hold become their ``str``."""
    if isinstance(value, str):
        return mask_secrets(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {mask_secrets(str(key)): _mask_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_mask_json(item) for item in value]
    return mask_secrets(str(value))


def make_json_formatter() -> logging.Formatter:
    """One JSON object per line: timestamp, level, logger, message, pid, then the context and
    ``extra=`` fields at the top level (a field clashing with those five gets a ``_`` suffix,
    unless it holds the same value, like a bound ``pid``)."""
    base = _json_formatter_class()

    class JsonFormatter(base):  # type: ignore[misc, valid-type]
        def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict) -> None:
            fields: dict[str, Any] = {
                "timestamp": _timestamp(record),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": getattr(record, "message", ""),  # set by format()
                "pid": record.process,
            }
            for key, value in record_fields(record).items():
                if key in _JSON_RESERVED:
                    if fields[key] == value:
                        continue
                    key += "_"
                fields[key] = value
            # exc_info / stack_info (formatted by format()), and the keys of a dict message.
            fields.update(message_dict)
            log_record.update(_mask_json(fields))

    # json_ensure_ascii=False keeps non-ASCII text readable in the line.
    return JsonFormatter(json_ensure_ascii=False, json_default=str)


# -- set-up -------------------------------------------------------------------------------------


class _Handler(logging.StreamHandler):
    """Marks the handler we installed, so configuring twice replaces it instead of doubling lines."""


def configure_logging(level: str | int = "INFO", fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Send every log line at ``level`` and above to ``stream`` (default: stderr) as ``fmt``
    (``text`` or ``json``). Idempotent: a second call replaces the first one's handler."""
    if isinstance(level, str):
        if level.upper() not in LEVELS:
            raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
        level = logging.getLevelName(level.upper())
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown logging format {fmt!r}; use text or json")
    handler = _Handler(sys.stderr if stream is None else stream)
    handler.setFormatter(TextFormatter() if fmt == "text" else make_json_formatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    return handler


__all__ = [
    "ContextFilter",
    "TextFormatter",
    "bind",
    "configure_logging",
    "current_context",
    "log_context",
    "make_json_formatter",
    "mask_secrets",
    "record_fields",
    "register_secrets",
    "secret_values",
    "unbind_all",
]
