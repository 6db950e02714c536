"""One-shot's boefje runs in a forked child, so a deadline or a stop signal can end it for sure.

A boefje in the one-shot process itself could not be stopped: a hung ``run`` ignores a timeout,
and a SIGTERM from the container runtime (what it sends when it stops a task's container) would
kill the process before it could close the task. So the one-shot process forks a child that leads
its own session and process group and is a child subreaper (everything the boefje starts stays
below it), and waits for one of:

- the child's result (its :class:`~boefje_runtime.execution.ExecutionResult`, pickled over a pipe);
  the child kills whatever the boefje left behind before it sends it, as a pool worker does;
- the child's exit without a result (``os._exit``, a segfault, an OOM kill): the task fails saying how;
- ``TASK_TIMEOUT`` passing, or SIGTERM, SIGINT or SIGHUP arriving: the child's whole tree is killed
  (:func:`~boefje_runtime.process_tree.kill_tree`).

The one-shot process is a subreaper too while the child runs, so the descendants of a child that
died are re-parented to it and killed as well. Only processes that became its children during the
run are touched: a program embedding :func:`run_in_child` keeps its own children.

Signal handlers only record the signal and wake the wait (``signal.set_wakeup_fd``). The child's
own process group keeps a terminal's Ctrl-C (sent to the foreground group) away from the boefje:
the parent decides. The cost is one fork per run (about 1 ms; see benchmarks/).
"""

from __future__ import annotations

import contextlib
import enum
import os
import pickle
import select
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import process_tree
from .execution import ExecutionResult, execute
from .plugins import Boefje
from .process_exit import OomCounter, describe_exit, exit_now
from .stop_signals import STOP_SIGNALS, StopSignals

#: The child's exit code when it could not even send its result (a bug of ours or a pickling error).
_CHILD_FAILED = 70
#: How long the parent waits for the processes it killed to be reaped.
_REAP_BOUND = 5.0
#: How often the wait looks for the child's exit where there is no pidfd.
_POLL = 0.05


class Ending(enum.Enum):
    """How the boefje's run ended."""

    #: The child sent its result.
    FINISHED = "finished"
    #: The child exited without a result.
    DIED = "died"
    #: TASK_TIMEOUT passed; the tree was killed.
    TIMED_OUT = "timed out"
    #: SIGTERM, SIGINT or SIGHUP arrived; the tree was killed.
    INTERRUPTED = "interrupted"


@dataclass
class ChildRun:
    ending: Ending
    #: The boefje's result (FINISHED only).
    result: ExecutionResult | None
    #: Seconds from fork to the end.
    duration: float
    #: How the child died (DIED), or the signal's name (INTERRUPTED).
    detail: str = ""
    #: Processes killed after the run (left behind by the boefje, or its tree on a stop).
    killed: int = 0


def run_in_child(boefje: Boefje, meta: Mapping[str, Any], *, max_output_bytes: int | None,
                 timeout: float | None, signals: StopSignals) -> ChildRun:
    """Run ``execute(boefje, meta)`` in a forked child; wait for its result, the deadline or a signal."""
    started = time.monotonic()
    if signals.received:
        return ChildRun(Ending.INTERRUPTED, None, 0.0, signals.name)
    oom = OomCounter()  # its count now, so a SIGKILL is called "out of memory" only when the kernel says so
    if not hasattr(os, "fork"):  # pragma: no cover - not Linux/macOS: no timeout, no tree to kill
        result = execute(boefje, meta, max_output_bytes=max_output_bytes)
        return ChildRun(Ending.FINISHED, result, time.monotonic() - started)
    me = os.getpid()
    before = set(process_tree.children(me))
    subreaper = not process_tree.is_subreaper() and process_tree.become_subreaper()
    read_fd, write_fd = os.pipe()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # no parent handler runs in the child
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; coverage does not follow a fork
            os.close(read_fd)
            _child(write_fd, me, boefje, meta, max_output_bytes)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    os.close(write_fd)
    exited = _pidfd(pid)
    try:
        ending, data = _wait(read_fd, pid, exited, started + timeout if timeout else None, signals)
        killed = 0
        if ending is not Ending.FINISHED:
            killed = len(process_tree.kill_tree(pid))  # before it is reaped: its pid cannot be reused
        status = _reap_child(pid)
        # Orphans of a child that died (or of a tree just killed) are ours now: they go too.
        strays = [child for child in process_tree.children(me) if child not in before]
        for stray in strays:
            process_tree.kill_tree(stray)
        _reap(strays)
    finally:
        os.close(read_fd)
        if exited is not None:
            os.close(exited)
        if subreaper:
            process_tree.become_subreaper(False)
    duration = time.monotonic() - started
    if ending is Ending.INTERRUPTED:
        return ChildRun(ending, None, duration, signals.name, killed)
    if ending is Ending.TIMED_OUT:
        return ChildRun(ending, None, duration, "", killed)
    if status is None:  # pragma: no cover - exited (FINISHED) but not reapable: not ours after all
        return ChildRun(Ending.DIED, None, duration, "could not be waited for", killed)
    answer = None
    if data and os.waitstatus_to_exitcode(status) == 0:
        with contextlib.suppress(Exception):
            answer = pickle.loads(data)
    if not (isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], ExecutionResult)):
        return ChildRun(Ending.DIED, None, duration, describe_status(status, oom), killed)
    result, left_behind = answer
    return ChildRun(Ending.FINISHED, result, duration, "", killed + left_behind)


