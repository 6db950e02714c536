"""Every way a task leaves the pool, and what each does on the Boefje API: the one table.

The rule "no task is left ``dispatched`` or ``running``" is checkable here. Whoever notices how a
task ends (the worker's report, the reaper, a timeout, the drain, the poller) names one
:class:`TaskExit` and hands the task to the finalizer (:meth:`Finalizer.settle`), which runs the
exit's :class:`Action` until the task is in a final status or back on the queue. The same table,
for operators, is docs/task-exits.md (a test keeps the two equal).

What each action does, with the answers it can get (404 at any point: the task is gone, nothing is
left to do; a connection error, 5xx or 429: try again later, with back-off, the whole finalizer
pausing after a connection error; any other 4xx: the fallback named):

- ``NOTHING``: the worker's output closed the task. Only when its ``running`` PATCH needed a repeat
  (a first try may land late and reopen the task), look again later (RECHECK) and close it again.
- ``CLOSE``: GET the status. Closed meanwhile: done. ``dispatched``: PATCH ``running`` (refused:
  PATCH ``failed``). Then POST a FAILED output with an ``error/boefje`` file saying why (refused:
  GET again and PATCH ``failed`` if it is still open). Then RECHECK, for a late PATCH of the worker.
- ``PUSH``: POST the task, unchanged, to the queue's push (refused: PATCH ``queued``; refused too: CLOSE).
- ``REQUEUE``: GET the status; still open: PATCH ``queued`` (refused: CLOSE).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ..models import Task


class Action(enum.Enum):
    """What the finalizer does on the API for an exit (see the module docstring)."""

    NOTHING = "nothing"
    CLOSE = "close"
    PUSH = "push"
    REQUEUE = "requeue"


class TaskExit(enum.Enum):
    """How a task left the pool: ``(exit, action, what the error file or log line says)``.

    ``outcome`` (the exit's name) is the ``exit`` field of the line that ends the task and the
    ``outcome`` label of the metrics; :attr:`result` is that line's ``outcome`` field.
    """

    #: The worker delivered the boefje's COMPLETED output; the API closed the task.
    COMPLETED = ("completed", Action.NOTHING, "completed")
    #: The worker delivered a FAILED output (the boefje raised, was not found, output too large).
    FAILED = ("failed", Action.NOTHING, "the boefje failed; its error file was delivered")
    #: The worker process ended while holding the task (crash, OOM kill, exit, broken protocol), or
    #: was killed after reporting its task done while its next task was in its pipe (maybe started).
    WORKER_LOST = ("worker_lost", Action.CLOSE, "the worker process {how} while running this task")
    #: The boefje ran longer than ``task_timeout``: its process tree was killed.
    TIMED_OUT = ("timed_out", Action.CLOSE, "timed out after {timeout:g} s")
    #: A worker state other than the boefje's run passed its bound (start, delivery): killed.
    STUCK = ("stuck", Action.CLOSE, "the worker was stuck {doing} for more than {bound:g} s and was killed")
    #: Still running at the end of the drain's grace period (or after a second signal): killed.
    SHUT_DOWN = ("shut_down", Action.CLOSE, "the worker shut down before this task finished ({why})")
    #: The ``running`` PATCH was refused (a 4xx other than 404).
    START_REFUSED = ("start_refused", Action.CLOSE, "the Boefje API refused to start this task: {error}")
    #: The ``running`` PATCH could not be made (connection errors, 5xx) after the client's retries.
    START_UNREACHABLE = (
        "start_unreachable", Action.CLOSE, "the worker could not reach the Boefje API to start this task: {error}"
    )
    #: The output POST failed after the client's retries, or was refused.
    UNDELIVERABLE = ("undeliverable", Action.CLOSE, "the boefje's output could not be delivered: {error}")
    #: A popped task that does not parse (but has an id): nobody else will run it.
    MALFORMED = ("malformed", Action.CLOSE, "the task could not be read: {error}")
    #: Popped but never started (shutdown, more than the pool should hold, a next task its worker
    #: never read during the drain): back on the queue.
    PUSHED_BACK = ("pushed_back", Action.PUSH, "popped but not started")
    #: A duplicate whose output the worker delivered (its leader's).
    DUPLICATE_DELIVERED = ("duplicate_delivered", Action.NOTHING, "got its leader's output")
    #: A duplicate that did not get its leader's output (the leader failed or never finished).
    DUPLICATE_REQUEUED = ("duplicate_requeued", Action.REQUEUE, "back on the queue for its own run")
    #: The API answered 404 for the task: nothing is left to do.
    GONE = ("gone", Action.NOTHING, "the Boefje API no longer knows this task (404)")

    def __init__(self, outcome: str, action: Action, text: str) -> None:
        self.outcome = outcome
        self.action = action
        self.text = text

    @property
    def result(self) -> str:
        """Where the task ends up, as the line that ends it says it (``extra={"outcome": ...}``, the
        words one-shot mode uses too): completed, failed, queued or gone. ``outcome`` is the detail."""
        if self in (TaskExit.COMPLETED, TaskExit.DUPLICATE_DELIVERED):
            return "completed"
        if self in (TaskExit.PUSHED_BACK, TaskExit.DUPLICATE_REQUEUED):
            return "queued"
        if self is TaskExit.GONE:
            return "gone"
        return "failed"

    def reason(self, **details: Any) -> str:
        """The exit's text with its details filled in (the error file's content for CLOSE)."""
        try:
            return self.text.format(**details)
        except (KeyError, ValueError, IndexError):
            return self.text


@dataclass(frozen=True)
class Ticket:
    """What the finalizer needs of a task: its id, what the error file is tagged with, and the raw
    task as popped (pushed back unchanged). Built from a parsed task or from a malformed one."""

    id: str
    boefje_id: str
    version: str | None = None
    organisation: str | None = None
    raw: Any = None

    @classmethod
    def of(cls, task: Task) -> Ticket:
        boefje = task.data.boefje
        return cls(task.id, boefje.id, boefje.version, task.organisation, task.raw)

    @classmethod
    def of_malformed(cls, item: Any) -> Ticket | None:
        """A ticket for a popped item that did not parse, when it has a usable id (else None)."""
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            return None
        data = item.get("data") if isinstance(item.get("data"), dict) else {}
        boefje = data.get("boefje") if isinstance(data.get("boefje"), dict) else {}
        boefje_id = boefje.get("id") if isinstance(boefje.get("id"), str) and boefje.get("id") else "unknown"
        version = boefje.get("version") if isinstance(boefje.get("version"), str) else None
        organisation = item.get("organisation") if isinstance(item.get("organisation"), str) else None
        return cls(item["id"], boefje_id, version, organisation, item)

    def log_fields(self) -> dict[str, Any]:
        """The fields :func:`boefje_runtime.logs.log_context` binds for every line about this task."""
        return {"task_id": self.id, "boefje_id": self.boefje_id, "organisation": self.organisation}
