"""boefje_runtime.process_tree with real processes: whole trees end, nothing forks away mid-kill.

Each scenario runs in a child Python process (so this test process never becomes a subreaper or a
group leader), which writes the pids it started to a JSON file the test reads.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from boefje_runtime import process_tree

from .helpers import Strays, alive, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process trees are read from /proc")

#: A root that is a subreaper (as a pool worker is), with a child that double-forks a grandchild
#: which calls setsid (a daemon leaving its session), and a plain child running `sleep`.
DAEMONIZING_ROOT = """
import json, os, subprocess, sys, time
from boefje_runtime import process_tree
process_tree.become_subreaper()
pid_file = sys.argv[1]
read_end, write_end = os.pipe()
middle = os.fork()
if middle == 0:
    grandchild = os.fork()
    if grandchild == 0:
        os.setsid()
        os.write(write_end, str(os.getpid()).encode())
        time.sleep(60)
        os._exit(0)
    os._exit(0)  # the middle process leaves: the grandchild is orphaned and comes back to us
os.waitpid(middle, 0)
grandchild = int(os.read(read_end, 32))
sleeper = subprocess.Popen(["sleep", "60"])
with open(pid_file + ".tmp", "w") as out:
    json.dump({"root": os.getpid(), "grandchild": grandchild, "sleeper": sleeper.pid}, out)
os.rename(pid_file + ".tmp", pid_file)
"""
#: What the root does then: wait to be killed.
HANG = "time.sleep(60)\n"

#: A root whose child forks a new sleeping child every millisecond, for as long as it lives.
FORKING_ROOT = """
import json, os, sys, time
pid_file = sys.argv[1]
spawner = os.fork()
if spawner == 0:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        time.sleep(0.001)
with open(pid_file + ".tmp", "w") as out:
    json.dump({"root": os.getpid(), "spawner": spawner}, out)
os.rename(pid_file + ".tmp", pid_file)
time.sleep(60)
"""

#: A root (a subreaper that auto-reaps) whose child keeps hopping: it forks and exits as fast
#: as it can, so the process to catch has a new pid every fraction of a millisecond. The hopper
#: leads a process group of its own, which every hop stays in: the root does not lead it (so
#: kill_tree has to catch the hopper by its walk, not by a group kill), and the test can signal
#: it whole. A hopper that escaped once ran on for an hour: a /proc scan misses a process that
#: changes its pid while the scan reads, a group signal does not.
HOPPING_ROOT = """
import contextlib, json, os, signal, sys, time
from boefje_runtime import process_tree
process_tree.become_subreaper()
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
pid_file = sys.argv[1]
hopper = os.fork()
if hopper == 0:
    os.setpgid(0, 0)
    while True:
        if os.fork():
            os._exit(0)
with contextlib.suppress(OSError):  # both sides set the group: it is set before the file is written
    os.setpgid(hopper, hopper)
with open(pid_file + ".tmp", "w") as out:
    json.dump({"root": os.getpid(), "hopper_group": hopper}, out)
os.rename(pid_file + ".tmp", pid_file)
time.sleep(60)
"""


def group_alive(group: int) -> bool:
    """Whether any process (a zombie included) is in process group ``group``: one signal 0 to the
    group, which the kernel checks at once, where a scan of /proc misses a process that hops."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


class GroupWatch:
    """Whether anything of process group ``group`` still runs, for :func:`wait_until` to ask again
    and again. A group that no longer answers a signal is gone. But zombies answer too, and reaping
    them is init's business: this machine's init takes up to seconds, one in a container may never.
    So a group whose members a scan of /proc finds all zombies, the same ones for a second, is gone
    as well. A process that forks and exits in a loop is rarely seen alive by a scan, but it never
    leaves that: either its exited copies come and go, or nothing is found while it answers."""

    #: How long the same zombies, and nothing else, must be all a scan finds of the group.
    SETTLED = 1.0

    def __init__(self, group: int) -> None:
        self.group = group
        self._zombies: set[int] = set()
        self._since = 0.0
        #: What the last scan found (pid -> state), and every pid any scan found: for the failure
        #: message (a hopper that got away shows as ever more pids).
        self.last: dict[int, str] = {}
        self.seen: set[int] = set()

    def running(self) -> bool:
        if not group_alive(self.group):
            return False
        states = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (stat := process_tree.proc_stat(int(name))) is not None and stat.pgrp == self.group:
                states[int(name)] = stat.state
        self.last, self.seen = states, self.seen | set(states)
        zombies = set(states) if states and all(state in "ZX" for state in states.values()) else set()
        if not zombies or zombies != self._zombies:
            self._zombies, self._since = zombies, time.monotonic()
            return True
        return time.monotonic() - self._since < self.SETTLED


