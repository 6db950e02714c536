"""Reaping: workers that ended, what they left behind, and stray processes.

A worker that ended is removed from the pool, and the reaper says how it ended and what that
means: a task it held fails as WORKER_LOST (endings.py), a worker that died starting pauses the next
start (the start-up guard), one we killed is only logged (its task was settled at the kill).
Before its exit status is read (which frees its pid), what is left of its process group is killed:
a boefje's processes end with their worker however it ended.

Whose children we reap (the supervisor may run inside a program with children of its own):

- Embedded (the default): the supervisor is not a subreaper and waits only for its workers (through
  multiprocessing) and never for ``-1``, so an embedding program's children and their exit
  statuses stay its own. What a killed worker left is killed through the worker (its tree, its
  group, its session); the zombies of those re-parent to init, which reaps them. One gap, by
  design: a boefje process that left both its worker's process group and session (``setsid``)
  while its worker was killed from outside (not by us) is not found.
- Adopting (``PoolSettings.adopt_orphans``, set in worker mode and whenever the supervisor is PID 1):
  the supervisor is a child subreaper. Orphans of any boefje re-parent to it, so even that daemon
  is found: every child that is not a worker is a stray, its tree is killed and it is reaped. This is
  what makes the supervisor safe as PID 1 of a container (no zombies pile up to ``pids.max``), and
  it is only right when nothing else in the process starts children.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

from .. import process_tree
from ..process_exit import OomCounter, describe_exit
from . import endings
from .backoff import StartupGuard
from .events import PoolEvents, emit
from .finalizer import Finalizer
from .lifecycle import WorkerState
from .process import WorkerHandle
from .worker import STOP_REASON

logger = logging.getLogger("boefje_runtime.pool")

S = WorkerState

#: How often the adopting supervisor looks for strays when no worker ended (seconds).
STRAY_SWEEP = 5.0


class Reaper:
    """Removes ended workers from the pool and (when adopting) kills and reaps strays."""

    def __init__(self, finalizer: Finalizer, startup: StartupGuard, listeners: list[PoolEvents], *,
                 adopt: bool) -> None:
        self.finalizer = finalizer
        self.startup = startup
        self.listeners = listeners  # the pool's own list, not a copy
        self.adopt = adopt
        self._oom = OomCounter()
        self._next_sweep = 0.0
        self._was_subreaper = False
        #: Children of ours that are not strays although they are no workers (the fork server).
        self.spare: Callable[[], Iterable[int]] = tuple

    def begin(self) -> None:
        if self.adopt:
            self._was_subreaper = process_tree.is_subreaper()
            if not process_tree.become_subreaper():
                logger.warning("Could not become a child subreaper; strays of boefjes re-parent to init")

    def end(self) -> None:
        if self.adopt and not self._was_subreaper:
            process_tree.become_subreaper(False)

    def next_due(self) -> float | None:
        return self._next_sweep if self.adopt else None

    def reap(self, workers: list[WorkerHandle], now: float, last_words: Callable[[WorkerHandle], None],
             forget: Callable[[WorkerHandle], None]) -> None:
        """Remove every worker that ended (or that we killed and gave up waiting for) from ``workers``."""
        ended = False
        for worker in list(workers):
            if worker.exited():
                last_words(worker)  # a "done" sent just before it exited decides what it held
                if worker.state is not S.KILLED:
                    worker.kill_leftovers()
                    self._kill_session_strays(worker)
                self._bury(worker, now)
            elif worker.state is S.KILLED and worker.overdue(now):
                last_words(worker)  # (its pipe is readable whatever the process's state)
                logger.error("Worker pid=%d did not end %g s after SIGKILL (stuck in the kernel?); giving up on it",
                             worker.pid, now - worker.since)
            else:
                continue
            workers.remove(worker)
            forget(worker)
            ended = True
        if self.adopt and (ended or now >= self._next_sweep):
            self.sweep(workers, now)

    def _bury(self, worker: WorkerHandle, now: float) -> None:
        code = worker.exitcode  # reaps it: its pid is free from here on
        state = worker.state
        if state is S.KILLED:
            logger.info("Worker pid=%d ended after the supervisor killed it (%s)", worker.pid, worker.why)
            emit(self.listeners, "worker_exited", "killed")
            return
        if getattr(worker.process, "died_with_server", False):  # (our own PR_SET_PDEATHSIG: no guess at OOM)
            how = "was killed with the worker fork server, which died"
        else:
            how = describe_exit(code, oom_kills=self._oom.new_kills() if code is not None and code < 0 else 0)
        if worker.holds_task:
            endings.lost(worker, now, how, self.finalizer)
            emit(self.listeners, "worker_exited", "died")
        elif state is S.RETIRING:
            logger.info("Worker pid=%d retired (%s)", worker.pid, worker.why)
            # A SIGTERM (the drain's deadline, or a `pkill` from outside) ended it, not a limit
            emit(self.listeners, "worker_exited", "killed" if worker.why == STOP_REASON else "recycled")
        elif state is S.STOPPING:
            logger.debug("Worker pid=%d stopped", worker.pid)
        elif state is S.STARTING:
            wait = self.startup.died_starting(now)
            logger.error("Worker pid=%d %s during start-up (%d in a row); next start in %.1f s",
                         worker.pid, how, self.startup.failures, wait)
            emit(self.listeners, "worker_exited", "startup")
        else:
            logger.warning("Worker pid=%d %s while idle; replacing it", worker.pid, how)
            emit(self.listeners, "worker_exited", "died")

    @staticmethod
    def _kill_session_strays(worker: WorkerHandle) -> None:
        """Members of the ended worker's session that left its process group: kill their trees.
        (The session id stays reserved while the worker is unreaped, so it still names its session.)"""
        for pid in process_tree.session_members(worker.pid):
            process_tree.kill_tree(pid)

    def sweep(self, workers: Iterable[WorkerHandle], now: float) -> None:
        """Adopting: every child of ours that is not a worker is a stray: kill its tree and reap it."""
        self._next_sweep = now + STRAY_SWEEP
        known = {worker.pid for worker in workers} | set(self.spare())
        strays = [pid for pid in process_tree.children(os.getpid()) if pid not in known]
        if not strays:
            return
        for pid in strays:
            stat = process_tree.proc_stat(pid)
            if stat is not None and stat.state not in "ZX":
                process_tree.kill_tree(pid)
        reaped = process_tree.reap(strays)
        if reaped:
            logger.info("Reaped %d stray processes left by boefjes", len(reaped))
