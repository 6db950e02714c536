"""``BoefjeAPIServer``: a real HTTP Boefje API on 127.0.0.1 for tests, benchmarks and demos.

It speaks every endpoint of the protocol with the real services' semantics (pop dispatches, input
and output answer 403 unless the task is running, the output closes the task, PATCH is unguarded),
so a worker is tested against HTTP, not a mock. It also records what happened (status history,
outputs, requests) and injects faults per endpoint (error statuses, delays, dropped connections,
malformed bodies) for chaos tests.

Standard library only: it must start in milliseconds and serve ~1000+ requests per second on a
keep-alive connection, without pulling in the client's dependencies. The filter on pop is
evaluated by :func:`boefje_runtime.filters.evaluate`, the same evaluator the worker uses.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import copy
import itertools
import json
import random
import re
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .._http_server import StoppableHTTPServer
from ..errors import ParseError
from ..filters import check_filters, evaluate
from ..models import BoefjeOutput, Task, TaskStatus

#: Endpoint names, as used by :meth:`BoefjeAPIServer.inject` and :meth:`BoefjeAPIServer.request_counts`.
ENDPOINTS = ("pop", "push", "patch", "get", "input", "output", "health")
#: Queues the scheduler knows; any other ``{queue}`` answers 404, as the real scheduler does.
QUEUES = ("boefje", "normalizer")
POP_MODES = ("limit", "dedup", "single")
STATUSES = frozenset(status.value for status in TaskStatus)
DEFAULT_MAX_BODY = 256 * 1024 * 1024
#: What a ``malformed=True`` fault answers: truncated JSON.
MALFORMED_BODY = b'{"results": [{"id": '

_ROUTES = (
    # (method, pattern, endpoint); the tasks routes first, so "tasks" is never read as a queue name.
    ("PATCH", re.compile(r"/api/v0/scheduler/tasks/(?P<id>[^/]+)"), "patch"),
    ("GET", re.compile(r"/api/v0/scheduler/tasks/(?P<id>[^/]+)"), "get"),
    ("POST", re.compile(r"/api/v0/scheduler/(?P<queue>[^/]+)/pop"), "pop"),
    ("POST", re.compile(r"/api/v0/scheduler/(?P<queue>[^/]+)/push"), "push"),
    ("GET", re.compile(r"/api/v0/tasks/(?P<id>[^/]+)"), "input"),
    ("POST", re.compile(r"/api/v0/tasks/(?P<id>[^/]+)"), "output"),
    ("GET", re.compile(r"/healthz"), "health"),
)


class _Reply(Exception):
    """Raised inside a handler to answer an error status with ``{"detail": ...}``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Fault:
    """One injected fault; see :meth:`BoefjeAPIServer.inject`. ``remaining`` None means forever."""

    endpoint: str
    remaining: int | None = 1
    status: int | None = None
    delay: float | None = None
    drop: bool | str = False
    malformed: bool = False
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    @property
    def answers(self) -> bool:
        """True when this fault replaces the real answer (so the request has no effect)."""
        return self.status is not None or self.malformed or self.body is not None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it. ``status`` is None when the connection was dropped."""

    method: str
    path: str
    endpoint: str
    status: int | None
    time: float


@dataclass
class _Entry:
    task: dict[str, Any]
    queue: str
    history: list[str] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _priority(task: Mapping[str, Any]) -> int:
    value = task.get("priority")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class BoefjeAPIServer:
    """The test Boefje API. Use as ``with BoefjeAPIServer() as api:`` or ``start()`` / ``stop()``.

    ``pop_mode`` decides what a pop with ``limit > 1`` answers: ``"limit"`` up to ``limit`` matching
    tasks; ``"dedup"`` like OpenKAT's scheduler, the first matching task plus queued matching tasks
    sharing its top-level ``deduplication_key``; ``"single"`` one task at most, whatever the limit.
    ``results_envelope`` answers pops as the scheduler does (``{"results": [...]}``) instead of
    as OpenKAT's proxy does (a list). Queue order: priority ascending, then enqueue order.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        pop_mode: str = "limit",
        results_envelope: bool = False,
        max_body: int = DEFAULT_MAX_BODY,
        log_size: int = 100_000,
    ) -> None:
        if pop_mode not in POP_MODES:
            raise ValueError(f"pop_mode must be one of {', '.join(POP_MODES)}, not {pop_mode!r}")
        self.host = host
        self._port = port
        self.pop_mode = pop_mode
        self.results_envelope = results_envelope
        self.max_body = max_body
        #: Tracebacks of bugs in the server itself (each also answered 500); tests may assert it is empty.
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._queues: dict[str, list[tuple[int, int, str]]] = {name: [] for name in QUEUES}
        self._queued_at: dict[str, tuple[int, int, str]] = {}
        self._seq = itertools.count()
        self._counts: Counter[str] = Counter()
        self._log: deque[RequestRecord] = deque(maxlen=log_size)
        self._faults: list[Fault] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> BoefjeAPIServer:
        """Bind and serve in a daemon thread. After :meth:`stop`, binds the same port again."""
        if self._httpd is not None:
            return self
        httpd = _bind(self.host, self._port)
        httpd.api = self
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve, name=f"boefje-api:{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection, like a real API going down.

        Recorded state (tasks, history, outputs, counts) is kept, so a later :meth:`start` resumes it.
        """
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.wake_and_stop()
        if thread is not None:
            thread.join(timeout=5)
        httpd.server_close()
        httpd.close_connections()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def __enter__(self) -> BoefjeAPIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000`` (a wildcard bind is reached via 127.0.0.1)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    # -- seeding and inspection ------------------------------------------------------------------

    def enqueue(self, task_or_tasks: Any, *, queue: str = "boefje") -> str | list[str]:
        """Put tasks on ``queue`` (status ``queued``). Accepts dicts (see :func:`make_task`),
        objects with ``to_dict()``, or a list of either; returns the id or the list of ids.

        Tasks are stored as given, without validation, so tests can serve malformed tasks.
        A task without a usable ``id`` gets an internal one (returned), not written into the task.
        """
        if queue not in self._queues:
            raise ValueError(f"unknown queue {queue!r}; known: {', '.join(QUEUES)}")
        if isinstance(task_or_tasks, (list, tuple)):
            return [self._enqueue_one(item, queue) for item in task_or_tasks]
        return self._enqueue_one(task_or_tasks, queue)

    def _enqueue_one(self, item: Any, queue: str) -> str:
        # A deep copy: a test changing its dict afterwards must not change what the server serves.
        task = copy.deepcopy(dict(item.to_dict() if hasattr(item, "to_dict") else item))
        task_id = task.get("id")
        if not isinstance(task_id, str) or not task_id:
            task_id = str(uuid.uuid4())
        with self._lock:
            self._store(task_id, task, queue)
        return task_id

    def task(self, task_id: str) -> dict[str, Any]:
        """A copy of the task as stored now (with its current status). KeyError when unknown."""
        with self._lock:
            return copy.deepcopy(self._entries[task_id].task)

    def status(self, task_id: str) -> str:
        with self._lock:
            return self._entries[task_id].task.get("status")

    def set_status(self, task_id: str, status: str) -> None:
        """Set a status as a PATCH would (unguarded), without a request being counted."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._lock:
            if task_id not in self._entries:
                raise KeyError(task_id)
            self._set_status(task_id, status)

    def history(self, task_id: str) -> list[str]:
        """Every status the task was given, in order, starting with ``queued``; one entry per set,
        so a repeated PATCH shows as a repeat."""
        with self._lock:
            return list(self._entries[task_id].history)

    def outputs(self, task_id: str) -> list[dict[str, Any]]:
        """Every accepted output: ``{"status": "COMPLETED", "files": [{"name", "content": bytes, "tags"}]}``."""
        with self._lock:
            return copy.deepcopy(self._entries[task_id].outputs)

    def files(self, task_id: str) -> list[dict[str, Any]]:
        """The files of the last accepted output (``[]`` when none came)."""
        outputs = self.outputs(task_id)
        return outputs[-1]["files"] if outputs else []

    def statuses(self) -> dict[str, str]:
        """Every task id with its current status."""
        with self._lock:
            return {task_id: entry.task.get("status") for task_id, entry in self._entries.items()}

    def queued_count(self, queue: str | None = None) -> int:
        with self._lock:
            if queue is None:
                return len(self._queued_at)
            return len(self._queues[queue])

    def request_counts(self) -> dict[str, int]:
        """Requests per endpoint name (``"unknown"`` for paths that are not an endpoint)."""
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self._log.clear()

    def request_log(self) -> list[RequestRecord]:
        """The most recent requests (up to ``log_size``), oldest first."""
        with self._lock:
            return list(self._log)

    def reset(self) -> None:
        """Forget every task, output, count and fault, keeping the server running."""
        with self._lock:
            self._entries.clear()
            self._queued_at.clear()
            for entries in self._queues.values():
                entries.clear()
            self._counts.clear()
            self._log.clear()
            self._faults.clear()
            self.errors.clear()

    def wait_for(
        self,
        predicate: Callable[[BoefjeAPIServer], Any],
        timeout: float = 10.0,
        interval: float = 0.01,
        *,
        description: str | None = None,
    ) -> None:
        """Poll ``predicate(server)`` until it is true; TimeoutError (saying what was awaited and
        what the server holds) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                what = description or getattr(predicate, "__name__", repr(predicate))
                summary = dict(Counter(self.statuses().values()))
                raise TimeoutError(
                    f"timed out after {timeout} s waiting for {what}; task statuses: {summary}; "
                    f"requests: {self.request_counts()}"
                )
            time.sleep(interval)

    def wait_for_status(
        self,
        ids: str | Iterable[str],
        statuses: str | Iterable[str] = frozenset({"completed", "failed"}),
        timeout: float = 10.0,
    ) -> dict[str, str]:
        """Wait until every task in ``ids`` has one of ``statuses``; returns their statuses."""
        wanted = {statuses} if isinstance(statuses, str) else set(statuses)
        id_list = [ids] if isinstance(ids, str) else list(ids)
        for task_id in id_list:
            self.status(task_id)  # KeyError now for an unknown id, rather than a timeout later

        def all_reached(server: BoefjeAPIServer) -> bool:
            current = server.statuses()
            return all(current[task_id] in wanted for task_id in id_list)

        try:
            self.wait_for(all_reached, timeout, description=f"{len(id_list)} task(s) to reach {sorted(wanted)}")
        except TimeoutError as exc:
            current = self.statuses()
            late = {task_id: current[task_id] for task_id in id_list if current[task_id] not in wanted}
            shown = dict(itertools.islice(late.items(), 10))
            raise TimeoutError(f"{exc}; not there yet ({len(late)}): {shown}") from None
        current = self.statuses()
        return {task_id: current[task_id] for task_id in id_list}

    # -- fault injection ---------------------------------------------------------------------------

    def inject(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        times: int | None = 1,
        delay: float | None = None,
        drop: bool | str = False,
        malformed: bool = False,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Make the next ``times`` requests to ``endpoint`` (a name of :data:`ENDPOINTS`, or ``"*"``
        for all) misbehave; ``times=None`` keeps the fault until :meth:`clear_faults`.

        - ``delay``: sleep that long first, then go on (with the other fault, or normally).
        - ``status`` (with optional ``headers``, e.g. ``{"Retry-After": "1"}``): answer it instead.
        - ``malformed=True``: answer 200 (or ``status``) with truncated JSON; ``body``: with these bytes.
        - ``drop=True`` (or ``"before"``): close the connection without answering, before the
          request has any effect. ``drop="after"``: handle the request (a pop dispatches its tasks,
          an output closes its task), then close without answering: a lost response.

        Answering and dropping faults skip the request's effect, except ``drop="after"``.
        Faults are used in the order injected.
        """
        if endpoint != "*" and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; known: {', '.join(ENDPOINTS)} or '*'")
        if drop not in (False, True, "before", "after"):
            raise ValueError(f"drop must be True, 'before' or 'after', not {drop!r}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for forever)")
        if status is None and delay is None and not drop and not malformed and body is None:
            raise ValueError("inject needs one of status, delay, drop, malformed or body")
        fault = Fault(
            endpoint=endpoint,
            remaining=times,
            status=status,
            delay=delay,
            drop="before" if drop is True else drop,
            malformed=malformed,
            body=body.encode() if isinstance(body, str) else body,
            headers={key: str(value) for key, value in (headers or {}).items()},
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, endpoint: str) -> Fault | None:
        """Count the request and hand out the first fault that applies (caller holds the lock)."""
        for fault in self._faults:
            if fault.endpoint in (endpoint, "*"):
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return fault
        return None

    # -- state changes (caller holds the lock) -----------------------------------------------------

    def _store(self, task_id: str, task: dict[str, Any], queue: str) -> None:
        task["status"] = "queued"
        entry = self._entries.get(task_id)
        if entry is None:
            self._entries[task_id] = _Entry(task=task, queue=queue, history=["queued"])
        else:
            self._unqueue(task_id)
            entry.task, entry.queue = task, queue
            entry.history.append("queued")
        key = (_priority(task), next(self._seq), task_id)
        bisect.insort(self._queues[queue], key)
        self._queued_at[task_id] = key

    def _unqueue(self, task_id: str) -> None:
        key = self._queued_at.pop(task_id, None)
        if key is not None:
            entries = self._queues[self._entries[task_id].queue]
            del entries[bisect.bisect_left(entries, key)]

    def _set_status(self, task_id: str, status: str) -> None:
        entry = self._entries[task_id]
        if status == "queued":
            if task_id not in self._queued_at:  # a PATCH to queued on a queued task keeps its place
                key = (_priority(entry.task), next(self._seq), task_id)
                bisect.insort(self._queues[entry.queue], key)
                self._queued_at[task_id] = key
        else:
            self._unqueue(task_id)
        entry.task["status"] = status
        entry.task["modified_at"] = _now()
        entry.history.append(status)

    # -- endpoints: (status, payload) from parsed input -------------------------------------------

    def _pop(self, queue: str, limit: int, filters: Any) -> list[dict[str, Any]]:
        if self.pop_mode == "single":
            limit = 1
        with self._lock:
            if queue not in self._queues:
                raise _Reply(404, f"Scheduler {queue!r} not found")
            chosen: list[str] = []
            key = None
            for _, _, task_id in self._queues[queue]:
                task = self._entries[task_id].task
                if chosen and self.pop_mode == "dedup" and task.get("deduplication_key") != key:
                    continue
                if not evaluate(filters, task):
                    continue
                chosen.append(task_id)
                if len(chosen) >= limit:
                    break
                if self.pop_mode == "dedup" and len(chosen) == 1:
                    key = task.get("deduplication_key")
                    if not isinstance(key, str) or not key:
                        break  # no key: the scheduler answers a single task
            # Answer each task as it was before dispatching, as OpenKAT's proxy does ("queued").
            # Shallow copies suffice: stored tasks are only ever changed at the top level.
            answer = [dict(self._entries[task_id].task) for task_id in chosen]
            for task_id in chosen:
                self._set_status(task_id, "dispatched")
        return answer

    def _push(self, queue: str, body: Any) -> dict[str, Any]:
        try:
            Task.from_dict(body)
        except ParseError as exc:
            raise _Reply(422, str(exc)) from None
        with self._lock:
            if queue not in self._queues:
                raise _Reply(404, f"Scheduler {queue!r} not found")
            task = dict(body)
            self._store(task["id"], task, queue)
            return dict(task)

    def _patch(self, task_id: str, body: Any) -> dict[str, Any]:
        status = body.get("status") if isinstance(body, Mapping) else None
        if status not in STATUSES:
            raise _Reply(422, f"status: expected one of {', '.join(sorted(STATUSES))}, got {status!r}")
        with self._lock:
            if task_id not in self._entries:
                raise _Reply(404, f"Task {task_id} not found")
            self._set_status(task_id, status)
            return dict(self._entries[task_id].task)

    def _get(self, task_id: str) -> dict[str, Any]:
        with self._lock:
            if task_id not in self._entries:
                raise _Reply(404, f"Task {task_id} not found")
            return dict(self._entries[task_id].task)

    def _running_entry(self, task_id: str) -> _Entry:
        entry = self._entries.get(task_id)
        if entry is None:
            raise _Reply(404, f"Task {task_id} not found")
        if entry.task.get("status") != "running":
            raise _Reply(403, f"Task {task_id} is not running (status: {entry.task.get('status')})")
        return entry

    def _input(self, task_id: str, base_url: str) -> dict[str, Any]:
        with self._lock:
            task = dict(self._running_entry(task_id).task)
        return {"task": task, "output_url": f"{base_url}/api/v0/tasks/{task_id}"}

    def _output(self, task_id: str, body: Any) -> dict[str, str]:
        try:
            output = BoefjeOutput.from_dict(body)
            files = [
                {"name": f.name, "content": _b64decode(f.content, f"output.files[{i}].content"), "tags": f.tags}
                for i, f in enumerate(output.files)
            ]
        except ParseError as exc:
            raise _Reply(422, str(exc)) from None
        with self._lock:
            entry = self._running_entry(task_id)  # checked and closed under one lock: accepted once
            entry.outputs.append({"status": output.status.value, "files": files})
            self._set_status(task_id, "completed" if output.status.value == "COMPLETED" else "failed")
        return {item["name"]: str(uuid.uuid4()) for item in files}

    def _dispatch(self, endpoint: str, params: dict[str, str], query: dict[str, list[str]], body: Any,
                  base_url: str) -> Any:
        if endpoint == "health":
            return "OK"
        if endpoint == "pop":
            tasks = self._pop(params["queue"], _limit(query), _pop_filters(body))
            if self.results_envelope:  # the scheduler's own paginated answer
                return {"count": len(tasks), "next": None, "previous": None, "results": tasks}
            return tasks
        if endpoint == "push":
            return self._push(params["queue"], _required(body))
        if endpoint == "patch":
            return self._patch(params["id"], _required(body))
        if endpoint == "get":
            return self._get(params["id"])
        if endpoint == "input":
            return self._input(params["id"], base_url)
        return self._output(params["id"], _required(body))

    def _record(self, method: str, path: str, endpoint: str, status: int | None) -> None:
        with self._lock:
            self._log.append(RequestRecord(method, path, endpoint, status, time.time()))


