"""``BoefjeAPIServer``: a real HTTP Boefje API on 127.0.0.1 for tests, benchmarks and demos.

It speaks every endpoint of the protocol with the real services' semantics (pop dispatches, input
and output answer 403 unless the task is running, the output closes the task, PATCH is unguarded),
so a worker is tested against HTTP, not a mock. It also records what happened (status history,
outputs, requests) and injects faults per endpoint (error statuses, delays, dropped connections,
malformed bodies) for chaos tests.

This module is the server's face: its lifecycle, seeding and inspection, fault injection and the
one lock. The work is done by role: :mod:`.store` (tasks, queues and the endpoints' rules),
:mod:`.parsing` (request bodies and queries), :mod:`.faults` (faults and request records) and
:mod:`.transport` (HTTP). The filter on pop is evaluated by :func:`boefje_runtime.filters.evaluate`,
the same evaluator the worker uses.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .explain import TaskAssertions
from .faults import ENDPOINTS, MALFORMED_BODY, Fault, RequestRecord, make_fault, take_fault
from .parsing import STATUSES, _limit, _output_record, _patch_status, _pop_filters, _pushed_task, _Reply, _required
from .report import task_report
from .store import QUEUES, TaskStore
from .transport import _bind, _Gone, _HTTPServer

# Fault, RequestRecord and the constants stay importable from here, where they always were.
__all__ = ["DEFAULT_MAX_BODY", "ENDPOINTS", "MALFORMED_BODY", "POP_MODES", "QUEUES", "STATUSES",
           "BoefjeAPIServer", "Fault", "RequestRecord"]

#: What a pop answers; the first, ``mula``, is the real scheduler's and the default.
POP_MODES = ("mula", "limit", "dedup", "single")
DEFAULT_MAX_BODY = 256 * 1024 * 1024


class BoefjeAPIServer(TaskAssertions):
    """The test Boefje API. Use as ``with BoefjeAPIServer() as api:`` or ``start()`` / ``stop()``.

    ``pop_mode`` decides what a pop answers (protocol.md, "Filters on pop"):

    - ``"mula"`` (default), as OpenKAT's scheduler (mula's ``pop_boefje``): when any matching task
      has a ``deduplication_key`` (top-level or in ``data``), the tasks sharing the first such key
      (queue order), up to ``limit``, even when keyless tasks are older; otherwise exactly one task,
      whatever the limit. Like OpenKAT's Boefje API, the answer lacks the keys, unless
      ``strip_dedup_keys=False``.
    - ``"limit"``: up to ``limit`` matching tasks, related or not: a scheduler that honours the limit,
      which a worker must not hoard from.
    - ``"dedup"``: the first matching task plus the later ones sharing its key, keys visible (an
      older, simpler reading of mula, kept for the tests written against it).
    - ``"single"``: one task at most, whatever the limit.

    ``results_envelope`` answers pops as the scheduler does (``{"results": [...]}``) instead of
    as OpenKAT's proxy does (a list). Queue order: priority ascending, then enqueue order.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        pop_mode: str = "mula",
        strip_dedup_keys: bool = True,
        results_envelope: bool = False,
        max_body: int = DEFAULT_MAX_BODY,
        log_size: int = 100_000,
    ) -> None:
        if pop_mode not in POP_MODES:
            raise ValueError(f"pop_mode must be one of {', '.join(POP_MODES)}, not {pop_mode!r}")
        self.host = host
        self._port = port
        self.pop_mode = pop_mode
        self.strip_dedup_keys = strip_dedup_keys
        self.results_envelope = results_envelope
        self.max_body = max_body
        #: Tracebacks of bugs in the server itself (each also answered 500); tests may assert it is empty.
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._tasks = TaskStore()  # used under _lock only
        self._counts: Counter[str] = Counter()
        self._log: deque[RequestRecord] = deque(maxlen=log_size)
        self._faults: list[Fault] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: Between start() and stop(); changed and read under _lock (see _pop).
        self._serving = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> BoefjeAPIServer:
        """Bind and serve in a daemon thread. After :meth:`stop`, binds the same port again."""
        if self._httpd is not None:
            return self
        httpd = _bind(self.host, self._port)
        httpd.api = self
        self._port = httpd.server_address[1]
        self._httpd = httpd
        with self._lock:
            self._serving = True
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
        with self._lock:  # from here no pop hands out a task (see _pop)
            self._serving = False
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
        if queue not in self._tasks.queues:
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
            self._tasks.store(task_id, task, queue)
        return task_id

    def task(self, task_id: str) -> dict[str, Any]:
        """A copy of the task as stored now (with its current status). KeyError when unknown."""
        with self._lock:
            return copy.deepcopy(self._tasks.entries[task_id].task)

    def status(self, task_id: str) -> str:
        with self._lock:
            return self._tasks.entries[task_id].task.get("status")

    def set_status(self, task_id: str, status: str) -> None:
        """Set a status as a PATCH would (unguarded), without a request being counted."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._lock:
            if task_id not in self._tasks.entries:
                raise KeyError(task_id)
            self._tasks.set_status(task_id, status)

    def history(self, task_id: str) -> list[str]:
        """Every status the task was given, in order, starting with ``queued``; one entry per set,
        so a repeated PATCH shows as a repeat."""
        with self._lock:
            return list(self._tasks.entries[task_id].history)

    def outputs(self, task_id: str) -> list[dict[str, Any]]:
        """Every accepted output: ``{"status": "COMPLETED", "files": [{"name", "content": bytes, "tags"}]}``."""
        with self._lock:
            return copy.deepcopy(self._tasks.entries[task_id].outputs)

    def files(self, task_id: str) -> list[dict[str, Any]]:
        """The files of the last accepted output (``[]`` when none came)."""
        outputs = self.outputs(task_id)
        return outputs[-1]["files"] if outputs else []

    def report(self, task_id: str) -> dict[str, Any]:
        """The task as a person wants to see it (status, history, output files; see :mod:`.report`),
        as JSON; also served read-only at ``GET /test-api/tasks/{id}``. KeyError when unknown."""
        with self._lock:
            entry = self._tasks.entries[task_id]
            return task_report(copy.deepcopy(entry.task), list(entry.history), copy.deepcopy(entry.outputs))

    def statuses(self) -> dict[str, str]:
        """Every task id with its current status."""
        with self._lock:
            return {task_id: entry.task.get("status") for task_id, entry in self._tasks.entries.items()}

    def queued_count(self, queue: str | None = None) -> int:
        with self._lock:
            if queue is None:
                return len(self._tasks.queued_at)
            return len(self._tasks.queues[queue])

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
            self._tasks.clear()
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
        gzip_bomb: int | None = None,
    ) -> Fault:
        """Make the next ``times`` requests to ``endpoint`` (a name of :data:`ENDPOINTS`, or ``"*"``
        for all) misbehave; ``times=None`` keeps the fault until :meth:`clear_faults`.

        - ``delay``: sleep that long first, then go on (with the other fault, or normally).
        - ``status`` (with optional ``headers``, e.g. ``{"Retry-After": "1"}``): answer it instead.
        - ``malformed=True``: answer 200 (or ``status``) with truncated JSON; ``body``: with these bytes.
        - ``drop=True`` (or ``"before"``): close the connection without answering, before the
          request has any effect. ``drop="after"``: handle the request (a pop dispatches its tasks,
          an output closes its task), then close without answering: a lost response.
        - ``gzip_bomb=N``: send the answer (the real one, or the injected one) gzip-encoded, padded
          with N bytes of leading whitespace: still valid JSON once decoded, but N bytes larger,
          while only about N/1000 bytes travel (``Content-Length`` is the compressed size). The
          request has its effect unless another option here answers instead.

        Answering and dropping faults skip the request's effect, except ``drop="after"``.
        Faults are used in the order injected.
        """
        fault = make_fault(endpoint, status=status, times=times, delay=delay, drop=drop, malformed=malformed,
                           body=body, headers=headers, gzip_bomb=gzip_bomb)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- what the transport calls, per request ----------------------------------------------------

    def _arrival(self, endpoint: str, *, routed: bool) -> Fault | None:
        """Count the request and hand out the first fault that applies (none for an unrouted path)."""
        with self._lock:
            self._counts[endpoint] += 1
            # The inspection endpoint is not the protocol's: a "*" fault must not break `show`.
            return take_fault(self._faults, endpoint) if routed and endpoint in ENDPOINTS else None

    def _dispatch(self, endpoint: str, params: dict[str, str], query: dict[str, list[str]], body: Any,
                  base_url: str) -> Any:
        """The answer to a routed request; a refusal is raised as ``_Reply``."""
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
        if endpoint == "report":
            return self._report(params["id"])
        return self._output(params["id"], _required(body))

    # One method per endpoint, so a subclass or a test can watch or break one (the benchmarks count
    # empty pops). Bodies are checked before taking the lock: a big output never holds up the rest.

    def _pop(self, queue: str, limit: int, filters: Any) -> list[dict[str, Any]]:
        with self._lock:
            if not self._serving:
                # stop() came while this request was being read: its connection is cut, so nobody
                # would receive the tasks. A stopped API process hands out none either; dispatching
                # them here left a task stuck dispatched after every "outage" that hit a pop.
                raise _Gone
            return self._tasks.pop(queue, limit, filters, mode=self.pop_mode, strip_keys=self.strip_dedup_keys)

    def _push(self, queue: str, body: Any) -> dict[str, Any]:
        task = _pushed_task(body)
        with self._lock:
            return self._tasks.push(queue, task)

    def _patch(self, task_id: str, body: Any) -> dict[str, Any]:
        status = _patch_status(body)
        with self._lock:
            return self._tasks.patch(task_id, status)

    def _get(self, task_id: str) -> dict[str, Any]:
        with self._lock:
            return self._tasks.get(task_id)

    def _input(self, task_id: str, base_url: str) -> dict[str, Any]:
        with self._lock:
            task = dict(self._tasks.running(task_id).task)
        return {"task": task, "output_url": f"{base_url}/api/v0/tasks/{task_id}"}

    def _output(self, task_id: str, body: Any) -> dict[str, str]:
        output = _output_record(body)
        with self._lock:
            self._tasks.add_output(task_id, output)
        return {item["name"]: str(uuid.uuid4()) for item in output["files"]}

    def _report(self, task_id: str) -> dict[str, Any]:
        try:
            return self.report(task_id)
        except KeyError:
            raise _Reply(404, f"Task {task_id} not found") from None

    def _record(
        self, method: str, path: str, endpoint: str, status: int | None, traceparent: str | None = None
    ) -> None:
        with self._lock:
            self._log.append(RequestRecord(method, path, endpoint, status, time.time(), traceparent))
