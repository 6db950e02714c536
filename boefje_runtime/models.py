"""The protocol's JSON shapes as plain dataclasses, with explicit parsing.

``from_dict`` checks every field it models and raises :class:`~boefje_runtime.errors.ParseError`
naming the field path. Fields we do not model are kept in ``extra`` and written back by
``to_dict``, because OpenKAT adds fields (``deduplication_key``, ...) that a push-back must not drop.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import _parsing as p
from .errors import ParseError


class TaskStatus(str, enum.Enum):
    """A task's status on the scheduler."""

    PENDING = "pending"
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class OutputStatus(str, enum.Enum):
    """The status a boefje run reports with its output."""

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


def _enum(cls: type[enum.Enum], value: Any, path: str) -> Any:
    # Strings only: for anything else Enum builds its own error message with repr(value), which
    # raises RecursionError for deeply nested JSON (and is slow for a huge one).
    if isinstance(value, str):
        try:
            return cls(value)
        except ValueError:
            pass
    allowed = ", ".join(member.value for member in cls)
    raise ParseError(path, f"expected one of {allowed}, got {p.describe(value)}") from None


@dataclass
class BoefjeRef:
    """Which boefje a task asks for."""

    id: str
    version: str | None = None
    oci_image: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    _KNOWN = frozenset({"id", "version", "oci_image"})

    @classmethod
    def from_dict(cls, obj: Any, path: str = "boefje") -> BoefjeRef:
        obj = p.expect_object(obj, path)
        return cls(
            id=p.string(p.field(obj, "id", path), f"{path}.id", non_empty=True),
            version=p.string(obj.get("version"), f"{path}.version", optional=True),
            oci_image=p.string(obj.get("oci_image"), f"{path}.oci_image", optional=True),
            extra=p.extras(obj, cls._KNOWN),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "id": self.id, "version": self.version, "oci_image": self.oci_image}


@dataclass
class BoefjeMeta:
    """The ``data`` of a boefje task: what ``run(boefje_meta)`` receives."""

    id: str
    boefje: BoefjeRef
    organization: str
    input_ooi: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    runnable_hash: str | None = None
    # repr=False: the organisation's settings often hold secrets and must never reach a log line.
    environment: dict[str, str] | None = field(default=None, repr=False)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    _KNOWN = frozenset(
        {"id", "boefje", "organization", "input_ooi", "arguments", "runnable_hash", "environment",
         "started_at", "ended_at"}
    )

    @classmethod
    def from_dict(cls, obj: Any, path: str = "boefje_meta") -> BoefjeMeta:
        obj = p.expect_object(obj, path)
        arguments = obj.get("arguments")
        return cls(
            id=p.string(p.field(obj, "id", path), f"{path}.id", non_empty=True),
            boefje=BoefjeRef.from_dict(p.field(obj, "boefje", path), f"{path}.boefje"),
            organization=p.string(p.field(obj, "organization", path), f"{path}.organization"),
            input_ooi=p.string(obj.get("input_ooi"), f"{path}.input_ooi", optional=True),
            arguments={} if arguments is None else dict(p.expect_object(arguments, f"{path}.arguments")),
            runnable_hash=p.string(obj.get("runnable_hash"), f"{path}.runnable_hash", optional=True),
            environment=p.string_map(obj.get("environment"), f"{path}.environment"),
            started_at=p.timestamp(obj.get("started_at"), f"{path}.started_at"),
            ended_at=p.timestamp(obj.get("ended_at"), f"{path}.ended_at"),
            extra=p.extras(obj, cls._KNOWN),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "id": self.id,
            "boefje": self.boefje.to_dict(),
            "input_ooi": self.input_ooi,
            "arguments": self.arguments,
            "organization": self.organization,
            "runnable_hash": self.runnable_hash,
            "environment": self.environment,
            "started_at": p.format_timestamp(self.started_at),
            "ended_at": p.format_timestamp(self.ended_at),
        }


