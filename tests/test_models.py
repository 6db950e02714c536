"""Parsing every JSON shape of the protocol, and refusing broken ones with a message that says where."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import pytest

from boefje_runtime.errors import BoefjeRuntimeError, ParseError
from boefje_runtime.models import (
    BoefjeInput,
    BoefjeMeta,
    BoefjeOutput,
    OutputFile,
    OutputStatus,
    Task,
    TaskStatus,
    parse_task_list,
)
from boefje_runtime.testing import make_task

TASK_ID = "70da7d4f-f41f-4940-901b-d98a92e9014b"


def protocol_task(**overrides):
    """A task exactly as the protocol page shows it, with every field filled in."""
    task = {
        "id": TASK_ID,
        "scheduler_id": "boefje",
        "schedule_id": "6f7b2e3c-2a6c-4a43-8c5e-8d3f2a1b0c9d",
        "organisation": "org",
        "priority": 3,
        "status": "dispatched",
        "type": "boefje",
        "hash": "0f9a",
        "data": {
            "id": TASK_ID,
            "boefje": {"id": "dns-records", "version": "1.2", "oci_image": "ghcr.io/minvws/openkat/dns:latest"},
            "input_ooi": "Hostname|internet|example.com",
            "arguments": {"input": {"name": "example.com"}},
            "organization": "org",
            "runnable_hash": "abc",
            "environment": {"API_KEY": "s3cr3t-value"},
            "started_at": "2024-05-01T10:00:00+02:00",
            "ended_at": None,
        },
        "created_at": "2024-05-01T08:00:00+00:00",
        "modified_at": "2024-05-01T08:00:01.123456+00:00",
    }
    task.update(overrides)
    return task


def broken(path: str, value):
    """A copy of protocol_task() with the field at dotted ``path`` set to ``value`` (or removed: ...)."""
    task = protocol_task()
    *parents, last = path.split(".")
    target = task
    for part in parents:
        target = target[part]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return task


# -- tasks ----------------------------------------------------------------------------------------


def test_a_full_task_parses_into_typed_fields():
    task = Task.from_dict(protocol_task())

    assert task.id == TASK_ID
    assert task.status is TaskStatus.DISPATCHED
    assert task.priority == 3
    assert task.organisation == "org"
    assert task.data.id == TASK_ID
    assert task.data.boefje.id == "dns-records"
    assert task.data.boefje.version == "1.2"
    assert task.data.boefje.oci_image == "ghcr.io/minvws/openkat/dns:latest"
    assert task.data.arguments == {"input": {"name": "example.com"}}
    assert task.data.environment == {"API_KEY": "s3cr3t-value"}
    assert task.data.started_at == datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)
    assert task.data.started_at.utcoffset() == timedelta(hours=2)
    assert task.modified_at.microsecond == 123456


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T08:00:00+00:00", datetime(2024, 5, 1, 8, tzinfo=timezone.utc)),
        ("2024-05-01T08:00:00Z", datetime(2024, 5, 1, 8, tzinfo=timezone.utc)),
        ("2024-05-01T08:00:00.5Z", datetime(2024, 5, 1, 8, 0, 0, 500000, tzinfo=timezone.utc)),
        ("2024-05-01T10:00:00+02:00", datetime(2024, 5, 1, 8, tzinfo=timezone.utc)),
        ("2024-05-01T08:00:00", datetime(2024, 5, 1, 8)),
    ],
)
def test_datetimes_parse_with_or_without_an_offset(text, expected):
    task = Task.from_dict(protocol_task(created_at=text))

    assert task.created_at == expected
    assert (task.created_at.tzinfo is None) == (expected.tzinfo is None)


def test_a_minimal_task_gets_the_protocol_defaults():
    minimal = {
        "id": TASK_ID,
        "data": {"id": TASK_ID, "boefje": {"id": "dns-records"}, "organization": "org"},
    }

    task = Task.from_dict(minimal)

    assert task.status is TaskStatus.QUEUED
    assert task.scheduler_id == "boefje"
    assert task.priority is None
    assert task.data.arguments == {}
    assert task.data.environment is None
    assert task.data.input_ooi is None
    assert task.data.boefje.version is None
    assert task.data.started_at is None


def test_the_factory_builds_a_protocol_task():
    raw = make_task("nmap", oci_image="img", version="2", environment={"A": "b"}, deduplication_key="k")

    task = Task.from_dict(raw)

    assert task.id == task.data.id
    assert task.status is TaskStatus.QUEUED
    assert task.data.boefje.id == "nmap"
    assert task.data.environment == {"A": "b"}
    assert task.deduplication_key == "k"
    assert task.created_at.tzinfo is not None


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("data.boefje.id", None, "task.data.boefje.id: expected a non-empty string, got null"),
        ("data.boefje.id", "", "task.data.boefje.id: expected a non-empty string, got string ''"),
        ("data.boefje.id", ..., "task.data.boefje.id: missing"),
        ("data.boefje", "dns", "task.data.boefje: expected an object, got string 'dns'"),
        ("data.boefje.version", 2, "task.data.boefje.version: expected a string or null, got number 2"),
        ("data", ..., "task.data: missing"),
        ("data", [], "task.data: expected an object, got a list"),
        ("id", None, "task.id: expected a non-empty string, got null"),
        ("id", 7, "task.id: expected a non-empty string, got number 7"),
        ("data.id", ..., "task.data.id: missing"),
        ("data.organization", None, "task.data.organization: expected a string, got null"),
        ("data.arguments", [1], "task.data.arguments: expected an object, got a list"),
        ("data.environment", {"API_KEY": 1}, "task.data.environment.API_KEY: expected a string, got a number"),
        ("data.environment", "x=y", "task.data.environment: expected an object, got a string"),
        ("data.started_at", "yesterday", "task.data.started_at: expected an ISO 8601 datetime, got string 'yesterday'"),
        ("created_at", 1714550400, "task.created_at: expected an ISO 8601 datetime, got number 1714550400"),
        ("priority", "1", "task.priority: expected an integer, got string '1'"),
        ("priority", True, "task.priority: expected an integer, got true"),
        (
            "status",
            "done",
            "task.status: expected one of pending, queued, dispatched, running, completed, failed, cancelled, "
            "got string 'done'",
        ),
        ("organisation", 5, "task.organisation: expected a string or null, got number 5"),
    ],
)
def test_a_broken_task_names_the_field_and_the_problem(path, value, message):
    with pytest.raises(ParseError) as caught:
        Task.from_dict(broken(path, value))

    assert str(caught.value) == message
    assert caught.value.path == message.split(":")[0]


def test_a_task_that_is_not_an_object_is_refused():
    with pytest.raises(ParseError, match=r"^task: expected an object, got a list$"):
        Task.from_dict([protocol_task()])


def test_parse_errors_are_value_errors_of_the_library():
    with pytest.raises(ParseError) as caught:
        Task.from_dict({})

    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, BoefjeRuntimeError)
    assert caught.value.problem == "missing"


def test_a_long_wrong_value_is_shortened_in_the_message():
    with pytest.raises(ParseError) as caught:
        Task.from_dict(broken("data.boefje.version", 1.5))
    assert str(caught.value).endswith("got number 1.5")

    with pytest.raises(ParseError) as caught:
        Task.from_dict(broken("created_at", "x" * 100))
    assert str(caught.value).endswith("got string '" + "x" * 37 + "...'")


# -- unknown fields and secrets ---------------------------------------------------------------------


def test_unknown_fields_round_trip_top_level_in_data_and_in_boefje():
    payload = protocol_task(deduplication_key="dedup-1", added_later={"nested": [1, 2]})
    payload["data"]["deduplication_key"] = "dedup-data"
    payload["data"]["boefje"]["name"] = "DNS records"
    sent = copy.deepcopy(payload)

    task = Task.from_dict(payload)
    again = task.to_dict()

    assert again["deduplication_key"] == "dedup-1"
    assert again["added_later"] == {"nested": [1, 2]}
    assert again["data"]["deduplication_key"] == "dedup-data"
    assert again["data"]["boefje"]["name"] == "DNS records"
    assert task.raw == sent
    assert payload == sent, "parsing must not change the payload"


def test_to_dict_then_from_dict_gives_the_same_task():
    task = Task.from_dict(protocol_task(deduplication_key="k"))

    assert Task.from_dict(task.to_dict()) == task


def test_to_dict_writes_every_protocol_field():
    written = Task.from_dict(protocol_task()).to_dict()

    assert set(written) >= {
        "id", "scheduler_id", "schedule_id", "organisation", "priority", "status", "type", "hash", "data",
        "created_at", "modified_at",
    }
    assert set(written["data"]) >= {
        "id", "boefje", "input_ooi", "arguments", "organization", "runnable_hash", "environment", "started_at",
        "ended_at",
    }
    assert written["status"] == "dispatched"
    assert written["data"]["started_at"] == "2024-05-01T10:00:00+02:00"


@pytest.mark.parametrize(
    ("top", "in_data", "expected"),
    [("a", None, "a"), (None, "b", "b"), ("a", "b", "a"), (None, None, None), ("", None, None), (5, None, None)],
)
def test_the_deduplication_key_is_read_where_the_api_left_it(top, in_data, expected):
    payload = protocol_task()
    if top is not None:
        payload["deduplication_key"] = top
    if in_data is not None:
        payload["data"]["deduplication_key"] = in_data

    assert Task.from_dict(payload).deduplication_key == expected


def test_the_environment_never_shows_in_a_repr():
    task = Task.from_dict(protocol_task())

    assert "s3cr3t-value" not in repr(task)
    assert "s3cr3t-value" not in repr(task.data)
    assert "s3cr3t-value" not in str(task)
    assert "dns-records" in repr(task)


def test_boefje_meta_parses_on_its_own_as_run_receives_it():
    meta = BoefjeMeta.from_dict(protocol_task()["data"])

    assert meta.boefje.id == "dns-records"
    with pytest.raises(ParseError, match=r"^boefje_meta\.boefje\.id: missing$"):
        BoefjeMeta.from_dict({"id": "x", "boefje": {}, "organization": "o"})


# -- pop answers --------------------------------------------------------------------------------------


def test_a_pop_answer_is_accepted_as_a_list_and_as_the_schedulers_envelope():
    tasks = [protocol_task(), make_task()]

    assert parse_task_list(tasks) == tasks
    assert parse_task_list({"results": tasks, "count": 2, "next": None, "previous": None}) == tasks
    assert parse_task_list([]) == []
    assert parse_task_list({"results": []}) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("nope", "pop: expected a list of tasks, got string 'nope'"),
        (None, "pop: expected a list of tasks, got null"),
        ({"items": []}, "pop.results: missing"),
        ({"results": 3}, "pop.results: expected a list of tasks, got number 3"),
        ({"results": None}, "pop.results: expected a list of tasks, got null"),
    ],
)
def test_a_broken_pop_answer_is_refused(body, message):
    with pytest.raises(ParseError) as caught:
        parse_task_list(body)

    assert str(caught.value) == message


# -- one-shot input and output ------------------------------------------------------------------------


def test_the_input_answer_parses():
    url = f"http://127.0.0.1:8000/api/v0/tasks/{TASK_ID}"

    given = BoefjeInput.from_dict({"task": protocol_task(status="running"), "output_url": url})

    assert given.output_url == url
    assert given.task.status is TaskStatus.RUNNING
    assert given.to_dict()["output_url"] == url
    assert given.to_dict()["task"]["id"] == TASK_ID


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"task": protocol_task()}, "input.output_url: missing"),
        ({"task": protocol_task(), "output_url": ""}, "input.output_url: expected a non-empty string, got string ''"),
        ({"output_url": "http://x"}, "input.task: missing"),
        (
            {"task": broken("data.boefje.id", None), "output_url": "http://x"},
            "input.task.data.boefje.id: expected a non-empty string, got null",
        ),
        ("<html>", "input: expected an object, got string '<html>'"),
    ],
)
def test_a_broken_input_names_the_field(body, message):
    with pytest.raises(ParseError) as caught:
        BoefjeInput.from_dict(body)

    assert str(caught.value) == message


def test_an_output_parses_with_files_and_without():
    output = BoefjeOutput.from_dict(
        {"status": "COMPLETED", "files": [{"name": "0", "content": "aGk=", "tags": ["text/plain", "boefje/x"]}]}
    )

    assert output.status is OutputStatus.COMPLETED
    assert output.files == [OutputFile(name="0", content="aGk=", tags=["text/plain", "boefje/x"])]
    assert output.to_dict() == {
        "status": "COMPLETED",
        "files": [{"name": "0", "content": "aGk=", "tags": ["text/plain", "boefje/x"]}],
    }
    assert BoefjeOutput.from_dict({"status": "FAILED", "files": None}).files == []
    assert BoefjeOutput.from_dict({"status": "FAILED"}).to_dict() == {"status": "FAILED", "files": []}


def test_an_output_file_without_tags_keeps_null():
    file = OutputFile.from_dict({"name": "0", "content": ""})

    assert file.tags is None
    assert file.to_dict() == {"name": "0", "content": "", "tags": None}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"status": "DONE"}, "output.status: expected one of COMPLETED, FAILED, got string 'DONE'"),
        ({"status": "completed"}, "output.status: expected one of COMPLETED, FAILED, got string 'completed'"),
        ({"files": []}, "output.status: missing"),
        ({"status": "COMPLETED", "files": {"0": "x"}}, "output.files: expected a list or null, got an object"),
        ({"status": "COMPLETED", "files": [3]}, "output.files[0]: expected an object, got number 3"),
        ({"status": "COMPLETED", "files": [{"content": ""}]}, "output.files[0].name: missing"),
        ({"status": "COMPLETED", "files": [{"name": "0"}]}, "output.files[0].content: missing"),
        (
            {"status": "COMPLETED", "files": [{"name": "0", "content": "", "tags": "text/plain"}]},
            "output.files[0].tags: expected a list of strings or null, got string 'text/plain'",
        ),
        (
            {"status": "COMPLETED", "files": [{"name": "0", "content": "", "tags": ["a/b", 1]}]},
            "output.files[0].tags[1]: expected a string, got number 1",
        ),
    ],
)
def test_a_broken_output_names_the_field(body, message):
    with pytest.raises(ParseError) as caught:
        BoefjeOutput.from_dict(body)

    assert str(caught.value) == message


def test_statuses_are_their_wire_strings():
    assert TaskStatus("running") is TaskStatus.RUNNING
    assert TaskStatus.COMPLETED == "completed"
    assert OutputStatus.FAILED == "FAILED"
