"""Running one boefje for one task, and turning what it returns (or raises) into the output we post.

:func:`execute` never raises for anything the boefje does: an exception, a ``sys.exit``, a result
of the wrong shape or too much output all become a ``FAILED`` output with one ``error/boefje``
file saying what happened, so every task gets closed and the worker lives on. Only
``KeyboardInterrupt`` and other non-``Exception`` ``BaseException``s (``GeneratorExit``, or
whatever a pool uses to interrupt a task) pass through; the environment is restored either way.
"""

from __future__ import annotations

import base64
import copy
import importlib
import logging
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any

from . import _plugin_import, plugins
from ._parsing import utc_now
from .environment import check_environment, redact, task_environment
from .errors import PluginError
from .models import BoefjeOutput, OutputFile, OutputStatus
from .plugins import Boefje

logger = logging.getLogger("boefje_runtime.execution")

DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024
ERROR_TAG = "error/boefje"
MIME_TAG_MIN_LENGTH = 5  # two characters, a slash, two characters: OpenKAT's own threshold
_TAG_CONTAINERS = (set, frozenset, list, tuple)
_SUMMARY_LENGTH = 300
_RUNTIME_FILES = frozenset({__file__, plugins.__file__, _plugin_import.__file__, importlib.__file__})
#: Modules that wrap a boefje's ``run`` (``boefje-worker run --pdb``): their frames are ours, not the boefje's.
_WRAPPING_MODULES = frozenset({"boefje_runtime.local_run"})


@dataclass
class ExecutionResult:
    """What one run produced: the output to post, when it ran, and a log-line summary if it failed."""

    output: BoefjeOutput
    started_at: datetime
    ended_at: datetime
    duration: float  # seconds, from a monotonic clock
    error: str | None = None  # one line, secrets redacted; None when COMPLETED

    @property
    def failed(self) -> bool:
        return self.output.status is OutputStatus.FAILED


class _InvalidResult(Exception):
    """The boefje returned something that is not a list of (tags, content) pairs."""


class _TooLarge(Exception):
    """The boefje returned more bytes than ``max_output_bytes``."""


def default_tags(boefje_id: str, version: str | None = None) -> list[str]:
    """The tags every file of a boefje carries: ``boefje/{id}`` and, with a version, ``boefje/{id}-{version}``."""
    return [f"boefje/{boefje_id}"] + ([f"boefje/{boefje_id}-{version}"] if version is not None else [])


def is_mime_tag(tag: str) -> bool:
    """Whether a boefje's tag looks like a MIME type, the only tags we pass on."""
    return len(tag) >= MIME_TAG_MIN_LENGTH and "/" in tag


def failure_output(boefje_id: str, version: str | None, message: str, *,
                   secrets: Mapping[str, Any] | Iterable[Any] | None = None) -> BoefjeOutput:
    """A FAILED output with one ``error/boefje`` file holding ``message`` (redacted when secrets are given).

    The pool uses it too, for tasks whose worker died or timed out, so all failures look alike.
    """
    text = redact(message, secrets) if secrets else message
    tags = [ERROR_TAG, *default_tags(boefje_id, version)]
    return BoefjeOutput(OutputStatus.FAILED, [OutputFile("0", _b64(text.encode("utf-8", "backslashreplace")), tags)])


def execute(boefje: Boefje, boefje_meta: Mapping[str, Any] | Any, *,
            max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES, handed_over: bool = False) -> ExecutionResult:
    """Run ``boefje`` for one task and build its output; never raises for what the boefje does.

    ``boefje_meta`` is the task's ``data`` as received (a dict; a :class:`~boefje_runtime.models.BoefjeMeta`
    is accepted too). The boefje gets a deep copy with ``started_at`` set, so whatever it changes
    cannot alter the task we may still push back or compare for deduplication. ``None`` and an
    empty iterable are an empty result: COMPLETED without files.

    ``handed_over``: the caller gives ``boefje_meta`` away and never reads it again (a pool worker's
    own unpickled copy of the task; the supervisor keeps the original): no deep copy, which cost a
    few per cent of a trivial task's CPU.
    """
    started_at, clock = utc_now(), time.monotonic()
    meta = _meta_for_run(boefje_meta, started_at, handed_over=handed_over)
    ref = meta.get("boefje") if meta is not None else None
    # The task's id and version make the default tags, as in OpenKAT: the package found through
    # the oci_image fallback may carry another id than the one the task asked for.
    if isinstance(ref, Mapping) and isinstance(ref.get("id"), str) and ref["id"]:
        boefje_id, version = ref["id"], None if ref.get("version") is None else str(ref["version"])
    else:
        boefje_id, version = boefje.id, boefje.version
    environment = meta.get("environment") if meta is not None else None
    secrets = environment if isinstance(environment, Mapping) else None

    output, error = _outcome(boefje, meta, max_output_bytes, boefje_id, version, secrets)
    return ExecutionResult(output, started_at, utc_now(), time.monotonic() - clock, error)


