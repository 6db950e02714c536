"""The life of a worker process, as the supervisor sees it: one state, its transitions, its deadline.

Every decision about workers is one expression over :class:`WorkerState`: who may get a task
(:data:`TAKES_TASK`), who holds one (:data:`HOLDS_TASK`), who is overdue (its deadline passed:
:func:`overdue`), who is killed at the drain's deadline (everyone still there). Each state has at
most one deadline, set when the worker enters it (:meth:`Bounds.deadline`), so a stuck worker in any
state is noticed by the same check, and the loop knows when it next needs to look.

::

    STARTING --ready--> IDLE --task--> ASSIGNED --started--> BUSY --ran--> DELIVERING
                         ^  \\                \\______________\\_____done____/  |
                         |   stop -> STOPPING                               done
                         +-----------------------------------------------------+--> RETIRING
    ASSIGNED, BUSY, DELIVERING --drain deadline: SIGTERM to its group--> TERMINATING --done--> IDLE
    any state but KILLED --kill (timeout, drain, broken worker, pool exit)--> KILLED

"ready", "task" and "done" are messages; "started" and "ran" the worker only marks on its
progress page (progress.py), which the supervisor reads every step and by the time the task timeout
could pass. A worker that exits is removed from the pool whatever its state (the reaper says what
that means for the task it held). An ASSIGNED, BUSY or DELIVERING worker may be sent its next
task ahead (``WorkerHandle.next``, not a state: the supervisor may still read it back, and it is
not the worker's until its "done" moves it IDLE -> ASSIGNED in the same step).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class WorkerState(enum.Enum):
    #: Forked; importing the boefjes. Deadline: the start-up timeout.
    STARTING = "starting"
    #: Ready and without a task. No deadline.
    IDLE = "idle"
    #: Given a task; the worker is PATCHing it ``running``. Deadline: one API call's bound.
    ASSIGNED = "assigned"
    #: The boefje runs. Deadline: ``task_timeout`` (the only state it counts).
    BUSY = "busy"
    #: The boefje returned; the worker delivers the output (and the duplicates'). Deadline: the
    #: delivery bound, derived from the client's retry policy.
    DELIVERING = "delivering"
    #: Told to stop (drain) without a task. Deadline: the leave bound.
    STOPPING = "stopping"
    #: Leaving on its own after its last task (max tasks or memory per child). Deadline: the leave bound.
    RETIRING = "retiring"
    #: Still holding a task at the drain's deadline: its process group got SIGTERM (a scanner may
    #: stop cleanly, and the boefje may still deliver). Deadline: ``TERM_BOUND``, then SIGKILL.
    TERMINATING = "terminating"
    #: The supervisor killed its process tree; waiting to reap it. Deadline: the reap bound.
    KILLED = "killed"

    #: Members are singletons compared by identity, so they hash by identity too: the loop asks
    #: "is it in TAKES_TASK / HOLDS_TASK" dozens of times per task, and Enum's own ``__hash__`` (the
    #: name's hash, in Python) was a tenth of the supervisor's CPU.
    __hash__ = object.__hash__


S = WorkerState

#: Every allowed move; anything else is a bug in the supervisor (raised, never silently done).
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    S.STARTING: frozenset({S.IDLE, S.STOPPING, S.KILLED}),
    S.IDLE: frozenset({S.ASSIGNED, S.STOPPING, S.KILLED}),
    # ASSIGNED -> IDLE: done without running (the start was refused)
    S.ASSIGNED: frozenset({S.BUSY, S.IDLE, S.RETIRING, S.TERMINATING, S.KILLED}),
    S.BUSY: frozenset({S.DELIVERING, S.IDLE, S.RETIRING, S.TERMINATING, S.KILLED}),
    S.DELIVERING: frozenset({S.IDLE, S.RETIRING, S.TERMINATING, S.KILLED}),
    S.TERMINATING: frozenset({S.IDLE, S.RETIRING, S.KILLED}),  # it may still finish and report
    S.STOPPING: frozenset({S.KILLED}),
    S.RETIRING: frozenset({S.KILLED}),
    S.KILLED: frozenset(),
}

#: May be handed a task now.
TAKES_TASK = frozenset({S.IDLE})
#: Holds a task the pool must close if the worker goes away.
HOLDS_TASK = frozenset({S.ASSIGNED, S.BUSY, S.DELIVERING, S.TERMINATING})
#: Will be free within one delivery: pop-ahead pops for these too.
FREE_SOON = frozenset({S.DELIVERING})
#: Counts towards ``pool_size`` (a leaving or killed worker is replaced at once).
STAYS = frozenset({S.STARTING, S.IDLE, S.ASSIGNED, S.BUSY, S.DELIVERING})


class IllegalTransition(RuntimeError):
    """A move :data:`TRANSITIONS` does not allow: a bug in the supervisor."""


def check(old: WorkerState, new: WorkerState) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"a worker cannot go from {old.value} to {new.value}")


#: How long a worker may take to leave once told to (or once it said it would), before it is killed.
LEAVE_BOUND = 10.0
#: How long after its kill a worker's exit status may take to come; then the handle is dropped (a
#: process stuck in the kernel must not hold the drain up forever).
REAP_BOUND = 5.0
#: How long a worker's process group has between SIGTERM (at the drain's deadline) and SIGKILL.
TERM_BOUND = 2.0
#: Added to a computed API bound: the worker's own bookkeeping between calls.
MARGIN = 5.0


@dataclass(frozen=True)
class Bounds:
    """The deadline of each state, in seconds after entering it (None: no deadline)."""

    startup: float
    task_timeout: float | None
    #: One API call with all its retries (the client's policy): what ASSIGNED may take.
    call: float
    leave: float = LEAVE_BOUND
    reap: float = REAP_BOUND
    term: float = TERM_BOUND

    def deadline(self, state: WorkerState, now: float, *, calls: int = 1) -> float | None:
        """When a worker entering ``state`` at ``now`` is overdue; ``calls`` is how many API calls
        a delivery makes (1 + 2 per duplicate: PATCH running and POST output)."""
        if state is S.STARTING:
            return now + self.startup
        if state is S.ASSIGNED:
            return now + self.call + MARGIN
        if state is S.BUSY:
            return now + self.task_timeout if self.task_timeout else None
        if state is S.DELIVERING:
            return now + calls * self.call + MARGIN
        if state in (S.STOPPING, S.RETIRING):
            return now + self.leave
        if state is S.KILLED:
            return now + self.reap
        if state is S.TERMINATING:
            return now + self.term
        return None


def call_bound(attempts: int, total_seconds: float, max_wait: float, timeout: float) -> float:
    """The longest one API call can take under a retry policy: the tries with their waits, but no
    try starts after ``total_seconds`` (and each try ends within ``timeout``)."""
    by_attempts = attempts * timeout + (attempts - 1) * max_wait
    return min(by_attempts, total_seconds + timeout)
