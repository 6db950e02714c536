"""Prometheus metrics of a worker pool, counted from its events.

Every event passes through the supervisor: workers report each finished task over their pipe and
the supervisor reaps every exit. So one registry in the supervisor process already aggregates all
worker processes, and prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, files
shared between processes) is not needed; a worker that is replaced loses no counts either.

prometheus_client is the optional extra ``boefje-runtime[metrics]``. It is imported when a
:class:`PoolMetrics` is built, never at module import, so the runtime works without it and the
health endpoint can answer ``/metrics`` with 501 instead of failing to start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .errors import BoefjeRuntimeError
from .pool.events import PoolEvents
from .pool.exits import TaskExit

#: Boefjes run from a sub-second DNS lookup to an hour-long port scan.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

INSTALL_HINT = "prometheus_client is not installed; install boefje-runtime[metrics] to get /metrics"

#: The ``tasks_finished`` help text, built from :class:`TaskExit`: the finalizer counts each task by
#: its exit's name, so the list an operator reads is the table's rows and cannot fall behind it.
TASKS_FINISHED_HELP = (
    "Tasks that left the pool, by exit (the outcome label; docs/task-exits.md): "
    + ", ".join(how.outcome for how in TaskExit) + "."
)


class MetricsUnavailable(BoefjeRuntimeError):
    """prometheus_client cannot be imported (the ``metrics`` extra is not installed)."""


class PoolMetrics(PoolEvents):
    """The pool's metrics in a dedicated registry, rendered by :meth:`exposition`.

    A dedicated ``CollectorRegistry``, not prometheus_client's global one: two pools in one
    process (or one test after another) then never collide on metric names, and a scrape shows
    only the pool's own metrics. Hooks run in the supervisor loop and only touch
    prometheus_client's metric objects, which are thread-safe, so a scrape from the HTTP thread
    may run concurrently.

    Raises :class:`MetricsUnavailable` when prometheus_client is missing.
    """

    def __init__(self, *, namespace: str = "boefje_runtime", clock: Callable[[], float] = time.monotonic) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise MetricsUnavailable(INSTALL_HINT) from exc
        self.registry = prom.CollectorRegistry()
        self.content_type: str = prom.CONTENT_TYPE_LATEST
        self._render = prom.generate_latest
        common: dict[str, Any] = {"namespace": namespace, "registry": self.registry}
        self.tasks_started = prom.Counter("tasks_started", "Tasks handed to a worker process.", ["boefje_id"], **common)
        self.tasks_finished = prom.Counter(
            "tasks_finished",
            TASKS_FINISHED_HELP,
            ["boefje_id", "outcome"],
            **common,
        )
        self.task_duration = prom.Histogram(
            "task_duration_seconds",
            "Time from hand-out to the worker's report (or its death), per boefje.",
            ["boefje_id"],
            buckets=DURATION_BUCKETS,
            **common,
        )
        self.workers_busy = prom.Gauge("workers_busy", "Worker processes running a task.", **common)
        self.workers_idle = prom.Gauge("workers_idle", "Worker processes waiting for a task.", **common)
        self.tasks_held = prom.Gauge(
            "tasks_held", "Tasks popped and not yet handed to a worker (pushed back on shutdown).", **common
        )
        # Computed when scraped, so it keeps growing while nothing happens (an idle pool sends no events).
        self._clock = clock
        self._last_task = clock()
        self.seconds_since_last_task = prom.Gauge(
            "seconds_since_last_task",
            "Seconds since a task last finished (since the pool started if none did); for scaling in idle replicas.",
            **common,
        )
        self.seconds_since_last_task.set_function(lambda: self._clock() - self._last_task)
        self.api_errors = prom.Counter(
            "api_errors", "Failed Boefje API requests of the supervisor, by endpoint.", ["endpoint"], **common
        )
        self.worker_restarts = prom.Counter(
            "worker_restarts",
            "Worker process exits other than a clean shutdown stop, by reason "
            "(recycled: max tasks or memory; died; killed: by the pool or a SIGTERM; startup; broken); "
            "while running, the pool replaces each.",
            ["reason"],
            **common,
        )

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (serve with :attr:`content_type`)."""
        return self._render(self.registry)

    # -- PoolEvents ------------------------------------------------------------------------------

    def task_started(self, boefje_id: str) -> None:
        self.tasks_started.labels(boefje_id=boefje_id).inc()

    def task_finished(self, boefje_id: str, outcome: str, duration: float) -> None:
        self.tasks_finished.labels(boefje_id=boefje_id, outcome=outcome).inc()
        self._last_task = self._clock()
        self.task_duration.labels(boefje_id=boefje_id).observe(max(0.0, duration))

    def workers_changed(self, busy: int, idle: int) -> None:
        self.workers_busy.set(busy)
        self.workers_idle.set(idle)

    def held_changed(self, held: int) -> None:
        self.tasks_held.set(held)

    def api_error(self, endpoint: str) -> None:
        self.api_errors.labels(endpoint=endpoint).inc()

    def worker_exited(self, reason: str) -> None:
        self.worker_restarts.labels(reason=reason).inc()
