"""The operator endpoint: /healthz, /readyz and /metrics.

The pure parts (:class:`HealthState`, :class:`PoolMetrics`) are fed events with an injected clock;
the rest is real HTTP on 127.0.0.1 against a real WorkerPool and the test Boefje API. Every wait
is bounded.
"""

from __future__ import annotations

import http.client
import socket
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from boefje_runtime.health import HealthState, OperatorServer, attach_operator_endpoints, default_stale_after
from boefje_runtime.metrics import PoolMetrics
from boefje_runtime.pool.supervisor import SUPERVISOR_RETRY

from .helpers import hold_task, task, wait_until

Samples = dict[tuple[str, frozenset], float]


# -- helpers --------------------------------------------------------------------------------------


def get(server: OperatorServer, path: str, method: str = "GET") -> tuple[int, str, str]:
    """Status, content type and body; http.client, so no proxy setting can get in between."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        connection.close()


def status(server: OperatorServer, path: str) -> int:
    return get(server, path)[0]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(server: OperatorServer) -> Samples:
    code, content_type, body = get(server, "/metrics")
    assert code == 200, body
    assert content_type.startswith("text/plain; version=")  # the Prometheus text format
    return parse(body)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((f"boefje_runtime_{name}", frozenset(labels.items())))


@pytest.fixture
def operated(make_pool):
    """Build a pool of one with the endpoint attached (not started); close the endpoint afterwards
    (``make_pool`` stops the pool)."""
    servers: list[OperatorServer] = []

    def make(*, unreachable_after: float = 30.0, stale_after: float | None = None, clock=None, **settings):
        settings.setdefault("pool_size", 1)
        pool = make_pool(clock=clock, **settings)
        server = attach_operator_endpoints(
            pool, "127.0.0.1", 0, unreachable_after=unreachable_after, stale_after=stale_after,
            **({} if clock is None else {"clock": clock}),
        )
        servers.append(server)
        return pool, server

    yield make
    for server in servers:
        server.close()


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- HealthState: liveness ------------------------------------------------------------------------


def test_liveness_follows_the_last_loop_turn():
    clock = FakeClock()
    health = HealthState(stale_after=10.0, unreachable_after=30.0, clock=clock)

    health.loop_turned(1000.0)

    assert health.liveness(1009.0).ok
    verdict = health.liveness(1010.5)
    assert not verdict.ok and verdict.status == 503
    assert "last turned 10.5 s ago" in verdict.reason
    health.loop_turned(1011.0)
    assert health.liveness(1011.5).ok


def test_a_loop_that_never_turns_fails_liveness_after_the_threshold():
    clock = FakeClock(500.0)
    health = HealthState(stale_after=10.0, unreachable_after=30.0, clock=clock)

    clock.now = 505.0
    assert health.liveness().ok
    assert "first turn" in health.liveness().reason
    clock.now = 511.0
    assert not health.liveness().ok


@pytest.mark.parametrize(("heartbeat", "expected"), [(0.1, 10.0), (1.0, 10.0), (5.0, 15.0)])
def test_the_default_staleness_threshold_is_three_heartbeats_but_at_least_ten_seconds(heartbeat, expected):
    assert default_stale_after(heartbeat) == expected


# -- HealthState: readiness -----------------------------------------------------------------------


def test_readiness_fails_only_after_the_api_was_unreachable_past_the_threshold():
    health = HealthState(stale_after=10.0, unreachable_after=5.0, clock=FakeClock())
    assert health.readiness(1000.0).ok

    health.api_reachable(False, 1000.0)
    health.api_reachable(False, 1004.0)  # a later failure does not restart the outage

    assert health.readiness(1004.9).ok
    verdict = health.readiness(1005.5)
    assert not verdict.ok
    assert "unreachable for 5.5 s" in verdict.reason

    health.api_reachable(True, 1006.0)
    assert health.readiness(1006.0).ok
    health.api_reachable(False, 1007.0)
    assert health.readiness(1011.0).ok, "a new outage counts from its own start"


def test_draining_is_not_ready_whatever_the_api_does():
    health = HealthState(stale_after=10.0, unreachable_after=5.0, clock=FakeClock())
    health.draining()
    health.api_reachable(True, 1000.0)

    verdict = health.readiness(1000.0)
    assert not verdict.ok
    assert "draining" in verdict.reason
    assert health.liveness(1000.0).ok, "a draining pool is still alive"


# -- PoolMetrics ----------------------------------------------------------------------------------


def test_pool_metrics_count_events_in_their_own_registry():
    first, second = PoolMetrics(), PoolMetrics()  # a dedicated registry each: no name collision

    first.task_started("dns")
    first.task_started("dns")
    first.task_finished("dns", "completed", 0.3)
    first.task_finished("dns", "failed", 2.0)
    first.workers_changed(busy=3, idle=1)
    first.api_error("pop")
    first.worker_exited("recycled")

    samples = parse(first.exposition().decode())
    assert value(samples, "tasks_started_total", boefje_id="dns") == 2
    assert value(samples, "tasks_finished_total", boefje_id="dns", outcome="completed") == 1
    assert value(samples, "tasks_finished_total", boefje_id="dns", outcome="failed") == 1
    assert value(samples, "task_duration_seconds_count", boefje_id="dns") == 2
    assert value(samples, "task_duration_seconds_sum", boefje_id="dns") == pytest.approx(2.3)
    assert value(samples, "task_duration_seconds_bucket", boefje_id="dns", le="0.5") == 1
    assert value(samples, "workers_busy") == 3
    assert value(samples, "workers_idle") == 1
    assert value(samples, "api_errors_total", endpoint="pop") == 1
    assert value(samples, "worker_restarts_total", reason="recycled") == 1
    assert value(parse(second.exposition().decode()), "tasks_started_total", boefje_id="dns") is None


# -- the HTTP endpoint ----------------------------------------------------------------------------


def test_metrics_count_a_real_run_across_worker_processes(boefje_api, operated):
    boefje_api.enqueue([task() for _ in range(3)] + [task("boom")])
    # the supervisor retries a failed pop once inside the call: this many faults are two failed pops
    boefje_api.inject("pop", status=503, times=2 * SUPERVISOR_RETRY.attempts)
    pool, server = operated(pool_size=2, max_tasks_per_child=1, burst=True, max_error_backoff=0.2)

    assert pool.run() == 0

    samples = scrape(server)
    assert value(samples, "tasks_started_total", boefje_id="hello") == 3
    assert value(samples, "tasks_finished_total", boefje_id="hello", outcome="completed") == 3
    assert value(samples, "tasks_started_total", boefje_id="boom") == 1
    assert value(samples, "tasks_finished_total", boefje_id="boom", outcome="failed") == 1
    assert value(samples, "task_duration_seconds_count", boefje_id="hello") == 3
    assert value(samples, "api_errors_total", endpoint="pop") == 2
    # one task per child: each of the four runs retired its worker
    assert value(samples, "worker_restarts_total", reason="recycled") == 4
    assert value(samples, "workers_busy") is not None and value(samples, "workers_idle") is not None


def test_metrics_during_a_run_show_the_busy_worker(boefje_api, operated, tmp_path):
    held, pid_file, release = hold_task(tmp_path, "scraped")
    pool, server = operated(pool_size=2)
    pool.start()
    held_id = boefje_api.enqueue(held)
    wait_until(pid_file.exists, what="the held task to start")

    # The boefje runs before the supervisor has read its worker's "started" message, and the second
    # worker may still be booting: while the task is held, /metrics must come to show one busy
    # worker and one idle (a fixed moment to look at would race the supervisor's loop).
    def settled() -> bool:
        during = scrape(server)
        return (value(during, "tasks_started_total", boefje_id="hold"), value(during, "workers_busy"),
                value(during, "workers_idle")) == (1, 1, 1)

    wait_until(settled, timeout=15, what="one started task, one busy and one idle worker in /metrics")
    during = scrape(server)
    assert value(during, "tasks_finished_total", boefje_id="hold", outcome="completed") is None
    assert boefje_api.status(held_id) == "running", "the task was still held while /metrics was read"

    release.touch()
    boefje_api.wait_for_status(held_id, "completed")
    wait_until(
        lambda: value(scrape(server), "tasks_finished_total", boefje_id="hold", outcome="completed") == 1,
        what="the finished task in /metrics",
    )
    wait_until(lambda: value(scrape(server), "workers_busy") == 0, what="no busy workers in /metrics")
    assert value(scrape(server), "workers_idle") == 2


def test_healthz_is_ok_while_the_loop_turns_and_fails_once_it_stops(operated):
    # The pool and the endpoint share a clock only the test moves: "the last turn is older than
    # stale_after" is then the test's doing, never a loaded machine's
    clock = FakeClock()
    pool, server = operated(stale_after=0.5, heartbeat=0.1, clock=clock)
    pool.start()
    wait_until(lambda: "loop turned" in get(server, "/healthz")[2], what="the loop's first turn")

    code, content_type, body = get(server, "/healthz")
    assert code == 200, body
    assert content_type.startswith("text/plain")
    assert body.startswith("ok: ")
    clock.now += 1.0  # past stale_after: a loop that still turns catches up at its next turn
    wait_until(lambda: status(server, "/healthz") == 200 and "turned 0.0 s ago" in get(server, "/healthz")[2],
               what="the loop's next turn")

    assert pool.stop(timeout=20) == 0
    clock.now += 1.0
    code, _, body = get(server, "/healthz")
    assert code == 503 and "last turned 1.0 s ago" in body, body


def test_readyz_fails_while_the_api_is_down_past_the_threshold_and_recovers(boefje_api, operated):
    pool, server = operated(unreachable_after=0.3, max_error_backoff=0.2)
    pool.start()
    wait_until(lambda: pool.phase == "running", what="the pool to run")
    assert status(server, "/readyz") == 200

    boefje_api.stop()
    wait_until(lambda: status(server, "/readyz") == 503, what="/readyz to fail during the outage")
    code, _, body = get(server, "/readyz")
    assert code == 503 and "Boefje API has been unreachable" in body, body
    assert status(server, "/healthz") == 200, "an API outage is not a dead loop"

    boefje_api.start()
    wait_until(lambda: status(server, "/readyz") == 200, what="/readyz to recover after the API returned")


def test_readyz_fails_while_draining(boefje_api, operated, tmp_path):
    held, pid_file, release = hold_task(tmp_path, "drain")
    pool, server = operated()
    pool.start()
    held_id = boefje_api.enqueue(held)
    wait_until(pid_file.exists, what="the held task to start")
    assert status(server, "/readyz") == 200

    pool.request_shutdown()
    wait_until(lambda: pool.phase == "draining", what="draining")

    code, _, body = get(server, "/readyz")
    assert code == 503 and "draining" in body, body
    assert status(server, "/healthz") == 200, "the loop keeps turning while it drains"
    release.touch()
    # not pool.stop(): a second shutdown request would kill the task instead of letting it finish
    wait_until(lambda: pool.phase == "stopped", what="the drain to end")
    assert boefje_api.status(held_id) == "completed"
    assert status(server, "/readyz") == 503


def test_without_prometheus_client_metrics_answer_501_and_probes_still_work(operated, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # makes the import fail
    pool, server = operated()

    code, _, body = get(server, "/metrics")
    assert code == 501
    assert body.count("\n") == 1 and "boefje-runtime[metrics]" in body
    assert status(server, "/healthz") == 200
    assert status(server, "/readyz") == 200
    assert [type(listener).__name__ for listener in pool.listeners] == ["PoolStats", "HealthState"]


def test_unknown_paths_404_and_head_has_no_body(operated):
    _, server = operated()

    assert status(server, "/nope") == 404
    assert status(server, "/healthz?verbose=1") == 200
    code, _, body = get(server, "/readyz", method="HEAD")
    assert (code, body) == (200, "")


def test_a_taken_port_fails_before_anything_is_attached_and_close_frees_the_port(operated):
    pool, server = operated()
    listeners = list(pool.listeners)

    with pytest.raises(OSError):
        attach_operator_endpoints(pool, "127.0.0.1", server.port)
    assert pool.listeners == listeners

    server.close()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass
