"""Scheduler filters: building the pop body, and evaluating it locally.

One evaluator serves both :meth:`TaskFilter.matches` and the test Boefje API, so what a worker
asks for and what the test server hands out cannot drift apart.
"""

from __future__ import annotations

import operator as op
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ._parsing import describe
from .errors import ParseError

_MISSING = object()


@lru_cache(maxsize=256)
def _compile_like(pattern: str, flags: int) -> re.Pattern[str]:
    """SQL LIKE as Postgres reads it: ``%`` is any run, ``_`` one character, a backslash makes the
    next character literal (Postgres's default escape), everything else is literal."""
    parts = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            parts.append(re.escape(next(chars, "\\")))
        else:
            parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return re.compile("".join(parts), flags | re.DOTALL)


def _like(value: Any, pattern: Any, flags: int = 0) -> bool:
    if not isinstance(value, str) or not isinstance(pattern, str):
        return False
    return _compile_like(pattern, flags).fullmatch(value) is not None


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def check(value: Any, target: Any) -> bool:
        try:
            return value is not None and bool(compare(value, target))
        except TypeError:  # e.g. a string against a number: not ordered, so not a match
            return False

    return check


def _in(value: Any, target: Any) -> bool:
    return isinstance(target, (list, tuple)) and value in target


def _contains(value: Any, target: Any) -> bool:
    if isinstance(value, str):  # SQLAlchemy's contains(): LIKE '%' || target || '%', wildcards live
        return isinstance(target, str) and _like(value, f"%{target}%")
    if isinstance(value, list):
        wanted = target if isinstance(target, list) else [target]
        return all(item in value for item in wanted)
    if isinstance(value, Mapping) and isinstance(target, Mapping):
        return all(key in value and value[key] == item for key, item in target.items())
    return False


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": op.eq, "eq": op.eq,
    "!=": op.ne, "ne": op.ne,
    "is": lambda v, t: v is t or (v == t and type(v) is type(t)),
    "is_not": lambda v, t: not (v is t or (v == t and type(v) is type(t))),
    "is_null": lambda v, t: v is None,
    "is_not_null": lambda v, t: v is not None,
    ">": _ordered(op.gt), "gt": _ordered(op.gt),
    "<": _ordered(op.lt), "lt": _ordered(op.lt),
    ">=": _ordered(op.ge), "gte": _ordered(op.ge),
    "<=": _ordered(op.le), "lte": _ordered(op.le),
    "like": _like,
    "not_like": lambda v, t: isinstance(v, str) and not _like(v, t),
    "ilike": lambda v, t: _like(v, t, re.IGNORECASE),
    "not_ilike": lambda v, t: isinstance(v, str) and not _like(v, t, re.IGNORECASE),
    "in": _in,
    "not_in": lambda v, t: isinstance(t, (list, tuple)) and v not in t,
    "contains": _contains,
    # SQLAlchemy's startswith(): LIKE target || '%', so % and _ in the target are wildcards too.
    "starts_with": lambda v, t: isinstance(t, str) and _like(v, f"{t}%"),
}

#: The operators that say something about null. Any other comparison with null (a missing step
#: included) is unknown in SQL, and so is its negation: the scheduler pops a task only when the
#: whole condition is true.
NULL_AWARE = frozenset({"is", "is_not", "is_null", "is_not_null"})


def _lookup(task: Mapping[str, Any], column: str, field: str | None) -> Any:
    """Walk ``column`` then each ``__``-separated part of ``field``; a missing step is null."""
    value = task.get(column)
    if field:
        for part in field.split("__"):
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
    return value


def check_filter(item: Any, path: str = "filters") -> Mapping[str, Any]:
    """Validate one filter dict so a typo fails loudly instead of matching nothing."""
    if not isinstance(item, Mapping):
        raise ParseError(path, f"expected a filter object, got {describe(item)}")
    if not isinstance(item.get("column"), str) or not item["column"]:
        raise ParseError(f"{path}.column", f"expected a non-empty string, got {describe(item.get('column'))}")
    if item.get("field") is not None and not isinstance(item["field"], str):
        raise ParseError(f"{path}.field", f"expected a string or null, got {describe(item['field'])}")
    name = item.get("operator", "eq")
    if name not in OPERATORS:
        raise ParseError(f"{path}.operator", f"unknown operator {describe(name)}")
    return item


