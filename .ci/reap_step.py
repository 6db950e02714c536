"""Run one CI step as a child subreaper, and fail it when it leaves processes running.

Usage: ``python3 .ci/reap_step.py COMMAND...``; the exit code is the command's, or 3 when the
command passed but left processes behind.

Why: a test that loses track of a process it started passes or fails without anyone seeing it. One
did: a pid-hopping process escaped a test and forked on for an hour, taking 1.5 of the machine's 2
cores from every later step, benchmark and job. As a child subreaper (Linux ``prctl``), this process
inherits every process of the step that outlives its parent, whatever session or group it moved
to (a pool's workers and a boefje's daemons call ``setsid``). So once the command has ended, every
child left is a leftover: each is named on one line and SIGKILLed, by its process group when that
is not CI's own (one signal, which a process that forks in a loop cannot dodge), else by pid; what
it forked meanwhile comes back to us and is killed in turn, for at most 10 s. Stop signals (TERM,
INT, HUP) are passed to the command. Where a subreaper is not possible, the command just runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
#: How long leftovers (and what they fork meanwhile) are chased before giving up.
CHASE_BOUND = 10.0


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def children() -> list[int]:
    """Our children, from /proc (of every thread)."""
    found: list[int] = []
    try:
        threads = os.listdir("/proc/self/task")
    except OSError:
        return found
    for thread in threads:
        try:
            with open(f"/proc/self/task/{thread}/children") as listing:
                found += [int(pid) for pid in listing.read().split()]
        except (OSError, ValueError):
            continue
    return found


def reap() -> None:
    """Collect every child that has ended (they are all ours to collect: orphans of the step)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            text = " ".join(cmdline.read().decode(errors="replace").split())
    except OSError:
        return "(gone)"
    return text if len(text) <= 160 else text[:157] + "..."


def kill(pid: int, own_group: int) -> None:
    try:
        group = os.getpgid(pid)
        if group != own_group:
            os.killpg(group, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def chase(left: list[int]) -> list[int]:
    """SIGKILL ``left`` and whatever of theirs comes back to us, until nothing does or the bound
    passes; returns what is still there then. No pause between rounds: a process that forks in a
    loop must be hit between two of its forks."""
    own_group, deadline = os.getpgrp(), time.monotonic() + CHASE_BOUND
    while left and time.monotonic() < deadline:
        for pid in left:
            kill(pid, own_group)
        reap()
        left = children()
    return left


def wait_for(step: subprocess.Popen) -> int:
    """The step's exit code, once it ends; every other child that ends meanwhile is reaped at once.

    Why not ``step.wait()``: the step's orphans are our children, and one left unreaped keeps its pid.
    This machine has 32,768; a test process that forks in a loop, once loose, leaves a thousand
    exited copies a second (12,000 in the 10 s a test watched one), so the whole step's pids would
    run out and every fork in it fail."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # (the step is ours until this loop reaps it)
            return step.wait()
        if pid == step.pid:
            step.returncode = os.waitstatus_to_exitcode(status)
            return step.returncode


def main(command: list[str]) -> int:
    subreaper = become_subreaper()
    step = subprocess.Popen(command)

    def forward(signum: int, _frame: object) -> None:
        # not send_signal(): it polls, and a poll that reaps the step here would leave wait_for
        # waiting on the step's orphans. Its pid is not reused before wait_for has reaped it.
        if step.returncode is None:
            os.kill(step.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = wait_for(step)
    code = 128 - code if code < 0 else code  # killed by a signal: as a shell reports it
    if not subreaper:
        return code
    reap()
    left = children()
    if not left:
        return code
    print(f"== the step left {len(left)} processes running (SIGKILLed now): a test lost track of what it started",
          file=sys.stderr)
    for pid in left:
        print(f"   pid {pid}: {command_line(pid) or '(no command line: it is ending)'}", file=sys.stderr)
    still = chase(left)
    if still:
        print(f"== still running after {CHASE_BOUND:g} s: {still}", file=sys.stderr)
    return code or 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
