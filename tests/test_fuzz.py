"""Fuzzing with hypothesis: untrusted payloads meet the models, the client, the pool and the CLI.

What may come out of each, whatever goes in:

- the models' ``from_dict``: a parsed object or :class:`ParseError`, nothing else;
- the client's ``pop``/``pop_raw``/``get_task``/``fetch_input``/``deliver_output``: an answer or a
  :class:`BoefjeRuntimeError` subclass (its callers catch exactly those);
- worker mode: a malformed task in a pop answer is reported and, when it has a usable id, marked
  failed; the pool keeps working;
- the one-shot CLI: the documented exit code (INPUT_MALFORMED for a 2xx answer that is not a task,
  INPUT_UNAVAILABLE for an error status) and exactly one line on stderr.

Inputs: random JSON, valid tasks with fields deleted or replaced (wrong types, huge strings, deep
nesting, lone surrogates, i.e. invalid UTF-8 once encoded), random bytes, invalid UTF-8, bodies
that are not JSON, JSON nested deeper than the decoder's recursion limit, and odd headers. The
named tests after each property pin the bugs these found (all fixed now).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from boefje_runtime import BoefjeAPIClient, RetryPolicy
from boefje_runtime.errors import APIResponseError, BoefjeRuntimeError, ParseError
from boefje_runtime.exit_codes import ExitCode
from boefje_runtime.models import (
    BoefjeInput,
    BoefjeMeta,
    BoefjeOutput,
    BoefjeRef,
    OutputFile,
    OutputStatus,
    Task,
    parse_task_list,
)
from boefje_runtime.pool import WorkerPool
from boefje_runtime.retry import NO_RETRY
from boefje_runtime.testing import BoefjeAPIServer, make_task

from .helpers import IMAGE, examples, new_pool, run_cli, wait_until

FIXED_ID = "0b0e9a3c-6a43-4f5e-9a2b-7d1c2f3e4a5b"
#: JSON nested far deeper than the decoder's recursion limit.
DEEP = b"[" * 100_000 + b"]" * 100_000

# -- strategies -----------------------------------------------------------------------------------

# Lone surrogates are what JSON's "\udc80" decodes to: text that is not valid UTF-8 once encoded.
nasty_text = st.sampled_from([
    "", " ", "\x00", "\ud800", "abc\udfff", "\n\r\t", "\u2028", "é" * 3, "../../etc/passwd", "$(touch /tmp/x)",
    "null", "1e999", "2024-13-45T25:61:61", "2024-01-01T00:00:00+99:00", "Z", "queued ", "QUEUED",
])
huge_text = st.sampled_from(["x" * 100_000, "é" * 50_000, "\n" * 10_000])
scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20) | nasty_text
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6) | nasty_text, children,
                                                                     max_size=4),
    max_leaves=16,
)
# Values no JSON decoder produces, for callers that hand the models Python objects directly.
python_oddities = st.sampled_from([b"bytes", bytearray(b"ba"), {1, 2}, (1, 2), 1j, object(), Ellipsis, {1: "int key"}])


def nested(value: Any, depth: int) -> Any:
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


weird_values = (
    json_values | huge_text | python_oddities
    | st.builds(nested, json_values, st.integers(min_value=20, max_value=200))
)


def _paths(obj: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path to a value inside nested dicts (the places a mutation can hit)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))


@st.composite
def mutated_tasks(draw, task_id: str = FIXED_ID, keep_id: bool = False) -> dict:
    """A valid task with 1-3 fields deleted, replaced by something odd, or added."""
    task = make_task(
        draw(st.sampled_from(["hello", "dns-records"])),
        task_id=task_id,
        oci_image=draw(st.sampled_from([None, IMAGE])),
        environment=draw(st.sampled_from([None, {"KEY": "value"}])),
        arguments=draw(st.sampled_from([{}, {"input": {"name": "example.com"}}])),
    )
    for _ in range(draw(st.integers(1, 3))):
        paths = [path for path in _paths(task) if not (keep_id and path == ("id",))]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = task
        for key in path[:-1]:
            parent = parent[key]
        if not isinstance(parent, dict):
            continue
        action = draw(st.sampled_from(["delete", "replace", "replace", "add"]))
        if action == "delete":
            parent.pop(path[-1], None)
        # Copies: a later mutation may walk into the value, and sampled_from hands out shared
        # objects; mutating one would change the strategy itself between runs.
        elif action == "replace":
            parent[path[-1]] = copy.deepcopy(draw(weird_values))
        else:
            parent[draw(st.text(max_size=8) | nasty_text)] = copy.deepcopy(draw(json_values))
    return task


task_like = mutated_tasks() | json_values | weird_values


def _unknown_keys(known: frozenset[str]) -> st.SearchStrategy[str]:
    return (st.text(max_size=8) | nasty_text).filter(lambda key: key not in known)


@st.composite
def valid_tasks(draw, task_id: str = FIXED_ID) -> dict:
    """A task every parser must accept: odd but valid values in the optional fields, and unknown
    fields (which must travel back unchanged) at every level."""
    task = make_task(draw(st.sampled_from(["hello", "dns-records"])), task_id=task_id,
                     oci_image=draw(st.sampled_from([None, IMAGE])))
    task.update(
        priority=draw(st.none() | st.integers() | st.integers(min_value=2**63, max_value=2**70)),
        status=draw(st.sampled_from(["queued", "dispatched", "running", "completed", "failed", "cancelled"])),
        organisation=draw(st.none() | st.text(max_size=10) | nasty_text),
        created_at=draw(st.sampled_from([None, "2024-01-01T00:00:00Z", "2024-01-01T00:00:00.123+02:00"])),
    )
    task["data"].update(
        organization=draw(st.text(max_size=10) | nasty_text),
        input_ooi=draw(st.none() | st.text(max_size=20) | nasty_text | huge_text),
        environment=draw(st.none() | st.dictionaries(st.text(max_size=6), st.text(max_size=10) | nasty_text,
                                                     max_size=3)),
        arguments=copy.deepcopy(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3))),
    )
    task["data"]["boefje"]["version"] = draw(st.none() | st.text(max_size=10) | nasty_text)
    for level, known in ((task, Task._KNOWN), (task["data"], BoefjeMeta._KNOWN),
                         (task["data"]["boefje"], BoefjeRef._KNOWN)):
        extra = draw(st.dictionaries(_unknown_keys(known), json_values, max_size=3))
        level.update(copy.deepcopy(extra))
    return task


def _set(task: dict, path: tuple[str, ...], value: Any) -> dict:
    """``task`` with the value at ``path`` replaced; the dicts on the way are created as needed."""
    parent = task
    for key in path[:-1]:
        if not isinstance(parent.get(key), dict):
            parent[key] = {}
        parent = parent[key]
    parent[path[-1]] = value
    return task


#: One change that makes any task invalid, whatever else was changed: (path, wrong values).
BREAKING = [
    (("data",), st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.lists(scalars, max_size=2)),
    (("data", "id"), st.sampled_from(["", 0, None, ["x"]])),
    (("data", "boefje"), st.none() | st.integers() | st.text(max_size=5)),
    (("data", "boefje", "id"), st.sampled_from(["", 0, None, {"id": "x"}])),
    (("data", "organization"), st.none() | st.integers() | st.lists(st.text(max_size=3), max_size=2)),
    (("data", "environment"), st.sampled_from([{"KEY": 1}, {"KEY": None}, ["KEY=value"], "KEY=value"])),
    (("status",), nasty_text.filter(lambda text: text not in {"queued"})),
    (("priority",), st.text(max_size=3) | st.booleans() | st.floats(allow_nan=True)),
    (("created_at",), st.sampled_from(["2024-13-45T25:61:61", "yesterday", 5, ["2024-01-01"]])),
]


@st.composite
def malformed_tasks(draw, task_id: str) -> dict:
    """A mutated task (its id kept) with one change from :data:`BREAKING` on top: malformed for sure."""
    task = draw(mutated_tasks(task_id=task_id, keep_id=True))
    path, values = draw(st.sampled_from(BREAKING))
    return _set(task, path, copy.deepcopy(draw(values)))


valid_outputs = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["COMPLETED", "FAILED"]),
        "files": st.none() | st.lists(
            st.fixed_dictionaries({"name": st.text(max_size=5) | nasty_text,
                                   "content": st.text(max_size=10) | nasty_text | huge_text,
                                   "tags": st.none() | st.lists(st.text(max_size=8) | nasty_text, max_size=3)}),
            max_size=3,
        ),
    },
)


def to_json_bytes(value: Any) -> bytes | None:
    """JSON text for a value (ASCII-escaped, so lone surrogates travel as ``\\udxxx``), or None."""
    try:
        return json.dumps(value, ensure_ascii=True).encode()
    except (TypeError, ValueError, RecursionError):
        return None


# -- the models -----------------------------------------------------------------------------------

MODEL_PARSERS = [Task.from_dict, BoefjeMeta.from_dict, BoefjeRef.from_dict, BoefjeInput.from_dict,
                 BoefjeOutput.from_dict, OutputFile.from_dict, parse_task_list]
_examples: dict[str, int] = {}


def _count(name: str) -> None:
    _examples[name] = _examples.get(name, 0) + 1


def _only_parse_errors(parser, payload: Any) -> Any:
    try:
        return parser(payload)
    except ParseError:
        return None


@settings(max_examples=examples(400), deadline=None)
@given(payload=task_like)
def test_task_parsing_raises_only_parse_errors(payload):
    _count("models: task")
    task = _only_parse_errors(Task.from_dict, payload)
    for parser in MODEL_PARSERS:
        _only_parse_errors(parser, payload)
    _only_parse_errors(BoefjeMeta.from_dict, payload.get("data") if isinstance(payload, dict) else payload)
    _only_parse_errors(BoefjeInput.from_dict, {"task": payload, "output_url": "http://boefje/x"})
    _only_parse_errors(parse_task_list, [payload])
    if task is not None and to_json_bytes(payload) is not None:
        # The mutation left a valid task (test_a_valid_task_parses_and_travels_back_unchanged makes
        # sure of this case); what it wrote back must parse again.
        assert_round_trip(task, payload)


def assert_round_trip(task: Task, payload: dict) -> None:
    """What parsed must write back what it read (unknown fields included, at every level) and
    parse again to the same."""
    again = Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert json.dumps(again.to_dict(), sort_keys=True) == json.dumps(task.to_dict(), sort_keys=True)
    written = task.to_dict()
    for read, wrote, known in ((payload, written, Task._KNOWN), (payload["data"], written["data"], BoefjeMeta._KNOWN),
                               (payload["data"]["boefje"], written["data"]["boefje"], BoefjeRef._KNOWN)):
        for key, value in read.items():
            if key not in known:
                assert json.dumps(wrote[key]) == json.dumps(value), key


@settings(max_examples=examples(200), deadline=None)
@given(payload=valid_tasks())
def test_a_valid_task_parses_and_travels_back_unchanged(payload):
    _count("models: valid task")
    task = Task.from_dict(copy.deepcopy(payload))  # no ParseError: every one of these is valid
    assert task.id == FIXED_ID and task.data.boefje.id == payload["data"]["boefje"]["id"]
    assert task.raw == payload  # what a push sends back
    assert_round_trip(task, payload)
    assert BoefjeInput.from_dict({"task": payload, "output_url": "/x"}).task.to_dict() == task.to_dict()


TASK_FIELDS = list(_paths(make_task("hello", task_id=FIXED_ID, environment={"K": "v"})))


@pytest.mark.parametrize("path", TASK_FIELDS, ids=".".join)
def test_nesting_past_the_recursion_limit_anywhere_in_a_task_is_a_parse_error_or_kept(path):
    """Hypothesis cannot print such values, so this one walks every field by hand. Found a bug:
    a deeply nested ``status`` raised RecursionError (Enum's own error message repr()s the value)."""
    task = make_task("hello", task_id=FIXED_ID, environment={"K": "v"})
    parent = task
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = nested(1, 10_000)
    for payload in (task, {"task": task, "output_url": "/x"}, {"status": "FAILED", "files": [task]},
                    {"status": task, "files": None}, {"name": "0", "content": "", "tags": task}, [task]):
        for parser in MODEL_PARSERS:
            _only_parse_errors(parser, payload)


output_like = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["COMPLETED", "FAILED", "completed", ""]) | weird_values,
        "files": st.lists(
            st.fixed_dictionaries({}, optional={"name": st.text(max_size=5) | weird_values,
                                                "content": st.text(max_size=10) | weird_values,
                                                "tags": st.lists(st.text(max_size=8) | weird_values, max_size=3)
                                                | weird_values}),
            max_size=3,
        ) | weird_values,
    },
) | weird_values


