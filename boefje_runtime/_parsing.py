"""Small checkers that turn untrusted JSON into typed values, naming the field on failure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from .errors import ParseError

_MISSING = object()


def describe(value: Any) -> str:
    """Say what a wrong value was, short enough for one log line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def is_secret_path(path: str) -> bool:
    """True for a task's ``environment`` and anything under it: the organisation's credentials,
    whose values no error message may show (they reach logs and the posted error file)."""
    return "environment" in path.split(".")


def shown(value: Any, path: str) -> str:
    """:func:`describe`, or only the value's type under a secret path (``a number``, ``a string``)."""
    if not is_secret_path(path):
        return describe(value)
    if isinstance(value, bool):
        return "a boolean"
    if value is None or isinstance(value, (Mapping, list)):
        return describe(value)
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def expect_object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ParseError(path, f"expected an object, got {shown(value, path)}")
    return value


def field(obj: Mapping[str, Any], key: str, path: str, default: Any = _MISSING) -> Any:
    """Return ``obj[key]``; a missing key is an error unless a default is given."""
    value = obj.get(key, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise ParseError(f"{path}.{key}", "missing")
        return default
    return value


def string(value: Any, path: str, *, optional: bool = False, non_empty: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or (non_empty and not value):
        kind = "a non-empty string" if non_empty else "a string"
        if optional:
            kind += " or null"
        raise ParseError(path, f"expected {kind}, got {shown(value, path)}")
    return value


def integer(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParseError(path, f"expected an integer, got {describe(value)}")
    return value


def timestamp(value: Any, path: str, *, optional: bool = True) -> datetime | None:
    """Parse ISO 8601 with or without a UTC offset (and with a trailing ``Z``, which 3.10 rejects)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ParseError(path, f"expected an ISO 8601 datetime, got {describe(value)}")
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    try:  # Python 3.10 takes only 3 or 6 fraction digits and "+HH:MM"; 3.11+ takes the rest too
        return datetime.fromisoformat(_ISO_FRACTION.sub(_six_digits, _ISO_OFFSET.sub(r"\1:\2", text)))
    except ValueError:
        raise ParseError(path, f"expected an ISO 8601 datetime, got {describe(value)}") from None


_ISO_FRACTION = re.compile(r"(?<=:\d\d)\.(\d+)")
_ISO_OFFSET = re.compile(r"([+-]\d\d)(\d\d)$")


def _six_digits(match: re.Match[str]) -> str:
    return "." + (match.group(1) + "000000")[:6]


def format_timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def string_map(value: Any, path: str, *, optional: bool = True) -> dict[str, str] | None:
    if value is None and optional:
        return None
    obj = expect_object(value, path)
    for key, item in obj.items():
        if not isinstance(item, str):
            raise ParseError(f"{path}.{key}", f"expected a string, got {shown(item, path)}")
    return dict(obj)


def extras(obj: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """The fields we do not model: kept so they can be sent back unchanged."""
    return {key: value for key, value in obj.items() if key not in known}


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
