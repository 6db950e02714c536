"""Process trees: a process group of its own, a child subreaper, and killing a whole tree.

A boefje may start scanners as child processes, double-fork a daemon that calls ``setsid`` and
leaves, or fork while we look. Whatever it started must end with its task. Three tools, used by the
worker pool and by one-shot mode:

- :func:`own_process_group`: a forked worker (or a one-shot boefje) leads a new session and process
  group, so a signal to the group reaches what it started and never the supervisor.
- :func:`become_subreaper`: orphaned descendants are re-parented to us, not to init, so they stay in
  our tree (walkable) and their exit statuses are ours to collect.
- :func:`kill_tree`: SIGSTOP every process of a tree until a walk finds nothing new (a stopped
  process cannot fork, so nothing escapes mid-walk), then SIGKILL them all, and the root's process
  group too. :func:`kill_children` does that for every child of this process and reaps them.

Walks read ``/proc/<pid>/task/<tid>/children`` (the children of every thread). Pids taken from a
parent's children list cannot be reused under us: a pid is free again only once its parent reaped
it, and a stopped parent reaps nothing. Linux only; elsewhere the walks find nothing and only the
root and its group are signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable
from typing import NamedTuple

from . import libc

__all__ = [
    "ProcStat",
    "become_subreaper",
    "children",
    "descendants",
    "die_with_parent",
    "is_subreaper",
    "kill_children",
    "kill_tree",
    "own_process_group",
    "proc_stat",
    "reap",
    "session_members",
]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37

#: How long :func:`kill_tree` waits for its SIGSTOPs to take effect before it kills what it has.
#: A process in uninterruptible sleep (D state) stops only when it leaves the kernel.
STOP_BOUND = 1.0


def die_with_parent(parent_pid: int) -> bool:
    """Be SIGKILLed when the parent dies (Linux); call first thing in a forked child, so a parent
    that is SIGKILLed leaves nothing of ours running. False when the parent is gone already (it died
    between the fork and this call, before the kernel could tie us to it): then leave at once."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    return os.getppid() == parent_pid


def become_subreaper(on: bool = True) -> bool:
    """Make this process a child subreaper (``on=False``: stop being one). True when it worked."""
    return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0) == 0


def is_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    value = ctypes.c_int(0)
    return libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value)) == 0 and value.value != 0


def own_process_group() -> None:
    """Lead a new session (and so a new process group): call first thing in a forked child.

    A session, not only a group: a Ctrl-C on the terminal then reaches the supervisor alone (which
    decides what happens to running tasks), and :func:`kill_tree` can end the whole group at once.
    """
    with contextlib.suppress(OSError):  # already a group leader (cannot happen right after a fork)
        os.setsid()


class ProcStat(NamedTuple):
    """What ``/proc/<pid>/stat`` says of a process that matters here."""

    state: str  # R, S, D, T (stopped), t, Z (zombie), X ...
    ppid: int
    pgrp: int
    session: int


def proc_stat(pid: int) -> ProcStat | None:
    """``pid``'s state, parent, process group and session; None when it is gone (or not Linux)."""
    try:  # os.open/os.read, not open(): 3 system calls instead of 8 (a scan of /proc reads hundreds)
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)  # a few hundred bytes: the command name is at most 16
        finally:
            os.close(fd)
        fields = data.rsplit(b")", 1)[1].split()
        return ProcStat(fields[0].decode("ascii"), int(fields[1]), int(fields[2]), int(fields[3]))
    except (OSError, ValueError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """The children of ``pid`` (of all its threads), from /proc; [] when it is gone."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for thread in threads:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{thread}/children") as listing:
            found += [int(child) for child in listing.read().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first, then theirs), from one walk of /proc."""
    found: list[int] = []
    seen = {pid}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child in children(parent):
            if child not in seen:
                seen.add(child)
                found.append(child)
                frontier.append(child)
    return found


def session_members(session: int) -> list[int]:
    """Every process of session ``session`` but its leader, from a scan of /proc (not cheap: for
    rare events, such as a worker that died on its own leaving processes behind)."""
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if name.isdigit() and int(name) != session:
            stat = proc_stat(int(name))
            if stat is not None and stat.session == session and stat.state not in "ZX":
                found.append(int(name))
    return found


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _wait_stopped(pids: Iterable[int], deadline: float) -> None:
    """Until each of ``pids`` is stopped, a zombie or gone (SIGSTOP is delivered asynchronously)."""
    waiting = list(pids)
    while waiting and time.monotonic() < deadline:
        waiting = [pid for pid in waiting if (stat := proc_stat(pid)) is not None and stat.state not in "TtZX"]
        if waiting:
            time.sleep(0.0005)


def kill_tree(root: int, *, include_root: bool = True, stop_bound: float = STOP_BOUND) -> list[int]:
    """SIGKILL ``root``'s whole tree; return the pids signalled (root first when included).

    1. walk the tree and SIGSTOP what is new, wait until those are stopped, walk again: repeat until
       a walk finds nothing new (or ``stop_bound`` seconds passed), so no process forks away or
       re-parents itself out of the set while we look;
    2. SIGKILL every process found, and the root's process group when the root leads one (members
       that left the tree's parentage but not the group, e.g. re-parented to init);
    3. nothing is reaped here: the caller collects the statuses that are its own (see :func:`reap`).

    ``root`` must be a process whose pid cannot be reused under us: our own child (alive or not yet
    reaped), or this process itself with ``include_root=False``.
    """
    if root <= 0:  # 0 and -1 are not processes: os.kill would signal our whole group, or everyone
        raise ValueError(f"not a process id: {root}")
    deadline = time.monotonic() + stop_bound
    stat = proc_stat(root)
    leads_group = stat is not None and stat.pgrp == root
    found: list[int] = [root] if include_root and stat is not None else []
    stopped = set(found) | {root}
    if include_root and stat is not None:
        _signal(root, signal.SIGSTOP)
        _wait_stopped([root], deadline)
    while True:
        new = [pid for pid in descendants(root) if pid not in stopped]
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        stopped.update(new)
        found += new
        _wait_stopped(new, deadline)
        if time.monotonic() >= deadline:
            found += [pid for pid in descendants(root) if pid not in stopped]
            break
    for pid in found:
        _signal(pid, signal.SIGKILL)
    if leads_group and include_root:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(root, signal.SIGKILL)
    return found


def reap(pids: Iterable[int]) -> list[int]:
    """Collect the exit statuses of those of ``pids`` that are our children and have ended (no
    blocking); returns the pids reaped. Only pids named here are waited for, never ``-1``: a program
    embedding us may wait for its own children, and their statuses are not ours to take."""
    reaped = []
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (or already reaped)
            continue
        if done:
            reaped.append(pid)
    return reaped


def kill_children(timeout: float = 2.0) -> int:
    """Kill the tree of every child this process has and reap them; returns how many were killed.

    For a process whose every child is its own business (a pool worker after each task, a one-shot
    run): it should be a subreaper, so orphans of the killed trees come back to it and are killed
    and reaped in the next round, until none is left or ``timeout`` passed.
    """
    if not has_children():
        return 0  # the usual case after a task: one system call instead of two walks of /proc
    me, killed = os.getpid(), 0
    end = time.monotonic() + timeout
    while True:
        found = kill_tree(me, include_root=False, stop_bound=max(0.0, min(STOP_BOUND, end - time.monotonic())))
        killed += len(found)
        _reap_all(end)
        if not children(me) or time.monotonic() >= end:
            return killed


#: Linux's ``__WALL``: wait for every child, also a "clone child" (one made by a raw ``clone(2)``
#: whose exit signal is not SIGCHLD), which a plain wait neither sees nor reaps.
_WAIT_ALL = 0x40000000 if sys.platform.startswith("linux") else 0


def has_children() -> bool:
    """Whether this process has any child (running, or ended and not reaped), without reaping one.

    No child means no descendant: a grandchild whose parent ended was re-parented to us (we are a
    subreaper) or to init, and is then not ours to find by walking either.
    """
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT | _WAIT_ALL)
    except ChildProcessError:
        return False
    except (AttributeError, OSError):  # pragma: no cover - no waitid (or no __WALL): walk /proc
        return bool(children(os.getpid()))
    return True


def _reap_all(end: float) -> None:
    """Reap every child of this process that ends before ``end`` (the caller owns all of them)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG | _WAIT_ALL)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() >= end or not children(os.getpid()):
                return
            time.sleep(0.001)
