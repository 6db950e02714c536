"""Running one boefje for one task: environment isolation, output encoding, and every way to fail."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timezone
from typing import Any

import pytest

from boefje_runtime import environment
from boefje_runtime.environment import redact, task_environment
from boefje_runtime.execution import (
    DEFAULT_MAX_OUTPUT_BYTES,
    ExecutionResult,
    execute,
    failure_output,
)
from boefje_runtime.models import BoefjeMeta, OutputStatus
from boefje_runtime.plugins import Boefje, BoefjeRegistry

SECRET = "s3cr3t-api-key"


@pytest.fixture(autouse=True)
def _no_test_variables_leak():
    yield
    assert not [name for name in os.environ if name.startswith("BRT_TEST_")]


def meta(boefje_id: str = "my-boefje", version: str | None = "1.2", environment: dict | None = None,
         **extra: Any) -> dict[str, Any]:
    """A task's ``data`` as the Boefje API sends it."""
    return {
        "id": "1b9d0c3e-0000-4000-8000-000000000001",
        "boefje": {"id": boefje_id, "version": version, "oci_image": None},
        "input_ooi": "Hostname|internet|example.com",
        "arguments": {"input": {"name": "example.com"}},
        "organization": "org",
        "runnable_hash": None,
        "environment": environment,
        "started_at": None,
        "ended_at": None,
        **extra,
    }


def boefje(run: Callable[[dict], Any], boefje_id: str = "my-boefje", version: str | None = "1.2") -> Boefje:
    return BoefjeRegistry().register(boefje_id, run, version=version)


def files(result: ExecutionResult) -> list[tuple[str, bytes, list[str] | None]]:
    return [(f.name, base64.b64decode(f.content), f.tags) for f in result.output.files]


def error_text(result: ExecutionResult) -> str:
    assert result.output.status is OutputStatus.FAILED
    [(name, content, tags)] = files(result)
    assert (name, tags[0]) == ("0", "error/boefje")
    return content.decode()


# --- the environment -------------------------------------------------------------------------------------------


def test_the_tasks_environment_is_there_during_the_call_only():
    seen = {}

    def run(boefje_meta):
        seen.update({name: os.environ.get(name) for name in ("BRT_TEST_KEY", "BRT_TEST_OTHER")})
        return []

    result = execute(boefje(run), meta(environment={"BRT_TEST_KEY": "first"}))

    assert result.output.status is OutputStatus.COMPLETED
    assert seen == {"BRT_TEST_KEY": "first", "BRT_TEST_OTHER": None}
    assert "BRT_TEST_KEY" not in os.environ


def test_two_consecutive_tasks_do_not_see_each_others_variables():
    seen = []

    def run(boefje_meta):
        seen.append((os.environ.get("BRT_TEST_A"), os.environ.get("BRT_TEST_B")))
        os.environ["BRT_TEST_SET_BY_BOEFJE"] = "left behind?"
        return []

    execute(boefje(run), meta(environment={"BRT_TEST_A": "task one"}))
    execute(boefje(run), meta(environment={"BRT_TEST_B": "task two"}))

    assert seen == [("task one", None), (None, "task two")]
    assert "BRT_TEST_SET_BY_BOEFJE" not in os.environ


def test_overwritten_and_deleted_variables_are_restored(monkeypatch):
    monkeypatch.setenv("BRT_TEST_SHARED", "the worker's own value")
    monkeypatch.setenv("BRT_TEST_DELETED", "kept")

    def run(boefje_meta):
        assert os.environ["BRT_TEST_SHARED"] == "the task's value"
        del os.environ["BRT_TEST_DELETED"]
        raise RuntimeError("and the boefje fails too")

    result = execute(boefje(run), meta(environment={"BRT_TEST_SHARED": "the task's value"}))

    assert result.output.status is OutputStatus.FAILED
    assert os.environ["BRT_TEST_SHARED"] == "the worker's own value"
    assert os.environ["BRT_TEST_DELETED"] == "kept"


def test_a_boefje_on_disk_reads_its_settings_with_getenv(tree):
    registry = BoefjeRegistry.discover(tree("openkat"))
    reader = registry.find("env-reader")

    with_key = execute(reader, meta("env-reader", "2", environment={"API_KEY": "key-of-org-a"}))
    without = execute(reader, meta("env-reader", "2"))

    assert files(with_key) == [("0", b"key-of-org-a", ["text/plain", "boefje/env-reader", "boefje/env-reader-2"])]
    assert files(without)[0][1] == b"<unset>"


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        (["not", "an", "object"], "invalid task: environment must be an object of strings, got list"),
        ({"BRT_TEST_X": 1}, "invalid task: environment.BRT_TEST_X: expected a string without NUL, got int"),
        ({"BAD=NAME": "x"}, "invalid task: environment: invalid variable name 'BAD=NAME'"),
    ],
)
def test_an_environment_that_cannot_be_applied_fails_the_task_before_the_boefje_runs(environment, message):
    calls = []

    result = execute(boefje(calls.append), meta(environment=environment))

    assert error_text(result) == message and result.error == message
    assert calls == []


def test_keyboard_interrupt_propagates_and_the_environment_is_still_restored():
    def run(boefje_meta):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(boefje(run), meta(environment={"BRT_TEST_INTERRUPTED": "x"}))

    assert "BRT_TEST_INTERRUPTED" not in os.environ


@pytest.mark.parametrize("store", ["encoded", "decoded"])
def test_task_environment_restores_exactly_what_the_task_and_the_boefje_changed(monkeypatch, store):
    """Both ways of restoring: CPython's encoded store (the fast path) and the decoded fallback."""
    if store == "decoded":
        monkeypatch.setattr(environment, "_raw_environ", lambda: None)
    monkeypatch.setenv("BRT_TEST_KEEP", "before")
    monkeypatch.setenv("BRT_TEST_DELETED_BY_BOEFJE", "before")
    monkeypatch.setenv("BRT_TEST_CHANGED_BY_BOEFJE", "before")
    before = dict(os.environ)

    with task_environment({"BRT_TEST_KEEP": "during", "BRT_TEST_NEW": "during"}):
        assert (os.environ["BRT_TEST_KEEP"], os.environ["BRT_TEST_NEW"]) == ("during", "during")
        os.environ["BRT_TEST_SET_BY_BOEFJE"] = "x"
        del os.environ["BRT_TEST_DELETED_BY_BOEFJE"]
        os.environ["BRT_TEST_CHANGED_BY_BOEFJE"] = "changed"

    assert dict(os.environ) == before
    assert os.getenv("BRT_TEST_DELETED_BY_BOEFJE") == "before"  # the process's real environment too
    assert subprocess_environment()["BRT_TEST_CHANGED_BY_BOEFJE"] == "before"
    assert "BRT_TEST_SET_BY_BOEFJE" not in subprocess_environment()


