"""What a CI step left running: every live process of CI's session but this one and its ancestors.

Why: a test that loses track of a process it started (a pid-hopping one escaped once and forked on
for an hour, taking 1.5 of the machine's 2 cores from every later step and every other job) passes
or fails without anyone seeing it. .ci/run runs in a session of its own and its steps one after
another, so once a step is over nothing of that session should run but .ci/run itself. Each process
found is named on one line and SIGKILLed: by its process group when that is not .ci/run's own (one
signal, which a process that keeps forking cannot dodge), else by pid; then the session is looked at
again, until nothing of it runs or 10 s have passed. Exit code 1 when anything was found, 0 when not.

Usage: python3 .ci/leftovers.py SESSION_ID, the session .ci/run leads (any other: nothing is looked at).
Linux: reads /proc; elsewhere it finds nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def stat_of(pid: int) -> tuple[str, int, int, int] | None:
    """(state, parent, process group, session) of ``pid``; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3])


def ancestors() -> set[int]:
    """This process and every process above it (the script that runs us, .ci/run, ...)."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        stat = stat_of(pid)
        pid = stat[1] if stat else 0
    return found


def members(session: int, exclude: set[int]) -> dict[int, tuple[str, int]]:
    """Processes of ``session`` (pid -> (state, process group)), zombies included, ``exclude`` not."""
    found = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if name.isdigit() and int(name) not in exclude:
            stat = stat_of(int(name))
            if stat is not None and stat[3] == session:
                found[int(name)] = (stat[0], stat[2])
    return found


def running(session: int, exclude: set[int]) -> dict[int, int]:
    """What of ``session`` still runs: pid -> process group. A live process is seen by a scan of
    /proc; one that forks and exits in a loop mostly is not (its pid is new every fraction of a
    millisecond), but its exited copies, zombies until init reaps them, show its group: a group that
    has pids a scan 0.2 s before did not have is running, and counts with one of those pids."""
    before = members(session, exclude)
    time.sleep(0.2)  # the window in which a forking group shows new pids (no event to wait on)
    after = members(session, exclude)
    found = {pid: group for pid, (state, group) in after.items() if state not in "ZX"}
    for pid, (_, group) in after.items():
        if pid not in before and group not in found.values() and group not in (session, *exclude):
            found[pid] = group
    return found


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            text = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
    return text if len(text) <= 160 else text[:157] + "..."


def main(session: int) -> int:
    if os.getsid(0) != session:  # .ci/run could not lead a session (no setsid): ours are not told apart
        return 0
    exclude = ancestors()
    left = running(session, exclude)
    if not left:
        return 0
    print(f"== left running after the step (SIGKILLed now): {len(left)} processes", file=sys.stderr)
    for pid, group in sorted(left.items()):
        print(f"   pid {pid} (group {group}): {command_line(pid) or 'exited, its group forks on'}", file=sys.stderr)
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        for pid, group in left.items():
            try:
                if group not in (session, *exclude):
                    os.killpg(group, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
        left = running(session, exclude)
    if left:
        print(f"== still running after 10 s: {sorted(left)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
