"""The worker fork server (``boefje_runtime.pool.forkserver``): real forks, real signals.

The property that matters: a worker forked while the supervisor runs other threads starts clean,
because it is forked by a process that never had any. The lock test shows it: a lock held by a
supervisor thread at spawn time is free in the worker (a direct fork would copy it held forever).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from boefje_runtime.pool.forkserver import ForkServer, ForkServerGone
from boefje_runtime.pool.progress import Progress, ProgressPage

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")

#: Held by a thread of the test process while a worker is spawned (see the lock test).
HELD_LOCK = threading.Lock()


def echo_main(conn, spec, parent_pid, progress_fd, next_fd):
    """A worker that answers each message until told to exit with a code, or to raise."""
    progress = ProgressPage(progress_fd)
    conn.send(("ready", os.getpid(), os.getppid(), parent_pid, spec))
    while True:
        message = conn.recv()
        if message[0] == "exit":
            raise SystemExit(message[1])
        if message[0] == "raise":
            raise RuntimeError("boom")
        if message[0] == "lock":
            conn.send(("lock", HELD_LOCK.acquire(timeout=message[1])))
        if message[0] == "sleep":
            time.sleep(message[1])
        if message[0] == "mark":
            progress.mark(message[1], Progress.RAN)
            conn.send(("marked",))


def spawn(server: ForkServer):
    """A worker with a progress page: its process, the pipe to it, and the supervisor's side of the page."""
    page, fd = ProgressPage.create()
    next_r, next_w = os.pipe2(os.O_CLOEXEC)
    try:
        process, conn = server.spawn(fd, next_r)
    finally:
        os.close(fd)
        os.close(next_r)
        os.close(next_w)
    return process, conn, page


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def server():
    server = ForkServer(echo_main, {"spec": 1}).start()
    yield server
    server.close()


def test_a_worker_is_the_fork_servers_child_and_gets_the_spec_and_its_progress_page(server):
    # when
    process, conn, page = spawn(server)

    # then
    assert conn.poll(5)
    kind, pid, ppid, parent_pid, spec = conn.recv()
    assert (kind, pid, spec) == ("ready", process.pid, {"spec": 1})
    assert ppid == parent_pid == server.pid != os.getpid()
    assert process.exitcode is None and process.is_alive()
    assert page.read()[:2] == (0, Progress.NONE)
    conn.send(("mark", 7))  # what the worker marks, the supervisor's side reads
    assert conn.poll(5) and conn.recv() == ("marked",)
    assert page.read()[:2] == (7, Progress.RAN)
    conn.send(("exit", 0))
    process.join(5)
    assert process.exitcode == 0


@pytest.mark.parametrize(("message", "code"), [(("exit", 3), 3), (("exit", None), 0), (("raise",), 1)])
def test_exit_codes_reach_the_supervisor_through_the_sentinel(server, message, code):
    process, conn, _ = spawn(server)
    conn.recv()

    conn.send(message)

    process.join(5)
    assert process.exitcode == code
    wait_until(lambda: not os.path.exists(f"/proc/{process.pid}"))  # reaped once read: no zombie left


def test_an_ended_worker_keeps_its_pid_until_its_exit_code_is_read(server):
    # given a worker that ended
    process, conn, _ = spawn(server)
    conn.recv()
    conn.send(("exit", 5))
    wait_until(process.ended)

    # then it is a zombie of the fork server: its pid (and process group id) is nobody else's yet
    with open(f"/proc/{process.pid}/stat") as stat:
        assert stat.read().rsplit(")", 1)[1].split()[0] == "Z"

    # when the supervisor reads the exit code, it is reaped
    assert process.exitcode == 5
    wait_until(lambda: not os.path.exists(f"/proc/{process.pid}"))


def test_a_killed_worker_reports_the_signal_like_multiprocessing(server):
    process, conn, _ = spawn(server)
    conn.recv()

    os.kill(process.pid, signal.SIGKILL)

    process.join(5)
    assert process.exitcode == -signal.SIGKILL


def test_a_worker_spawned_while_another_thread_holds_a_lock_finds_it_free(server):
    # given a thread of ours holding a lock at the moment of the spawn
    taken, release = threading.Event(), threading.Event()

    def hold():
        with HELD_LOCK:
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(5)
    try:
        # when
        process, conn, _ = spawn(server)
        conn.recv()
        conn.send(("lock", 1.0))

        # then the worker can take it: it was forked by a process that never had that thread
        assert conn.poll(5)
        assert conn.recv() == ("lock", True)
        assert threads_of(server.pid) == 1
    finally:
        release.set()
        holder.join(5)
    conn.send(("exit", 0))
    process.join(5)


def test_closing_the_server_takes_its_workers_with_it(server):
    process, conn, _ = spawn(server)
    conn.recv()

    server.close()

    process.join(5)
    assert process.exitcode == -signal.SIGKILL
    wait_until(lambda: not alive(process.pid))


def test_a_dead_server_is_not_replaced(server):
    # (a new one would be a fork of the supervisor as it is by then: ForkServerGone says why)
    first = server.pid
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not alive(first))

    for _ in range(2):
        with pytest.raises(ForkServerGone, match="no longer answers"):
            spawn(server)
    assert server.pid == 0 and not server.running
