"""``BoefjeAPIClient`` against the test Boefje API over real HTTP (no mocks of the client).

First each call's happy path, then every fault kind against the retry decision of every call, as
:mod:`boefje_runtime.retry` lays it down:

=========================================  =====================  ==================
fault                                      pop (UNSENT_ONLY)      the other calls
=========================================  =====================  ==================
429 / 503 ("not now")                      retried                retried
500 / 502 / 504                            not retried            retried
400 / 403 / 404 / 422                      not retried            not retried
dropped before processing                  not retried            retried
answer lost after processing               not retried            retried (output:
                                                                  a repeat's 403 is
                                                                  "delivered")
connection refused (never sent)            retried                retried
read timeout                               not retried            retried
malformed or oversize 200 answer           not retried            not retried
=========================================  =====================  ==================

Then request logging, extra headers, TLS settings and ``clone()``. Retries use tiny waits, so a
test that retries costs milliseconds; only the ``Retry-After`` tests wait for real (about 1 s).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from boefje_runtime.client import BoefjeAPIClient
from boefje_runtime.errors import (
    APIConnectionError,
    APIResponseError,
    APIResponseTooLarge,
    APIStatusError,
    ParseError,
)
from boefje_runtime.filters import TaskFilter
from boefje_runtime.models import BoefjeInput, BoefjeOutput, OutputFile, OutputStatus, Task, TaskStatus
from boefje_runtime.retry import NO_RETRY, RetryPolicy
from boefje_runtime.testing import BoefjeAPIServer, make_task

from .helpers import b64

#: Tiny waits so retrying tests stay fast; generous attempts and total time so they never run out.
FAST = RetryPolicy(attempts=4, total_seconds=10.0, initial_wait=0.01, max_wait=0.05)
THREE_TRIES = RetryPolicy(attempts=3, total_seconds=10.0, initial_wait=0.01, max_wait=0.05)
RETRY_NOW = {"Retry-After": "0"}
HTTP_LOGGER = "boefje_runtime.http"
IMAGE = "ghcr.io/minvws/openkat/dns:latest"


def make_client(api: BoefjeAPIServer | RecordingServer, **kwargs: Any) -> BoefjeAPIClient:
    kwargs.setdefault("timeout", 5.0)  # a hung server fails the test instead of hanging it
    kwargs.setdefault("retry", FAST)
    return BoefjeAPIClient(api.url, **kwargs)


@pytest.fixture
def client(boefje_api: BoefjeAPIServer) -> Iterator[BoefjeAPIClient]:
    with make_client(boefje_api) as api_client:
        yield api_client


def queued_task(api: BoefjeAPIServer, **kwargs: Any) -> str:
    return api.enqueue(make_task(**kwargs))


def dispatched_task(api: BoefjeAPIServer, **kwargs: Any) -> str:
    task_id = queued_task(api, **kwargs)
    api.set_status(task_id, "dispatched")
    return task_id


def running_task(api: BoefjeAPIServer, **kwargs: Any) -> str:
    task_id = dispatched_task(api, **kwargs)
    api.set_status(task_id, "running")
    return task_id


OUTPUT = BoefjeOutput(OutputStatus.COMPLETED, [OutputFile("0", b64(b"hello"), ["text/plain", "boefje/dns-records"])])


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == HTTP_LOGGER and r.getMessage().startswith("Retrying")]


def info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == HTTP_LOGGER and r.levelno == logging.INFO]


@contextlib.contextmanager
def on_retry(action: Callable[[], None]) -> Iterator[list[str]]:
    """Run ``action`` when the client announces a retry (its before-sleep log line): a hook into
    the exact moment between two tries, with no sleeping or polling in the test."""
    seen: list[str] = []

    class Hook(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Retrying"):
                seen.append(record.getMessage())
                if len(seen) == 1:
                    action()

    logger = logging.getLogger(HTTP_LOGGER)
    hook, level = Hook(logging.WARNING), logger.level
    logger.addHandler(hook)
    logger.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        logger.removeHandler(hook)
        logger.setLevel(level)


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as elapsed:`` then ``elapsed[0]`` is the block's duration in seconds."""
    elapsed: list[float] = []
    start = time.monotonic()
    try:
        yield elapsed
    finally:
        elapsed.append(time.monotonic() - start)


# -- a recording server, for what the test API does not record -----------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One canned answer. ``declared_length`` sends a Content-Length other than the body's and then
    holds the connection open; ``chunked`` streams the body without a Content-Length."""

    status: int = 200
    body: bytes = b"[]"
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None
    chunked: bool = False


@dataclass(frozen=True)
class Recorded:
    method: str
    target: str  # path and query
    headers: dict[str, str]  # lower-cased names
    body: bytes


class RecordingServer:
    """A bare HTTP/1.1 server on 127.0.0.1 recording each request's method, target, headers and
    body, and answering from a script of :class:`Answer` (then ``200 []``)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._script: list[Answer] = []
        self._lock = threading.Lock()
        self.release = threading.Event()  # lets held connections go
        self._httpd = _QuietServer(("127.0.0.1", 0), _RecordingHandler)
        self._httpd.daemon_threads = True
        self._httpd.recorder = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._closed = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def answer(self, *answers: Answer) -> None:
        with self._lock:
            self._script.extend(answers)

    def record(self, request: Recorded) -> Answer:
        with self._lock:
            self.requests.append(request)
            return self._script.pop(0) if self._script else Answer()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-answer (the size cap cuts a streamed answer short on purpose) is
    not an error worth a traceback in the test output."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        recorder: RecordingServer = self.server.recorder
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        answer = recorder.record(Recorded(self.command, self.path, headers, body))
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(answer.body), 512):
                chunk = answer.body[start : start + 512]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(answer.declared_length or len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)
        if answer.declared_length is not None:
            self.wfile.flush()
            recorder.release.wait(10)
            self.close_connection = True


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    server = RecordingServer()
    try:
        yield server
    finally:
        server.close()


