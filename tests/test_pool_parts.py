"""The pool's pure parts (back-offs, duplicate grouping, exit descriptions, limits) and its loop
driven one step at a time with an injected clock."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from boefje_runtime import BoefjeAPIClient, TaskFilter, process_tree
from boefje_runtime.config import RuntimeConfig
from boefje_runtime.models import Task
from boefje_runtime.plugins import BoefjeRegistry
from boefje_runtime.pool import PoolSettings, WorkerPool
from boefje_runtime.pool.backoff import ErrorBackoff, IdleBackoff, StartupGuard
from boefje_runtime.pool.dedup import group_duplicates
from boefje_runtime.pool.exits import TaskExit, Ticket
from boefje_runtime.pool.lifecycle import (
    MARGIN,
    TRANSITIONS,
    Bounds,
    IllegalTransition,
    WorkerState,
    call_bound,
    check,
)
from boefje_runtime.pool.limits import retire_reason
from boefje_runtime.pool.process import WorkerHandle
from boefje_runtime.process_exit import describe_exit
from boefje_runtime.testing import make_task

from . import pool_boefjes
from .helpers import FAST_RETRY, write_plugin


def test_idle_backoff_stays_short_right_after_work_then_doubles_up_to_the_poll_interval():
    backoff = IdleBackoff(first=0.02, ceiling=10.0, hot_window=1.0)
    backoff.got_work(now=100.0)
    assert [backoff.next_wait(100.5) for _ in range(3)] == [0.02, 0.02, 0.02]
    waits = [backoff.next_wait(102.0) for _ in range(12)]
    assert waits[:4] == [0.02, 0.04, 0.08, 0.16]
    assert waits[-1] == 10.0 and max(waits) == 10.0
    backoff.got_work(now=200.0)
    assert backoff.next_wait(202.0) == 0.02


def test_worker_modes_poll_waits_come_from_the_config():
    config = RuntimeConfig(boefjes_api="http://127.0.0.1:9", oci_image="img", poll_interval=7.0, first_poll_wait=0.02)
    settings = PoolSettings.from_config(config)
    assert (settings.poll_interval, settings.first_poll_wait) == (7.0, 0.02)


def test_error_backoff_grows_with_jitter_and_resets():
    backoff = ErrorBackoff(first=1.0, ceiling=8.0)
    waits = [backoff.failed() for _ in range(6)]
    assert 0.5 <= waits[0] <= 1.0 and 4.0 <= waits[-1] <= 8.0
    backoff.succeeded()
    assert backoff.failed() <= 1.0


def test_startup_guard_paces_restarts_after_start_up_deaths():
    guard = StartupGuard(first=0.5, ceiling=4.0)
    assert guard.may_start(0.0)
    assert [guard.died_starting(now) for now in (0.0, 1.0, 3.0, 7.0, 20.0)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert not guard.may_start(23.9) and guard.may_start(24.0)
    guard.started()
    assert guard.may_start(0.0)


def _task(**kwargs) -> Task:
    return Task.from_dict(make_task("dns", **kwargs))


def test_duplicates_group_by_visible_key_or_by_boefje_input_and_environment():
    a1, a2 = _task(deduplication_key="a"), _task(deduplication_key="a")
    same1 = _task(input_ooi="x", environment={"K": "1"})
    same2 = _task(input_ooi="x", environment={"K": "1"})
    other_env = _task(input_ooi="x", environment={"K": "2"})
    other_input = _task(input_ooi="y", environment={"K": "1"})

    groups = group_duplicates([a1, same1, a2, other_env, same2, other_input])

    assert [[task.id for task in group] for group in groups] == [
        [a1.id, a2.id], [same1.id, same2.id], [other_env.id], [other_input.id]
    ]
    assert all(len(group) == 1 for group in group_duplicates([a1, a2], enabled=False))


def test_exits_are_described_with_the_signal_and_the_likely_oom():
    assert describe_exit(3) == "exited with code 3"
    assert "SIGSEGV" in describe_exit(-signal.SIGSEGV)
    assert "OOM killer is the likely cause" in describe_exit(-signal.SIGKILL)
    assert "the runtime did not send it" in describe_exit(-signal.SIGKILL)
    assert "out of memory" in describe_exit(-signal.SIGKILL, oom_kills=1)


def test_retire_reasons():
    assert retire_reason(2, None, None) is None
    assert retire_reason(2, 2, None) == "max tasks per child reached (2 tasks)"
    assert retire_reason(1, 5, 0.001).startswith("max memory per child passed")


# -- the worker lifecycle and the task-exit table ------------------------------------------------------


def test_every_move_outside_the_transition_table_is_refused():
    for old in WorkerState:
        for new in WorkerState:
            if new in TRANSITIONS[old]:
                check(old, new)
            else:
                with pytest.raises(IllegalTransition):
                    check(old, new)
    assert TRANSITIONS[WorkerState.KILLED] == frozenset(), "nothing comes back from KILLED"


def test_each_state_has_its_own_deadline():
    bounds = Bounds(startup=60.0, task_timeout=5.0, call=2.0)
    assert bounds.deadline(WorkerState.STARTING, 100.0) == 160.0
    assert bounds.deadline(WorkerState.BUSY, 100.0) == 105.0
    assert bounds.deadline(WorkerState.DELIVERING, 100.0, calls=3) == 100.0 + 3 * 2.0 + MARGIN
    assert bounds.deadline(WorkerState.IDLE, 100.0) is None
    assert Bounds(startup=1.0, task_timeout=None, call=1.0).deadline(WorkerState.BUSY, 0.0) is None
    # the client's default policy: 5 tries of 30 s, waits up to 5 s, but none started after 60 s
    assert call_bound(attempts=5, total_seconds=60.0, max_wait=5.0, timeout=30.0) == 90.0
    assert call_bound(attempts=2, total_seconds=60.0, max_wait=0.5, timeout=1.0) == 2.5


def test_a_handle_needs_a_pid_so_no_kill_can_reach_pid_0():
    import multiprocessing

    unstarted = multiprocessing.get_context("fork").Process(target=print)
    with pytest.raises(ValueError, match="pid"):
        WorkerHandle(unstarted, None, 0.0, Bounds(startup=1.0, task_timeout=None, call=1.0))
    for not_a_process in (0, -1):
        with pytest.raises(ValueError):
            process_tree.kill_tree(not_a_process)


def test_the_docs_table_of_task_exits_is_the_codes():
    text = (Path(__file__).resolve().parent.parent / "docs" / "task-exits.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \|[^|]*\| (\w+) \|", text, flags=re.MULTILINE)
    assert rows == [(how.outcome, how.result, how.action.value) for how in TaskExit]


def test_a_malformed_popped_task_gets_a_ticket_only_with_an_id():
    assert Ticket.of_malformed({"id": "t1", "data": 5}) == Ticket("t1", "unknown", raw={"id": "t1", "data": 5})
    ticket = Ticket.of_malformed({"id": "t2", "data": {"boefje": {"id": "dns", "version": "1"}}, "organisation": "o"})
    assert (ticket.boefje_id, ticket.version, ticket.organisation) == ("dns", "1", "o")
    assert Ticket.of_malformed({"id": ""}) is None and Ticket.of_malformed([1]) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stop_stepped(pool, clock, *, tick: float = 0.1, within: float = 10.0) -> None:
    """End a pool driven by a fake clock: an immediate stop, stepped (``tick`` a step) until it has
    stopped or ``within`` real seconds passed, then the last-resort close (no worker outlives it)."""
    pool.request_shutdown(immediate=True)
    deadline = time.monotonic() + within
    while pool.phase != "stopped" and time.monotonic() < deadline:
        clock.now += tick
        pool.step()
        time.sleep(0.005)  # real processes exit in real time
    pool._close()


@pytest.fixture
def stepped_pool(boefje_api):
    clock = FakeClock()
    pool = WorkerPool(
        BoefjeAPIClient(boefje_api.url),
        TaskFilter([pool_boefjes.IMAGE]),
        registry=pool_boefjes.registry(),
        settings=PoolSettings(pool_size=1, poll_interval=10.0, first_poll_wait=0.02, hot_window=1.0,
                              task_timeout=5.0, shutdown_timeout=1.0),
        clock=clock,
    )
    deadline = time.monotonic() + 10
    while not any(worker.ready for worker in pool.workers):  # real time: a process has to boot
        assert time.monotonic() < deadline, "the worker did not come up"
        pool.step()
        time.sleep(0.005)
    yield pool, clock
    stop_stepped(pool, clock)


def test_an_idle_pool_pops_at_most_once_per_poll_interval(boefje_api, stepped_pool):
    pool, clock = stepped_pool
    start = boefje_api.request_counts().get("pop", 0)
    for _ in range(600):  # ten simulated minutes of an empty queue, one step a second
        clock.now += 1.0
        pool.step()
    pops = boefje_api.request_counts()["pop"] - start
    assert 60 <= pops <= 60 + 12  # one per 10 s, plus the short waits while backing off


def hold(tmp_path, name: str = "held", max_wait: float = 30) -> tuple[str, dict]:
    arguments = {"pid_file": str(tmp_path / f"{name}.pid"), "release_file": str(tmp_path / f"{name}.release"),
                 "max_wait": max_wait}
    return name, make_task("hold", oci_image=pool_boefjes.IMAGE, arguments=arguments)


def step_until(pool, clock, predicate, what: str, timeout: float = 10.0, tick: float = 0.01) -> None:
    """Step (the fake clock moving ``tick`` a step) until ``predicate()``, within ``timeout`` real seconds:
    for what real processes do in real time (boot, report)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        clock.now += tick
        pool.step()
        time.sleep(0.005)


