"""The worker process: takes one task at a time from the supervisor's pipe and runs it.

Lifecycle of one task here (protocol.md, "Worker mode"): PATCH running -> run the boefje ->
POST the output (the API closes the task). Only when the output cannot be delivered after
retries: PATCH failed. What happened is reported back with one message, so the supervisor always
knows which tasks are still open; the boefje's start and end in between are only marked on the
worker's progress page (progress.py), which the supervisor reads without being woken.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import select
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from ..client import BoefjeAPIClient
from ..errors import APIError, APIStatusError, BoefjeNotFound, PluginError
from ..execution import execute, failure_output
from ..logs import bind, log_context, secret_values
from ..models import BoefjeOutput, OutputStatus, Task, TaskStatus
from ..plugins import BoefjeRegistry
from ..process_tree import become_subreaper, kill_children, own_process_group
from ..tracing import NO_TRACING, PATCH_RUNNING, POST_OUTPUT, RUN, SETTLE_DUPLICATE, TASK_ID, NoTracing, Tracing
from .exits import TaskExit
from .limits import retire_reason
from .process import SEND_AHEAD_BYTES
from .progress import Progress, ProgressPage

logger = logging.getLogger("boefje_runtime.worker")



@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs, built by the supervisor before forking."""

    client_factory: Callable[[], BoefjeAPIClient]
    registry: BoefjeRegistry
    max_output_bytes: int | None
    max_tasks_per_child: int | None
    max_memory_per_child: float | None
    #: Spans of each task; the worker builds its own exporter after the fork (see tracing.py).
    tracing: Tracing | NoTracing = NO_TRACING


class _Flags:
    stop = False


#: Why a worker leaves after its task when it got SIGTERM meanwhile (the drain's deadline).
STOP_REASON = "it got SIGTERM while running its task"


def install_signals() -> None:
    """Own handlers first, then unblock (the supervisor forked us with them blocked).

    SIGTERM: finish the current task, then leave. SIGINT is ignored: a Ctrl-C reaches the whole
    process group, and the supervisor decides what happens to running tasks.
    """
    signal.set_wakeup_fd(-1)  # the supervisor's wake-up pipe is not ours

    def on_term(signum: int, frame: Any) -> None:
        _Flags.stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def close_inherited_sockets(keep: int) -> None:
    """Let go of the sockets the fork handed us but that are not ours: other workers' pipes, the
    supervisor's HTTP connections, a listening socket of the embedding program (holding it would
    keep its port taken after its owner closed it). Files and plain pipes stay: multiprocessing's
    exit sentinel is one.

    Each such descriptor is not closed but *parked* (:func:`park`).
    """
    kept = {keep} | logging_descriptors()
    park(fd for fd, status in open_descriptors().items() if stat.S_ISSOCK(status.st_mode) and fd not in kept)


def open_descriptors() -> dict[int, os.stat_result]:
    """This process's open descriptors above stderr and what each is (empty where ``/proc`` is
    missing: not Linux)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return {}
    found = {}
    for name in names:
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # (the descriptor listdir used is closed by now)
                found[fd] = os.fstat(fd)
    return found


def logging_descriptors() -> set[int]:
    """Descriptors that log handlers write to (a SysLogHandler's or SocketHandler's socket, a
    FileHandler's file, on any logger), and ``sys.stdout`` and ``sys.stderr``, wherever they point: a
    forked process must keep them to log and print."""
    loggers = [logging.getLogger(), *(item for item in logging.Logger.manager.loggerDict.values()
                                      if isinstance(item, logging.Logger))]
    writers: list[Any] = [sys.stdout, sys.stderr]
    for handler in (handler for logger in loggers for handler in logger.handlers):
        writers += [getattr(handler, attribute, None) for attribute in ("socket", "sock", "stream")]
    kept = set()
    for writer in writers:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            kept.add(writer.fileno())
    return kept


def park(fds: Iterable[int]) -> None:
    """Duplicate ``/dev/null`` over each of ``fds`` instead of closing it. Python objects in this
    (forked) process may still name those numbers: a ``socket.socket`` of the supervisor's HTTP
    session, a ``Connection`` to another worker. Had we closed the numbers, the next file this
    process opens could get one, and such an object, closed later (by the garbage collector, say),
    would close *that* file under its new owner. Parked, the number stays taken by ``/dev/null``
    for the life of the process: what it named is released (a socket's port is free once its owner
    closes it), and whatever an old object does with the number touches nothing."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in fds:
            if fd != null:
                with contextlib.suppress(OSError):
                    os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)