# -- the call table ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One client call for the fault tables: the server state it needs, the call, where it goes,
    and what a successful call must have done."""

    name: str  # the test API's endpoint name (request_counts, inject)
    method: str
    path: str  # "{id}" is the task id
    given: Callable[[BoefjeAPIServer], str]  # sets up the server; returns the task id
    when: Callable[[BoefjeAPIClient, str], Any]
    then: Callable[[BoefjeAPIServer, str, Any], None]

    def url(self, api: BoefjeAPIServer, task_id: str) -> str:
        return api.url + self.path.format(id=task_id)

    def __str__(self) -> str:
        return self.name


def _then_popped(api: BoefjeAPIServer, task_id: str, result: Any) -> None:
    assert [task.id for task in result] == [task_id]
    assert api.status(task_id) == "dispatched"


def _then_pushed(api: BoefjeAPIServer, task_id: str, result: Any) -> None:
    assert result is None
    assert api.status(task_id) == "queued"
    assert api.queued_count() == 1


def _then_running(api: BoefjeAPIServer, task_id: str, result: Any) -> None:
    assert isinstance(result, bool)  # whether a late repeat is possible: see the tests below
    assert api.status(task_id) == "running"


def _then_got_task(api: BoefjeAPIServer, task_id: str, result: Any) -> None:
    assert isinstance(result, Task)
    assert result.id == task_id


def _then_got_input(api: BoefjeAPIServer, task_id: str, result: Any) -> None:
    assert isinstance(result, BoefjeInput)
    assert result.task.id == task_id
    assert result.output_url == f"{api.url}/api/v0/tasks/{task_id}"


def _then_delivered(api: BoefjeAPIServer, task_id: str, result: Any) -> None:
    assert set(result) == {"0"}
    assert api.status(task_id) == "completed"
    assert len(api.outputs(task_id)) == 1


POP = Call("pop", "POST", "/api/v0/scheduler/boefje/pop?limit=1", queued_task, lambda c, t: c.pop(), _then_popped)
PUSH = Call(
    "push",
    "POST",
    "/api/v0/scheduler/boefje/push",
    lambda api: str(uuid.uuid4()),
    lambda c, t: c.push(make_task(task_id=t)),
    _then_pushed,
)
PATCH = Call(
    "patch",
    "PATCH",
    "/api/v0/scheduler/tasks/{id}",
    dispatched_task,
    lambda c, t: c.patch_status(t, TaskStatus.RUNNING),
    _then_running,
)
GET = Call("get", "GET", "/api/v0/scheduler/tasks/{id}", queued_task, lambda c, t: c.get_task(t), _then_got_task)
INPUT = Call("input", "GET", "/api/v0/tasks/{id}", running_task, lambda c, t: c.get_input(t), _then_got_input)
OUTPUT_CALL = Call(
    "output", "POST", "/api/v0/tasks/{id}", running_task, lambda c, t: c.post_output(t, OUTPUT), _then_delivered
)

SAFE_CALLS = [PUSH, PATCH, GET, INPUT, OUTPUT_CALL]
ALL_CALLS = [POP, *SAFE_CALLS]
#: Calls whose repeat after a lost answer is a plain success (output's repeat meets 403: own test).
IDEMPOTENT_CALLS = [PUSH, PATCH, GET, INPUT]

all_calls = pytest.mark.parametrize("call", ALL_CALLS, ids=str)
safe_calls = pytest.mark.parametrize("call", SAFE_CALLS, ids=str)


def assert_error(exc: BaseException, call: Call, api: BoefjeAPIServer, task_id: str, status: int | None) -> None:
    assert exc.method == call.method
    assert exc.url == call.url(api, task_id)
    assert exc.status_code == status


# -- happy paths -------------------------------------------------------------------------------------------


def test_pop_parses_a_list_answer_and_dispatches_the_task(boefje_api, client):
    task_id = queued_task(boefje_api, organisation="org-a")

    [task] = client.pop()

    assert isinstance(task, Task)
    assert (task.id, task.organisation, task.data.boefje.id) == (task_id, "org-a", "dns-records")
    assert boefje_api.status(task_id) == "dispatched"


@pytest.mark.boefje_api(results_envelope=True)
def test_pop_accepts_the_schedulers_results_envelope(boefje_api, client):
    task_id = queued_task(boefje_api)

    [task] = client.pop()

    assert task.id == task_id
    assert boefje_api.status(task_id) == "dispatched"


def test_pop_of_an_empty_queue_is_an_empty_list(boefje_api, client):
    assert client.pop() == []
    assert client.pop_raw() == []
    assert boefje_api.request_counts() == {"pop": 2}


@pytest.mark.boefje_api(pop_mode="limit")
def test_pop_applies_the_filter_and_the_limit(boefje_api, client):
    other = queued_task(boefje_api, oci_image="ghcr.io/minvws/openkat/nmap:latest")
    first, second, third = (queued_task(boefje_api, oci_image=IMAGE) for _ in range(3))

    tasks = client.pop(task_filter=TaskFilter(oci_images=[IMAGE]), limit=2)

    assert [task.id for task in tasks] == [first, second]
    assert boefje_api.status(other) == boefje_api.status(third) == "queued"
    [record] = boefje_api.request_log()
    assert (record.method, record.path, record.endpoint, record.status) == (
        "POST",
        "/api/v0/scheduler/boefje/pop",
        "pop",
        200,
    )


def test_pop_sends_the_filter_as_its_body_and_the_limit_in_the_query(recorder):
    """The test API's request log holds neither query nor body, so a recording server shows them."""
    task_filter = TaskFilter(oci_images=[IMAGE], plugins=["dns-records"])

    with make_client(recorder) as api_client:
        api_client.pop_raw(task_filter=task_filter, limit=5)
        api_client.pop_raw()

    filtered, unfiltered = recorder.requests
    assert (filtered.method, filtered.target) == ("POST", "/api/v0/scheduler/boefje/pop?limit=5")
    assert filtered.headers["content-type"] == "application/json"
    assert json.loads(filtered.body) == {
        "filters": [
            {"column": "data", "field": "boefje__oci_image", "operator": "in", "value": [IMAGE]},
            {"column": "data", "field": "boefje__id", "operator": "in", "value": ["dns-records"]},
        ]
    }
    # Always a body: OpenKAT answers 422 to a pop without one.
    assert (unfiltered.target, json.loads(unfiltered.body)) == ("/api/v0/scheduler/boefje/pop?limit=1", {"filters": []})