def simulate(pool, clock, seconds: float, cap: int = 5000) -> int:
    """Drive the loop as ``run()`` does, on the fake clock: step, then let the wait it returns pass
    (in simulated time). Returns the number of steps in ``seconds`` simulated seconds; a loop that
    keeps answering "wait 0 s" hits ``cap`` steps without the clock moving."""
    end, steps = clock.now + seconds, 0
    while clock.now < end and steps < cap and pool.phase != "stopped":
        wait = pool.step()
        steps += 1
        clock.now += min(wait, end - clock.now)
    return steps


def busy_worker(pool):
    return next((worker for worker in pool.workers if worker.state is WorkerState.BUSY), None)


def test_an_overdue_task_is_killed_at_the_step_after_its_deadline(boefje_api, stepped_pool, tmp_path):
    pool, clock = stepped_pool
    _, held = hold(tmp_path)
    task_id = boefje_api.enqueue(held)
    step_until(pool, clock, lambda: busy_worker(pool) is not None, "the boefje to run")
    worker = busy_worker(pool)

    clock.now = worker.since + 4.9  # the deadline counts from the boefje's start, not from the pid file
    pool.step()
    assert worker.state is WorkerState.BUSY
    clock.now = worker.since + 5.1
    pool.step()
    assert worker.state is WorkerState.KILLED and worker.why == "timed out after 5 s"
    step_until(pool, clock, lambda: boefje_api.status(task_id) == "failed", "the task to be failed", tick=0.0)


