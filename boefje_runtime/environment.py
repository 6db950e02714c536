"""A task's ``environment`` in ``os.environ`` for one call only, and keeping its values out of our text.

OpenKAT hands each task the organisation's settings for that boefje (API keys, passwords) as
``data.environment``; boefjes read them with ``os.getenv``. A warm worker runs many tasks of many
organisations in one process, so whatever one task put in the environment must be gone before the
next task starts, and those values must never end up in an error file or a log line we write.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

#: Values shorter than this are not redacted: replacing "1" or "yes" everywhere would wreck the
#: text and protect nothing.
MIN_SECRET_LENGTH = 4
REDACTED = "***"


def check_environment(environment: Any) -> dict[str, str]:
    """Return the task's environment as a ``str -> str`` dict (``None`` is empty).

    Raises ``ValueError`` saying what is wrong, before anything is applied: ``os.environ`` itself
    refuses names with ``=`` or NUL half-way through an update, which would leave it half-changed.
    """
    if environment is None:
        return {}
    if not isinstance(environment, Mapping):
        raise ValueError(f"environment must be an object of strings, got {type(environment).__name__}")
    checked: dict[str, str] = {}
    for name, value in environment.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise ValueError(f"environment: invalid variable name {name!r}")
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"environment.{name}: expected a string without NUL, got {type(value).__name__}")
        checked[name] = value
    return checked


@contextmanager
def task_environment(environment: Mapping[str, str] | None) -> Iterator[None]:
    """Add ``environment`` to ``os.environ`` for the ``with`` block, then put ``os.environ`` back exactly.

    The whole environment is snapshotted and restored (variables added removed, changed ones reset),
    not only the task's keys: a boefje that sets ``os.environ`` itself must not leak into the next
    task either. Restoring by difference rather than ``clear()`` + ``update()`` (what OpenKAT does)
    never leaves the process with an empty environment, even for a moment.

    ``os.environ`` is process-wide: run one task at a time per process.
    """
    raw = _raw_environ()
    snapshot = dict(raw) if raw is not None else os.environ.copy()
    try:
        os.environ.update(environment or {})
        yield
    finally:
        if raw is not None:
            _restore_raw(raw, snapshot)
        else:
            _restore(snapshot)


def _raw_environ() -> dict[Any, Any] | None:
    """CPython's encoded store behind ``os.environ`` (bytes on POSIX), or None where there is none.

    Why: ``os.environ.copy()`` decodes every name and value, and comparing them back decodes them
    again; copying and comparing the encoded dict is done in C. In a warm worker this was a tenth
    of the CPU a trivial task costs (a container's environment has dozens of variables).
    """
    raw = getattr(os.environ, "_data", None)
    ok = isinstance(raw, dict) and callable(getattr(os.environ, "decodekey", None))
    return raw if ok and callable(getattr(os.environ, "decodevalue", None)) else None


def _restore_raw(raw: dict[Any, Any], snapshot: dict[Any, Any]) -> None:
    if raw == snapshot:  # the usual case for a task without environment: one comparison in C
        return
    decode_key, decode_value = os.environ.decodekey, os.environ.decodevalue  # type: ignore[attr-defined]
    for key in raw.keys() - snapshot.keys():
        del os.environ[decode_key(key)]
    for key, value in snapshot.items() - raw.items():
        os.environ[decode_key(key)] = decode_value(value)


def _restore(snapshot: dict[str, str]) -> None:
    for name in [name for name in os.environ if name not in snapshot]:
        del os.environ[name]
    for name, value in snapshot.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def secret_values(environment: Mapping[str, Any] | Iterable[Any] | None) -> list[str]:
    """The strings worth redacting, longest first so a secret containing another is hidden whole.

    Accepts the environment mapping (its values are the secrets) or any iterable of values. Each
    secret is also matched in the escaped forms a traceback (``repr``) or JSON would show it in.
    """
    if environment is None:
        return []
    if isinstance(environment, str):
        environment = [environment]
    values = environment.values() if isinstance(environment, Mapping) else environment
    forms: set[str] = set()
    for value in values:
        if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
            continue
        forms.update({value, repr(value)[1:-1], json.dumps(value)[1:-1]})
    return sorted((form for form in forms if len(form) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def redact(text: str, secrets: Mapping[str, Any] | Iterable[Any] | None) -> str:
    """Replace every secret value (of at least 4 characters) in ``text`` with ``***``.

    ``secrets`` is the task's environment mapping or an iterable of values. Use it on anything the
    runtime itself writes that may quote the task: tracebacks, error messages, log lines.
    """
    for secret in secret_values(secrets):
        text = text.replace(secret, REDACTED)
    return text