def start(tmp_path: Path, code: str) -> tuple[subprocess.Popen, dict]:
    pid_file = tmp_path / "pids.json"
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(pid_file)])
    wait_until(pid_file.exists, what="the tree to be started")
    return process, json.loads(pid_file.read_text())


def test_kill_tree_ends_a_daemon_that_double_forked_and_left_its_session(tmp_path, strays):
    # Given a subreaper root whose grandchild double-forked and called setsid, and a child `sleep`
    root, pids = start(tmp_path, DAEMONIZING_ROOT + HANG)
    strays.extend(pids.values())
    assert process_tree.proc_stat(pids["grandchild"]).session == pids["grandchild"], "left the session"
    assert set(process_tree.descendants(root.pid)) == {pids["grandchild"], pids["sleeper"]}

    # When its tree is killed
    killed = process_tree.kill_tree(root.pid)

    # Then every process of it is gone, and we reap the root, which is ours
    assert set(killed) == {root.pid, pids["grandchild"], pids["sleeper"]}
    assert root.wait(5) == -signal.SIGKILL
    for pid in pids.values():
        wait_until(lambda pid=pid: not alive(pid), timeout=5, what=f"pid {pid} to be gone")


def test_kill_tree_leaves_nothing_of_a_tree_that_keeps_forking(tmp_path, strays):
    # Given a tree in which a process forks a new child every millisecond
    root, pids = start(tmp_path, FORKING_ROOT)
    strays.extend(pids.values())
    wait_until(lambda: len(process_tree.descendants(root.pid)) > 20, what="the tree to grow")

    # When it is killed while it forks
    killed = process_tree.kill_tree(root.pid)
    strays.extend(killed)

    # Then nothing it forked is alive: the stop-then-walk caught every fork
    assert len(killed) > 20
    root.wait(5)
    for pid in killed:
        wait_until(lambda pid=pid: not alive(pid), timeout=5, what=f"pid {pid} to be gone")


def test_kill_tree_catches_a_process_that_keeps_changing_its_pid(tmp_path):
    # Given a tree whose member forks and exits in a loop (each walk sees a new pid)
    root, pids = start(tmp_path, HOPPING_ROOT)
    hopper_group = pids["hopper_group"]
    try:
        wait_until(lambda: group_alive(hopper_group) and process_tree.descendants(root.pid),
                   what="the hopper to run")

        # When the tree is killed
        killed = process_tree.kill_tree(root.pid)

        # Then the hopper was stopped where it stood and killed: nothing of the tree runs on. The
        # walk converged: how many hops it saw before a SIGSTOP landed depends on the scheduler (9
        # on a loaded machine), but a walk that chases each new pid until its stop bound (1 s of
        # walks a few hundred microseconds apart) collects hundreds
        assert len(killed) <= 50, f"chased {len(killed)} pids"
        root.wait(5)
        watch = GroupWatch(hopper_group)
        try:
            wait_until(lambda: not watch.running(), timeout=10, what="every process of the hopper's group to be gone")
        except TimeoutError as exc:  # which way: a hopper that got away shows as ever more pids
            states = dict(collections.Counter(watch.last.values()))
            raise AssertionError(f"{exc}; the last scan found {states} (by state), {len(watch.seen)} pids "
                                 f"seen in all, kill_tree signalled {len(killed)}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(hopper_group, signal.SIGKILL)


def test_kill_tree_kills_the_roots_process_group_when_it_leads_one(tmp_path, strays):
    # Given a group leader whose child left its parentage (re-parented to init) but not its group
    code = """
    import json, os, sys, time
    os.setsid()
    middle = os.fork()
    if middle == 0:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    os.waitpid(middle, 0)
    time.sleep(0.2)
    from boefje_runtime import process_tree
    me = os.getpid()
    orphan = [int(p) for p in os.listdir("/proc")
              if p.isdigit() and int(p) != me and getattr(process_tree.proc_stat(int(p)), "pgrp", 0) == me]
    with open(sys.argv[1] + ".tmp", "w") as out:
        json.dump({"root": os.getpid(), "orphan": int(orphan[0])}, out)
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(60)
    """
    root, pids = start(tmp_path, code)
    strays.extend(pids.values())
    assert pids["orphan"] not in process_tree.descendants(root.pid)

    # When the root's tree is killed
    process_tree.kill_tree(root.pid)

    # Then the group member outside the tree is gone too
    root.wait(5)
    wait_until(lambda: not alive(pids["orphan"]), timeout=5, what="the group member to be gone")


def test_kill_children_ends_everything_a_subreaper_started_and_reaps_it(tmp_path, strays):
    # Given a subreaper process that started a daemonizing grandchild and a `sleep`
    code = DAEMONIZING_ROOT + (
        "killed = process_tree.kill_children()\n"
        "print(json.dumps({'killed': killed, 'left': process_tree.children(os.getpid())}), flush=True)\n"
    )
    pid_file = tmp_path / "pids.json"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(pid_file)], capture_output=True,
                            text=True, timeout=30)
    pids = json.loads(pid_file.read_text())
    strays.extend(pids.values())

    # When it called kill_children: both are killed, reaped (no child left, not even a zombie)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"killed": 2, "left": []}, result.stderr
    for pid in (pids["grandchild"], pids["sleeper"]):
        assert not alive(pid)