def test_a_cookie_the_api_sets_is_sent_back_on_every_later_call(recorder):
    """A load balancer in front of the API may pin a client with an affinity cookie: the client
    stores what an answer sets (also on a call of another kind) and sends it from then on."""
    recorder.answer(Answer(), Answer(headers={"Set-Cookie": "affinity=node-2; Path=/"}), Answer(), Answer())

    with make_client(recorder) as api_client:
        api_client.pop_raw()
        api_client.patch_status("t-1", "running")  # this answer sets the cookie
        api_client.pop_raw()
        api_client.patch_status("t-2", "running")

    sent = [request.headers.get("cookie") for request in recorder.requests]
    assert sent == [None, None, "affinity=node-2", "affinity=node-2"]


def test_push_sends_a_task_back_field_for_field(boefje_api, client):
    task = make_task(deduplication_key="dedup-1", future_top_level={"nested": [1, 2]})
    task["data"]["future_field"] = "kept"
    task["data"]["boefje"]["future_flag"] = True

    client.push(task)

    assert boefje_api.task(task["id"]) == task


@pytest.mark.boefje_api(strip_dedup_keys=False)
def test_push_of_a_popped_task_sends_exactly_what_was_received(boefje_api, client):
    original = make_task(
        deduplication_key="dedup-1",
        created_at="2024-01-01T10:00:00",  # no UTC offset
        modified_at="2024-01-01T10:00:00Z",  # a form Python's isoformat never writes
        unknown={"kept": ["as", "is"]},
    )
    original["data"]["started_at"] = "2024-01-01T10:00:00.5+02:00"
    boefje_api.enqueue(original)
    [task] = client.pop()

    client.push(task)

    assert boefje_api.task(task.id) == original
    assert boefje_api.history(task.id) == ["queued", "dispatched", "queued"]


@pytest.mark.parametrize("status", [TaskStatus.RUNNING, "running"], ids=["enum", "str"])
def test_patch_status_sets_the_status(boefje_api, client, status):
    task_id = dispatched_task(boefje_api)

    client.patch_status(task_id, status)

    assert boefje_api.history(task_id) == ["queued", "dispatched", "running"]


def test_get_task_returns_the_task_as_stored(boefje_api, client):
    task_id = running_task(boefje_api, boefje_id="nmap", version="1.2")

    task = client.get_task(task_id)

    assert (task.id, task.status, task.data.boefje.id, task.data.boefje.version) == (
        task_id,
        TaskStatus.RUNNING,
        "nmap",
        "1.2",
    )


def test_get_input_of_a_running_task(boefje_api, client):
    task_id = running_task(boefje_api, environment={"API_KEY": "x"})

    boefje_input = client.get_input(task_id)

    assert boefje_input.task.id == task_id
    assert boefje_input.task.data.environment == {"API_KEY": "x"}
    assert boefje_input.output_url == f"{boefje_api.url}/api/v0/tasks/{task_id}"


@pytest.mark.parametrize(("prepare", "status"), [(dispatched_task, 403), (None, 404)], ids=["dispatched", "unknown"])
def test_get_input_is_refused_unless_the_task_is_running(boefje_api, client, prepare, status):
    task_id = prepare(boefje_api) if prepare else str(uuid.uuid4())

    with pytest.raises(APIStatusError) as raised:
        client.get_input(task_id)

    assert_error(raised.value, INPUT, boefje_api, task_id, status)
    assert boefje_api.request_counts() == {"input": 1}


def test_post_output_stores_the_files_and_completes_the_task(boefje_api, client):
    task_id = running_task(boefje_api)

    answer = client.post_output(task_id, OUTPUT)

    assert set(answer) == {"0"}
    uuid.UUID(answer["0"])  # a raw-file id
    assert boefje_api.status(task_id) == "completed"
    assert boefje_api.files(task_id) == [
        {"name": "0", "content": b"hello", "tags": ["text/plain", "boefje/dns-records"]}
    ]


def test_a_failed_output_marks_the_task_failed(boefje_api, client):
    task_id = running_task(boefje_api)

    client.post_output(task_id, {"status": "FAILED", "files": [{"name": "0", "content": b64(b"tb"), "tags": None}]})

    assert boefje_api.status(task_id) == "failed"
    assert boefje_api.files(task_id) == [{"name": "0", "content": b"tb", "tags": None}]


def test_output_goes_to_the_url_the_input_gave(boefje_api, client):
    task_id = running_task(boefje_api)
    boefje_input = client.get_input(task_id)

    client.deliver_output(boefje_input.output_url, OUTPUT)

    assert boefje_api.status(task_id) == "completed"


def test_output_for_a_task_that_is_not_running_is_refused(boefje_api, client):
    task_id = dispatched_task(boefje_api)

    with pytest.raises(APIStatusError) as raised:
        client.post_output(task_id, OUTPUT)

    assert_error(raised.value, OUTPUT_CALL, boefje_api, task_id, 403)
    assert boefje_api.request_counts() == {"output": 1}
    assert boefje_api.outputs(task_id) == []


def test_health_is_true_when_the_api_answers(boefje_api, client):
    assert client.health() is True


@pytest.mark.parametrize("fault", [{"status": 503}, {"status": 500}, {"malformed": True}, {"drop": True}])
def test_health_is_false_when_the_api_misbehaves_and_is_asked_once(boefje_api, client, fault):
    boefje_api.inject("health", **fault)

    assert client.health() is False
    assert boefje_api.request_counts() == {"health": 1}


def test_health_is_false_when_the_api_is_down(boefje_api, client):
    boefje_api.stop()

    assert client.health() is False


# -- retries: "not now" (429, 503) --------------------------------------------------------------------------


@all_calls
@pytest.mark.parametrize("status", [429, 503])
def test_not_now_is_retried_for_every_call(boefje_api, client, call, status):
    """429 and 503 mean the server did not act on the request, so even a pop is repeated."""
    task_id = call.given(boefje_api)
    boefje_api.inject(call.name, status=status, headers=RETRY_NOW)

    result = call.when(client, task_id)

    call.then(boefje_api, task_id, result)
    assert boefje_api.request_counts() == {call.name: 2}


@pytest.mark.parametrize(("call", "status"), [(POP, 503), (PATCH, 429)], ids=["pop-503", "patch-429"])
def test_retry_after_is_honoured(boefje_api, client, call, status):
    """One second, far beyond the policy's 0.05 s cap on its own waits."""
    task_id = call.given(boefje_api)
    boefje_api.inject(call.name, status=status, headers={"Retry-After": "1"})

    with timed() as elapsed:
        result = call.when(client, task_id)

    call.then(boefje_api, task_id, result)
    assert boefje_api.request_counts() == {call.name: 2}
    assert 0.95 <= elapsed[0] < 3.0
    first, second = boefje_api.request_log()
    assert second.time - first.time >= 0.95


def test_a_retry_after_date_falls_back_to_our_own_back_off(boefje_api, client):
    task_id = queued_task(boefje_api)
    boefje_api.inject("pop", status=503, headers={"Retry-After": "Wed, 21 Oct 2037 07:28:00 GMT"})

    with timed() as elapsed:
        [task] = client.pop()

    assert task.id == task_id
    assert boefje_api.request_counts() == {"pop": 2}
    assert elapsed[0] < 1.0


# -- retries: server errors (500, 502, 504) ----------------------------------------------------------------------


@safe_calls
@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_are_retried_for_safe_calls(boefje_api, client, call, status):
    task_id = call.given(boefje_api)
    boefje_api.inject(call.name, status=status)

    result = call.when(client, task_id)

    call.then(boefje_api, task_id, result)
    assert boefje_api.request_counts() == {call.name: 2}


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_are_not_retried_for_pop(boefje_api, client, status):
    """A 500/502/504 may come after the scheduler dispatched tasks: a repeat could take more."""
    task_id = queued_task(boefje_api)
    boefje_api.inject("pop", status=status)

    with pytest.raises(APIStatusError) as raised:
        client.pop()

    assert_error(raised.value, POP, boefje_api, task_id, status)
    assert boefje_api.request_counts() == {"pop": 1}


# -- retries: client errors ---------------------------------------------------------------------------------


@all_calls
@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_client_errors_are_never_retried(boefje_api, client, call, status):
    task_id = call.given(boefje_api)
    boefje_api.inject(call.name, status=status)  # once: a repeat would succeed

    with pytest.raises(APIStatusError) as raised:
        call.when(client, task_id)

    assert_error(raised.value, call, boefje_api, task_id, status)
    assert boefje_api.request_counts() == {call.name: 1}


# -- retries: dropped connections and lost answers ------------------------------------------------------------


@safe_calls
def test_a_request_dropped_before_processing_is_retried_for_safe_calls(boefje_api, client, call):
    task_id = call.given(boefje_api)
    boefje_api.inject(call.name, drop=True)

    result = call.when(client, task_id)

    call.then(boefje_api, task_id, result)
    assert boefje_api.request_counts() == {call.name: 2}


def test_a_dropped_pop_is_not_retried(boefje_api, client):
    """From the client's side a drop before processing looks like a lost answer (see below)."""
    task_id = queued_task(boefje_api)
    boefje_api.inject("pop", drop=True)

    with pytest.raises(APIConnectionError) as raised:
        client.pop()

    assert_error(raised.value, POP, boefje_api, task_id, None)
    assert raised.value.sent is True
    assert boefje_api.request_counts() == {"pop": 1}
    assert boefje_api.status(task_id) == "queued"


@pytest.mark.parametrize("call", IDEMPOTENT_CALLS, ids=str)
def test_a_lost_answer_is_retried_for_idempotent_calls(boefje_api, client, call):
    task_id = call.given(boefje_api)
    boefje_api.inject(call.name, drop="after")

    result = call.when(client, task_id)

    call.then(boefje_api, task_id, result)
    assert boefje_api.request_counts() == {call.name: 2}