@settings(max_examples=examples(300), deadline=None)
@given(payload=output_like)
def test_output_parsing_raises_only_parse_errors(payload):
    _count("models: output")
    output = _only_parse_errors(BoefjeOutput.from_dict, payload)
    if output is not None:  # test_a_valid_output_travels_back_unchanged makes sure of this case
        assert BoefjeOutput.from_dict(output.to_dict()) == output
    _only_parse_errors(OutputFile.from_dict, payload)


@settings(max_examples=examples(150), deadline=None)
@given(payload=valid_outputs)
def test_a_valid_output_travels_back_unchanged(payload):
    _count("models: valid output")
    output = BoefjeOutput.from_dict(payload)  # no ParseError: every one of these is valid
    written = output.to_dict()
    assert written == {**payload, "files": payload["files"] or []}
    assert BoefjeOutput.from_dict(written) == output


# -- the client -----------------------------------------------------------------------------------

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
odd_headers = st.sampled_from([
    None,
    {"Retry-After": "1"},
    {"Retry-After": "-3"},
    {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
    {"Content-Type": "text/html; charset=latin-1"},
    {"Content-Encoding": "gzip"},
    {"Content-Encoding": "br, deflate"},
    {"Location": "http://127.0.0.1:1/elsewhere"},
]) | st.builds(lambda name, value: {name or "X-Odd": value}, st.sampled_from(["X-Odd", "Retry-After", "Content-Type"]),
               header_text)


def body_for(endpoint: str, value: Any) -> bytes | None:
    """A pop answer is a list (or ``{"results": ...}``), an input wraps the task, get is the task."""
    if endpoint == "pop":
        return to_json_bytes([value])
    if endpoint == "input":
        return to_json_bytes({"task": value, "output_url": "/api/v0/tasks/x"})
    return to_json_bytes(value)


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"\xff\xfe\xfd", b'"\xc3\x28"', b'["\xed\xa0\x80"]', b"<html>502 Bad Gateway</html>",
                     b"null", b"[]", b"{}", b'{"results": 5}', b'{"results": [null]}', b"[" * 50, b"NaN",
                     b'{"task": {}, "output_url": 5}', b"\x00" * 100, b'"' + b"a" * 1_000_000 + b'"', DEEP,
                     b'{"a":' * 5000 + b"1" + b"}" * 5000]),
)


