"""The worker process: takes one task at a time from the supervisor's pipe and runs it.

Lifecycle of one task here (protocol.md, "Worker mode"): PATCH running -> run the boefje ->
POST the output (the API closes the task). Only when the output cannot be delivered after
retries: PATCH failed. What happened is reported back with one message, so the supervisor always
knows which tasks are still open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from ..client import BoefjeAPIClient
from ..errors import APIError, APIStatusError, BoefjeNotFound, PluginError
from ..execution import execute, failure_output
from ..logs import bind, log_context, secret_values
from ..models import OutputStatus, Task, TaskStatus
from ..plugins import BoefjeRegistry
from ..process_tree import become_subreaper, kill_children, own_process_group
from .limits import retire_reason

logger = logging.getLogger("boefje_runtime.worker")

#: Outcomes a worker reports for an assignment.
COMPLETED, FAILED, UNDELIVERED, SKIPPED, LOST = "completed", "failed", "undelivered", "skipped", "lost"

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs, built by the supervisor before forking."""

    client_factory: Callable[[], BoefjeAPIClient]
    registry: BoefjeRegistry
    max_output_bytes: int | None
    max_tasks_per_child: int | None
    max_memory_per_child: float | None


class _Flags:
    stop = False


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


def die_with_parent(parent_pid: int) -> None:
    """A worker must not outlive a supervisor that was SIGKILLed (a killed container must not leave
    boefjes running unsupervised). Linux: the kernel sends us SIGKILL; elsewhere the loop polls."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(0)


def close_inherited_sockets(keep: int) -> None:
    """Close the sockets the fork handed us but that are not ours: other workers' pipes, the
    supervisor's HTTP connections, a listening socket of the embedding program (holding it would
    keep its port taken after its owner closed it). Files and plain pipes stay: multiprocessing's
    exit sentinel is one."""
    kept = {keep}
    for handler in logging.getLogger().handlers:  # a SysLogHandler or SocketHandler keeps its socket
        for attribute in ("socket", "sock"):
            with contextlib.suppress(AttributeError, OSError, ValueError):
                kept.add(getattr(handler, attribute).fileno())
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return  # not Linux: leave them
    for fd in open_fds:
        if fd <= 2 or fd in kept:
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)


def worker_main(conn: Connection, spec: WorkerSpec, parent_pid: int) -> None:
    """Entry point of a forked worker process."""
    own_process_group()  # the supervisor can then end everything this worker's boefjes start
    install_signals()
    die_with_parent(parent_pid)
    close_inherited_sockets(conn.fileno())
    become_subreaper()
    bind(pid=os.getpid(), role="worker")
    client = spec.client_factory()
    spec.registry.load_all()
    conn.send(("ready", os.getpid()))
    tasks_done = 0
    try:
        while not _Flags.stop:
            if not conn.poll(0.5):
                if os.getppid() != parent_pid:
                    return
                continue
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            if message[0] == "stop":
                return
            _, raw_task, raw_duplicates = message
            started = time.monotonic()
            report = run_assignment(client, spec, raw_task, raw_duplicates, conn)
            leftovers = kill_children()
            if leftovers:
                logger.warning("Killed %d processes that task %s left behind", leftovers, raw_task["id"])
            tasks_done += 1
            # Decided before reporting, in the same message: otherwise the supervisor could hand a
            # new task to a worker that is about to leave.
            reason = retire_reason(tasks_done, spec.max_tasks_per_child, spec.max_memory_per_child)
            conn.send(("done", raw_task["id"], report, time.monotonic() - started, reason))
            if reason:
                return
    finally:
        client.close()


class Report(NamedTuple):
    """What a worker tells the supervisor about one assignment."""

    outcome: str
    #: Duplicates this worker could not settle: the supervisor closes them.
    unsettled: list[str] = []
    #: The running PATCH was repeated after a try that may land late and reopen the closed task.
    recheck: bool = False
    #: Why the output could not be delivered (UNDELIVERED).
    error: str | None = None


def run_assignment(
    client: BoefjeAPIClient, spec: WorkerSpec, raw_task: dict, raw_duplicates: list[dict], conn: Connection
) -> Report:
    """Run one task and deliver its output to its duplicates, so no task is left dispatched or running."""
    task = Task.from_dict(raw_task)  # validated by the supervisor already: this cannot fail
    meta = task.data
    secrets = list((meta.environment or {}).values())
    with log_context(task_id=task.id, boefje_id=meta.boefje.id, organisation=meta.organization), secret_values(
        secrets
    ):
        try:
            recheck = client.patch_status(task.id, TaskStatus.RUNNING)
        except APIStatusError as exc:
            logger.error("Could not start task: %s", exc)
            return Report(SKIPPED if exc.status_code and exc.status_code < 500 else LOST)
        except APIError as exc:
            logger.error("Could not start task: %s", exc)
            return Report(LOST)
        output = _run_boefje(spec, raw_task["data"], meta.boefje.id, meta.boefje.version, meta.boefje.oci_image)
        conn.send(("ran", task.id))  # only delivery is left: the supervisor may pop our next task now
        outcome, error = _deliver(client, task.id, output)
        if outcome not in (COMPLETED, FAILED):
            return Report(outcome, [], recheck, error)
        unsettled = _settle_duplicates(client, [Task.from_dict(item) for item in raw_duplicates], output)
        return Report(outcome, unsettled, recheck)


def _run_boefje(spec: WorkerSpec, data: dict, boefje_id: str, version: str | None, oci_image: str | None):
    try:
        boefje = spec.registry.find(boefje_id, oci_image)
    except (BoefjeNotFound, PluginError) as exc:
        logger.error("%s", exc)
        return failure_output(boefje_id, version, str(exc))
    result = execute(boefje, dict(data), max_output_bytes=spec.max_output_bytes)
    if result.error:
        logger.warning("Boefje failed in %.3f s: %s", result.duration, result.error)
    else:
        logger.info("Boefje completed in %.3f s with %d files", result.duration, len(result.output.files))
    return result.output


def _deliver(client: BoefjeAPIClient, task_id: str, output) -> tuple[str, str | None]:
    """POST the output. When that fails after the client's retries, say so: the supervisor keeps
    trying to close the task with an error file saying why (and PATCHes failed only when even that
    is refused), while this worker goes on with the next task."""
    try:
        client.post_output(task_id, output)
        return (COMPLETED if output.status is OutputStatus.COMPLETED else FAILED), None
    except APIError as exc:
        logger.error("Could not deliver the output: %s", exc)
        return UNDELIVERED, str(exc)


def _settle_duplicates(client: BoefjeAPIClient, duplicates: list[Task], output) -> list[str]:
    """On success each duplicate gets the same output (it must be running for the API to accept it);
    on failure they go back to the queue to get their own run. Returns the ids left unsettled."""
    unsettled = []
    for duplicate in duplicates:
        with log_context(task_id=duplicate.id):
            try:
                if output.status is OutputStatus.COMPLETED:
                    client.patch_status(duplicate.id, TaskStatus.RUNNING)
                    client.post_output(duplicate.id, output)
                    logger.info("Delivered the output of duplicate task")
                else:
                    client.patch_status(duplicate.id, TaskStatus.QUEUED)
                    logger.info("Put duplicate task back on the queue for its own run")
            except APIError as exc:
                logger.error("Could not settle duplicate task: %s", exc)
                unsettled.append(duplicate.id)
    return unsettled