def test_a_lost_pop_answer_is_not_retried(boefje_api, client):
    """Known consequence: the server dispatched the task but its answer never arrived, so no worker
    holds it; it stays ``dispatched`` until the scheduler's own housekeeping reclaims it. Popping
    again would be worse: it would take more tasks while these stay stranded."""
    task_id = queued_task(boefje_api)
    boefje_api.inject("pop", drop="after")

    with pytest.raises(APIConnectionError) as raised:
        client.pop()

    assert_error(raised.value, POP, boefje_api, task_id, None)
    assert raised.value.sent is True
    assert boefje_api.request_counts() == {"pop": 1}
    assert boefje_api.status(task_id) == "dispatched"


def test_a_lost_output_answer_is_retried_and_the_repeats_403_counts_as_delivered(boefje_api, client, caplog):
    task_id = running_task(boefje_api)
    boefje_api.inject("output", drop="after")

    answer = client.post_output(task_id, OUTPUT)

    assert answer == {}
    assert [record.status for record in boefje_api.request_log()] == [None, 403]
    assert len(boefje_api.outputs(task_id)) == 1
    assert boefje_api.history(task_id) == ["queued", "dispatched", "running", "completed"]
    assert any("an earlier try was accepted" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("first", [{"status": 503, "headers": RETRY_NOW}, {"status": 429, "headers": RETRY_NOW}])
def test_a_403_after_tries_the_server_did_not_act_on_is_a_refusal(boefje_api, client, first):
    """Only a try that may have landed makes a later 403 mean "delivered"; after a "not now" the
    403 is the API refusing this output, which must not be reported as delivered."""
    task_id = dispatched_task(boefje_api)  # not running: the API refuses its output
    boefje_api.inject("output", **first)

    with pytest.raises(APIStatusError) as raised:
        client.post_output(task_id, OUTPUT)

    assert_error(raised.value, OUTPUT_CALL, boefje_api, task_id, 403)
    assert boefje_api.request_counts() == {"output": 2}
    assert boefje_api.outputs(task_id) == []


def test_a_403_after_a_refused_connection_is_a_refusal(boefje_api):
    task_id = dispatched_task(boefje_api)
    boefje_api.stop()

    with make_client(boefje_api) as api_client, on_retry(boefje_api.start), pytest.raises(APIStatusError) as raised:
        api_client.post_output(task_id, OUTPUT)

    assert raised.value.status_code == 403
    assert boefje_api.request_counts() == {"output": 1}


# -- retries: connection refused ----------------------------------------------------------------------------


@all_calls
def test_a_refused_connection_is_retried_for_every_call(boefje_api, call, caplog):
    """Refused means never sent, so even a pop is repeated, until the attempts run out."""
    task_id = call.given(boefje_api)
    boefje_api.stop()
    caplog.set_level(logging.INFO, logger=HTTP_LOGGER)

    with make_client(boefje_api, retry=THREE_TRIES) as api_client, pytest.raises(APIConnectionError) as raised:
        call.when(api_client, task_id)

    assert_error(raised.value, call, boefje_api, task_id, None)
    assert raised.value.sent is False
    assert len(retry_warnings(caplog)) == 2  # 3 attempts
    assert boefje_api.request_counts() == {}


@all_calls
def test_every_call_succeeds_when_the_api_comes_up_between_tries(boefje_api, call):
    task_id = call.given(boefje_api)
    boefje_api.stop()

    with make_client(boefje_api) as api_client, on_retry(boefje_api.start) as retries:
        result = call.when(api_client, task_id)

    call.then(boefje_api, task_id, result)
    assert len(retries) == 1
    assert boefje_api.request_counts() == {call.name: 1}  # the refused try never reached it


# -- retries: read timeouts -----------------------------------------------------------------------------------


@safe_calls
def test_a_read_timeout_is_retried_for_safe_calls(boefje_api, call):
    task_id = call.given(boefje_api)
    boefje_api.inject(call.name, delay=1.0)  # the slow first request still completes later, server-side

    with make_client(boefje_api, timeout=0.3) as api_client:
        result = call.when(api_client, task_id)

    call.then(boefje_api, task_id, result)
    assert boefje_api.request_counts() == {call.name: 2}


def test_a_read_timeout_on_pop_is_not_retried(boefje_api):
    boefje_api.inject("pop", delay=1.0)  # an empty queue: the late pop changes nothing

    with make_client(boefje_api, timeout=0.3) as api_client, pytest.raises(APIConnectionError) as raised:
        api_client.pop()

    assert_error(raised.value, POP, boefje_api, "", None)
    assert raised.value.sent is True
    assert boefje_api.request_counts() == {"pop": 1}


# -- malformed and oversize answers ---------------------------------------------------------------------------


@all_calls
def test_a_malformed_json_answer_is_a_response_error_and_not_retried(boefje_api, client, call):
    if call.name == "output":
        pytest.skip("a 2xx output answer means the output was stored: see the next test")
    task_id = call.given(boefje_api)
    boefje_api.inject(call.name, malformed=True)

    with pytest.raises(APIResponseError) as raised:
        call.when(client, task_id)

    assert_error(raised.value, call, boefje_api, task_id, 200)
    assert boefje_api.request_counts() == {call.name: 1}


def test_a_malformed_2xx_output_answer_counts_as_delivered(boefje_api, client, caplog):
    task_id = boefje_api.enqueue(make_task("hello"))
    boefje_api.set_status(task_id, "running")
    boefje_api.inject("output", malformed=True)

    assert client.post_output(task_id, BoefjeOutput(OutputStatus.COMPLETED, [])) == {}

    assert boefje_api.request_counts() == {"output": 1}
    assert "accepted, with an unexpected answer" in caplog.text


@pytest.mark.parametrize(
    ("body", "path"),
    [('{"detail": "x"}', "pop.results"), ('{"results": 5}', "pop.results"), ('"OK"', "pop"), ("null", "pop")],
)
def test_a_pop_answer_that_is_not_a_task_list_names_the_path(boefje_api, client, body, path):
    boefje_api.inject("pop", body=body)

    with pytest.raises(ParseError) as raised:
        client.pop()

    assert raised.value.path == path
    assert boefje_api.request_counts() == {"pop": 1}


def test_a_task_that_is_not_an_object_is_returned_raw_by_pop_raw_and_refused_by_pop(boefje_api, client):
    well_formed = make_task()
    boefje_api.inject("pop", body=json.dumps(["not a task", well_formed]), times=2)

    assert client.pop_raw(limit=2) == ["not a task", well_formed]
    with pytest.raises(ParseError) as raised:
        client.pop(limit=2)

    assert raised.value.path == "pop[0]"


@pytest.mark.boefje_api(pop_mode="limit")
def test_a_malformed_task_is_named_by_its_index(boefje_api, client):
    good, bad = make_task(), make_task()
    del bad["data"]["boefje"]
    boefje_api.enqueue([good, bad])

    with pytest.raises(ParseError) as raised:
        client.pop(limit=2)

    assert raised.value.path == "pop[1].data.boefje"


def test_an_answer_declared_larger_than_the_cap_is_refused_unread(recorder):
    """The server declares 1 GB, sends 10 bytes and holds the connection: a client reading the body
    would hang until its timeout (APIConnectionError); refusing on Content-Length answers at once."""
    recorder.answer(Answer(body=b"[" * 10, declared_length=10**9))

    with (
        make_client(recorder, timeout=1.0, max_response_bytes=1000) as api_client,
        pytest.raises(APIResponseError) as raised,
    ):
        api_client.pop_raw()

    assert (raised.value.method, raised.value.status_code) == ("POST", 200)
    assert str(raised.value) == (
        f"POST {recorder.url}/api/v0/scheduler/boefje/pop?limit=1 answered 200 with a body of 1000000000 bytes, "
        "larger than the cap of 1000 bytes; refused"
    )
    assert len(recorder.requests) == 1


def test_a_streamed_answer_is_cut_off_at_the_cap(recorder):
    recorder.answer(Answer(body=b"[" + b"0," * 5000 + b"0]", chunked=True))

    with make_client(recorder, max_response_bytes=1000) as api_client, pytest.raises(APIResponseError) as raised:
        api_client.pop_raw()

    assert raised.value.status_code == 200
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(("cap", "accepted"), [(4096, True), (4095, False)], ids=["at-cap", "one-over"])
def test_the_cap_is_inclusive(boefje_api, cap, accepted):
    boefje_api.inject("pop", body="[]" + " " * 4094)  # 4096 bytes of valid JSON

    with make_client(boefje_api, max_response_bytes=cap) as api_client:
        if accepted:
            assert api_client.pop_raw() == []
        else:
            with pytest.raises(APIResponseError):
                api_client.pop_raw()
    assert boefje_api.request_counts() == {"pop": 1}


# -- the cap counts decoded bytes: gzip bombs and smuggled lengths --------------------------------------------

CAP = 1024 * 1024
#: Decoded padding of the test API's gzip bomb: 4 MiB, about 4 KB on the wire (its Content-Length).
BOMB = 4 * CAP


@all_calls
def test_a_gzip_bomb_is_refused_at_the_cap_for_every_call(boefje_api, call):
    if call.name == "output":
        pytest.skip("a 2xx output answer means the output was stored: see the next test")
    task_id = call.given(boefje_api)
    boefje_api.inject(call.name, gzip_bomb=BOMB)

    with make_client(boefje_api, max_response_bytes=CAP) as api_client, pytest.raises(APIResponseTooLarge) as raised:
        call.when(api_client, task_id)

    assert_error(raised.value, call, boefje_api, task_id, 200)
    assert str(raised.value) == (
        f"{call.method} {call.url(boefje_api, task_id)} answered 200 with a body larger than the cap of {CAP} bytes "
        "once decoded (Content-Encoding: gzip); refused"
    )
    assert boefje_api.request_counts() == {call.name: 1}  # not retried: the next answer would be the same


def test_a_gzip_bomb_answering_an_output_counts_as_delivered(boefje_api, caplog):
    """The bomb pads the real answer: the API stored the output, only its answer is refused."""
    task_id = running_task(boefje_api)
    boefje_api.inject("output", gzip_bomb=BOMB)

    with make_client(boefje_api, max_response_bytes=CAP) as api_client:
        assert api_client.post_output(task_id, OUTPUT) == {}

    assert boefje_api.status(task_id) == "completed"
    assert boefje_api.request_counts() == {"output": 1}
    assert f"larger than the cap of {CAP} bytes once decoded" in caplog.text


def test_health_is_false_under_a_gzip_bomb(boefje_api):
    boefje_api.inject("health", gzip_bomb=BOMB)

    with make_client(boefje_api, max_response_bytes=CAP) as api_client:
        assert api_client.health() is False


@all_calls
def test_a_gzip_encoded_answer_within_the_cap_is_read(boefje_api, call):
    task_id = call.given(boefje_api)
    boefje_api.inject(call.name, gzip_bomb=CAP // 2)

    with make_client(boefje_api, max_response_bytes=CAP) as api_client:
        result = call.when(api_client, task_id)

    call.then(boefje_api, task_id, result)


def test_reading_stops_at_the_cap_instead_of_decoding_the_whole_bomb(boefje_api):
    """64 MiB decoded, 1 MiB cap: the client may hold about the cap, never the bomb."""
    boefje_api.inject("pop", gzip_bomb=64 * CAP)
    with make_client(boefje_api, max_response_bytes=CAP) as api_client:
        api_client.health()  # connect first: the peak below is the pop's alone
        tracemalloc.start()
        try:
            with pytest.raises(APIResponseTooLarge):
                api_client.pop_raw()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    assert peak < 8 * CAP, f"peak {peak / CAP:.1f} MiB while refusing a 64 MiB bomb"


def test_a_content_length_next_to_chunked_encoding_does_not_lift_the_cap(recorder):
    """HTTP ignores Content-Length when the body is chunked (RFC 9112 6.3), so a small declared length
    must not let the client read a large chunked body in one go."""
    recorder.answer(Answer(body=b"[" + b"0," * 5000 + b"0]", headers={"Content-Length": "2"}, chunked=True))

    with make_client(recorder, max_response_bytes=1000) as api_client, pytest.raises(APIResponseTooLarge):
        api_client.pop_raw()

    assert len(recorder.requests) == 1


# -- bounds: attempts and total time --------------------------------------------------------------------------


@all_calls
def test_attempts_bound_the_number_of_requests(boefje_api, call):
    task_id = call.given(boefje_api)
    boefje_api.inject(call.name, status=503, headers=RETRY_NOW, times=None)

    with make_client(boefje_api, retry=THREE_TRIES) as api_client, pytest.raises(APIStatusError) as raised:
        call.when(api_client, task_id)

    assert raised.value.status_code == 503
    assert boefje_api.request_counts() == {call.name: 3}


def test_no_retry_makes_one_request(boefje_api):
    boefje_api.inject("get", status=503, headers=RETRY_NOW)

    with make_client(boefje_api, retry=NO_RETRY) as api_client, pytest.raises(APIStatusError):
        api_client.get_task(queued_task(boefje_api))

    assert boefje_api.request_counts() == {"get": 1}


@pytest.mark.parametrize(
    ("policy", "headers"),
    [
        # Retry-After 0.6 s twice would end at 1.2 s; the second wait is cut to what is left (a
        # second wait needs the first two round trips under 0.4 s, also on a loaded CI machine).
        (RetryPolicy(attempts=100, total_seconds=1.0, initial_wait=0.01, max_wait=0.05), {"Retry-After": "0.6"}),
        # Our own waits may be up to 2 s each; none may run past the total.
        (RetryPolicy(attempts=100, total_seconds=1.0, initial_wait=1.0, max_wait=2.0), {}),
    ],
    ids=["retry-after", "own-back-off"],
)
def test_total_seconds_bounds_the_time_spent(boefje_api, policy, headers, caplog):
    boefje_api.inject("get", status=503, headers=headers, times=None)

    with (
        caplog.at_level(logging.WARNING, logger="boefje_runtime.http"),
        make_client(boefje_api, retry=policy) as api_client,
        timed() as elapsed,
        pytest.raises(APIStatusError),
    ):
        api_client.get_task("some-task")

    # It tried until the total was spent, and its waits together stayed within it (each is cut to
    # what is left). The waits, not the wall clock: after the last wait one more request goes out,
    # whose round trip a loaded machine stretches (0.83 s was seen against a bound of 0.7).
    waits = [float(wait) for wait in re.findall(r"Retrying in ([0-9.]+) s", caplog.text)]
    assert elapsed[0] >= 1.0
    assert boefje_api.request_counts()["get"] >= 2
    assert sum(waits) <= 1.0 + 0.005 * len(waits), waits  # logged rounded to 10 ms
    if headers:
        assert waits[0] == 0.6 and waits[1] < 0.6, f"the second Retry-After wait was not cut: {waits}"


# -- request logging ------------------------------------------------------------------------------------------

LOG_LINE = re.compile(
    r'HTTP Request: POST http://127\.0\.0\.1:\d+/api/v0/scheduler/boefje/pop\?limit=1 "HTTP/1\.1 200 OK"'
)


def test_a_request_logs_one_info_line_in_the_seeds_form(boefje_api, client, caplog):
    caplog.set_level(logging.INFO, logger=HTTP_LOGGER)
    boefje_api.enqueue(make_task("dns-records"))

    client.pop()

    [line] = info_lines(caplog)
    assert LOG_LINE.fullmatch(line)
    assert line == f'HTTP Request: POST {boefje_api.url}/api/v0/scheduler/boefje/pop?limit=1 "HTTP/1.1 200 OK"'


def test_an_empty_pop_logs_at_debug_only(boefje_api, client, caplog):
    """An idle worker pops every few seconds: those lines would bury what happened to tasks."""
    caplog.set_level(logging.DEBUG, logger=HTTP_LOGGER)

    assert client.pop() == []

    assert info_lines(caplog) == []
    [record] = [record for record in caplog.records if record.name == HTTP_LOGGER]
    assert record.levelno == logging.DEBUG and "/pop?limit=1" in record.getMessage()


@all_calls
def test_every_call_logs_one_info_line_per_request(boefje_api, client, call, caplog):
    task_id = call.given(boefje_api)
    boefje_api.inject(call.name, status=503, headers=RETRY_NOW)
    caplog.set_level(logging.INFO, logger=HTTP_LOGGER)

    call.when(client, task_id)

    url = call.url(boefje_api, task_id)
    assert info_lines(caplog) == [
        f'HTTP Request: {call.method} {url} "HTTP/1.1 503 Service Unavailable"',
        f'HTTP Request: {call.method} {url} "HTTP/1.1 200 OK"',
    ]
    assert len(retry_warnings(caplog)) == 1


# -- extra headers ----------------------------------------------------------------------------------------

SECRET_HEADERS = {"Authorization": "Bearer s3cr3t-t0ken-value", "X-Api-Key": "k3y-v4lue-123"}


def test_extra_headers_are_sent_on_every_request_and_never_logged(recorder, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's connection lines included
    recorder.answer(Answer(status=503, headers=RETRY_NOW), Answer(body=b"[]"))  # pop: a retry, then ok
    recorder.answer(*[Answer(status=500, body=b'{"detail": "boom"}')] * 3)  # get: fails after 3 tries
    errors: list[BaseException] = []

    with make_client(recorder, headers=SECRET_HEADERS, retry=THREE_TRIES) as api_client:
        api_client.pop()
        with pytest.raises(APIStatusError) as raised:
            api_client.get_task("task-1")
        errors.append(raised.value)
        recorder.close()
        with api_client.clone() as fresh, pytest.raises(APIConnectionError) as raised:  # no kept-alive connection
            fresh.patch_status("task-1", "running")  # refused: the connection-error path logs too
        errors.append(raised.value)

    assert len(recorder.requests) == 5
    for request in recorder.requests:
        assert request.headers["authorization"] == SECRET_HEADERS["Authorization"]
        assert request.headers["x-api-key"] == SECRET_HEADERS["X-Api-Key"]
    assert retry_warnings(caplog)  # retries were logged...
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records) + "\n".join(map(str, errors))
    for value in SECRET_HEADERS.values():
        assert value not in logged  # ...without a header value anywhere
        assert value.split()[-1] not in logged


# -- TLS settings and clone() -------------------------------------------------------------------------------


def test_tls_verification_is_on_by_default(no_ca_env):
    with BoefjeAPIClient("https://boefje.example:8000") as api_client:
        assert api_client.session.verify is True


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_from_the_environment_is_used(no_ca_env, tmp_path, variable):
    bundle = str(tmp_path / "ca.pem")
    no_ca_env.setenv(variable, bundle)

    with BoefjeAPIClient("https://boefje.example:8000") as api_client:
        assert api_client.session.verify == bundle


def test_requests_ca_bundle_wins_over_curl_ca_bundle(no_ca_env, tmp_path):
    no_ca_env.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "requests.pem"))
    no_ca_env.setenv("CURL_CA_BUNDLE", str(tmp_path / "curl.pem"))

    with BoefjeAPIClient("https://boefje.example:8000") as api_client:
        assert api_client.session.verify == str(tmp_path / "requests.pem")


