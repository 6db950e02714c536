"""What a scaler or a dashboard reads from the pool's /metrics beyond busy and idle workers (issue 15):
tasks held by the supervisor and the seconds since the last task finished."""

from __future__ import annotations

from boefje_runtime.metrics import PoolMetrics

from .test_health import parse, value


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