def subprocess_environment() -> dict[str, str]:
    """The environment a child process inherits (putenv/unsetenv, not only the os.environ dict)."""
    out = subprocess.run([sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return json.loads(out)


# --- what the boefje receives ----------------------------------------------------------------------------------


def test_the_boefje_gets_the_tasks_data_with_started_at_and_unknown_fields_kept():
    received = []
    task_data = meta(deduplication_key="abc", arguments={"input": {"nested": ["value"]}})

    def run(boefje_meta):
        received.append(dict(boefje_meta))
        boefje_meta["arguments"]["input"]["nested"].append("changed by the boefje")
        return []

    result = execute(boefje(run), task_data)

    [got] = received
    assert got["deduplication_key"] == "abc" and got["input_ooi"] == "Hostname|internet|example.com"
    assert got["started_at"] == result.started_at.isoformat()
    assert task_data["started_at"] is None  # the task itself is left alone...
    assert task_data["arguments"]["input"]["nested"] == ["value"]  # ...down to its nested data


def test_a_parsed_boefje_meta_is_accepted_too():
    received = []

    execute(boefje(received.append), BoefjeMeta.from_dict(meta()))

    assert received[0]["boefje"]["id"] == "my-boefje" and received[0]["started_at"] is not None


def test_the_result_says_when_it_ran():
    result = execute(boefje(lambda m: []), meta())

    assert result.started_at.tzinfo is timezone.utc and result.ended_at.tzinfo is timezone.utc
    assert result.started_at <= result.ended_at and result.duration >= 0
    assert result.error is None and not result.failed


# --- output ----------------------------------------------------------------------------------------------------


def test_each_returned_pair_becomes_a_base64_file_named_by_its_index():
    result = execute(boefje(lambda m: [({"text/plain"}, "tekst ✓"), ({"application/octet-stream"}, b"\x00\xff")]),
                     meta())

    assert result.output.status is OutputStatus.COMPLETED
    assert [f.content for f in result.output.files][1] == base64.b64encode(b"\x00\xff").decode()
    assert files(result) == [
        ("0", "tekst ✓".encode(), ["text/plain", "boefje/my-boefje", "boefje/my-boefje-1.2"]),
        ("1", b"\x00\xff", ["application/octet-stream", "boefje/my-boefje", "boefje/my-boefje-1.2"]),
    ]


def test_tags_that_are_not_mime_types_are_dropped_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="boefje_runtime.execution")
    tags = ["text/html", "json", "a/b", "boefje/my-boefje", "openkat/nmap-output", "text/html"]

    result = execute(boefje(lambda m: [(tags, b"<html/>")]), meta())

    assert files(result)[0][2] == [
        "boefje/my-boefje", "openkat/nmap-output", "text/html",  # the boefje's own, sorted, once each
        "boefje/my-boefje-1.2",  # then the defaults it did not give itself
    ]
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == ("Boefje my-boefje: dropped tags that do not look like MIME types from file 0: "
                                   "'a/b', 'json'")


def test_without_a_version_only_the_id_tag_is_added():
    result = execute(boefje(lambda m: [(set(), b"x")], version=None), meta(version=None))

    assert files(result)[0][2] == ["boefje/my-boefje"]


def test_default_tags_name_the_boefje_the_task_asked_for():
    """Found through the oci_image fallback, the package's own id is not the task's."""
    package = boefje(lambda m: [(("text/plain",), b"x")], boefje_id="nmap", version="9")

    result = execute(package, meta("nmap-udp", version="1"))

    assert files(result)[0][2] == ["text/plain", "boefje/nmap-udp", "boefje/nmap-udp-1"]


@pytest.mark.parametrize("empty", [[], (), None, iter([])], ids=["list", "tuple", "None", "iterator"])
def test_an_empty_result_completes_without_files(empty):
    result = execute(boefje(lambda m: empty), meta())

    assert result.output.status is OutputStatus.COMPLETED and result.output.files == []
    assert result.output.to_dict() == {"status": "COMPLETED", "files": []}


def test_a_generator_is_collected_while_the_environment_is_applied():
    def run(boefje_meta):
        yield {"text/plain"}, os.environ["BRT_TEST_GEN"]

    result = execute(boefje(run), meta(environment={"BRT_TEST_GEN": "from the task"}))

    assert files(result)[0][1] == b"from the task"


# --- failures --------------------------------------------------------------------------------------------------


def test_an_exception_becomes_an_error_file_with_the_boefjes_traceback():
    def scan_the_target(boefje_meta):
        raise ConnectionError("target refused the connection")

    result = execute(boefje(scan_the_target), meta())

    text = error_text(result)
    assert text.startswith("Traceback (most recent call last):\n")
    assert "in scan_the_target" in text and text.endswith("ConnectionError: target refused the connection\n")
    assert "boefje_runtime/execution.py" not in text  # our own frames are not the boefje author's business
    assert files(result)[0][2] == ["error/boefje", "boefje/my-boefje", "boefje/my-boefje-1.2"]
    assert result.error == "ConnectionError: target refused the connection" and result.failed


def test_an_exception_raised_while_a_generator_runs_is_a_boefje_failure():
    def run(boefje_meta):
        yield {"text/plain"}, b"partial"
        raise ValueError("half way")

    result = execute(boefje(run), meta())

    assert "ValueError: half way" in error_text(result) and result.error == "ValueError: half way"


def test_sys_exit_in_a_boefje_fails_the_task_instead_of_ending_the_worker():
    def run(boefje_meta):
        sys.exit(3)

    result = execute(boefje(run), meta(environment={"BRT_TEST_EXIT": "x"}))

    assert error_text(result).endswith("SystemExit: 3\n")
    assert result.error == "SystemExit: 3"
    assert "BRT_TEST_EXIT" not in os.environ


def test_a_plugin_that_cannot_be_imported_fails_its_task(tree):
    registry = BoefjeRegistry.discover(tree("broken"))

    result = execute(registry.find("import-error"), meta("import-error"))

    text = error_text(result)
    assert text.startswith("boefje 'import-error' at ")
    assert "is broken: cannot import brk_import_error.main: ModuleNotFoundError" in text
    traceback = text.split("\n\n", 1)[1]
    assert traceback.splitlines()[:2] == ["Traceback (most recent call last):",
                                          f'  File "{registry.root}/brk_import_error/main.py", line 1, in <module>']
    assert result.error.startswith("boefje 'import-error' at ") and "\n" not in result.error


def test_a_hand_made_loader_that_raises_fails_the_task():
    def loader():
        raise OSError("code volume not mounted")

    result = execute(Boefje("my-boefje", loader=loader), meta())

    assert result.error == "boefje 'my-boefje' cannot be loaded: OSError: code volume not mounted"
    assert error_text(result).endswith("OSError: code volume not mounted\n")


def test_boefje_meta_that_is_not_an_object_fails_the_task():
    result = execute(boefje(lambda m: []), "not a task")

    assert error_text(result) == "invalid task: boefje_meta must be an object"
    assert files(result)[0][2] == ["error/boefje", "boefje/my-boefje", "boefje/my-boefje-1.2"]


class Weird:
    def __iter__(self):
        return iter([(["text/plain"], Weird)])


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        (42, "expected a list of (tags, content) pairs, got int"),
        ("just text", "expected a list of (tags, content) pairs, got str"),
        (b"just bytes", "expected a list of (tags, content) pairs, got bytes"),
        ({"text/plain": b"x"}, "expected a list of (tags, content) pairs, got dict"),
        ([b"no tags"], "item 0: expected a (tags, content) pair, got bytes"),
        ([({"text/plain"},)], "item 0: expected a (tags, content) pair, got a tuple of 1 items"),
        ([({"a/b"}, b"x", "extra")], "item 0: expected a (tags, content) pair, got a tuple of 3 items"),
        ([({"text/plain"}, b"ok"), ({"text/plain"}, 5)], "item 1: content must be bytes or str, got int"),
        ([({"text/plain"}, None)], "item 0: content must be bytes or str, got NoneType"),
        ([("text/plain", b"x")], "item 0: tags must be a set, list, tuple or frozenset of strings, got str"),
        ([(None, b"x")], "item 0: tags must be a set, list, tuple or frozenset of strings, got NoneType"),
        ([({"text/plain", 7}, b"x")], "item 0: tags must be strings, got int"),
        ([({"text/plain"}, "\udc80")], "item 0: content is a str that is not valid UTF-8 (surrogates not allowed "
                                       "at position 0)"),
        (Weird(), "item 0: content must be bytes or str, got type"),
    ],
)
def test_a_result_of_the_wrong_shape_fails_and_says_what_was_wrong(returned, problem):
    result = execute(boefje(lambda m: returned), meta())

    assert error_text(result) == f"boefje returned an invalid result: {problem}"
    assert result.error == f"boefje returned an invalid result: {problem}"


