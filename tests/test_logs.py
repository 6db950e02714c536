"""Log lines: the seed's text shape, JSON objects, bound context, and secrets masked everywhere."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
import warnings
from dataclasses import dataclass

import pytest

from boefje_runtime import logs
from boefje_runtime.logs import bind, configure_logging, log_context, mask_secrets, secret_values

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d \[(debug|info|warning|error)\] ")


@pytest.fixture
def capture():
    """Configure logging into a StringIO; restore the root logger and the bound context afterwards."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    stream = io.StringIO()

    def configure(fmt: str = "text", level: str = "DEBUG") -> io.StringIO:
        configure_logging(level, fmt, stream)
        return stream

    yield configure
    for handler in [h for h in root.handlers if h not in saved_handlers]:
        root.removeHandler(handler)
    root.setLevel(saved_level)
    logs.unbind_all()
    logging.captureWarnings(False)


log = logging.getLogger("tests.logs")


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- text ---------------------------------------------------------------------------------------


def test_text_lines_look_like_the_seed(capture):
    stream = capture("text")
    log.info("Starting runtime")
    log.warning("Something odd")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert TEXT_LINE.match(lines[0]) and lines[0].endswith(" [info] Starting runtime")
    assert " [warning] Something odd" in lines[1]


def test_text_lines_carry_context_and_extra_as_key_value(capture):
    stream = capture("text")
    bind(role="worker")
    with log_context(task_id="t-1", boefje_id="dns-records"):
        log.info("Running", extra={"files": 2, "note": "two words"})
    log.info("After")
    first, second = stream.getvalue().splitlines()
    assert first.endswith('Running role=worker task_id=t-1 boefje_id=dns-records files=2 note="two words"')
    assert second.endswith("After role=worker")


def test_a_text_line_is_one_line_even_with_a_traceback_and_line_breaks(capture):
    stream = capture("text")
    secret = 'p"a\\ss\'wörd'
    with secret_values([secret]):
        try:
            raise RuntimeError(f"boom\nsecond line {secret!r}")
        except RuntimeError:
            log.exception("Crashed\nhere")
    (line,) = stream.getvalue().splitlines()
    assert TEXT_LINE.match(line)
    message, _, traceback = line.partition(" traceback=")
    assert message.endswith("[error] Crashed\\nhere")
    text = json.loads(traceback)  # a quoted field holding the whole traceback
    assert text.startswith("Traceback (most recent call last):") and "RuntimeError: boom\nsecond line '***'" in text
    assert secret not in text and repr(secret)[1:-1] not in text