def test_a_boefje_that_crashes_at_import_does_not_become_a_fork_loop(boefje_api, tmp_path, caplog):
    # Given a pool of 2 whose only boefje ends the process when imported (every worker dies starting)
    crash = "import os\nimport time\n\ntime.sleep(0.5)  # a boot that takes a while\nos._exit(3)\n"
    write_plugin(tmp_path / "plugins" / "crasher", crash + "\ndef run(boefje_meta):\n    return []\n",
                 id="crasher", oci_image=pool_boefjes.IMAGE)
    clock = FakeClock()
    pool = WorkerPool(BoefjeAPIClient(boefje_api.url, retry=FAST_RETRY), TaskFilter([pool_boefjes.IMAGE]),
                      registry=BoefjeRegistry.discover(tmp_path / "plugins"), settings=PoolSettings(pool_size=2),
                      clock=clock)
    started = clock.now

    def deaths_by(simulated: float) -> int:
        """Step the fake clock to ``started + simulated``, letting every worker started on the way die
        and be reaped in real time before the clock moves on."""
        while clock.now < started + simulated:
            step_until(pool, clock, lambda: not pool.workers, "the started workers to die", tick=0.0)
            clock.now += 0.05
            pool.step()
        step_until(pool, clock, lambda: not pool.workers, "the started workers to die", tick=0.0)
        return pool.stats.worker_exits["startup"]

    try:
        # When the pool runs for a few simulated seconds
        # Then the start-up guard paces the restarts: both die at once, then one start after 1 s
        # (0.5 s doubled by the second death), the next 2 s after that, ... never a fork loop
        assert deaths_by(0.9) == 2
        assert deaths_by(1.9) == 3
        assert deaths_by(2.9) == 3
        assert deaths_by(3.9) == 4
        assert "during start-up" in caplog.text and "exited with code 3" in caplog.text
        # and while the one probing worker boots, the loop waits for it instead of spinning
        clock.now = pool._startup.not_before
        pool.step()
        assert len(pool.workers) == 1 and pool.step() > 0
    finally:
        stop_stepped(pool, clock)


