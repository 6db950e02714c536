"""The tasks the test Boefje API holds, and what each endpoint does to them.

This is the fake scheduler and bytes API without HTTP: queues in priority order, every task's
status history and accepted outputs, and the endpoints' rules (pop dispatches, input and output
answer 403 unless the task is running, an output closes its task, PATCH is unguarded). It is not
thread-safe on purpose: :class:`BoefjeAPIServer` calls it under its one lock, which also covers
the request counts and faults, so a test always sees one consistent picture.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..filters import evaluate
from .parsing import _Reply

#: Queues the scheduler knows; any other ``{queue}`` answers 404, as the real scheduler does.
QUEUES = ("boefje", "normalizer")


@dataclass
class _Entry:
    task: dict[str, Any]
    queue: str
    history: list[str] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _dedup_key(task: Mapping[str, Any]) -> str | None:
    """The task's deduplication key as mula compares it (the JSON value as text), top-level or in
    ``data`` (mula keeps it in the task's data; our factory puts it top-level); None: no key."""
    value = task.get("deduplication_key")
    data = task.get("data")
    if value is None and isinstance(data, Mapping):
        value = data.get("deduplication_key")
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _without_key(task: dict[str, Any]) -> dict[str, Any]:
    """A copy of an answered task without its deduplication key, top-level or in ``data``."""
    task.pop("deduplication_key", None)
    data = task.get("data")
    if isinstance(data, Mapping) and "deduplication_key" in data:
        task["data"] = {name: value for name, value in data.items() if name != "deduplication_key"}
    return task


def _priority(task: Mapping[str, Any]) -> int:
    value = task.get("priority")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class TaskStore:
    """Tasks by id and the queues they wait in. Queue order: priority ascending, then enqueue order."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.queues: dict[str, list[tuple[int, int, str]]] = {name: [] for name in QUEUES}
        # task id -> its key in its queue, for the queued tasks only: unqueueing is a bisect, not a scan.
        self.queued_at: dict[str, tuple[int, int, str]] = {}
        #: Per queue, the queued tasks that have a deduplication key: a mula pop with none of them
        #: queued takes the first matching task instead of scanning the whole queue for a key (with
        #: 10,000 tasks queued that scan made the test API the benchmark's bottleneck).
        self.keyed: dict[str, set[str]] = {name: set() for name in QUEUES}
        self._seq = itertools.count()

    def clear(self) -> None:
        self.entries.clear()
        self.queued_at.clear()
        for entries in self.queues.values():
            entries.clear()
        for keyed in self.keyed.values():
            keyed.clear()

    # -- state changes ---------------------------------------------------------------------------

    def store(self, task_id: str, task: dict[str, Any], queue: str) -> None:
        """Queue ``task`` (status ``queued``); a known id is replaced and moved to ``queue``."""
        task["status"] = "queued"
        entry = self.entries.get(task_id)
        if entry is None:
            self.entries[task_id] = _Entry(task=task, queue=queue, history=["queued"])
        else:
            self._unqueue(task_id)
            entry.task, entry.queue = task, queue
            entry.history.append("queued")
        self._queue(task_id, queue, task)

    def _queue(self, task_id: str, queue: str, task: Mapping[str, Any]) -> None:
        key = (_priority(task), next(self._seq), task_id)
        bisect.insort(self.queues[queue], key)
        self.queued_at[task_id] = key
        if _dedup_key(task) is not None:
            self.keyed[queue].add(task_id)

    def _unqueue(self, task_id: str) -> None:
        key = self.queued_at.pop(task_id, None)
        if key is not None:
            queue = self.entries[task_id].queue
            entries = self.queues[queue]
            del entries[bisect.bisect_left(entries, key)]
            self.keyed[queue].discard(task_id)

    def set_status(self, task_id: str, status: str) -> None:
        """Set a status as PATCH does: any status from any status, queueing or unqueueing as needed."""
        entry = self.entries[task_id]
        if status == "queued":
            if task_id not in self.queued_at:  # a PATCH to queued on a queued task keeps its place
                self._queue(task_id, entry.queue, entry.task)
        else:
            self._unqueue(task_id)
        entry.task["status"] = status
        entry.task["modified_at"] = _now()
        entry.history.append(status)

    # -- endpoints (404 / 403 as _Reply) -----------------------------------------------------------

    def pop(self, queue: str, limit: int, filters: Any, *, mode: str = "mula",
            strip_keys: bool = True) -> list[dict[str, Any]]:
        """Dispatch queued tasks matching ``filters``, chosen as ``mode`` says (see ``POP_MODES`` in
        server.py); in ``mula`` mode with ``strip_keys``, the answer lacks the deduplication keys,
        as OpenKAT's Boefje API hands tasks out."""
        if queue not in self.queues:
            raise _Reply(404, f"Scheduler {queue!r} not found")
        matching = (task_id for _, _, task_id in self.queues[queue] if evaluate(filters, self.entries[task_id].task))
        if mode == "mula":
            chosen = self._mula_choice(queue, limit, filters)
        elif mode == "dedup":
            chosen = self._first_and_its_key(matching, limit)
        else:
            chosen = list(itertools.islice(matching, 1 if mode == "single" else limit))
        # Answer each task as it was before dispatching, as OpenKAT's proxy does ("queued").
        # Shallow copies suffice: stored tasks are only ever changed at the top level.
        answer = [dict(self.entries[task_id].task) for task_id in chosen]
        if mode == "mula" and strip_keys:
            answer = [_without_key(task) for task in answer]
        for task_id in chosen:
            self.set_status(task_id, "dispatched")
        return answer

    def _mula_choice(self, queue: str, limit: int, filters: Any) -> list[str]:
        """mula's ``pop_boefje``: when any matching task has a deduplication key, the tasks sharing
        the first such key (queue order), up to ``limit``, even past older keyless tasks; otherwise
        exactly one task, whatever ``limit`` says."""
        if not self.keyed[queue]:  # no key anywhere in the queue: the first matching task
            first = next((task_id for _, _, task_id in self.queues[queue]
                          if evaluate(filters, self.entries[task_id].task)), None)
            return [first] if first is not None else []
        first: str | None = None
        key = None
        for _, _, task_id in self.queues[queue]:
            task = self.entries[task_id].task
            if not evaluate(filters, task):
                continue
            if first is None:
                first = task_id
            key = _dedup_key(task)
            if key is not None:
                break
        if key is None:
            return [first] if first is not None else []
        chosen = []
        for _, _, task_id in self.queues[queue]:
            task = self.entries[task_id].task
            if _dedup_key(task) == key and evaluate(filters, task):
                chosen.append(task_id)
                if len(chosen) >= limit:
                    break
        return chosen

    def _first_and_its_key(self, matching: Iterable[str], limit: int) -> list[str]:
        """The older ``dedup`` mode: the first matching task plus later ones sharing its key."""
        chosen: list[str] = []
        key = None
        for task_id in matching:
            task_key = _dedup_key(self.entries[task_id].task)
            if chosen and task_key != key:
                continue
            chosen.append(task_id)
            if len(chosen) >= limit:
                break
            if len(chosen) == 1:
                key = task_key
                if key is None:
                    break  # no key: the scheduler answers a single task
        return chosen

    def push(self, queue: str, task: dict[str, Any]) -> dict[str, Any]:
        if queue not in self.queues:
            raise _Reply(404, f"Scheduler {queue!r} not found")
        self.store(task["id"], task, queue)
        return dict(task)

    def patch(self, task_id: str, status: str) -> dict[str, Any]:
        if task_id not in self.entries:
            raise _Reply(404, f"Task {task_id} not found")
        self.set_status(task_id, status)
        return dict(self.entries[task_id].task)

    def get(self, task_id: str) -> dict[str, Any]:
        if task_id not in self.entries:
            raise _Reply(404, f"Task {task_id} not found")
        return dict(self.entries[task_id].task)

    def running(self, task_id: str) -> _Entry:
        """The entry of a running task: input and output answer 404 or 403 for any other."""
        entry = self.entries.get(task_id)
        if entry is None:
            raise _Reply(404, f"Task {task_id} not found")
        if entry.task.get("status") != "running":
            raise _Reply(403, f"Task {task_id} is not running (status: {entry.task.get('status')})")
        return entry

    def add_output(self, task_id: str, output: dict[str, Any]) -> None:
        """Accept an output (see ``_output_record``) and close the task with it."""
        entry = self.running(task_id)  # checked and closed under one lock: accepted once
        entry.outputs.append(output)
        self.set_status(task_id, "completed" if output["status"] == "COMPLETED" else "failed")
