"""The pool's way out: answering shutdown requests, and the drain that follows, in a fixed order.

Kept out of the supervisor so the order is written down once and can be read top to bottom. The
signal handlers only count (signals.py) and ``WorkerPool.request_shutdown`` only sets a number, from
any thread; both are answered here, in the loop, where logging and HTTP are safe.

The order (as dramatiq's ``Worker.stop``: stop taking work, give back what is held, then close):

1. stop popping: the supervisor leaves its running phase, so its step no longer polls;
2. push the held tasks (popped, never started) back to the queue unchanged;
3. stop idle workers (one that becomes idle later is stopped as it reports, by the supervisor);
4. wait for running tasks until the grace deadline (``shutdown_timeout``; a second signal, or an
   immediate request, ends the wait now);
5. kill the workers still running then; the supervisor's reap fails their tasks with the reason;
6. once no worker is left, keep closing tasks on the API for up to ``FINALIZE_GRACE`` more;
7. stopped, with an exit code that says whether a task was left open.

Steps 1-2 are :meth:`Shutdown.begin`; 3-7 are :meth:`Shutdown.drain`, one loop step at a time.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable

from ..exit_codes import ExitCode
from ..models import Task
from .events import PoolEvents
from .finalizer import Finalizer
from .process import WorkerHandle
from .settings import PoolSettings
from .signals import ShutdownSignals

logger = logging.getLogger("boefje_runtime.pool")

#: After the drain, how long the supervisor keeps trying to close tasks on an unreachable API.
FINALIZE_GRACE = 10.0


class Shutdown:
    """Counts shutdown requests and runs the drain; the supervisor keeps the phase and the workers."""

    def __init__(self, signals: ShutdownSignals, finalizer: Finalizer, settings: PoolSettings) -> None:
        self.signals = signals
        self.finalizer = finalizer
        self.settings = settings
        #: When running tasks stop getting time to finish; set by :meth:`begin`.
        self.deadline = 0.0
        self._requested = 0  # by request(): 1 graceful, 2 immediate
        self._seen = 0  # signals plus requests the loop has answered

    def request(self, immediate: bool) -> None:
        """Thread-safe: only sets a number. Asking twice is no escalation (a second signal is)."""
        self._requested = max(self._requested, 2 if immediate else 1)

    @property
    def unanswered(self) -> bool:
        """A :meth:`request` the loop has not answered yet: it must not go to sleep on it."""
        return self._requested > self._seen - self.signals.count

    def new_requests(self) -> int:
        """Signals plus requests so far when that grew since the last look, else 0."""
        requests = self.signals.count + self._requested
        if requests <= self._seen:
            return 0
        self._seen = requests
        return requests

    def hurry(self, now: float) -> None:
        """A second signal while draining: running tasks get no more time."""
        if self.deadline > now:
            logger.warning("Second shutdown signal: stopping running tasks now")
            self.deadline = now

    def begin(
        self,
        now: float,
        why: str,
        *,
        immediate: bool,
        workers: list[WorkerHandle],
        held: deque[list[Task]],
        listeners: Iterable[PoolEvents],
    ) -> None:
        """Steps 1-2: the caller has stopped popping; push back what no worker started, now."""
        grace = 0.0 if immediate else self.settings.shutdown_timeout
        self.deadline = now + grace
        running = sum(1 for worker in workers if worker.assignment)
        logger.info("Shutting down after %s: waiting up to %g s for %d running tasks", why, grace, running)
        for listener in listeners:
            listener.draining()
        for group in held:
            for task in group:
                self.finalizer.push_back(task, now)
        held.clear()
        self.finalizer.run(now)

    def drain(self, now: float, workers: list[WorkerHandle]) -> ExitCode | None:
        """Steps 3-7, one loop step's worth: None while draining, then the exit code."""
        for worker in workers:
            if worker.assignment is None and not worker.stop_sent and worker.retiring is None:
                worker.stop_sent = worker.send(("stop",))
            if worker.assignment is not None and now >= self.deadline:
                grace = self.settings.shutdown_timeout
                worker.kill(f"the worker shut down before this task finished (killed after a {grace:g} s grace period)")
        if workers:
            return None
        if self.finalizer.blocking and now < self.deadline + FINALIZE_GRACE:
            return None
        exit_code = ExitCode.OK
        if self.finalizer.blocking or self.finalizer.abandoned:
            left = [job.task.id for job in self.finalizer.blocking] + self.finalizer.abandoned
            logger.error("Stopped with %d tasks that could not be closed: %s", len(left), ", ".join(left))
            exit_code = ExitCode.INTERNAL_ERROR
        logger.info("Worker pool stopped")
        return exit_code