# -- the loop never spins: steps per simulated second in each phase of waiting ----------------------


@pytest.fixture
def pool_of(boefje_api):
    """``pool_of(**settings)``: a pool driven by a fake clock, its workers booted (real time)."""
    made = []

    def make(**settings):
        clock = FakeClock()
        options = {"pool_size": 1, "poll_interval": 10.0, "task_timeout": None, "shutdown_timeout": 5.0, **settings}
        client = BoefjeAPIClient(boefje_api.url, timeout=0.5, retry=FAST_RETRY)
        pool = WorkerPool(client, TaskFilter([pool_boefjes.IMAGE]),
                          registry=pool_boefjes.registry(), settings=PoolSettings(**options), clock=clock)
        made.append((pool, clock))
        step_until(pool, clock, lambda: sum(w.ready for w in pool.workers) == options["pool_size"],
                   "the workers to come up")
        return pool, clock

    yield make
    for pool, clock in made:
        stop_stepped(pool, clock, tick=0.5, within=20.0)


def test_no_spin_while_the_task_limit_is_reached_and_a_task_runs(boefje_api, pool_of, tmp_path):
    # Given a pool of 2 at its task limit (1), its one task running
    pool, clock = pool_of(pool_size=2, max_tasks=1)
    _, held = hold(tmp_path)
    boefje_api.enqueue(held)
    step_until(pool, clock, lambda: busy_worker(pool) is not None, "the boefje to run")

    # When it waits for that task for 20 simulated seconds
    steps = simulate(pool, clock, 20.0)

    # Then it steps about once a heartbeat (1 s), not in a loop
    assert steps <= 25, f"{steps} steps in 20 s"


def test_no_spin_after_a_timeout_kill(boefje_api, pool_of, tmp_path):
    # Given a task that times out after 2 s
    pool, clock = pool_of(task_timeout=2.0)
    _, held = hold(tmp_path)
    task_id = boefje_api.enqueue(held)
    step_until(pool, clock, lambda: busy_worker(pool) is not None, "the boefje to run")

    # When the 2 s pass and the loop goes on for 10 simulated seconds
    steps = simulate(pool, clock, 10.0)

    # Then the kill, the reaping and the closing cost a few steps, not a spin until the reap
    assert steps <= 20, f"{steps} steps in 10 s"
    step_until(pool, clock, lambda: boefje_api.status(task_id) == "failed", "the task to be failed", tick=0.0)


def test_no_spin_while_draining_past_the_deadline_with_the_api_down(boefje_api, pool_of, tmp_path):
    # Given a running task, a drain with a 1 s grace period, and an API that is down
    pool, clock = pool_of(shutdown_timeout=1.0)
    _, held = hold(tmp_path)
    boefje_api.enqueue(held)
    step_until(pool, clock, lambda: busy_worker(pool) is not None, "the boefje to run")
    boefje_api.stop()
    pool.request_shutdown()

    # When the drain kills the task at its deadline and then cannot close it for 12 simulated seconds
    steps = simulate(pool, clock, 12.0)

    # Then the loop waited for its deadlines and back-offs: about one step a second
    assert steps <= 30, f"{steps} steps in 12 s"
    assert pool.phase == "stopped" and pool.exit_code != 0, "the unreachable API is reported in the exit code"
    boefje_api.start()