@pytest.mark.parametrize("verify", [False, "/explicit/ca.pem"])
def test_an_explicit_verify_wins_over_the_environment(no_ca_env, verify):
    no_ca_env.setenv("REQUESTS_CA_BUNDLE", "/from/env/ca.pem")

    with BoefjeAPIClient("https://boefje.example:8000", verify=verify) as api_client:
        assert api_client.session.verify == verify


def test_the_environment_is_read_once_at_construction(no_ca_env, tmp_path):
    with BoefjeAPIClient("https://boefje.example:8000") as api_client:
        no_ca_env.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "late.pem"))
        assert api_client.session.verify is True


def test_clone_has_its_own_session_and_the_same_settings(boefje_api, no_ca_env, tmp_path):
    no_ca_env.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    original = make_client(boefje_api, timeout=7.0, headers=SECRET_HEADERS, max_response_bytes=12345)

    clone = original.clone()
    original.close()

    assert clone.session is not original.session
    assert (clone.base_url, clone.timeout, clone.max_response_bytes, clone.retry_policy) == (
        original.base_url,
        7.0,
        12345,
        FAST,
    )
    assert clone.session.verify == original.session.verify == str(tmp_path / "ca.pem")
    for name, value in SECRET_HEADERS.items():
        assert clone.session.headers[name] == value
    with clone:
        assert clone.health() is True  # works with the original closed


