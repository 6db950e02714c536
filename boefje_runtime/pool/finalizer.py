"""The finalizer: carries out each task exit (exits.py) on the Boefje API until the task is closed.

Every task that leaves the pool comes through :meth:`Finalizer.settle`, which logs the line that
ends it and, when the exit needs API calls, queues a job. A job is a small state machine, one API
call per stage (:class:`Stage`), worked through by the supervisor's loop:

- at most :data:`STEP_BUDGET` seconds of calls are *started* per loop step, so one step blocks for
  at most that plus one call's timeout, and worker messages and time limits are never starved;
- after a connection error (or a 5xx/429: the API is in trouble), the rest of the pass waits: the
  circuit is open until the error back-off passes, for every job (one dead API costs one timeout per
  back-off, not one per job);
- a 404 ends a job at once: the API no longer knows the task, nothing is left to do;
- any other 4xx takes the stage's fallback (exits.py says which), so a refusal never leaves a task
  open; a job that keeps failing is retried with back-off up to :data:`MAX_TRIES` times, then
  reported as abandoned (and the pool's exit code says so).

The API is asked where a task stands before acting, because a PATCH to ``running`` on a task whose
output already landed would reopen it (the scheduler does not guard transitions).

With tracing on, each call is a span of its own (``finalize <stage>``) and its request carries that
span's ``traceparent``, as the worker's calls carry theirs: a child of the task's span when the
supervisor recorded the task's pop trace in :attr:`Finalizer.traces`, so OpenKAT's API shows the
clean-up in the task's trace.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field

from ..client import BoefjeAPIClient
from ..errors import APIConnectionError, APIError, APIStatusError, ParseError
from ..execution import failure_output
from ..logs import log_context
from ..models import TaskStatus
from ..retry import NOT_PROCESSED
from ..tracing import BOEFJE_ID, EXIT, FINALIZE, FINALIZER_STAGE, NO_TRACING, TASK_ID, NoTracing, PopTrace, Tracing
from .backoff import ErrorBackoff
from .events import PoolEvents, emit
from .exits import Action, TaskExit, Ticket

logger = logging.getLogger("boefje_runtime.pool")

#: Give up on a task after this many failed tries (the API is gone for good; say so loudly).
MAX_TRIES = 50
#: Calls are started only during the first this-many seconds of a loop step (real time).
STEP_BUDGET = 0.2
#: A 4xx refusal is tried again this many times (with back-off) before the stage's fallback: many
#: are passing (409, 403 while a status change lands, a proxy's 4xx), and a fallback such as PATCH
#: failed without an error file says less than the error file would.
REFUSALS_BEFORE_FALLBACK = 3
#: When to look again at a task whose running PATCH may land late, in request timeouts after closing.
#: A request the client gave up on is rarely handled much later than that; twice costs two GETs.
RECHECK_AFTER = (3, 10)
#: Statuses in which a task is still open: someone must close it.
OPEN = (TaskStatus.DISPATCHED, TaskStatus.RUNNING)


class Stage(enum.Enum):
    """One API call of a job."""

    LOOK = "GET the task's status"
    START = "PATCH running (the API takes output only from a running task)"
    POST = "POST the FAILED output with its error file"
    LOOK_AGAIN = "GET the status after the error file was refused"
    MARK_FAILED = "PATCH failed"
    PUSH = "push the task back to the queue"
    MARK_QUEUED = "PATCH queued"
    RECHECK = "GET the status, for a late running PATCH"
    RECLOSE = "PATCH the status it was closed with"


#: Stages that only guard against a late PATCH: best effort, the pool may stop without them.
_LATE = (Stage.RECHECK, Stage.RECLOSE)


@dataclass
class Job:
    ticket: Ticket
    exit: TaskExit
    reason: str
    stage: Stage
    due: float
    tries: int = 0
    #: 4xx refusals of the current stage so far (see REFUSALS_BEFORE_FALLBACK).
    refusals: int = 0
    #: What is being done: the exit's action, until a refusal turns it into CLOSE.
    action: Action = Action.NOTHING
    #: RECHECK: the status the task was closed with, and when to look again after this look.
    closed: TaskStatus | None = None
    later: list[float] = field(default_factory=list)
    #: Tracing on: (trace id, span id) of the task's span, the parent of this job's spans (None: unknown).
    parent: tuple[int, int] | None = None

    @property
    def blocking(self) -> bool:
        """Must finish before the pool may stop."""
        return self.stage not in _LATE


class _Done(Exception):
    """A job has nothing left to do."""


class Finalizer:
    """Task exits, carried out on the API by the supervisor's loop (see the module docstring)."""

    def __init__(self, client: BoefjeAPIClient, queue: str = "boefje", listeners: list[PoolEvents] | None = None,
                 clock=time.monotonic, *, tracing: Tracing | NoTracing = NO_TRACING) -> None:
        self.client = client
        #: A span per call when on; the client then sends the current span's traceparent (it adds
        #: nothing outside one of these spans, so the client's other calls are unchanged).
        self.tracing = tracing
        if tracing.enabled and client.header_hook is None:
            client.header_hook = tracing.header_hook
        #: Tracing on: the pop trace of each task handed to a worker, by task id (the supervisor
        #: records it at dispatch); :meth:`settle` takes it out, so it lives as long as the task.
        self.traces: dict[str, PopTrace] = {}
        self.queue = queue
        #: The pool's own list (not a copy): listeners added after construction are heard too.
        self.listeners = listeners if listeners is not None else []
        self.jobs: list[Job] = []
        self.abandoned: list[str] = []
        self._backoff = ErrorBackoff(first=0.5, ceiling=30.0)
        #: No call before this time (the supervisor's clock): the circuit is open.
        self.open_until = float("-inf")
        #: Real time, for the step budget (the supervisor's clock may be a test's).
        self._real_clock = clock

    # -- the one way in --------------------------------------------------------------------------

    def settle(
        self,
        ticket: Ticket,
        how: TaskExit,
        now: float,
        *,
        reason: str | None = None,
        duration: float | None = None,
        status_code: int | None = None,
        recheck: bool = False,
        acted: bool = False,
        logged: bool = False,
        trace: PopTrace | None = None,
    ) -> None:
        """``ticket``'s task left the pool ``how``: log the line that ends it (unless the worker did:
        ``logged``), and queue what its exit needs on the API (nothing when ``acted``: the worker did
        it already). ``recheck``: the worker's running PATCH may land late; look again later.
        ``trace``: the task's pop trace, when not recorded in :attr:`traces`."""
        reason = reason or how.text
        trace = self.traces.pop(ticket.id, None) or trace
        parent = trace.task_parent if trace is not None else None
        if not logged:
            extra: dict = {"outcome": how.result, "exit": how.outcome,
                           "duration_s": round(duration, 3) if duration is not None else None}
            if status_code is not None:
                extra["status_code"] = status_code
            with log_context(**ticket.log_fields()):
                if how.action is Action.CLOSE:
                    logger.error("Task failed: %s", reason, extra=extra)
                else:
                    logger.info("Task %s: %s", how.outcome.replace("_", " "), reason, extra=extra)
        emit(self.listeners, "task_finished", ticket.boefje_id, how.outcome, duration or 0.0)
        if acted:
            return
        if how.action is Action.CLOSE:
            # A malformed task was just popped by us: it is dispatched, and GET could not parse it.
            first = Stage.START if how is TaskExit.MALFORMED else Stage.LOOK
            self.jobs.append(Job(ticket, how, reason, first, due=now, action=how.action, parent=parent))
        elif how.action is Action.PUSH:
            self.jobs.append(Job(ticket, how, reason, Stage.PUSH, due=now, action=how.action, parent=parent))
        elif how.action is Action.REQUEUE:
            self.jobs.append(Job(ticket, how, reason, Stage.LOOK, due=now, action=how.action, parent=parent))
        elif recheck and how in (TaskExit.COMPLETED, TaskExit.FAILED, TaskExit.DUPLICATE_DELIVERED):
            closed = TaskStatus.FAILED if how is TaskExit.FAILED else TaskStatus.COMPLETED
            self._recheck(ticket, how, closed, now, parent)

    # -- what the loop asks ----------------------------------------------------------------------

    @property
    def blocking(self) -> list[Job]:
        """Jobs that must finish before the pool may stop (rechecks are best effort)."""
        return [job for job in self.jobs if job.blocking]

    def __len__(self) -> int:
        return len(self.jobs)

    def next_due(self) -> float | None:
        """When the loop should call :meth:`run` next (None: nothing to do)."""
        if not self.jobs:
            return None
        return max(min(job.due for job in self.jobs), self.open_until)

    def run(self, now: float) -> None:
        """Advance the due jobs, one API call at a time, within the step budget."""
        if now < self.open_until:
            return
        started = self._real_clock()
        for job in sorted((job for job in self.jobs if job.due <= now), key=lambda job: job.due):
            while job in self.jobs and job.due <= now:
                if now < self.open_until or self._real_clock() - started > STEP_BUDGET:
                    return
                self._advance(job, now)

    # -- one call ----------------------------------------------------------------------------------

    def _advance(self, job: Job, now: float) -> None:
        with log_context(**job.ticket.log_fields()):
            try:
                with self._span(job):
                    job.stage = self._call(job, now)
            except _Done:
                self.jobs.remove(job)
                return
            except (APIError, ParseError) as exc:
                self._failed(job, exc, now)
                return
            self._backoff.succeeded()
            job.tries = job.refusals = 0

    def _span(self, job: Job):
        """The span of the job's next call (a no-op with tracing off); _Done is no error."""
        stage = job.stage.name.lower()
        attributes = {TASK_ID: job.ticket.id, BOEFJE_ID: job.ticket.boefje_id, EXIT: job.exit.outcome,
                      FINALIZER_STAGE: stage}
        return self.tracing.action(f"{FINALIZE} {stage}", job.parent, expected=(_Done,), **attributes)

    def _failed(self, job: Job, exc: Exception, now: float) -> None:
        status = getattr(exc, "status_code", None)
        if isinstance(exc, APIStatusError) and status == 404:
            logger.info("Task is gone from the Boefje API (404 on %s); nothing left to do", job.stage.name,
                        extra={"outcome": TaskExit.GONE.outcome, "status_code": 404})
            self.jobs.remove(job)
            return
        if isinstance(exc, APIStatusError) and status is not None and 400 <= status < 500 \
                and status not in NOT_PROCESSED:
            job.refusals += 1
            has_fallback = job.stage in (Stage.START, Stage.POST, Stage.PUSH, Stage.MARK_QUEUED)
            fallback = self._fallback(job) if has_fallback and job.refusals >= REFUSALS_BEFORE_FALLBACK else None
            if has_fallback and fallback is None:
                job.due = now + 0.5 * 2 ** (job.refusals - 1)
                logger.warning("The Boefje API refused to %s (%s); trying again in %.1f s", job.stage.value, exc,
                               job.due - now, extra={"status_code": status})
                return
            if fallback is not None:
                job.refusals = 0
                logger.warning("The Boefje API refused to %s (%s); now: %s", job.stage.value, exc, fallback.value,
                               extra={"status_code": status})
                job.stage = fallback
                return
        job.tries += 1
        if job.tries >= MAX_TRIES:
            logger.error("Giving up on the task after %d tries: %s", job.tries, exc,
                         extra={"outcome": "abandoned", "status_code": status})
            self.jobs.remove(job)
            if job.blocking:
                self.abandoned.append(job.ticket.id)
            return
        if isinstance(exc, APIConnectionError) or (status is not None and (status >= 500 or status in NOT_PROCESSED)):
            # The API is in trouble, not this task: every job waits (the circuit opens).
            self.open_until = now + self._backoff.failed()
            job.due = self.open_until
            logger.warning("Could not %s yet (%s); the finalizer pauses %.1f s", job.stage.value, exc,
                           self.open_until - now, extra={"status_code": status})
            emit(self.listeners, "api_error", "finalizer")
        else:
            job.due = now + min(0.5 * 2 ** (job.tries - 1), 30.0)
            logger.warning("Could not %s yet (%s); trying again in %.1f s", job.stage.value, exc, job.due - now,
                           extra={"status_code": status})

    @staticmethod
    def _fallback(job: Job) -> Stage | None:
        """The next stage after a 4xx refusal (not 404): exits.py's table. None: retry the stage."""
        if job.stage is Stage.START:
            return Stage.MARK_FAILED  # it cannot take an error file: fail it without one
        if job.stage is Stage.POST:
            return Stage.LOOK_AGAIN  # closed meanwhile, or refused: look before failing it
        if job.stage is Stage.PUSH:
            return Stage.MARK_QUEUED
        if job.stage is Stage.MARK_QUEUED:  # it cannot go back to the queue: fail it, saying why
            job.reason = f"the task could not be given back to the queue ({job.reason})"
            job.action = Action.CLOSE
            return Stage.LOOK
        return None

    def _call(self, job: Job, now: float) -> Stage:
        """Make the stage's call; return the next stage, or raise _Done."""
        client, ticket = self.client, job.ticket
        stage = job.stage
        if stage in (Stage.LOOK, Stage.LOOK_AGAIN, Stage.RECHECK):
            status = client.get_task(ticket.id).status
            if stage is Stage.RECHECK:
                if status is TaskStatus.RUNNING and job.closed is not None:
                    return Stage.RECLOSE
                return self._next_recheck(job)
            if status not in OPEN:
                logger.info("Task is %s already; nothing left to do", status.value)
                raise _Done
            if stage is Stage.LOOK_AGAIN:
                return Stage.MARK_FAILED
            if job.action is Action.REQUEUE:
                return Stage.MARK_QUEUED
            return Stage.START if status is TaskStatus.DISPATCHED else Stage.POST
        if stage is Stage.START:
            client.patch_status(ticket.id, TaskStatus.RUNNING)
            return Stage.POST
        if stage is Stage.POST:
            client.post_output(ticket.id, failure_output(ticket.boefje_id, ticket.version, job.reason))
            logger.info("Closed the task as failed, with an error file saying why")
            self._closed(job, now)
        if stage is Stage.MARK_FAILED:
            client.patch_status(ticket.id, TaskStatus.FAILED)
            logger.info("Marked the task failed (the API took no error file)")
            self._closed(job, now)
        if stage is Stage.PUSH:
            client.push(ticket.raw if ticket.raw is not None else {"id": ticket.id}, self.queue)
            logger.info("Pushed the task back to the queue unchanged")
            raise _Done
        if stage is Stage.MARK_QUEUED:
            client.patch_status(ticket.id, TaskStatus.QUEUED)
            logger.info("Put the task back on the queue")
            raise _Done
        if stage is Stage.RECLOSE:
            assert job.closed is not None
            client.patch_status(ticket.id, job.closed)
            logger.warning("The task was reopened by a late running PATCH; set it back to %s", job.closed.value)
            return self._next_recheck(job)
        raise AssertionError(f"unknown stage {stage}")  # pragma: no cover

    def _closed(self, job: Job, now: float) -> None:
        """We closed the task: a late running PATCH of its worker may still reopen it."""
        if job.exit is not TaskExit.MALFORMED:  # no worker ever PATCHed a malformed task
            self._recheck(job.ticket, job.exit, TaskStatus.FAILED, now, job.parent)
        raise _Done

    def _recheck(self, ticket: Ticket, how: TaskExit, closed: TaskStatus, now: float,
                 parent: tuple[int, int] | None = None) -> None:
        first, *rest = (now + factor * self.client.timeout for factor in RECHECK_AFTER)
        self.jobs.append(Job(ticket, how, "a late running PATCH", Stage.RECHECK, due=first, closed=closed,
                             later=rest, parent=parent))

    @staticmethod
    def _next_recheck(job: Job) -> Stage:
        if not job.later:
            raise _Done
        job.due, job.later = job.later[0], job.later[1:]
        return Stage.RECHECK