def test_no_spin_while_idle_with_the_api_down(boefje_api, pool_of):
    # Given an idle pool whose API is down
    pool, clock = pool_of()
    boefje_api.stop()

    # When a simulated minute passes
    steps = simulate(pool, clock, 60.0)

    # Then it stepped about once a heartbeat, the pops backing off in between
    assert steps <= 75, f"{steps} steps in 60 s"
    boefje_api.start()


def test_the_task_timeout_does_not_count_the_delivery(boefje_api, pool_of):
    # Given a 1 s task timeout and an output POST the API answers only after 2 s
    pool, clock = pool_of(task_timeout=1.0)
    boefje_api.inject("output", delay=2.0)
    task_id = boefje_api.enqueue(make_task("hello", oci_image=pool_boefjes.IMAGE, input_ooi="x"))

    # When the loop runs with the clock at real speed (one step per 10 ms of both)
    step_until(pool, clock, lambda: boefje_api.status(task_id) != "dispatched" and any(
        w.state is WorkerState.DELIVERING for w in pool.workers), "the delivery to start")
    step_until(pool, clock, lambda: boefje_api.status(task_id) == "completed", "the delivery", timeout=15)

    # Then the boefje's output landed: the delivery was not killed as a timeout
    assert boefje_api.files(task_id)[0]["content"] == b"hi x"


def test_a_worker_parks_inherited_sockets_so_no_old_object_can_close_a_new_file():
    import socket

    from boefje_runtime.pool.worker import close_inherited_sockets

    # Given a supervisor holding a listening socket and another live socket object
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    other = socket.socket()
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the "worker"
        try:
            close_inherited_sockets(keep=-1)
            fresh = socket.socket()  # the worker's own new socket
            reused = fresh.fileno() in (listener.fileno(), other.fileno())
            other.close()  # an old object closed later (the garbage collector): must not touch `fresh`
            fresh.bind(("127.0.0.1", 0))
            os.write(report_w, b"reused" if reused else b"ok")
            os.read(go_r, 1)
        except BaseException as exc:
            os.write(report_w, repr(exc).encode())
        finally:
            os._exit(0)
    try:
        # When the worker let go of them: its new socket got a number of its own and still works
        assert os.read(report_r, 200) == b"ok"
        # Then the listening port is free once its owner closes it, though the worker still lives
        listener.close()
        socket.create_server(("127.0.0.1", port)).close()
    finally:
        os.write(go_w, b"x")
        os.waitpid(pid, 0)
        other.close()
        for fd in (report_r, report_w, go_r, go_w):
            os.close(fd)


def test_burst_mode_tells_idle_workers_to_stop_in_the_step_that_finds_the_queue_empty(boefje_api):
    # Given a burst-mode pool of 2 with nothing queued, stepped on a fake clock
    clock = FakeClock()
    pool = WorkerPool(BoefjeAPIClient(boefje_api.url), TaskFilter([pool_boefjes.IMAGE]),
                      registry=pool_boefjes.registry(),
                      settings=PoolSettings(pool_size=2, burst=True, poll_interval=10.0, shutdown_timeout=5.0),
                      clock=clock)
    try:
        # When it steps until a step sees the empty queue and begins the drain
        deadline = time.monotonic() + 10
        while pool.phase in ("new", "running"):
            assert time.monotonic() < deadline, "the pool never saw the empty queue"
            clock.now += 0.01
            pool.step()
            time.sleep(0.005)  # real processes boot in real time

        # Then that same step told every idle worker to leave (not a heartbeat later: a burst run,
        # or a task limit, ended a second late every time)
        assert [worker for worker in pool.workers if worker.state is WorkerState.IDLE] == []
        assert any(worker.state is WorkerState.STOPPING for worker in pool.workers)
    finally:
        stop_stepped(pool, clock)
