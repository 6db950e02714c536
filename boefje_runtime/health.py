"""Liveness, readiness and metrics over HTTP, for Kubernetes probes and Prometheus scrapes.

- ``/healthz`` (liveness): 200 while the supervisor loop keeps turning; 503 once its last turn is
  older than ``stale_after`` (default ``max(3 x heartbeat, 10 s)``: the loop turns at least once
  per heartbeat, the margin covers a slow pop). Restarting the container is the cure for a stuck loop.
- ``/readyz`` (readiness): 503 while the pool drains, or while the Boefje API has failed every
  pop for longer than ``unreachable_after``; else 200. A short outage is ridden out by the pool's
  back-off, so it does not flap readiness.
- ``/metrics``: :class:`~boefje_runtime.metrics.PoolMetrics` in Prometheus' text format, or 501
  with the reason when prometheus_client is not installed.

Answers come only from what the pool's event hooks recorded (:class:`HealthState`), never from
an API call or the pool's internals, so a probe is answered at once even while the loop is stuck,
which is exactly when liveness must say so. Times are ``time.monotonic`` like the pool's ``now``.

The server is a stdlib ``ThreadingHTTPServer`` in a daemon thread of the supervisor process.
Worker processes forked later close the inherited listening socket (``close_inherited_sockets``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._http_server import StoppableHTTPServer
from .metrics import MetricsUnavailable, PoolMetrics
from .pool.events import PoolEvents

if TYPE_CHECKING:
    from .pool import WorkerPool

logger = logging.getLogger("boefje_runtime.health")

#: The liveness threshold never goes below this, so a short heartbeat does not make probes flaky.
MIN_STALE_AFTER = 10.0

TEXT = "text/plain; charset=utf-8"


def default_stale_after(heartbeat: float) -> float:
    """How old the loop's last turn may be before liveness fails: ``max(3 x heartbeat, 10 s)``."""
    return max(3 * heartbeat, MIN_STALE_AFTER)


@dataclass(frozen=True)
class Verdict:
    """A probe's answer: healthy or not, and a short reason for whoever reads the body."""

    ok: bool
    reason: str

    @property
    def status(self) -> int:
        return 200 if self.ok else 503

    def body(self) -> bytes:
        return f"{'ok' if self.ok else 'unavailable'}: {self.reason}\n".encode()


