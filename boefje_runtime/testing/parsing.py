"""Request parsing for the test Boefje API: query strings and JSON bodies to endpoint arguments.

Every check answers what the real services answer for the same mistake (mostly 422 with a
``detail`` naming the field), by raising :class:`_Reply`. Kept apart from the task store, so the
store deals in checked values only, and from the transport, which only reads bytes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from ..errors import ParseError
from ..filters import check_filters
from ..models import BoefjeOutput, Task, TaskStatus

STATUSES = frozenset(status.value for status in TaskStatus)

#: What the transport hands over instead of a decoded body: none came, or it was not JSON.
_NO_BODY = object()
_BAD_JSON = object()


class _Reply(Exception):
    """Raised inside a handler to answer an error status with ``{"detail": ...}``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _required(body: Any) -> Any:
    if body is _NO_BODY:
        raise _Reply(422, "body: a JSON body is required")
    if body is _BAD_JSON:
        raise _Reply(422, "body: not valid JSON")
    return body


def _pop_filters(body: Any) -> Any:
    """The pop body must be there (OpenKAT answers 422 without one): ``{"filters": ...}``."""
    body = _required(body)
    if not isinstance(body, Mapping):
        raise _Reply(422, "body: expected an object with 'filters'")
    filters = body.get("filters")
    try:
        check_filters(filters)
    except ParseError as exc:
        raise _Reply(422, str(exc)) from None
    return filters


def _limit(query: dict[str, list[str]]) -> int:
    values = query.get("limit") or ["1"]
    try:
        limit = int(values[-1])
    except ValueError:
        limit = 0
    if limit < 1:
        raise _Reply(422, f"limit: expected a positive integer, got {values[-1]!r}")
    return limit


def _pushed_task(body: Any) -> dict[str, Any]:
    """A pushed task must parse as a :class:`Task`; it is stored as sent (a copy of the dict)."""
    try:
        Task.from_dict(body)
    except ParseError as exc:
        raise _Reply(422, str(exc)) from None
    return dict(body)


def _patch_status(body: Any) -> str:
    status = body.get("status") if isinstance(body, Mapping) else None
    if status not in STATUSES:
        raise _Reply(422, f"status: expected one of {', '.join(sorted(STATUSES))}, got {status!r}")
    return status


def _output_record(body: Any) -> dict[str, Any]:
    """A posted output as the server keeps it: ``{"status", "files": [{"name", "content": bytes, "tags"}]}``."""
    try:
        output = BoefjeOutput.from_dict(body)
        files = [
            {"name": f.name, "content": _b64decode(f.content, f"output.files[{i}].content"), "tags": f.tags}
            for i, f in enumerate(output.files)
        ]
    except ParseError as exc:
        raise _Reply(422, str(exc)) from None
    return {"status": output.status.value, "files": files}


def _b64decode(text: str, path: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(path, "not valid base64") from None