def _outcome(boefje: Boefje, meta: dict[str, Any] | None, limit: int | None, boefje_id: str,
             version: str | None, secrets: Mapping[str, Any] | None) -> tuple[BoefjeOutput, str | None]:
    def failed(summary: str, content: str | None = None) -> tuple[BoefjeOutput, str]:
        summary = redact(summary, secrets).strip().splitlines()[0] if summary.strip() else "boefje failed"
        return failure_output(boefje_id, version, content or summary, secrets=secrets), summary[:_SUMMARY_LENGTH]

    if meta is None:
        return failed("invalid task: boefje_meta must be an object")
    try:
        environment = check_environment(meta.get("environment"))
    except ValueError as exc:
        return failed(f"invalid task: {exc}")
    try:
        run = boefje.load()
    except PluginError as exc:
        cause = exc.__cause__
        return failed(str(exc), f"{exc}\n\n{_traceback_text(cause)}" if cause is not None else None)
    try:
        with task_environment(environment):
            # A generator runs its code while we iterate: collect inside the environment.
            result = run(meta)
            if result is None:  # OpenKAT completes such a task too, but a forgotten return deserves a word
                logger.warning("Boefje %s returned None instead of a list of (tags, content) pairs; "
                               "the task completes with no files", boefje_id)
            items = _collect(result, limit)
    except _InvalidResult as exc:
        return failed(f"boefje returned an invalid result: {exc}")
    except _TooLarge as exc:
        return failed(str(exc))
    except (Exception, SystemExit) as exc:  # SystemExit: a boefje's sys.exit() fails its task, not the worker
        return failed(f"{type(exc).__name__}: {_safe_str(exc)}", _traceback_text(exc))
    return BoefjeOutput(OutputStatus.COMPLETED, _files(items, boefje_id, version, secrets)), None


def _meta_for_run(boefje_meta: Any, started_at: datetime, *, handed_over: bool = False) -> dict[str, Any] | None:
    if not isinstance(boefje_meta, Mapping) and callable(getattr(boefje_meta, "to_dict", None)):
        boefje_meta = boefje_meta.to_dict()
    if not isinstance(boefje_meta, Mapping):
        return None
    if handed_over:
        meta = dict(boefje_meta)
        meta["started_at"] = started_at.isoformat()
        return meta
    try:
        meta = copy.deepcopy(dict(boefje_meta))
    except Exception:  # a library user's object that cannot be copied: a shallow copy still protects the keys
        meta = dict(boefje_meta)
    meta["started_at"] = started_at.isoformat()
    return meta


def _collect(result: Any, limit: int | None) -> list[tuple[Iterable[str], bytes | bytearray]]:
    """Check the result's shape and size, item by item, before anything is base64-encoded."""
    if result is None:
        return []
    if isinstance(result, (str, bytes, bytearray, Mapping)) or not isinstance(result, Iterable):
        raise _InvalidResult(f"expected a list of (tags, content) pairs, got {type(result).__name__}")
    items: list[tuple[Iterable[str], bytes | bytearray]] = []
    total = 0
    for index, item in enumerate(result):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            got = f"a {type(item).__name__} of {len(item)} items" if isinstance(item, (tuple, list)) else (
                type(item).__name__)
            raise _InvalidResult(f"item {index}: expected a (tags, content) pair, got {got}")
        tags, content = item
        if not isinstance(tags, _TAG_CONTAINERS):
            raise _InvalidResult(
                f"item {index}: tags must be a set, list, tuple or frozenset of strings, got {type(tags).__name__}")
        for tag in tags:
            if not isinstance(tag, str):
                raise _InvalidResult(f"item {index}: tags must be strings, got {type(tag).__name__}")
        if isinstance(content, str):
            if limit is not None and total + len(content) > limit:  # UTF-8 has at least one byte per character
                raise _TooLarge(_too_large(total + len(content), index, limit))
            try:
                content = content.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _InvalidResult(f"item {index}: content is a str that is not valid UTF-8 ({exc.reason} "
                                     f"at position {exc.start})") from None
        elif not isinstance(content, (bytes, bytearray)):
            raise _InvalidResult(f"item {index}: content must be bytes or str, got {type(content).__name__}")
        total += len(content)
        if limit is not None and total > limit:
            raise _TooLarge(_too_large(total, index, limit))
        items.append((tags, content))
    return items


def _too_large(size: int, index: int, limit: int) -> str:
    return (f"boefje output too large: at least {size} bytes in its first {index + 1} files, "
            f"over the limit of {limit} bytes (max_output_bytes)")


def _files(items: list[tuple[Iterable[str], bytes | bytearray]], boefje_id: str, version: str | None,
           secrets: Mapping[str, Any] | None) -> list[OutputFile]:
    defaults = default_tags(boefje_id, version)
    files = []
    for index, (tags, content) in enumerate(items):
        valid = sorted({tag for tag in tags if is_mime_tag(tag)})
        dropped = sorted({tag for tag in tags if not is_mime_tag(tag)})
        if dropped:
            logger.warning("Boefje %s: dropped tags that do not look like MIME types from file %d: %s",
                           boefje_id, index, redact(", ".join(map(repr, dropped)), secrets))
        files.append(OutputFile(str(index), _b64(content), valid + [tag for tag in defaults if tag not in valid]))
    return files


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<exception str() failed>"


def _traceback_text(exc: BaseException) -> str:
    """The traceback from the boefje's frames down: ours and the import system's above it are only noise."""
    tb = exc.__traceback__
    while tb is not None and _is_runtime_frame(tb.tb_frame):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb if tb is not None else exc.__traceback__))


def _is_runtime_frame(frame: FrameType) -> bool:
    filename = frame.f_code.co_filename
    return (filename in _RUNTIME_FILES or filename.startswith("<frozen importlib")
            or frame.f_globals.get("__name__") in _WRAPPING_MODULES)