def worker_main(conn: Connection, spec: WorkerSpec, parent_pid: int, progress_fd: int, next_fd: int) -> None:
    """Entry point of a forked worker process; ``progress_fd`` is its progress page (progress.py),
    ``next_fd`` the read end of its next-task pipe (process.py, ``WorkerHandle.next``), read only
    between tasks: a task found there is this worker's, one the supervisor read back first is not."""
    progress = ProgressPage(progress_fd)
    os.close(progress_fd)  # mapped: a boefje's child processes must not inherit it
    own_process_group()  # the supervisor can then end everything this worker's boefjes start
    install_signals()  # (tied to the fork server's life before this: forkserver._fork_worker)
    close_inherited_sockets(conn.fileno())
    become_subreaper()
    bind(pid=os.getpid(), role="worker")
    client = spec.client_factory()
    client.header_hook = spec.tracing.header_hook
    spec.registry.load_all()
    conn.send(("ready", os.getpid()))
    tasks_done = 0
    pipe = select.poll()  # built once: Connection.poll() builds a selector per call
    pipe.register(conn.fileno(), select.POLLIN)
    pipe.register(next_fd, select.POLLIN)
    supervisor_pipe = select.poll()
    supervisor_pipe.register(conn.fileno(), select.POLLIN)
    #: A next task read while the supervisor's pipe held a task for this worker first (see _take):
    #: it runs right after that one, and the worker does not leave before it has run it.
    pending: tuple | None = None
    try:
        while pending is not None or not _Flags.stop:
            if pending is not None:
                message, pending = pending, None
            else:
                ready = pipe.poll(500)  # ms; a SIGTERM's flag is seen within that
                if not ready:
                    if os.getppid() != parent_pid:
                        return
                    continue
                try:
                    message, pending = _take(conn, next_fd, any(fd == conn.fileno() for fd, _ in ready),
                                             lambda: bool(supervisor_pipe.poll(0)))
                except (EOFError, OSError):
                    return
                if message is None:
                    continue  # the supervisor read it back first
            if message[0] == "stop":
                return
            _, raw_task, raw_duplicates, pop = message
            started = time.monotonic()
            trace = spec.tracing.start_task(pop)
            # numbered from 1, as the supervisor counts what it handed us (process.py)
            mark = functools.partial(progress.mark, tasks_done + 1)
            report = run_assignment(client, spec, raw_task, raw_duplicates, mark, trace)
            trace.finish(report.exit.outcome)
            leftovers = kill_children()
            if leftovers:
                logger.warning("Killed %d processes that task %s left behind", leftovers, raw_task["id"])
            tasks_done += 1
            # Decided before reporting, in the same message: a worker that says it leaves never reads
            # its next-task pipe again, and the supervisor takes back what waits there.
            # A SIGTERM says more than a limit reached at the same time (the metrics count it apart);
            # neither before a pending task has run (the supervisor counts it as this worker's)
            if pending is not None:
                reason = None
            else:
                reason = STOP_REASON if _Flags.stop else retire_reason(
                    tasks_done, spec.max_tasks_per_child, spec.max_memory_per_child)
            conn.send(("done", raw_task["id"], report, time.monotonic() - started, reason))
            if reason:
                return
    finally:
        client.close()
        spec.tracing.close()  # flush before a recycled or stopped worker leaves


def _take(conn: Connection, next_fd: int, conn_ready: bool,
          conn_waiting: Callable[[], bool]) -> tuple[tuple | None, tuple | None]:
    """What to act on now (None: nothing after all), and a next task to run right after it.

    The supervisor's own pipe first: a task there was sent while it saw this worker idle, so it
    comes before any next task (sent only while the worker holds one). That holds even when the poll
    (``conn_ready``) saw only the next-task pipe: between that poll and this read, the supervisor may
    have read that task back (the worker had reported its task done and not read it yet), handed
    the worker another through its pipe, and sent the first one again as its next. So a task read
    from the next-task pipe waits whenever the supervisor's pipe has something by then
    (``conn_waiting``): that was sent first. (A 10,000-task run at pool size 16 hit this once: the
    worker reported its next task done while the supervisor counted the other one as its task.)
    """
    if conn_ready:
        return conn.recv(), None
    ahead = _next_task(next_fd)
    if ahead is None or ahead[0] == "stop" or not conn_waiting():
        return ahead, None
    return conn.recv(), ahead