def test_has_children_sees_a_running_child_and_an_unreaped_one_and_reaps_neither():
    code = """
        import json, os, subprocess, sys
        from boefje_runtime import process_tree
        seen = [process_tree.has_children()]
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        seen.append(process_tree.has_children())
        child.stdin.close()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, still unreaped (a zombie)
        seen.append(process_tree.has_children())
        try:  # has_children did not reap it: its status is still there to collect
            seen.append(os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None)
        except ChildProcessError:
            seen.append(False)
        child.wait(10)
        seen.append(process_tree.has_children())
        print(json.dumps(seen))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=30)
    assert json.loads(result.stdout) == [False, True, True, True, False], result.stderr


#: clone(2)'s system call number, where this test knows it.
CLONE_SYSCALL = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)


@pytest.mark.skipif(CLONE_SYSCALL is None or not sys.platform.startswith("linux"), reason="raw clone(2) on Linux")
def test_kill_children_finds_a_clone_child_whose_exit_signal_is_not_sigchld():
    # Given a process with one child made by a raw clone(2) with exit signal 0 (a "clone child":
    # invisible to a wait without __WALL)
    code = f"""
        import ctypes, json, os, time
        from boefje_runtime import process_tree
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        pid = libc.syscall({CLONE_SYSCALL}, ctypes.c_ulong(0), ctypes.c_ulong(0), None, None, ctypes.c_ulong(0))
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        process_tree.become_subreaper()
        found = process_tree.has_children()
        killed = process_tree.kill_children()
        print(json.dumps({{"pid": pid, "found": found, "killed": killed, "left": os.path.exists(f"/proc/{{pid}}")}}))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=30)

    # Then kill_children saw it, killed it and reaped it (not even a zombie is left)
    report = json.loads(result.stdout)
    assert (report["found"], report["killed"], report["left"]) == (True, 1, False), result.stderr


def test_own_process_group_makes_a_forked_child_lead_its_session_and_group():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            process_tree.own_process_group()
            os.write(write_end, b"x")
            signal.pause()
        finally:
            os._exit(0)
    try:
        os.read(read_end, 1)
        stat = process_tree.proc_stat(pid)
        assert (stat.pgrp, stat.session) == (pid, pid)
        assert process_tree.proc_stat(os.getpid()).pgrp != pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        os.close(write_end)


def test_reap_takes_only_the_named_children_and_never_blocks():
    # Given two children of ours that have exited
    first, second = (subprocess.Popen(["true"]) for _ in range(2))
    wait_until(lambda: all(process_tree.proc_stat(p.pid).state == "Z" for p in (first, second)),
               what="both to be zombies")

    # When only one is named (and a pid that is not our child)
    reaped = process_tree.reap([first.pid, 1])

    # Then only that one is reaped: the other's status is still there for its owner
    assert reaped == [first.pid]
    assert process_tree.proc_stat(second.pid).state == "Z"
    assert second.wait(5) == 0
    first.returncode = 0  # reaped by us: tell Popen, so its own clean-up does not wait for it


def test_subreaper_can_be_switched_on_and_off_in_a_child_process():
    code = """
    from boefje_runtime import process_tree
    assert not process_tree.is_subreaper()
    assert process_tree.become_subreaper() and process_tree.is_subreaper()
    assert process_tree.become_subreaper(False) and not process_tree.is_subreaper()
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, timeout=30)


def test_the_strays_fixture_kills_the_process_it_recorded_and_nothing_after_it_ended():
    recorded = Strays()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(30)
    recorded.extend([sleeper.pid, gone.pid])  # the second ended already: no handle, nothing to kill

    recorded.kill_all()

    assert sleeper.wait(10) == -signal.SIGKILL
    assert recorded.pids == [sleeper.pid, gone.pid]
