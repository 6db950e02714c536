"""What a scaler or a dashboard reads from the pool's /metrics beyond busy and idle workers (issue 15):
tasks held by the supervisor and the seconds since the last task finished."""

from __future__ import annotations

import pytest

from boefje_runtime.health import attach_operator_endpoints
from boefje_runtime.metrics import PoolMetrics

from .helpers import hold_task, task, wait_until
from .test_health import parse, scrape, value


@pytest.fixture
def operated(make_pool):
    """A pool (not started) with the operator endpoint; ``make_pool`` stops it, this closes the endpoint."""
    servers = []

    def make(**settings):
        pool = make_pool(**settings)
        servers.append(attach_operator_endpoints(pool, "127.0.0.1", 0))
        return pool, servers[-1]

    yield make
    for server in servers:
        server.close()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_seconds_since_last_task_grows_while_idle_and_restarts_at_each_finished_task():
    clock = Clock()
    metrics = PoolMetrics(clock=clock)

    clock.now += 30  # nothing finished yet: counted from the pool's start
    assert value(parse(metrics.exposition().decode()), "seconds_since_last_task") == 30
    metrics.task_finished("dns", "failed", 1.0)  # any outcome is activity
    clock.now += 5
    assert value(parse(metrics.exposition().decode()), "seconds_since_last_task") == 5
    clock.now += 600  # computed when scraped: an idle pool sends no events, yet the value grows
    assert value(parse(metrics.exposition().decode()), "seconds_since_last_task") == 605


def test_tasks_held_follows_the_supervisor():
    metrics = PoolMetrics()

    metrics.held_changed(3)
    assert value(parse(metrics.exposition().decode()), "tasks_held") == 3
    metrics.held_changed(0)
    assert value(parse(metrics.exposition().decode()), "tasks_held") == 0


@pytest.mark.boefje_api(pop_mode="limit")  # a scheduler that answers a pop with up to ``limit`` tasks
def test_a_real_pool_reports_the_task_it_holds_for_a_busy_worker(boefje_api, operated, tmp_path):
    held, pid_file, release = hold_task(tmp_path, "busy")
    boefje_api.enqueue([held, task()])
    # one worker and a prefetch of one: the first pop brings both, the worker runs one, the pool holds one
    pool, server = operated(pool_size=1, prefetch=1, deduplicate=False)
    pool.start()
    wait_until(pid_file.exists, what="the held task to start")

    wait_until(lambda: value(scrape(server), "tasks_held") == 1, what="one held task in /metrics")
    assert value(scrape(server), "workers_busy") == 1

    release.touch()
    wait_until(lambda: boefje_api.queued_count() == 0 and value(scrape(server), "tasks_held") == 0,
               what="the held task handed out")