_NO_BODY = object()
_BAD_JSON = object()


def _required(body: Any) -> Any:
    if body is _NO_BODY:
        raise _Reply(422, "body: a JSON body is required")
    if body is _BAD_JSON:
        raise _Reply(422, "body: not valid JSON")
    return body


def _pop_filters(body: Any) -> Any:
    """The pop body must be there (OpenKAT answers 422 without one): ``{"filters": ...}``."""
    body = _required(body)
    if not isinstance(body, Mapping):
        raise _Reply(422, "body: expected an object with 'filters'")
    filters = body.get("filters")
    try:
        check_filters(filters)
    except ParseError as exc:
        raise _Reply(422, str(exc)) from None
    return filters


def _limit(query: dict[str, list[str]]) -> int:
    values = query.get("limit") or ["1"]
    try:
        limit = int(values[-1])
    except ValueError:
        limit = 0
    if limit < 1:
        raise _Reply(422, f"limit: expected a positive integer, got {values[-1]!r}")
    return limit


def _b64decode(text: str, path: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(path, "not valid base64") from None


def _route(method: str, path: str) -> tuple[str, dict[str, str], int | None]:
    """(endpoint, path parameters, error status): 404 for an unknown path, 405 for a wrong method."""
    path_known = False
    for route_method, pattern, endpoint in _ROUTES:
        match = pattern.fullmatch(path)
        if match:
            path_known = True
            if route_method == method:
                return endpoint, {k: unquote(v) for k, v in match.groupdict().items()}, None
    return "unknown", {}, 405 if path_known else 404


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bind(host: str, port: int) -> _HTTPServer:
    """Bind ``port``; for port 0 prefer a free port *below* the kernel's ephemeral range.

    A restarted server must get its port back, but while it is down, clients retrying against a
    port inside the ephemeral range can be handed that very port as their own source port and
    connect to themselves (TCP simultaneous open), holding it. Ports below the range are never
    handed out that way.
    """
    if port:
        return _HTTPServer((host, port), _Handler)
    floor = _ephemeral_floor()
    for candidate in random.sample(range(max(1024, floor - 12000), floor), 20):
        try:
            return _HTTPServer((host, candidate), _Handler)
        except OSError:
            continue
    return _HTTPServer((host, 0), _Handler)


class _HTTPServer(StoppableHTTPServer):
    """Tracks open connections so ``stop()`` can cut them, like a real outage."""

    request_queue_size = 128
    api: BoefjeAPIServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer (or stop() cutting it) is normal in tests: stay quiet.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; buffered writes so headers and body leave in one segment."""

    protocol_version = "HTTP/1.1"
    server_version = "boefje-runtime-test-api"
    sys_version = ""
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # handle_one_request flushes after every request
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # no per-request stderr noise
        pass

    def handle_expect_100(self) -> bool:
        answer = super().handle_expect_100()
        self.wfile.flush()  # the buffered writer would otherwise hold "100 Continue" back
        return answer

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        super().send_error(code, message, explain)
        self.wfile.flush()

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        api = self.server.api
        parts = urlsplit(self.path)
        endpoint, params, route_error = _route(method, parts.path)
        with api._lock:
            api._counts[endpoint] += 1
            fault = api._take_fault(endpoint) if route_error is None else None
        status, payload, raw, headers = self._answer(api, method, endpoint, params, parts.query, route_error, fault)
        if status is None:
            self.close_connection = True  # dropped: the client sees the connection close unanswered
        else:
            self._send(status, payload, raw, headers)
        api._record(method, parts.path, endpoint, status)

    def _answer(self, api: BoefjeAPIServer, method: str, endpoint: str, params: dict[str, str], query: str,
                route_error: int | None, fault: Fault | None) -> tuple[int | None, Any, bytes | None, dict]:
        """(status, JSON payload, raw body, headers); status None means drop the connection."""
        try:
            body = self._read_body(api.max_body)
        except _Reply as reply:
            self.close_connection = True  # the unread body would be taken for the next request
            return reply.status, {"detail": reply.detail}, None, {}
        if route_error is not None:
            return route_error, {"detail": "Not Found" if route_error == 404 else "Method Not Allowed"}, None, {}
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop == "before":
                return None, None, None, {}
            if fault.answers:
                raw = fault.body if fault.body is not None else MALFORMED_BODY if fault.malformed else None
                payload = {"detail": f"injected fault ({fault.status})"}
                return fault.status or 200, payload, raw, fault.headers
        try:
            payload = api._dispatch(endpoint, params, parse_qs(query), body, self._base_url(api))
            status = 200
        except _Reply as reply:
            status, payload = reply.status, {"detail": reply.detail}
        except Exception:  # a bug in this server: answer 500 and keep it for the test to see
            api.errors.append(traceback.format_exc())
            status, payload = 500, {"detail": "test API internal error (see BoefjeAPIServer.errors)"}
        if fault is not None and fault.drop == "after":
            return None, None, None, {}
        return status, payload, None, {}

    def _base_url(self, api: BoefjeAPIServer) -> str:
        # The Host the client used, so output_url is reachable the way the input was (e.g. in Docker).
        host = self.headers.get("Host")
        return f"http://{host}" if host else api.url

    def _read_body(self, max_body: int) -> Any:
        """The decoded JSON body, or the _NO_BODY / _BAD_JSON markers."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = self._read_chunked(max_body)
        else:
            length = self.headers.get("Content-Length")
            if length is None:
                return _NO_BODY
            if not length.isdigit():
                raise _Reply(400, "invalid Content-Length")
            if int(length) > max_body:
                raise _Reply(413, f"body larger than {max_body} bytes")
            data = self.rfile.read(int(length))
        if not data:
            return _NO_BODY
        try:
            return json.loads(data)
        except ValueError:
            return _BAD_JSON

    def _read_chunked(self, max_body: int) -> bytes:
        chunks, size = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                length = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _Reply(400, "invalid chunked encoding") from None
            if length == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            size += length
            if size > max_body:
                raise _Reply(413, f"body larger than {max_body} bytes")
            chunks.append(self.rfile.read(length))
            self.rfile.readline(1024)

    def _send(self, status: int, payload: Any, raw: bytes | None, headers: Mapping[str, str]) -> None:
        body = raw if raw is not None else json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        if self.close_connection and self.headers.get("Connection", "").lower() != "close":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