class HealthState(PoolEvents):
    """Liveness and readiness, kept from the pool's events; pure, with an injectable clock.

    No lock: each fact is one attribute, written only by the supervisor loop and read by request
    threads, and no verdict needs two facts to agree with each other.
    """

    def __init__(
        self, *, stale_after: float, unreachable_after: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stale_after = stale_after
        self.unreachable_after = unreachable_after
        self._clock = clock
        # Before the first turn, liveness counts from here: a loop that never starts fails too.
        self._created = clock()
        self._last_turn: float | None = None
        self._unreachable_since: float | None = None
        self._draining = False

    def loop_turned(self, now: float) -> None:
        self._last_turn = now

    def api_reachable(self, reachable: bool, now: float) -> None:
        if reachable:
            self._unreachable_since = None
        elif self._unreachable_since is None:
            self._unreachable_since = now  # the outage began at the first failure, not the latest

    def draining(self) -> None:
        self._draining = True

    def liveness(self, now: float | None = None) -> Verdict:
        now = self._clock() if now is None else now
        last = self._last_turn
        if last is None:
            waited = now - self._created
            if waited > self.stale_after:
                return Verdict(False, f"the supervisor loop has not turned in {waited:.1f} s since start")
            return Verdict(True, "starting: waiting for the supervisor loop's first turn")
        age = now - last
        if age > self.stale_after:
            return Verdict(False, f"the supervisor loop last turned {age:.1f} s ago (limit {self.stale_after:g} s)")
        return Verdict(True, f"the supervisor loop turned {age:.1f} s ago")

    def readiness(self, now: float | None = None) -> Verdict:
        now = self._clock() if now is None else now
        if self._draining:
            return Verdict(False, "draining: the pool is shutting down and pops no more tasks")
        since = self._unreachable_since
        if since is None:
            return Verdict(True, "ready")
        down = now - since
        if down > self.unreachable_after:
            return Verdict(
                False, f"the Boefje API has been unreachable for {down:.1f} s (limit {self.unreachable_after:g} s)"
            )
        return Verdict(True, f"ready; the Boefje API has been failing for {down:.1f} s")


class OperatorServer:
    """The HTTP endpoint serving ``/healthz``, ``/readyz`` and ``/metrics``.

    Binds in the constructor (so a taken port fails there, with ``OSError``); :meth:`start`
    serves in a daemon thread, :meth:`close` stops at once and frees the port. Usually built by
    :func:`attach_operator_endpoints`.
    """

    def __init__(
        self,
        health: HealthState,
        metrics: PoolMetrics | None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        metrics_problem: str = "metrics are not enabled",
    ) -> None:
        self.health = health
        self.metrics = metrics
        self.metrics_problem = metrics_problem
        self.host = host
        self._httpd = _HTTPServer((host, port), self.answer)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9090`` (a wildcard bind is reached via loopback)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self) -> OperatorServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve, name=f"boefje-health:{self.port}", daemon=True)
            self._thread.start()
            logger.info("Serving /healthz, /readyz and /metrics on %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving and free the port. The hooks stay attached (they are cheap and harmless)."""
        self._httpd.wake_and_stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> OperatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a GET of ``path`` (no I/O, so tests may call it directly)."""
        if path == "/healthz":
            verdict = self.health.liveness()
            return verdict.status, TEXT, verdict.body()
        if path == "/readyz":
            verdict = self.health.readiness()
            return verdict.status, TEXT, verdict.body()
        if path == "/metrics":
            if self.metrics is None:
                return 501, TEXT, f"{self.metrics_problem}\n".encode()
            return 200, self.metrics.content_type, self.metrics.exposition()
        return 404, TEXT, b"not found: try /healthz, /readyz or /metrics\n"


def attach_operator_endpoints(
    pool: WorkerPool,
    host: str,
    port: int,
    *,
    unreachable_after: float = 30.0,
    stale_after: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> OperatorServer:
    """Hook health state and metrics into ``pool`` and serve them on ``host:port`` (0: ephemeral).

    Call before ``pool.run()``/``start()``, so the listeners are in place before the loop first
    iterates over them. ``stale_after`` defaults to :func:`default_stale_after` of the pool's
    heartbeat; ``clock`` must be the pool's clock (both default to ``time.monotonic``).
    Raises ``OSError`` when the address cannot be bound, before anything is attached.
    """
    if stale_after is None:
        stale_after = default_stale_after(pool.settings.heartbeat)
    health = HealthState(stale_after=stale_after, unreachable_after=unreachable_after, clock=clock)
    metrics: PoolMetrics | None
    try:
        metrics, problem = PoolMetrics(), ""
    except MetricsUnavailable as exc:
        metrics, problem = None, str(exc)
        logger.warning("%s; /metrics will answer 501", problem)
    server = OperatorServer(health, metrics, host, port, metrics_problem=problem)
    pool.listeners.append(health)
    if metrics is not None:
        pool.listeners.append(metrics)
    return server.start()


# -- HTTP plumbing --------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "boefje-runtime"
    #: A client that stalls mid-request gives up its thread after this, instead of holding it.
    timeout = 10

    def do_GET(self) -> None:
        self._reply(with_body=True)

    def do_HEAD(self) -> None:
        self._reply(with_body=False)

    def _reply(self, with_body: bool) -> None:
        try:
            status, content_type, body = self.server.answer(urlsplit(self.path).path)
        except Exception:  # a bug in an answer must not cost the probe its response
            logger.exception("Health endpoint failed to answer %s", self.path)
            status, content_type, body = 500, TEXT, b"internal error; see the runtime's log\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes arrive every few seconds: an access log at INFO would drown the task logs.
        logger.debug("%s %s", self.address_string(), format % args)


class _HTTPServer(StoppableHTTPServer):
    """The operator endpoint's server: hands every path to ``answer``."""

    def __init__(self, address: tuple[str, int], answer: Callable[[str], tuple[int, str, bytes]]) -> None:
        self.answer = answer
        super().__init__(address, _Handler)