def test_clone_can_take_another_retry_policy(boefje_api):
    with make_client(boefje_api) as original, original.clone(retry=NO_RETRY) as clone:
        boefje_api.inject("get", status=503, headers=RETRY_NOW)
        with pytest.raises(APIStatusError):
            clone.get_task(queued_task(boefje_api))

    assert original.retry_policy == FAST
    assert boefje_api.request_counts() == {"get": 1}


@pytest.mark.parametrize(("fault", "may_land_late"), [
    ({"status": 503}, False),  # "not now": the first try had no effect
    ({"drop": True}, True),  # to the client, a dropped connection may have been handled
    ({"status": 500}, True),
])
def test_patch_says_when_an_earlier_try_may_still_land(boefje_api, fault, may_land_late):
    task_id = boefje_api.enqueue(make_task("hello"))
    boefje_api.inject("patch", **fault)
    with BoefjeAPIClient(boefje_api.url, retry=RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)) as client:
        assert client.patch_status(task_id, "running") is may_land_late
    assert boefje_api.status(task_id) == "running"


def test_an_unexpected_redirect_is_a_status_error(boefje_api):
    boefje_api.inject("get", status=301, headers={"Location": "http://127.0.0.1:1/elsewhere"})
    with BoefjeAPIClient(boefje_api.url, retry=NO_RETRY) as client, pytest.raises(APIStatusError) as raised:
        client.get_task("anything")
    assert raised.value.status_code == 301
