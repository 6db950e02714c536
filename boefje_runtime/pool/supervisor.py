"""``WorkerPool``: the supervisor that keeps ``pool_size`` worker processes busy.

One iteration of the loop is :meth:`WorkerPool.step`: answer shutdown requests, read what workers
reported, reap the ended, enforce time limits, close what is left open, then pop for free workers
and hand tasks out (or drain). Each part says when it next needs the loop, and the loop waits for
the earliest of those (never 0 s unless something is due). The forever loop (:meth:`WorkerPool.run`)
is a thin wrapper around the step. All HTTP, logging and joins happen in the loop, never in a
signal handler.

Where each decision lives: a worker's state and its deadlines, ``lifecycle.py``; what workers say,
``messages.py``; ended workers and strays, ``reaper.py``; time limits, ``timeouts.py``; every way a
task leaves the pool, ``exits.py``, carried out by ``finalizer.py``; how many tasks to pop and
when, ``polling.py``; the drain and its order, ``shutdown.py``. This module decides when the pool
ends (the task limit, burst mode, shutdown requests) and keeps the pool at size.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import json
import logging
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING

from ..client import BoefjeAPIClient
from ..exit_codes import ExitCode
from ..filters import TaskFilter
from ..models import Task
from ..plugins import BoefjeRegistry
from ..retry import RetryPolicy
from ..stop_signals import StopSignals
from ..tracing import NO_TRACING, NoTracing, PopTrace, PopTracer, Tracing, tracing_for
from . import endings, timeouts
from . import worker as w
from .backoff import StartupGuard
from .events import PoolEvents, PoolStats, emit
from .exits import TaskExit, Ticket
from .finalizer import Finalizer
from .forkserver import ForkServer, ForkServerGone
from .lifecycle import Bounds, WorkerState, call_bound
from .messages import Mailbox
from .polling import Answer, Poller
from .process import Assignment, WorkerHandle, start_worker
from .reaper import Reaper
from .settings import PoolSettings
from .shutdown import FINALIZE_GRACE, Shutdown

if TYPE_CHECKING:
    from ..config import RuntimeConfig

logger = logging.getLogger("boefje_runtime.pool")

#: The supervisor retries briefly and then relies on its own back-off, so its loop never blocks
#: for long on an unreachable API (workers keep the client's full retry policy).
SUPERVISOR_RETRY = RetryPolicy(attempts=2, total_seconds=2.0, initial_wait=0.05, max_wait=0.5)
#: How long :meth:`WorkerPool.stop` waits beyond the drain's own bound before it reports a hang.
STOP_MARGIN = 10.0


class Phase(str, enum.Enum):
    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class WorkerPool:
    """Runs boefje tasks popped from the Boefje API in a pool of worker processes.

    ``run()`` blocks until SIGTERM/SIGINT/SIGHUP (or, in burst mode, until the queue is empty) and
    returns an exit code; ``start()``/``stop()`` run the same loop in a background thread for
    tests and embedding programs; ``step()`` runs one iteration, with an injectable clock.
    """

    def __init__(
        self,
        client: BoefjeAPIClient,
        task_filter: TaskFilter | None = None,
        *,
        registry: BoefjeRegistry | None = None,
        plugin_dir: str | os.PathLike[str] | None = None,  # used when no registry is given
        settings: PoolSettings | None = None,
        listeners: Iterable[PoolEvents] = (),
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing | NoTracing = NO_TRACING,
    ) -> None:
        inherited = w.open_descriptors()  # what workers may hold: nothing the pool opens below
        self.settings = settings or PoolSettings()
        self.client = client
        self.task_filter = task_filter or TaskFilter()
        self.registry = registry if registry is not None else BoefjeRegistry.discover(plugin_dir or ".")
        self.stats = PoolStats()
        self.listeners: list[PoolEvents] = [self.stats, *listeners]
        self.workers: list[WorkerHandle] = []
        self.exit_code = ExitCode.OK
        self._clock = clock
        self._api = client.clone(retry=SUPERVISOR_RETRY)
        self._finalizer = Finalizer(self._api, self.settings.queue, self.listeners, tracing=tracing)
        self._tracing = tracing
        #: Popped groups no worker has started yet (the first task of a group runs).
        self._held: deque[list[Task]] = deque()
        # An injected clock means a step-driven pool (tests): its pops run inline, so what a step
        # pops is there in the same step; otherwise in threads (popthreads.py).
        self._poller = Poller(self._api, self.settings, self.task_filter,
                              threads=None if clock is time.monotonic else 0,
                              tracer_factory=PopTracer if tracing.enabled else None)
        self._startup = StartupGuard()
        self._mailbox = Mailbox(self._finalizer, self._startup, self.listeners, return_next=self._return_next)
        adopt = self.settings.adopt_orphans or os.getpid() == 1
        self._reaper = Reaper(self._finalizer, self._startup, self.listeners, adopt=adopt)
        self._signals = StopSignals()
        self._shutdown = Shutdown(self._signals, self._finalizer, self.settings)
        self._phase = Phase.NEW
        self._thread: threading.Thread | None = None
        #: Worker pipes and exit sentinels (and the signal wake-up fd), registered once: a selector
        #: built per wait cost more than the rest of a step.
        self._selector = selectors.DefaultSelector()
        #: What the last wait found readable, for the next step to read (see _read_messages).
        self._ready: list[tuple[selectors.SelectorKey, int]] | None = None
        self._worker_spec = w.WorkerSpec(
            client_factory=self.client.clone,
            registry=self.registry,
            max_output_bytes=self.settings.max_output_bytes,
            max_tasks_per_child=self.settings.max_tasks_per_child,
            max_memory_per_child=self.settings.max_memory_per_child,
            tracing=tracing,
        )
        # Tracing on: which pop brought each held group (each pop thread's client carries its own
        # pop's traceparent, see tracing.py and popthreads.py).
        self._pop_traces: dict[str, PopTrace] = {}
        if tracing.enabled:
            tracing.preload()  # imported once here, not per forked worker
        # Forked now, before the caller or we start any thread (the health endpoint, the pops in
        # flight): every worker is forked by this clean, single-threaded process (forkserver.py).
        self._forks = ForkServer(w.worker_main, self._worker_spec, inherited=inherited).start()
        self._reaper.spare = lambda: (self._forks.pid,)
        self._selector.register(self._poller.pops.wakeup_fd, selectors.EVENT_READ, None)
        policy = client.retry_policy
        self._bounds = Bounds(
            startup=self.settings.startup_timeout,
            task_timeout=self.settings.task_timeout,
            call=call_bound(policy.attempts, policy.total_seconds, policy.max_wait, client.timeout),
        )

    @classmethod
    def from_config(cls, config: RuntimeConfig, *, registry: BoefjeRegistry | None = None) -> WorkerPool:
        """Build a pool from the runtime configuration (what the CLI's worker mode does: the pool
        owns its process, so it adopts orphaned boefje processes; see reaper.py)."""
        client = BoefjeAPIClient.from_config(config)
        task_filter = TaskFilter(oci_images=config.images, plugins=config.plugins)
        settings = PoolSettings.from_config(config)
        if registry is None:
            registry = BoefjeRegistry.discover(config.plugin_dir)
        return cls(
            client, task_filter, registry=registry, settings=settings,
            tracing=tracing_for(config.span_export_grpc_endpoint),
        )

    # -- driving the loop ------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        return self._phase.value

    def run(self) -> int:
        """Run until signalled (or, in burst mode, until the queue is empty); return the exit code."""
        installed = self._signals.install()
        if installed:
            self._selector.register(self._signals.wakeup_fd, selectors.EVENT_READ, None)
        try:
            while self._phase is not Phase.STOPPED:
                try:
                    timeout = self.step()
                except Exception:  # a bug must not take the supervisor (and every held task) down
                    logger.exception("Unexpected error in the supervisor loop; going on in 1 s")
                    timeout = 1.0
                if self._phase is not Phase.STOPPED:
                    self._wait(timeout)
        finally:
            self._close()
            if installed:
                self._signals.uninstall()
        return int(self.exit_code)

    def start(self) -> WorkerPool:
        """Run the loop in a background thread (no signal handlers); pair with :meth:`stop`."""
        self._thread = threading.Thread(target=self.run, name="boefje-pool", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, immediate: bool = False, timeout: float | None = None) -> int:
        """Ask for a graceful shutdown (``immediate`` skips the grace period), wait for it and
        return the exit code. Raises ``TimeoutError`` when the loop has not ended within ``timeout``
        (default: the drain's own bound, see shutdown.py, plus a margin): a hang is never reported
        as a clean stop."""
        self.request_shutdown(immediate=immediate)
        if self._thread is not None:
            if timeout is None:
                timeout = self.settings.shutdown_timeout + FINALIZE_GRACE + self.client.timeout + STOP_MARGIN
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the worker pool did not stop within {timeout:g} s (phase {self.phase})")
        return int(self.exit_code)

    def request_shutdown(self, *, immediate: bool = False) -> None:
        """Thread-safe: the loop begins draining at its next step; ``immediate`` skips the grace.

        Asking twice is not an escalation (unlike a second signal): ``stop()`` after
        ``request_shutdown()`` still drains.
        """
        self._shutdown.request(immediate)

    def step(self, now: float | None = None) -> float:
        """One iteration of the supervisor; returns how long the caller may wait before the next."""
        now = self._clock() if now is None else now
        if self._phase is Phase.NEW:
            self._begin(now)
        self._answer_shutdown_requests(now)
        self._read_messages(now)
        for worker in self.workers:  # where each is with its task (progress.py): before the time limits
            self._mailbox.read_progress(worker, now)
        self._reaper.reap(self.workers, now, self._last_words, self._forget)
        timeouts.enforce(self.workers, now, self._finalizer, self._startup)
        if self._phase is Phase.RUNNING:
            self._collect_pops(now)  # before the finalizer: a malformed task is closed before the next pop
        self._finalizer.run(now)
        if self._phase is Phase.RUNNING:
            self._fill(now)  # (ends the running phase when the fork server is gone)
        if self._phase is Phase.RUNNING:
            self._dispatch(now)
            self._poll(now)  # after the dispatch: a worker that just got a task may want its next
            if self._poller.pops.answered:
                self._collect_pops(now)
                self._dispatch(now)
        # not elif: the poll above may have begun the drain (task limit, burst mode), and its idle
        # workers are told to stop now, not a heartbeat later
        if self._phase is Phase.DRAINING:
            self._drain(now)
        busy = sum(1 for worker in self.workers if worker.holds_task)
        emit(self.listeners, "workers_changed", busy, len(self.workers) - busy)
        emit(self.listeners, "held_changed", sum(len(group) for group in self._held))
        emit(self.listeners, "loop_turned", now)
        return self._next_wait(now)

    # -- the parts of a step ---------------------------------------------------------------------

    def _begin(self, now: float) -> None:
        self._phase = Phase.RUNNING
        # What is alive now (imports, the registry) lives as long as the pool: frozen, the
        # supervisor's own collections never walk it again, nor write to the pages it still shares
        # with the fork server (the workers were frozen there: forkserver.py). Not collected first,
        # for the fork server's reason: a collection's holes are where new objects land.
        gc.freeze()
        self._reaper.begin()
        logger.info("Created worker pool for queue '%s'", self.settings.queue)
        logger.info("Popping tasks with filters %s", json.dumps(self.task_filter.filters()))
        if self.settings.oversized:
            logger.warning("POOL_SIZE %d is more than %d workers per CPU (%d CPUs): each is a process with its own "
                           "memory; is that intended?", self.settings.pool_size, 4, os.cpu_count() or 1)
        self._fill(now)

    def _answer_shutdown_requests(self, now: float) -> None:
        """The first signal (or request) drains; a second, or an immediate request, skips the grace."""
        requests = self._shutdown.new_requests()
        if requests and self._phase is Phase.RUNNING:
            self._begin_shutdown(now, "a shutdown signal", immediate=requests >= 2)
        elif requests >= 2 and self._phase is Phase.DRAINING:
            self._shutdown.hurry(now)

    def _read_messages(self, now: float) -> None:
        """Read what every worker with a readable pipe sent (a closed pipe is unregistered: the
        worker is dying and its reaping tells the rest). What the last wait saw is read without
        asking the selector again (one system call less per step); a step without a wait before
        it (a test driving the loop) asks."""
        draining = self._phase is Phase.DRAINING
        ready, self._ready = self._ready, None
        for key, _ in self._selector.select(0) if ready is None else ready:
            worker = key.data
            if worker is not None and key.fileobj is worker.conn and not self._mailbox.read(
                worker, now, draining=draining
            ):
                self._unregister(worker.conn)

    def _last_words(self, worker: WorkerHandle) -> None:
        """A worker may have reported "done" just before exiting: read that before judging it."""
        self._mailbox.read(worker, self._clock(), draining=self._phase is Phase.DRAINING)

    def _forget(self, worker: WorkerHandle) -> None:
        self._settle_next(worker, self._clock())
        worker.close_next_pipe()
        self._unregister(worker.conn, worker.process.sentinel)
        worker.conn.close()
        if worker.progress is not None:  # unmapped now, not whenever the handle is collected
            worker.progress.close()

    def _settle_next(self, worker: WorkerHandle, now: float) -> None:
        """A worker leaves with a next task sent: given back if it was still in the pipe; else the
        worker read it and may have started it (its running PATCH may have landed): failed."""
        if worker.next is not None and not self._return_next(worker, now):
            endings.next_lost(worker, now, self._finalizer)

    def _unregister(self, *fileobjs: object) -> None:
        for fileobj in fileobjs:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fileobj)

    def _fill(self, now: float) -> None:
        """Keep ``pool_size`` workers that stay; the start-up guard paces restarts, and a shutdown
        request stops the filling between two spawns (a big pool takes a while to fork)."""
        while sum(1 for worker in self.workers if worker.stays) < self.settings.pool_size:
            if not self._startup.may_start(now) or self._shutdown.unanswered or self._probing():
                return
            try:
                self._spawn(now)
            except OSError as exc:  # EAGAIN at pids.max, ENOMEM: back off like a start-up death
                wait = self._startup.died_starting(now)
                logger.error("Could not start a worker: %s; next try in %.1f s", exc, wait)
                return
            except ForkServerGone as exc:
                logger.error("The worker fork server died (%s), and its workers with it; stopping with exit code 1 "
                             "for a clean restart: a new fork server would be a copy of this process, with the "
                             "tasks it holds in memory", exc)
                self.exit_code = ExitCode.INTERNAL_ERROR
                self._begin_shutdown(now, "the worker fork server died")
                return
            if self._startup.failures:
                return  # after a start-up death, start one at a time until one comes up

    def _probing(self) -> bool:
        """After a start-up death, one worker at a time: none starts while another is still starting
        (without this, each step while the last one boots started one more)."""
        return bool(self._startup.failures) and any(worker.state is WorkerState.STARTING for worker in self.workers)

    def _spawn(self, now: float) -> None:
        worker = start_worker(self._forks, now, self._bounds)
        self._selector.register(worker.conn, selectors.EVENT_READ, worker)
        self._selector.register(worker.process.sentinel, selectors.EVENT_READ, worker)
        self.workers.append(worker)

    def _collect_pops(self, now: float) -> None:
        """Hold what the pops in flight brought back (the poller paces errors and empty answers)."""
        for raw_tasks, slots, pop in self._poller.collect(now, self.listeners):
            self._accept(self._poller.take(raw_tasks, room=slots), now, pop)

    def _poll(self, now: float) -> None:
        """Start pops for free workers (the poller decides how many); end the pool at the task
        limit, or in burst mode once the queue is empty and nothing is left to do."""
        poller = self._poller
        busy = any(worker.holds_task or worker.next is not None for worker in self.workers)
        settled = not busy and not self._held and not poller.pops.in_flight
        if poller.exhausted:
            if settled:
                self._begin_shutdown(now, f"the task limit ({self.settings.max_tasks}) was reached")
            return
        if self.settings.burst and poller.empty and settled and not self._finalizer.blocking:
            self._begin_shutdown(now, "burst mode: the queue is empty")
            return
        poller.request(now, self.workers, self._held)

    def _accept(self, answer: Answer, now: float, pop: PopTrace | None = None) -> None:
        """Hold what will run; every other popped task leaves through the finalizer at once."""
        for ticket, error in answer.malformed:
            self._finalizer.settle(ticket, TaskExit.MALFORMED, now, reason=TaskExit.MALFORMED.reason(error=error))
        for task in answer.surplus:
            self._finalizer.settle(Ticket.of(task), TaskExit.PUSHED_BACK, now)
        if answer.surplus:  # started back now (other containers may be idle); the finalizer's step
            # budget may spread the pushes over a few steps, so a worker may start meanwhile
            self._finalizer.run(now)
        if pop is not None:
            for index, group in enumerate(answer.groups):
                self._pop_traces[group[0].id] = pop if index == 0 else pop.for_next_task()
        self._held.extend(answer.groups)

    def _dispatch(self, now: float) -> None:
        """Hand held tasks to idle workers first, then, as their next task, to busy workers whose task
        should end within the pop horizon, the one free first first (``Poller.next_takers``; not with
        pop-ahead off). A next task waits in a busy worker's pipe only while no worker is idle: one
        that is gets it instead (:meth:`_take_back_for_idle`)."""
        if self.settings.pop_ahead:
            self._take_back_for_idle(now)
        if not self._held:
            return
        takers = [worker for worker in self.workers if worker.takes_task]
        takers += self._poller.next_takers(self.workers, now)
        while self._held and takers:
            worker, group = takers.pop(0), self._held.popleft()
            assignment = Assignment(group[0], group[1:], now)
            pop = self._pop_traces.pop(group[0].id, None) if self._pop_traces else None
            message = ForkingPickler.dumps(
                ("task", assignment.task.raw, [task.raw for task in assignment.duplicates], pop))
            if not (worker.send_bytes(message) if worker.takes_task else worker.send_next(message, assignment)):
                # the worker died before it got it (the reaper replaces it), or, as a next task, too
                # big to be read back whole: held for the next taker
                self._held.appendleft(group)
                if pop is not None:
                    self._pop_traces[group[0].id] = pop
                continue
            if pop is not None:  # the finalizer's calls for these tasks continue the task's trace
                for member in group:
                    self._finalizer.traces[member.id] = pop
            if worker.takes_task:
                worker.assign(assignment, now)
                emit(self.listeners, "task_started", assignment.task.data.boefje.id)
            # (a next task is started, and counted, when the worker's "done" is read: messages.py)

    def _take_back_for_idle(self, now: float) -> None:
        """For each idle worker that no held task waits for, read a next task back out of a busy
        worker's pipe (one whose boefje still runs first: it may run far longer than it usually
        does), so it runs now instead of behind another task. What the worker read already is its
        own."""
        waiting = [worker for worker in self.workers if worker.next is not None]
        spare = sum(1 for worker in self.workers if worker.takes_task) - len(self._held) if waiting else 0
        if spare <= 0:
            return
        waiting.sort(key=lambda worker: worker.state is WorkerState.DELIVERING)
        for worker in waiting[:spare]:
            self._return_next(worker, now)

    def _return_next(self, worker: WorkerHandle, now: float) -> bool:
        """Read ``worker``'s next task back out of its pipe and hand it out again (:meth:`_give_back`);
        False when there is none or the worker has read it (then it is the worker's)."""
        assignment = worker.take_back()
        if assignment is None:
            return False
        self._give_back(assignment, now)
        return True

    def _give_back(self, assignment: Assignment, now: float) -> None:
        """A next task read back out of a worker's pipe (for an idle worker, or it retired, died or was
        killed first): held again for the next free worker, or, once draining, pushed back to the
        queue unchanged."""
        if self._phase is Phase.RUNNING:
            self._held.appendleft(assignment.tasks)
            trace = None
            for task in assignment.tasks:  # its pop's trace goes with it to the next worker
                trace = self._finalizer.traces.pop(task.id, None) or trace
            if trace is not None:
                self._pop_traces[assignment.task.id] = trace
            return
        self._push_back(assignment.tasks, now)

    def _push_back(self, tasks: list[Task], now: float) -> None:
        for task in tasks:
            self._finalizer.settle(Ticket.of(task), TaskExit.PUSHED_BACK, now)

    # -- shutdown (the order is written down in shutdown.py) -------------------------------------

    def _begin_shutdown(self, now: float, why: str, immediate: bool = False) -> None:
        """Stop popping (leave the running phase), then the drain's first steps (see shutdown.py)."""
        self._phase = Phase.DRAINING
        for worker in self.workers:  # a next task still in a pipe is not started: back to the queue
            self._return_next(worker, now)
        self._shutdown.begin(now, why, immediate=immediate, workers=self.workers, held=self._held,
                             listeners=self.listeners)
        self._finalizer.run(now)

    def _drain(self, now: float) -> None:
        """The rest of the drain (see shutdown.py), a step at a time; stopped once it is done, and
        once no pop is in flight (what one brings now goes back to the queue)."""
        for raw_tasks, _, _ in self._poller.collect(now, self.listeners):
            self._accept(self._poller.take(raw_tasks, room=0), now)
        exit_code = self._shutdown.drain(now, self.workers)
        if exit_code is None:
            return
        if self._poller.pops.in_flight and now < self._shutdown.deadline + FINALIZE_GRACE:
            return  # its answer wakes the loop
        if self._poller.pops.in_flight:
            logger.error("Stopped with %d pops unanswered: a task they brought stays dispatched",
                         self._poller.pops.in_flight)
        if exit_code != ExitCode.OK:  # an exit code set before is not reset
            self.exit_code = exit_code
        self._phase = Phase.STOPPED

    def _next_wait(self, now: float) -> float:
        """Until the earliest time any part needs the loop, at most a heartbeat (the health check
        watches the loop turn). 0 only when something is due now."""
        if self._phase is Phase.STOPPED:
            return 0.0
        due = [now + self.settings.heartbeat, self._finalizer.next_due(), timeouts.next_due(self.workers),
               self._reaper.next_due()]
        if self._phase is Phase.RUNNING:
            due.append(None if self._poller.exhausted else self._poller.next_due(self.workers, self._held, now))
            if sum(1 for worker in self.workers if worker.stays) < self.settings.pool_size and not self._probing():
                due.append(self._startup.not_before)  # (a probing worker's ready or exit wakes the loop)
        elif self._phase is Phase.DRAINING:
            due.append(self._shutdown.next_due(now))
        return max(0.0, min(when for when in due if when is not None) - now)

    def _wait(self, timeout: float) -> None:
        """Sleep until a worker reports or exits, a signal arrives, or ``timeout`` passes.

        A pop's answer wakes the loop only when a worker could take a task now, or as its next
        (``Poller.takes_next``: a busy one without a next task, so with busy workers most
        answers wake it). While none can (no idle worker, every busy one with its next task), the
        answer waits for a worker's "done", whose step collects it and hands it out (a wake-up is
        about 6 % of the supervisor's CPU per task; sending the next task ahead saves more than the
        wake-ups it costs)."""
        if self._shutdown.unanswered:
            return
        pops = self._poller.pops
        ahead = self.settings.pop_ahead
        pops.wake_on_answer = self._phase is not Phase.RUNNING or any(
            worker.takes_task or (ahead and self._poller.takes_next(worker)) for worker in self.workers)
        if pops.wake_on_answer and pops.answered:
            return  # it came after the step collected (the pop thread read the flag before we set it)
        self._ready = self._selector.select(timeout)
        if any(key.fd == self._signals.wakeup_fd for key, _ in self._ready):
            self._signals.drain_wakeups()

    def _close(self) -> None:
        """Last resort on the way out (also after an exception): no worker, nor anything a boefje
        started, outlives the pool; a task still held is closed as shut down (best effort)."""
        now = self._clock()
        for worker in self.workers:
            if worker.state is not WorkerState.KILLED:
                endings.kill(worker, now, "the supervisor is exiting", self._finalizer, TaskExit.SHUT_DOWN,
                             reason=TaskExit.SHUT_DOWN.reason(why="the supervisor exited"))
        for worker in self.workers:
            worker.process.join(5)
            self._settle_next(worker, now)  # unread: back to the queue (held first after an exception)
            worker.close_next_pipe()
        if self._held:  # (left by an exception out of the running loop)
            self._push_back([task for group in self._held for task in group], now)
            self._held.clear()
        if self._finalizer.blocking:
            self._finalizer.run(now)
        self._reaper.end()
        self._poller.close()
        self._forks.close()
        self._selector.close()
        self._api.close()
        self._tracing.close()  # the finalizer's spans (each worker flushes its own)