@st.composite
def client_faults(draw) -> tuple[str, bytes, int, dict | None]:
    endpoint = draw(st.sampled_from(["pop", "get", "input", "output"]))
    body = draw(raw_bodies | st.builds(lambda v: body_for(endpoint, v) or b"", task_like))
    status = draw(st.sampled_from([200, 200, 200, 201, 204, 301, 400, 403, 404, 409, 422, 500, 503]))
    return endpoint, body, status, draw(odd_headers)


@pytest.fixture(scope="module")
def fuzz_api() -> Iterator[BoefjeAPIServer]:
    with BoefjeAPIServer() as server:
        yield server


@settings(max_examples=examples(250), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(fault=client_faults())
def test_client_calls_raise_only_runtime_errors(fuzz_api, fault):
    _count("client")
    endpoint, body, status, headers = fault
    fuzz_api.clear_faults()
    fuzz_api.inject(endpoint, body=body, status=status, headers=headers)
    with BoefjeAPIClient(fuzz_api.url, timeout=5, retry=NO_RETRY) as client:
        calls = {
            "pop": [lambda: client.pop_raw(), lambda: client.pop()],
            "get": [lambda: client.get_task("some-task")],
            "input": [lambda: client.fetch_input(client.input_url("some-task"))],
            "output": [lambda: client.deliver_output(client.input_url("some-task"),
                                                     BoefjeOutput(OutputStatus.COMPLETED, []))],
        }[endpoint]
        try:
            for call in calls:
                with contextlib.suppress(BoefjeRuntimeError):
                    call()
                fuzz_api.inject(endpoint, body=body, status=status, headers=headers)  # again for the next call
        finally:
            # The API is the module's: a fault left for a call that never came would answer the next
            # test's request (a 404 or 204 for the worker-mode tests' output POST failed them at random)
            fuzz_api.clear_faults()
    assert fuzz_api.errors == []


# Regressions: each of these escaped the client as something else before (found by the fuzzing).


@pytest.mark.parametrize("call", ["pop_raw", "get_task", "fetch_input"])
def test_deeply_nested_json_is_an_api_response_error(boefje_api, call):
    """json.loads raises RecursionError, not ValueError, past its nesting limit."""
    endpoint = {"pop_raw": "pop", "get_task": "get", "fetch_input": "input"}[call]
    boefje_api.inject(endpoint, body=DEEP)
    with BoefjeAPIClient(boefje_api.url, timeout=5, retry=NO_RETRY) as client:
        calls = {"pop_raw": client.pop_raw, "get_task": lambda: client.get_task("x"),
                 "fetch_input": lambda: client.fetch_input(client.input_url("x"))}
        with pytest.raises(APIResponseError):
            calls[call]()


@pytest.mark.parametrize("retry_after", ["nan", "inf", "-5", "1e999"])
def test_an_unusable_retry_after_falls_back_to_our_own_back_off(boefje_api, retry_after):
    """``Retry-After: nan`` made the retry sleep raise ValueError; inf waited the whole budget."""
    boefje_api.inject("get", status=503, headers={"Retry-After": retry_after})
    task_id = boefje_api.enqueue(make_task("hello"))
    started = time.monotonic()
    with BoefjeAPIClient(boefje_api.url, timeout=5, retry=RetryPolicy(attempts=2, total_seconds=30)) as client:
        assert client.get_task(task_id).id == task_id
    assert time.monotonic() - started < 5


def test_a_2xx_output_answer_that_is_not_json_counts_as_delivered(boefje_api):
    """The API stored the output; treating the odd answer as a failure made the worker mark the
    completed task failed."""
    task_id = boefje_api.enqueue(make_task("hello"))
    boefje_api.set_status(task_id, "running")
    boefje_api.inject("output", body=b"<html>ok</html>", status=200)
    with BoefjeAPIClient(boefje_api.url, timeout=5, retry=NO_RETRY) as client:
        assert client.post_output(task_id, BoefjeOutput(OutputStatus.COMPLETED, [])) == {}


# -- worker mode ------------------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def fuzz_pool(fuzz_api) -> Iterator[tuple[WorkerPool, _Lines]]:
    fuzz_api.clear_faults()  # the pool starts on an API that answers as the protocol says
    lines = _Lines()
    logger = logging.getLogger("boefje_runtime.pool")
    logger.addHandler(lines)
    level = logger.level
    logger.setLevel(logging.INFO)
    pool = new_pool(fuzz_api.url, timeout=5, retry=RetryPolicy(attempts=3, total_seconds=5, initial_wait=0.05),
                    pool_size=1, poll_interval=0.05, max_error_backoff=0.2, shutdown_timeout=2).start()
    try:
        yield pool, lines
    finally:
        pool.stop(immediate=True, timeout=20)
        logger.removeHandler(lines)
        logger.setLevel(level)


_victims = iter(range(10**6))


def _next_victim(api: BoefjeAPIServer) -> str:
    """A queued task the pool's filter never pops by itself, so only a forged pop answer names it."""
    return api.enqueue(make_task("hello", oci_image="not-this-image",
                                 task_id=f"00000000-0000-4000-8000-{next(_victims):012d}"))


def _serve_forged_pop(api: BoefjeAPIServer, forged: dict) -> None:
    body = to_json_bytes([forged])
    assume(body is not None)
    fault = api.inject("pop", body=body)
    wait_until(lambda: fault.hits, 10, "the forged pop answer to be served")


def _pool_goes_on(api: BoefjeAPIServer, pool: WorkerPool) -> None:
    follow_up = api.enqueue(make_task("hello", oci_image=IMAGE))
    api.wait_for_status(follow_up, "completed", timeout=15)
    assert pool._thread.is_alive() and pool.phase == "running"


@settings(max_examples=examples(10), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_worker_mode_fails_a_malformed_task_and_keeps_going(fuzz_api, fuzz_pool, data):
    _count("worker mode: malformed")
    pool, lines = fuzz_pool
    # Given a malformed task (made sure of here, so the assertions below always run)
    victim = _next_victim(fuzz_api)
    forged = data.draw(malformed_tasks(task_id=victim))
    with pytest.raises(ParseError):
        Task.from_dict(copy.deepcopy(forged))
    logged = len(lines.lines)

    # When a pop answers it
    _serve_forged_pop(fuzz_api, forged)

    # Then it is reported and marked failed, and the pool goes on
    wait_until(lambda: fuzz_api.status(victim) == "failed", 10, "the malformed task to be marked failed")
    assert any("Malformed task in the pop answer" in line for line in lines.lines[logged:])
    # it never ran: its one output is the pool's FAILED one, whose error file says why
    (output,) = fuzz_api.outputs(victim)
    (error_file,) = output["files"]
    assert output["status"] == "FAILED" and "error/boefje" in error_file["tags"]
    assert error_file["content"].startswith(b"the task could not be read: pop[0]")
    _pool_goes_on(fuzz_api, pool)


@settings(max_examples=examples(6), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(data=st.data())
def test_worker_mode_runs_a_valid_but_odd_task_and_closes_it(fuzz_api, fuzz_pool, data):
    _count("worker mode: valid")
    pool, lines = fuzz_pool
    # Given a valid task with odd values and unknown fields
    victim = _next_victim(fuzz_api)
    forged = data.draw(valid_tasks(task_id=victim))
    Task.from_dict(copy.deepcopy(forged))
    logged = len(lines.lines)

    # When a pop answers it
    _serve_forged_pop(fuzz_api, forged)

    # Then it runs (or fails with an error file saying why) and is closed; the pool goes on
    fuzz_api.wait_for_status(victim, timeout=15)
    assert len(fuzz_api.outputs(victim)) == 1
    assert not any("Malformed task" in line for line in lines.lines[logged:])
    _pool_goes_on(fuzz_api, pool)


@pytest.mark.timeout(60)
def test_a_deeply_nested_pop_answer_does_not_kill_the_supervisor(boefje_api, make_pool):
    """It did: the RecursionError escaped the client and the supervisor's loop."""
    # the client's own retry policy (retry=None), as a deployed worker has it
    make_pool(timeout=5, retry=None, pool_size=1, poll_interval=0.05, max_error_backoff=0.2).start()
    fault = boefje_api.inject("pop", body=DEEP)
    wait_until(lambda: fault.hits, 10, "the deep answer to be served")
    follow_up = boefje_api.enqueue(make_task("hello", oci_image=IMAGE))
    boefje_api.wait_for_status(follow_up, "completed", timeout=3)


# -- the one-shot CLI -------------------------------------------------------------------------------


@st.composite
def garbage_inputs(draw) -> tuple[bytes, int]:
    body = draw(raw_bodies | st.builds(lambda v: body_for("input", v) or b"", task_like)
                | st.builds(lambda v: to_json_bytes(v) or b"", json_values))
    status = draw(st.sampled_from([200, 200, 200, 201, 400, 403, 404, 410, 422]))
    if 200 <= status < 300 and body:
        try:  # a body that happens to be a valid input is not garbage
            BoefjeInput.from_dict(json.loads(body))
            assume(False)
        except (ValueError, ParseError, RecursionError):
            pass
    return body, status


@settings(max_examples=examples(15), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(garbage=garbage_inputs(), level=st.sampled_from(["ERROR", "INFO"]), fmt=st.sampled_from(["text", "json"]))
@example(garbage=(DEEP, 200), level="ERROR", fmt="text")  # nested past the decoder's limit: exit 1 before
def test_oneshot_cli_exits_with_the_documented_code_and_one_line(fuzz_api, tmp_path_factory, garbage, level, fmt):
    _count("one-shot CLI")
    body, status = garbage
    fuzz_api.clear_faults()
    fuzz_api.inject("input", body=body, status=status)
    result = run_cli("--plugin-dir", str(tmp_path_factory.getbasetemp()), "--log-level", level,
                     "--logging-format", fmt, f"{fuzz_api.url}/api/v0/tasks/{FIXED_ID}")
    expected = ExitCode.INPUT_MALFORMED if 200 <= status < 300 else ExitCode.INPUT_UNAVAILABLE
    assert result.returncode == expected, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    errors = [line for line in lines if ("[error]" in line if fmt == "text" else json.loads(line)["level"] == "error")]
    assert len(errors) == 1, result.stderr
    if level == "ERROR":
        assert len(lines) == 1, result.stderr
    assert result.stdout == ""


@pytest.fixture(scope="module", autouse=True)
def _report_examples():
    yield
    if _examples:
        total = sum(count for name, count in _examples.items() if "of which" not in name)
        shown = ", ".join(f"{name}: {count}" for name, count in sorted(_examples.items()))
        sys.stderr.write(f"\nfuzz examples tried: {total} ({shown})\n")

