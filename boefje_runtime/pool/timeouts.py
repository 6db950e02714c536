"""Time limits on workers: whoever is overdue in its state (lifecycle.py) is killed, saying why.

One expression decides who is overdue (``worker.overdue(now)``: its state's deadline passed); what
that means depends on the state only:

- STARTING: never said "ready" within the start-up timeout (a plugin import that hangs): killed,
  and counted as a start-up death (the start-up guard paces the next start);
- ASSIGNED, DELIVERING: stuck on the API past the client's own retry bound: killed, task STUCK;
- BUSY: the boefje ran past ``task_timeout``: killed, task TIMED_OUT (the delivery does not count);
- STOPPING, RETIRING: did not leave when told or when it said it would: killed;
- TERMINATING: still there ``TERM_BOUND`` after the drain's SIGTERM: killed, task SHUT_DOWN;
- KILLED: not reaped within the reap bound: the reaper gives up on it (reaper.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from . import endings
from .backoff import StartupGuard
from .exits import TaskExit
from .finalizer import Finalizer
from .lifecycle import WorkerState
from .process import WorkerHandle

S = WorkerState


def enforce(workers: Iterable[WorkerHandle], now: float, finalizer: Finalizer, startup: StartupGuard) -> None:
    """Kill every overdue worker (KILLED ones are the reaper's)."""
    for worker in list(workers):
        if worker.state is S.KILLED or not worker.overdue(now):
            continue
        waited = round((worker.deadline or now) - worker.since, 3)  # the state's bound, as configured
        if worker.state is S.BUSY:
            why = TaskExit.TIMED_OUT.reason(timeout=worker.bounds.task_timeout or waited)
            endings.kill(worker, now, why, finalizer, TaskExit.TIMED_OUT)
        elif worker.state in (S.ASSIGNED, S.DELIVERING):
            doing = "starting its task" if worker.state is S.ASSIGNED else "delivering its output"
            why = TaskExit.STUCK.reason(doing=doing, bound=waited)
            endings.kill(worker, now, why, finalizer, TaskExit.STUCK)
        elif worker.state is S.TERMINATING:
            why = f"{worker.why}; it did not stop within {waited:g} s of SIGTERM"
            endings.kill(worker, now, why, finalizer, TaskExit.SHUT_DOWN, reason=TaskExit.SHUT_DOWN.reason(why=why))
        elif worker.state is S.STARTING:
            startup.died_starting(now)
            endings.kill(worker, now, f"it did not become ready within {waited:g} s (a boefje import that hangs?)",
                         finalizer)
        else:
            endings.kill(worker, now, f"it did not leave within {waited:g} s of {worker.state.value}", finalizer)


def next_due(workers: Iterable[WorkerHandle]) -> float | None:
    """The earliest deadline of any worker, or time to read a worker's progress page (None: none)."""
    return min((due for due in (worker.next_due for worker in workers) if due is not None), default=None)