@dataclass
class Task:
    """A scheduler task whose ``data`` is a :class:`BoefjeMeta`.

    ``raw`` is the payload exactly as received: pushing a task back sends it, so nothing the
    scheduler gave us is reformatted or lost.
    """

    id: str
    data: BoefjeMeta
    status: TaskStatus = TaskStatus.QUEUED
    scheduler_id: str = "boefje"
    organisation: str | None = None
    priority: int | None = None
    type: str | None = "boefje"
    schedule_id: str | None = None
    hash: str | None = None
    created_at: datetime | None = None
    modified_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    raw: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    _KNOWN = frozenset(
        {"id", "data", "status", "scheduler_id", "organisation", "priority", "type", "schedule_id", "hash",
         "created_at", "modified_at"}
    )

    @classmethod
    def from_dict(cls, obj: Any, path: str = "task") -> Task:
        obj = p.expect_object(obj, path)
        priority = obj.get("priority")
        return cls(
            id=p.string(p.field(obj, "id", path), f"{path}.id", non_empty=True),
            data=BoefjeMeta.from_dict(p.field(obj, "data", path), f"{path}.data"),
            status=_enum(TaskStatus, obj.get("status", "queued"), f"{path}.status"),
            scheduler_id=p.string(obj.get("scheduler_id", "boefje"), f"{path}.scheduler_id"),
            organisation=p.string(obj.get("organisation"), f"{path}.organisation", optional=True),
            priority=None if priority is None else p.integer(priority, f"{path}.priority"),
            type=p.string(obj.get("type"), f"{path}.type", optional=True),
            schedule_id=p.string(obj.get("schedule_id"), f"{path}.schedule_id", optional=True),
            hash=p.string(obj.get("hash"), f"{path}.hash", optional=True),
            created_at=p.timestamp(obj.get("created_at"), f"{path}.created_at"),
            modified_at=p.timestamp(obj.get("modified_at"), f"{path}.modified_at"),
            extra=p.extras(obj, cls._KNOWN),
            raw=dict(obj),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "id": self.id,
            "scheduler_id": self.scheduler_id,
            "schedule_id": self.schedule_id,
            "organisation": self.organisation,
            "priority": self.priority,
            "status": self.status.value,
            "type": self.type,
            "hash": self.hash,
            "data": self.data.to_dict(),
            "created_at": p.format_timestamp(self.created_at),
            "modified_at": p.format_timestamp(self.modified_at),
        }

    @property
    def deduplication_key(self) -> str | None:
        """The scheduler's grouping key, where the API left it visible (top-level or in ``data``)."""
        key = self.extra.get("deduplication_key", self.data.extra.get("deduplication_key"))
        return key if isinstance(key, str) and key else None


@dataclass
class BoefjeInput:
    """What the one-shot input URL answers: the task and where to post its output."""

    task: Task
    output_url: str

    @classmethod
    def from_dict(cls, obj: Any, path: str = "input") -> BoefjeInput:
        obj = p.expect_object(obj, path)
        return cls(
            task=Task.from_dict(p.field(obj, "task", path), f"{path}.task"),
            output_url=p.string(p.field(obj, "output_url", path), f"{path}.output_url", non_empty=True),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task.to_dict(), "output_url": self.output_url}


@dataclass
class OutputFile:
    """One raw file of a boefje's output; ``content`` is base64 text, as sent on the wire."""

    name: str
    content: str
    tags: list[str] | None = None

    @classmethod
    def from_dict(cls, obj: Any, path: str = "file") -> OutputFile:
        obj = p.expect_object(obj, path)
        tags = obj.get("tags")
        if tags is not None:
            if not isinstance(tags, list):
                raise ParseError(f"{path}.tags", f"expected a list of strings or null, got {p.describe(tags)}")
            tags = [p.string(tag, f"{path}.tags[{i}]") for i, tag in enumerate(tags)]
        return cls(
            name=p.string(p.field(obj, "name", path), f"{path}.name"),
            content=p.string(p.field(obj, "content", path), f"{path}.content"),
            tags=tags,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "content": self.content, "tags": self.tags}


@dataclass
class BoefjeOutput:
    """The body posted to a task's output URL."""

    status: OutputStatus
    files: list[OutputFile] = field(default_factory=list)

    @classmethod
    def from_dict(cls, obj: Any, path: str = "output") -> BoefjeOutput:
        obj = p.expect_object(obj, path)
        files = obj.get("files")
        if files is None:
            files = []
        elif not isinstance(files, list):
            raise ParseError(f"{path}.files", f"expected a list or null, got {p.describe(files)}")
        return cls(
            status=_enum(OutputStatus, p.field(obj, "status", path), f"{path}.status"),
            files=[OutputFile.from_dict(item, f"{path}.files[{i}]") for i, item in enumerate(files)],
        )

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "files": [f.to_dict() for f in self.files]}


def parse_task_list(body: Any, path: str = "pop") -> list[Any]:
    """Accept OpenKAT's proxy answer (a list) and the scheduler's (``{"results": [...]}``)."""
    if isinstance(body, Mapping):
        body = p.field(body, "results", path)
        path = f"{path}.results"
    if not isinstance(body, list):
        raise ParseError(path, f"expected a list of tasks, got {p.describe(body)}")
    return body
