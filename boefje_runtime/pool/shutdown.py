"""The pool's way out: answering shutdown requests, and the drain that follows, in a fixed order.

Kept out of the supervisor so the order is written down once and can be read top to bottom. The
signal handlers only count (signals.py) and ``WorkerPool.request_shutdown`` only sets a number, from
any thread; both are answered here, in the loop, where logging and HTTP are safe.

The order (as dramatiq's ``Worker.stop``: stop taking work, give back what is held, then close):

1. stop popping: the supervisor leaves its running phase, so its step no longer polls;
2. push the held tasks (popped, never started) back to the queue unchanged (PUSHED_BACK);
3. tell every worker without a task to stop (one that becomes free later is told as it reports);
4. wait for running tasks until the grace deadline (``shutdown_timeout``; a second signal, or an
   immediate request, moves the deadline to now);
5. at the deadline, a worker still running a task gets SIGTERM on its process group (its boefje's
   scanners may stop cleanly, and a boefje that then returns still delivers) and SIGKILL on its whole
   tree ``lifecycle.TERM_BOUND`` seconds later (SHUT_DOWN). After a second signal or an immediate
   request there is no SIGTERM step: SIGKILL at once. Every other worker still there is killed at
   the deadline whatever its state (an idle worker blocked on a full stderr pipe, a start-up stuck
   in an import): nothing waits on a process that does not answer;
6. once no worker is left (a killed one that is not reaped within ``lifecycle.REAP_BOUND`` is given
   up on), keep closing tasks on the API for up to ``FINALIZE_GRACE`` more;
7. stopped, with an exit code that says whether a task was left open.

So a drain ends within ``shutdown_timeout + TERM_BOUND + max(REAP_BOUND, FINALIZE_GRACE)`` plus one
API call's timeout and the finalizer's step budget, in every case.

Steps 1-2 are :meth:`Shutdown.begin`; 3-7 are :meth:`Shutdown.drain`, one loop step at a time.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable

from ..exit_codes import ExitCode
from ..models import Task
from ..stop_signals import StopSignals
from . import endings
from .events import PoolEvents, emit
from .exits import TaskExit, Ticket
from .finalizer import Finalizer
from .lifecycle import WorkerState
from .messages import stop
from .process import WorkerHandle
from .settings import PoolSettings

logger = logging.getLogger("boefje_runtime.pool")

#: After the drain, how long the supervisor keeps trying to close tasks on an unreachable API.
FINALIZE_GRACE = 10.0


class Shutdown:
    """Counts shutdown requests and runs the drain; the supervisor keeps the phase and the workers."""

    def __init__(self, signals: StopSignals, finalizer: Finalizer, settings: PoolSettings) -> None:
        self.signals = signals
        self.finalizer = finalizer
        self.settings = settings
        #: When the drain began, and when running tasks stop getting time to finish (set by begin).
        self.began = 0.0
        self.deadline = 0.0
        self._second_signal: float | None = None
        #: A second signal or an immediate request: running tasks are killed at once, no SIGTERM first.
        self._hurried = False
        self._requested = 0  # by request(): 1 graceful, 2 immediate
        self._seen = 0  # signals plus requests the loop has answered

    def request(self, immediate: bool) -> None:
        """Thread-safe: only sets a number. Asking twice is no escalation (a second signal is)."""
        self._requested = max(self._requested, 2 if immediate else 1)

    @property
    def unanswered(self) -> bool:
        """A request or signal the loop has not answered yet: it must not go to sleep on it (and
        start-up stops spawning workers)."""
        return self.signals.count + self._requested > self._seen

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
            logger.warning("Second shutdown signal after %.1f s of the %g s grace period: stopping running tasks now",
                           now - self.began, self.deadline - self.began)
            self._second_signal = now
            self._hurried = True
            self.deadline = now

    def begin(self, now: float, why: str, *, immediate: bool, workers: list[WorkerHandle],
              held: deque[list[Task]], listeners: Iterable[PoolEvents]) -> None:
        """Steps 1-2: the caller has stopped popping; push back what no worker started."""
        grace = 0.0 if immediate else self.settings.shutdown_timeout
        self.began, self.deadline, self._hurried = now, now + grace, immediate
        running = sum(1 for worker in workers if worker.holds_task)
        logger.info("Shutting down after %s: waiting up to %g s for %d running tasks", why, grace, running)
        emit(listeners, "draining")
        for group in held:
            for task in group:
                self.finalizer.settle(Ticket.of(task), TaskExit.PUSHED_BACK, now)
        held.clear()

    def drain(self, now: float, workers: list[WorkerHandle]) -> ExitCode | None:
        """Steps 3-7, one loop step's worth: None while draining, then the exit code."""
        for worker in list(workers):
            if worker.state in (WorkerState.STARTING, WorkerState.IDLE):
                stop(worker, now)
            if now < self.deadline or worker.state in (WorkerState.KILLED, WorkerState.TERMINATING):
                continue
            why = self._why_killed(now)
            if worker.holds_task and not self._hurried:
                worker.terminate(now, why)  # SIGTERM first; the time limits SIGKILL it TERM_BOUND later
            else:
                endings.kill(worker, now, why, self.finalizer, TaskExit.SHUT_DOWN,
                             reason=TaskExit.SHUT_DOWN.reason(why=why))
        if workers:
            return None
        if self.finalizer.blocking and now < self.deadline + FINALIZE_GRACE:
            return None
        exit_code = ExitCode.OK
        if self.finalizer.blocking or self.finalizer.abandoned:
            left = [job.ticket.id for job in self.finalizer.blocking] + self.finalizer.abandoned
            logger.error("Stopped with %d tasks that could not be closed: %s", len(left), ", ".join(left))
            exit_code = ExitCode.INTERNAL_ERROR
        logger.info("Worker pool stopped")
        return exit_code

    def next_due(self, now: float) -> float | None:
        """When the drain needs the loop: at the grace deadline, then when the finalizer's grace ends
        (worker exits and finalizer jobs wake the loop themselves)."""
        if now < self.deadline:
            return self.deadline
        if self.finalizer.blocking:
            return self.deadline + FINALIZE_GRACE
        return None

    def _why_killed(self, now: float) -> str:
        grace = self.settings.shutdown_timeout
        if self._second_signal is not None:
            return (f"killed at a second shutdown signal, {self._second_signal - self.began:.1f} s into "
                    f"the {grace:g} s grace period")
        if self.deadline == self.began:
            return "killed at an immediate shutdown"
        return f"killed after the {grace:g} s grace period"