def _next_task(next_fd: int) -> tuple | None:
    """The task waiting in the next-task pipe, read whole in one read (it was written in one write of
    at most PIPE_BUF bytes); None when the supervisor read it back first; "stop" at the pipe's end
    (the supervisor is gone)."""
    try:
        data = os.read(next_fd, SEND_AHEAD_BYTES)
    except BlockingIOError:
        return None
    return pickle.loads(data) if data else ("stop",)


#: A duplicate's exit, whether the worker did what it needs, and whether to recheck it.
_DuplicateExit = tuple[TaskExit, bool, bool]


class Report(NamedTuple):
    """What a worker tells the supervisor about one assignment: how each of its tasks left."""

    #: How the main task ended (COMPLETED, FAILED, START_REFUSED, START_UNREACHABLE, UNDELIVERABLE, GONE).
    exit: TaskExit
    #: Why, for the exits that close the task (the API's error).
    error: str | None = None
    #: The HTTP status of the refusal or failure, when one came.
    status_code: int | None = None
    #: The running PATCH was repeated after a try that may still land and reopen the closed task.
    recheck: bool = False
    #: Per duplicate id: (exit, acted, recheck). ``acted``: the worker did what the exit needs
    #: (delivered the output, or PATCHed it queued); otherwise the supervisor does.
    duplicates: dict[str, _DuplicateExit] = {}


def run_assignment(
    client: BoefjeAPIClient, spec: WorkerSpec, raw_task: dict, raw_duplicates: list[dict],
    mark: Callable[[Progress], None], trace: Any = None,
) -> Report:
    """Run one task and deliver its output to its duplicates, so no task is left dispatched or running.

    ``mark`` records how far it got (progress.py): the supervisor reads that at its next step, to
    time the boefje and to pop this worker's next task while it delivers. ``trace`` (from
    ``spec.tracing.start_task``) gets a child span per phase; the caller ends it.
    """
    trace = trace or NO_TRACING.start_task()
    task = Task.from_dict(raw_task)  # validated by the supervisor already: this cannot fail
    meta = task.data
    trace.describe(task.id, meta.boefje.id, meta.boefje.version, meta.organization)
    secrets = list((meta.environment or {}).values())
    duplicates = [Task.from_dict(item) for item in raw_duplicates]
    with log_context(task_id=task.id, boefje_id=meta.boefje.id, organisation=meta.organization), secret_values(
        secrets
    ):
        try:
            with trace.phase(PATCH_RUNNING):
                recheck = client.patch_status(task.id, TaskStatus.RUNNING)
        except APIError as exc:
            logger.error("Could not start task: %s", exc)
            return Report(_start_exit(exc), str(exc), exc.status_code, duplicates=_unsettled(duplicates))
        mark(Progress.STARTED)  # the boefje runs from here: the task timeout counts from now
        with trace.phase(RUN):
            output, duration, failure = _run_boefje(spec, raw_task["data"], meta.boefje.id, meta.boefje.version,
                                                    meta.boefje.oci_image)
            trace.ran(output, failure)
        mark(Progress.RAN)  # only delivery is left: at its next step, the supervisor may pop our next task
        with trace.phase(POST_OUTPUT):
            how, error, status_code = _deliver(client, task.id, output)
        # The boefje's result, said after the delivery so that, when the output landed, this is the
        # line that ends the task (the supervisor logs every other task's end).
        ended = how in (TaskExit.COMPLETED, TaskExit.FAILED)
        extra = {"outcome": how.result, "exit": how.outcome, "duration_s": round(duration, 3)} if ended else {}
        if failure:
            logger.warning("Boefje failed in %.3f s: %s", duration, failure, extra=extra)
        else:
            logger.info("Boefje completed in %.3f s with %d files", duration, len(output.files or ()), extra=extra)
        if not ended:
            return Report(how, error, status_code, recheck, _unsettled(duplicates))
        return Report(how, None, None, recheck, _settle_duplicates(client, duplicates, output, duration, trace))