# --- output size -----------------------------------------------------------------------------------------------


def test_the_default_limit_is_64_mib():
    assert DEFAULT_MAX_OUTPUT_BYTES == 64 * 1024 * 1024


def test_output_over_the_limit_fails_with_the_size_and_the_limit():
    result = execute(boefje(lambda m: [({"text/plain"}, b"x" * 60), ({"text/plain"}, "y" * 50)]), meta(),
                     max_output_bytes=100)

    assert error_text(result) == ("boefje output too large: at least 110 bytes in its first 2 files, "
                                  "over the limit of 100 bytes (max_output_bytes)")
    assert result.error == error_text(result)


def test_output_exactly_at_the_limit_is_fine_and_none_means_no_limit():
    at_limit = execute(boefje(lambda m: [({"text/plain"}, "é" * 50)]), meta(), max_output_bytes=100)  # 2 bytes each
    unlimited = execute(boefje(lambda m: [({"text/plain"}, b"x" * 1000)]), meta(), max_output_bytes=None)

    assert at_limit.output.status is OutputStatus.COMPLETED
    assert unlimited.output.status is OutputStatus.COMPLETED


def test_a_generator_is_not_drained_past_the_limit():
    produced = []

    def run(boefje_meta):
        for index in range(1000):
            produced.append(index)
            yield {"text/plain"}, b"z" * 10

    result = execute(boefje(run), meta(), max_output_bytes=25)

    assert result.failed and produced == [0, 1, 2]