def _reap(pids: list[int]) -> None:
    end = time.monotonic() + _REAP_BOUND
    waiting = set(pids)
    while waiting and time.monotonic() < end:
        waiting -= set(process_tree.reap(waiting))
        if waiting:
            time.sleep(0.001)


def _reap_child(pid: int) -> int | None:
    """The child's wait status, once it has exited or been killed: a bounded wait, never a blocking
    ``waitpid`` (a process that survives SIGKILL, e.g. in uninterruptible sleep, must not hang us)."""
    end = time.monotonic() + _REAP_BOUND
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if time.monotonic() >= end:
            return None
        time.sleep(0.001)


def _has_exited(pid: int) -> bool:
    """True once the child has exited, without reaping it (its pid stays ours until we do)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when the child exits (Linux 5.3+), so a grandchild that
    inherited the result pipe cannot keep us waiting for an EOF that never comes."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _child(write_fd: int, parent_pid: int, boefje: Boefje, meta: Mapping[str, Any],
           max_output_bytes: int | None) -> None:  # pragma: no cover - runs in the child
    code = _CHILD_FAILED
    try:
        process_tree.own_process_group()
        process_tree.become_subreaper()
        signal.set_wakeup_fd(-1)
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        if not process_tree.die_with_parent(parent_pid):  # a SIGKILLed one-shot leaves no boefje running
            return
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        result = execute(boefje, meta, max_output_bytes=max_output_bytes)
        left_behind = process_tree.kill_children()
        data = memoryview(pickle.dumps((result, left_behind), protocol=pickle.HIGHEST_PROTOCOL))
        while data:
            data = data[os.write(write_fd, data):]
        code = 0
    finally:
        exit_now(code)


def _wait(read_fd: int, pid: int, exited: int | None, deadline: float | None,
          signals: StopSignals) -> tuple[Ending, bytes]:
    """Read the child's result until the child has exited, unless the deadline passes or a signal
    arrives first.

    The pipe's EOF alone does not end the wait: a boefje can close the pipe (``os.closerange``)
    and carry on running, and the deadline and the signals must still reach it. Only the child's
    exit does (its pidfd; without one, a short poll of ``waitid(WNOWAIT)``).
    """
    chunks: list[bytes] = []
    watched = [fd for fd in (read_fd, exited, signals.wakeup_fd) if fd is not None]
    os.set_blocking(read_fd, False)
    while True:
        if signals.received:
            return Ending.INTERRUPTED, b""
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            return Ending.TIMED_OUT, b""
        if exited is None:  # no pidfd: poll for the exit
            wait = _POLL if wait is None else min(wait, _POLL)
        readable, _, _ = select.select(watched, [], [], wait)
        if signals.wakeup_fd is not None and signals.wakeup_fd in readable:
            signals.drain_wakeups()
        if read_fd in readable and _drain(read_fd, chunks):  # EOF: wait for the exit only
            watched.remove(read_fd)
        gone = exited in readable if exited is not None else _has_exited(pid)
        if gone:
            # The child writes everything before it exits: once it has, the rest is in the pipe.
            if read_fd in watched:
                _drain(read_fd, chunks)
            return Ending.FINISHED, b"".join(chunks)


def _drain(read_fd: int, chunks: list[bytes]) -> bool:
    """Read what the pipe holds into ``chunks``; True at EOF."""
    while True:
        try:
            chunk = os.read(read_fd, 1 << 20)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        chunks.append(chunk)


def describe_status(status: int, oom: OomCounter | None = None) -> str:
    """How the child ended, from its ``waitpid`` status, for a log line and the error file (the
    words are worker mode's: ``process_exit.describe_exit``)."""
    code = os.waitstatus_to_exitcode(status)
    text = describe_exit(code, oom_kills=oom.new_kills() if oom is not None and code < 0 else 0)
    return f"{text} without a result" if code >= 0 else text