def _start_exit(exc: APIError) -> TaskExit:
    """The exit of a task whose running PATCH failed: 404 gone, another 4xx refused, else unreachable."""
    status = exc.status_code
    if isinstance(exc, APIStatusError) and status == 404:
        return TaskExit.GONE
    if isinstance(exc, APIStatusError) and status is not None and 400 <= status < 500:
        return TaskExit.START_REFUSED
    return TaskExit.START_UNREACHABLE


def _unsettled(duplicates: list[Task]) -> dict[str, _DuplicateExit]:
    return {duplicate.id: (TaskExit.DUPLICATE_REQUEUED, False, False) for duplicate in duplicates}


def _run_boefje(spec: WorkerSpec, data: dict, boefje_id: str, version: str | None,
                oci_image: str | None) -> tuple[BoefjeOutput, float, str | None]:
    """Run the boefje: its output, how long it ran, and why it failed (one line, secrets redacted;
    None when it did not)."""
    try:
        boefje = spec.registry.find(boefje_id, oci_image)
    except (BoefjeNotFound, PluginError) as exc:
        logger.error("%s", exc)
        return failure_output(boefje_id, version, str(exc)), 0.0, str(exc)
    # The task arrived pickled: this copy is the worker's own, and nothing reads its data after the run.
    result = execute(boefje, data, max_output_bytes=spec.max_output_bytes, handed_over=True)
    return result.output, result.duration, result.error


def _deliver(client: BoefjeAPIClient, task_id: str, output) -> tuple[TaskExit, str | None, int | None]:
    """POST the output. When that fails after the client's retries (or is refused), say so: the
    supervisor closes the task with an error file saying why (and PATCHes failed only when even that
    is refused), while this worker goes on with the next task. A 404: the task is gone."""
    try:
        client.post_output(task_id, output)
        return (TaskExit.COMPLETED if output.status is OutputStatus.COMPLETED else TaskExit.FAILED), None, None
    except APIError as exc:
        logger.error("Could not deliver the output: %s", exc)
        if isinstance(exc, APIStatusError) and exc.status_code == 404:
            return TaskExit.GONE, str(exc), 404
        return TaskExit.UNDELIVERABLE, str(exc), exc.status_code


def _settle_duplicates(client: BoefjeAPIClient, duplicates: list[Task], output: BoefjeOutput,
                       duration: float, trace: Any) -> dict[str, _DuplicateExit]:
    """On success each duplicate gets the same output (it must be running for the API to accept it);
    on failure they go back to the queue to get their own run. Returns each one's exit; those this
    worker could not settle are left to the supervisor (acted False)."""
    settled: dict[str, _DuplicateExit] = {}
    for duplicate in duplicates:
        with log_context(task_id=duplicate.id), trace.phase(SETTLE_DUPLICATE, **{TASK_ID: duplicate.id}):
            try:
                if output.status is OutputStatus.COMPLETED:
                    late = client.patch_status(duplicate.id, TaskStatus.RUNNING)
                    client.post_output(duplicate.id, output)
                    logger.info("Task completed: delivered the output of the task it duplicates", extra={
                        "outcome": "completed", "exit": TaskExit.DUPLICATE_DELIVERED.outcome,
                        "duration_s": round(duration, 3)})
                    settled[duplicate.id] = (TaskExit.DUPLICATE_DELIVERED, True, late)
                else:
                    client.patch_status(duplicate.id, TaskStatus.QUEUED)
                    logger.info("Task put back on the queue for its own run (the task it duplicates failed)",
                                extra={"outcome": "queued", "exit": TaskExit.DUPLICATE_REQUEUED.outcome,
                                       "duration_s": 0.0})
                    settled[duplicate.id] = (TaskExit.DUPLICATE_REQUEUED, True, False)
            except APIError as exc:
                logger.error("Could not settle duplicate task: %s", exc)
                gone = isinstance(exc, APIStatusError) and exc.status_code == 404
                settled[duplicate.id] = (TaskExit.GONE, True, False) if gone else (
                    TaskExit.DUPLICATE_REQUEUED, False, False)
    return settled