# --- secrets ---------------------------------------------------------------------------------------------------


def test_environment_values_are_redacted_from_error_files_and_summaries():
    def run(boefje_meta):
        key = os.environ["BRT_TEST_API_KEY"]
        raise PermissionError(f"login with {key!r} refused; user {os.environ['BRT_TEST_USER']}")

    result = execute(boefje(run), meta(environment={"BRT_TEST_API_KEY": SECRET, "BRT_TEST_USER": "bob"}))

    text = error_text(result)
    assert SECRET not in text and SECRET not in result.error
    assert "login with '***' refused; user bob" in text  # values under 4 characters are left alone
    assert result.error == "PermissionError: login with '***' refused; user bob"


def test_secrets_are_redacted_from_invalid_result_messages_and_tag_warnings(caplog):
    caplog.set_level(logging.WARNING, logger="boefje_runtime.execution")
    environment = {"BRT_TEST_TOKEN": SECRET}

    bad_tag = execute(boefje(lambda m: [([SECRET, "text/plain"], b"fine")]), meta(environment=environment))

    assert SECRET not in caplog.text and "'***'" in caplog.text
    assert bad_tag.output.status is OutputStatus.COMPLETED


def test_a_successful_output_is_left_alone_even_when_it_holds_a_secret():
    result = execute(boefje(lambda m: [({"text/plain"}, os.environ["BRT_TEST_TOKEN"])]),
                     meta(environment={"BRT_TEST_TOKEN": SECRET}))

    assert files(result)[0][1] == SECRET.encode()


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("token abcd and abcdef", {"A": "abcd", "B": "abcdef"}, "token *** and ***"),  # longest first
        ("short: abc", {"A": "abc"}, "short: abc"),
        ("repr: 'line\\nbreak'", ["line\nbreak"], "repr: '***'"),  # as a traceback shows it
        ('json: "quo\\"te"', ['quo"te'], 'json: "***"'),
        ("nothing to hide", None, "nothing to hide"),
        ("one secret given as a string", "secret", "one *** given as a string"),
        ("not text: 12345", {"N": 12345}, "not text: 12345"),
    ],
)
def test_redact(text, secrets, expected):
    assert redact(text, secrets) == expected


# --- failure_output --------------------------------------------------------------------------------------------


def test_failure_output_is_one_error_file_with_the_default_tags():
    output = failure_output("nmap", "1.0", f"worker died (signal 9) holding {SECRET}", secrets={"K": SECRET})

    assert output.to_dict() == {
        "status": "FAILED",
        "files": [{
            "name": "0",
            "content": base64.b64encode(b"worker died (signal 9) holding ***").decode(),
            "tags": ["error/boefje", "boefje/nmap", "boefje/nmap-1.0"],
        }],
    }
    assert failure_output("nmap", None, "timed out").files[0].tags == ["error/boefje", "boefje/nmap"]