def test_level_filters_lines(capture):
    stream = capture("text", level="WARNING")
    log.info("hidden")
    log.error("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()


def test_configuring_twice_replaces_the_handler(capture):
    capture("text")
    stream = capture("json")
    log.info("once")
    assert len(stream.getvalue().splitlines()) == 1
    assert json_lines(stream)[0]["message"] == "once"


def test_bad_level_or_format_is_refused():
    with pytest.raises(ValueError, match="TRACE"):
        configure_logging("TRACE", "text", io.StringIO())
    with pytest.raises(ValueError, match="xml"):
        configure_logging("INFO", "xml", io.StringIO())


# -- JSON ---------------------------------------------------------------------------------------


def test_json_lines_parse_and_carry_context_and_pid(capture):
    stream = capture("json")
    bind(role="worker")
    with log_context(task_id="t-42", organisation="org"):
        log.info("Running %s", "dns", extra={"files": 3})
        with log_context(boefje_id="dns"):
            log.error("Failed")
    first, second = json_lines(stream)
    assert first["message"] == "Running dns"
    assert first["level"] == "info"
    assert first["logger"] == "tests.logs"
    assert first["pid"] == os.getpid()
    assert first["task_id"] == "t-42" and first["organisation"] == "org" and first["role"] == "worker"
    assert first["files"] == 3
    assert re.match(r"^\d{4}-\d\d-\d\dT", first["timestamp"])
    assert second["level"] == "error" and second["boefje_id"] == "dns" and second["task_id"] == "t-42"


def test_json_keeps_reserved_keys_and_renames_clashing_fields(capture):
    stream = capture("json")
    bind(pid=os.getpid())  # the same value: not repeated
    log.info("hello", extra={"level": "custom"})
    (line,) = json_lines(stream)
    assert line["level"] == "info" and line["level_"] == "custom"
    assert "pid_" not in line


def test_json_exception_is_one_line_with_the_traceback_inside(capture):
    stream = capture("json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("Crashed")
    (line,) = json_lines(stream)
    assert "RuntimeError: boom" in line["exc_info"]


def test_context_is_per_thread(capture):
    stream = capture("json")

    def other():
        log.info("other thread")

    with log_context(task_id="mine"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    (line,) = json_lines(stream)
    assert "task_id" not in line


def test_json_formatter_is_python_json_logger_without_deprecation_warnings(capture):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        capture("json")
        log.info("no warnings")


def test_python_json_logger_v2_module_is_used_when_v3_is_missing(monkeypatch):
    class V2Formatter(logging.Formatter):
        pass

    v2 = types.ModuleType("pythonjsonlogger.jsonlogger")
    v2.JsonFormatter = V2Formatter
    monkeypatch.setitem(sys.modules, "pythonjsonlogger.json", None)  # import fails, as in v2
    monkeypatch.setitem(sys.modules, "pythonjsonlogger.jsonlogger", v2)
    assert logs._json_formatter_class() is V2Formatter


def test_python_json_logger_is_not_imported_for_text():
    code = (
        "import sys, io; from boefje_runtime.logs import configure_logging; "
        "configure_logging('INFO', 'text', io.StringIO()); print('pythonjsonlogger' in sys.modules)"
    )
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"


# -- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_masked_in_messages_extras_and_tracebacks(capture, fmt):
    stream = capture(fmt)
    secret = "hunter2-s3cr3t"
    with secret_values({"API_KEY": secret}):
        log.info("key is %s", secret, extra={"header": f"Bearer {secret}"})
        try:
            raise ValueError(f"bad key {secret!r}")
        except ValueError:
            log.exception("failed")
        with log_context(token=secret):
            log.info("context")
    output = stream.getvalue()
    assert secret not in output
    assert output.count("***") >= 4
    if fmt == "json":
        assert len(json_lines(stream)) == 3


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_with_quotes_and_backslashes_are_masked_in_escaped_forms(capture, fmt):
    stream = capture(fmt)
    secret = 'p"a\\ss\'wörd'
    with secret_values([secret]):
        log.info("raw %s", secret)
        try:
            raise ValueError(repr(secret))
        except ValueError:
            log.exception("repr")
    output = stream.getvalue()
    assert secret not in output
    assert repr(secret)[1:-1] not in output
    assert json.dumps(secret)[1:-1] not in output
    if fmt == "json":
        assert len(json_lines(stream)) == 2


def test_a_secret_that_looks_like_json_does_not_break_json_lines(capture):
    stream = capture("json")
    with secret_values(['", "level']):
        log.info('text with ", "level inside')
    (line,) = json_lines(stream)
    assert line["level"] == "info" and "***" in line["message"]


def test_short_values_are_not_masked_and_masking_ends_with_the_block(capture):
    stream = capture("text")
    with secret_values(["yes", "long-secret"]):
        log.info("yes long-secret")
    log.info("yes long-secret")
    inside, after = stream.getvalue().splitlines()
    assert inside.endswith("yes ***")
    assert after.endswith("yes long-secret")


def test_nested_blocks_share_a_value_until_both_end():
    with secret_values(["shared-secret"]):
        with secret_values(["shared-secret"]):
            pass
        assert mask_secrets("shared-secret") == "***"
    assert mask_secrets("shared-secret") == "shared-secret"


def test_longest_secret_is_masked_whole():
    with secret_values(["abcd", "abcdefgh"]):
        assert mask_secrets("xx abcdefgh yy") == "xx *** yy"


def test_multi_line_secrets_are_masked_line_by_line():
    key = "-----BEGIN KEY-----\nMIIBsecretline\n-----END KEY-----"
    with secret_values([key]):
        assert "MIIBsecretline" not in mask_secrets("line: MIIBsecretline")


def test_registered_secrets_are_masked_in_other_threads(capture):
    stream = capture("text")
    with secret_values(["thread-secret"]):
        thread = threading.Thread(target=lambda: log.info("from the thread: thread-secret"))
        thread.start()
        thread.join(10)
    (line,) = stream.getvalue().splitlines()  # the other thread's line reached the stream...
    assert line.endswith("[info] from the thread: ***")  # ...masked


# -- a worker's log at INFO, end to end ---------------------------------------------------------


@dataclass
class WorkerRun:
    lines: list[dict]
    task_ids: list[str]
    idle_seconds: float
    idle_pops: int


@pytest.fixture(scope="module")
def worker_run(tmp_path_factory) -> WorkerRun:
    """The CLI in worker mode at INFO in JSON: 10 tasks, then 5 s idle, then SIGTERM."""
    from boefje_runtime.testing import BoefjeAPIServer, make_task

    from .helpers import CLI, cli_env, wait_until, write_plugin

    image, plugins = "test/logs:latest", tmp_path_factory.mktemp("plugins")
    write_plugin(plugins / "hello", """
        def run(boefje_meta):
            return [({"text/plain"}, "hello")]
    """, id="hello", oci_image=image)
    with BoefjeAPIServer() as api:
        env = cli_env({"BOEFJES_API": api.url, "OCI_IMAGE": image, "PLUGIN_DIR": str(plugins),
                       "LOGGING_FORMAT": "json", "POLL_INTERVAL": "1"})
        worker = subprocess.Popen(CLI, env=env, stderr=subprocess.PIPE, text=True)
        try:
            ids = [api.enqueue(make_task("hello", oci_image=image, organisation=f"org-{n}",
                                         input_ooi=f"Hostname|internet|h{n}.example")) for n in range(10)]
            wait_until(lambda: all(api.status(task_id) == "completed" for task_id in ids), timeout=60,
                       what="the 10 tasks to complete")
            pops_before_idle, idle_from = api.request_counts().get("pop", 0), time.monotonic()
            time.sleep(5)  # the idle period under test, not a synchronisation
            idle_pops = api.request_counts().get("pop", 0) - pops_before_idle
            idle_seconds = time.monotonic() - idle_from
            worker.send_signal(signal.SIGTERM)
            _, stderr = worker.communicate(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    assert worker.returncode == 0, stderr
    return WorkerRun([json.loads(line) for line in stderr.splitlines()], ids, idle_seconds, idle_pops)


def test_a_worker_logs_a_few_lines_per_task_and_nothing_while_idle(worker_run):
    ids = worker_run.task_ids
    organisation = {task_id: f"org-{n}" for n, task_id in enumerate(ids)}
    about_tasks = [line for line in worker_run.lines if any(task_id in json.dumps(line) for task_id in ids)]
    for line in about_tasks:  # every line that names a task carries its fields
        task_id = line.get("task_id")
        assert task_id in organisation, line
        assert line.get("boefje_id") == "hello" and line.get("organisation") == organisation[task_id], line
    per_task = {task_id: sum(1 for line in about_tasks if line["task_id"] == task_id) for task_id in ids}
    # PATCH, the boefje's result, POST, and the line that ends the task (outcome, exit, duration_s)
    assert all(count <= 4 for count in per_task.values()), per_task
    other = [line["message"] for line in worker_run.lines if line not in about_tasks]
    pops = [message for message in other if "/pop?" in message]
    assert len(pops) <= 10, pops  # only pops that found work are INFO: at most one per task
    # Start-up (5 lines and one per worker) and shutdown (a few); an idle worker logs nothing at INFO.
    assert len(other) - len(pops) <= 12, other


def test_an_idle_worker_pops_a_few_times_per_second_at_most(worker_run):
    assert worker_run.idle_pops <= 3 * worker_run.idle_seconds, worker_run.idle_pops


def test_every_task_has_a_line_that_ends_it_with_outcome_and_duration(worker_run):
    for task_id in worker_run.task_ids:
        endings = [line for line in worker_run.lines if line.get("task_id") == task_id and "outcome" in line]
        assert endings, f"no line ends task {task_id} with its outcome"
        (ending,) = endings
        assert ending["outcome"] == "completed" and isinstance(ending.get("duration_s"), float), ending


def test_a_timed_out_task_is_logged_with_its_fields_by_the_supervisor_too(tmp_path):
    from boefje_runtime.testing import BoefjeAPIServer, make_task

    from .helpers import CLI, cli_env, write_plugin

    image = "test/logs:latest"
    write_plugin(tmp_path / "plugins" / "hang", """
        import time

        def run(boefje_meta):
            time.sleep(60)
    """, id="hang", oci_image=image)
    with BoefjeAPIServer() as api:
        task_id = api.enqueue(make_task("hang", oci_image=image, organisation="org-t"))
        env = cli_env({"BOEFJES_API": api.url, "OCI_IMAGE": image, "PLUGIN_DIR": str(tmp_path / "plugins"),
                       "LOGGING_FORMAT": "json", "POLL_INTERVAL": "0.2", "TASK_TIMEOUT": "1", "BURST": "true"})
        result = subprocess.run(CLI, env=env, capture_output=True, text=True, timeout=60)
        assert api.status(task_id) == "failed"
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    about = [line for line in lines if task_id in json.dumps(line)]
    assert any("timed out" in line["message"] for line in about), about
    for line in about:
        fields = (line.get("task_id"), line.get("boefje_id"), line.get("organisation"))
        assert fields == (task_id, "hang", "org-t"), line
    assert any(line.get("outcome") == "failed" and line.get("exit") == "timed_out"
               and isinstance(line.get("duration_s"), float) for line in about), about


def test_run_worker_mode_masks_the_api_header_values_itself(tmp_path):
    """Embedding run_worker_mode (no CLI) still masks the API header values, for the process."""
    from boefje_runtime.config import RuntimeConfig
    from boefje_runtime.exit_codes import ExitCode
    from boefje_runtime.worker_mode import run_worker_mode

    token = "Bearer hdr-s3cr3t-4471"
    config = RuntimeConfig(boefjes_api="http://127.0.0.1:9", oci_image="test/x:latest", plugin_dir=str(tmp_path),
                           api_headers={"Authorization": token})
    try:
        assert run_worker_mode(config) == ExitCode.USAGE  # an empty plugin folder: refused at start
        assert mask_secrets(f"sent {token}") == "sent ***"
    finally:
        logs._secrets.clear()