def check_filters(filters: Any, path: str = "filters") -> None:
    """Validate a whole filter expression: a list, or an ``and``/``or``/``not`` object."""
    if filters is None:
        return
    if isinstance(filters, list):
        for i, item in enumerate(filters):
            check_filter(item, f"{path}[{i}]")
        return
    if not isinstance(filters, Mapping):
        raise ParseError(path, f"expected a list or an and/or/not object, got {describe(filters)}")
    unknown = set(filters) - {"and", "or", "not"}
    if unknown:
        raise ParseError(path, f"unknown keys {sorted(unknown)}; expected and, or, not")
    for key, items in filters.items():
        if not isinstance(items, list):
            raise ParseError(f"{path}.{key}", f"expected a list, got {describe(items)}")
        for i, item in enumerate(items):
            check_filter(item, f"{path}.{key}[{i}]")


def _holds(item: Mapping[str, Any], task: Mapping[str, Any]) -> bool | None:
    """True, False, or None for SQL's unknown (a comparison with null)."""
    value = _lookup(task, item["column"], item.get("field"))
    name = item.get("operator", "eq")
    if value is None and name not in NULL_AWARE:
        return None
    return OPERATORS[name](value, item.get("value"))


def _all(results: Iterable[bool | None]) -> bool | None:
    """SQL AND: false wins, then unknown."""
    unknown = False
    for result in results:
        if result is False:
            return False
        unknown = unknown or result is None
    return None if unknown else True


def _any(results: Iterable[bool | None]) -> bool | None:
    """SQL OR: true wins, then unknown."""
    unknown = False
    for result in results:
        if result is True:
            return True
        unknown = unknown or result is None
    return None if unknown else False


def _truth(filters: Any, task: Mapping[str, Any]) -> bool | None:
    if not filters:
        return True
    if isinstance(filters, list):
        return _all(_holds(item, task) for item in filters)
    ands, ors, nots = filters.get("and") or [], filters.get("or") or [], filters.get("not") or []
    parts = [_all(_holds(item, task) for item in ands)]
    if ors:
        parts.append(_any(_holds(item, task) for item in ors))
    if nots:
        matched = _any(_holds(item, task) for item in nots)
        parts.append(None if matched is None else not matched)
    return _all(parts)


def evaluate(filters: Any, task: Mapping[str, Any]) -> bool:
    """Does ``task`` (a JSON dict) satisfy ``filters``, as the scheduler's SQL decides? A list means
    all must hold.

    The object form follows the scheduler: every ``and`` holds, at least one ``or`` holds (when any
    are given), and no ``not`` holds. As in SQL, a comparison with null is unknown, not false, so
    ``!=``, ``not_in`` and ``not`` do not match a task whose field is missing or null.
    """
    return _truth(filters, task) is True


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks this worker takes: its OCI images, optionally some plugin ids, and raw filters.

    An empty ``oci_images`` or ``plugins`` means "no restriction on that field".
    """

    oci_images: tuple[str, ...] = ()
    plugins: tuple[str, ...] = ()
    extra: tuple[Mapping[str, Any], ...] = ()

    def __init__(
        self,
        oci_images: Iterable[str] | str = (),
        plugins: Iterable[str] = (),
        extra: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        images = (oci_images,) if isinstance(oci_images, str) else tuple(oci_images)
        for i, item in enumerate(extra):
            check_filter(item, f"extra[{i}]")
        object.__setattr__(self, "oci_images", images)
        object.__setattr__(self, "plugins", tuple(plugins))
        object.__setattr__(self, "extra", tuple(dict(item) for item in extra))

    def filters(self) -> list[dict[str, Any]]:
        """The scheduler filter list (all must hold)."""
        result: list[dict[str, Any]] = []
        if self.oci_images:
            result.append(
                {"column": "data", "field": "boefje__oci_image", "operator": "in", "value": list(self.oci_images)}
            )
        if self.plugins:
            result.append({"column": "data", "field": "boefje__id", "operator": "in", "value": list(self.plugins)})
        result.extend(dict(item) for item in self.extra)
        return result

    def to_request(self) -> dict[str, Any]:
        """The pop body. Always a body: OpenKAT's API answers 422 to a pop without one."""
        return {"filters": self.filters()}

    def matches(self, task: Mapping[str, Any] | Any) -> bool:
        """Evaluate the same predicate locally, on a task dict or a :class:`~boefje_runtime.models.Task`."""
        if not isinstance(task, Mapping):
            task = task.raw if getattr(task, "raw", None) is not None else task.to_dict()
        return evaluate(self.filters(), task)
