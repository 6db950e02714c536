"""One-shot mode end to end: the real CLI as a subprocess against the test Boefje API.

Each test plants boefjes in OpenKAT's layout (``boefje.json`` + ``main.py``) under ``tmp_path``,
puts a task on the test API, sets it running (the input endpoint answers 403 otherwise) and runs
``boefje-worker INPUT_URL``, then checks the exit code, stderr and what the API received.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from boefje_runtime.config import RuntimeConfig
from boefje_runtime.exit_codes import ExitCode
from boefje_runtime.oneshot import CLOSE_POLICY, origin, run_oneshot
from boefje_runtime.testing import BoefjeAPIServer, make_task

from . import helpers
from .helpers import alive, error_text, refused_port, wait_until, write_plugin

SECRET = "planted-s3cr3t-9f2c"

BOEFJES = {
    "hello": """
        def run(boefje_meta):
            return [({"text/plain", "openkat/hello", "x"}, "hello " + boefje_meta["input_ooi"])]
    """,
    "raiser": """
        def run(boefje_meta):
            raise RuntimeError("the scan broke")
    """,
    "empty": """
        def run(boefje_meta):
            return []
    """,
    "wrong_shape": """
        def run(boefje_meta):
            return "not a list of (tags, content) pairs"
    """,
    "env_reader": """
        import json
        import os

        def run(boefje_meta):
            names = ("TASK_ONLY", "PARENT_ONLY", "BOTH")
            seen = {name: os.environ.get(name) for name in names}
            return [({"application/json"}, json.dumps({"seen": seen, "meta_env": boefje_meta["environment"]}))]
    """,
    "leaker": """
        import logging
        import os

        def run(boefje_meta):
            token = os.environ["API_TOKEN"]
            logging.getLogger("leaker").warning("using token %s", token)
            raise ValueError(f"token {token!r} was refused")
    """,
    "broken": """
        raise ImportError("this plugin cannot be imported")
    """,
    # Starts a child process, writes "<own pid> <child pid>" to arguments.pid_file, then hangs.
    "spawner": """
        import os
        import subprocess
        import sys
        import time

        def run(boefje_meta):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            pid_file = boefje_meta["arguments"]["pid_file"]
            with open(pid_file + ".tmp", "w") as out:
                out.write(f"{os.getpid()} {child.pid}")
            os.rename(pid_file + ".tmp", pid_file)
            time.sleep(600)
    """,
    "big": """
        def run(boefje_meta):
            return [({"text/plain"}, b"x" * 2048)]
    """,
    "exiter": """
        import os

        def run(boefje_meta):
            os._exit(3)
    """,
    # Starts a child, writes "<own pid> <child pid>" to arguments.pid_file, then exits without a result.
    "spawn_and_exit": """
        import os
        import subprocess
        import sys

        def run(boefje_meta):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            pid_file = boefje_meta["arguments"]["pid_file"]
            with open(pid_file + ".tmp", "w") as out:
                out.write(f"{os.getpid()} {child.pid}")
            os.rename(pid_file + ".tmp", pid_file)
            os._exit(4)
    """,
    # Writes its pid to arguments.pid_file, closes every inherited descriptor (the result pipe too:
    # an EOF that does not mean the boefje ended), then hangs.
    "fd_closer": """
        import os
        import time

        def run(boefje_meta):
            pid_file = boefje_meta["arguments"]["pid_file"]
            with open(pid_file + ".tmp", "w") as out:
                out.write(str(os.getpid()))
            os.rename(pid_file + ".tmp", pid_file)
            os.closerange(3, 1024)
            time.sleep(60)
    """,
    "returns_none": """
        def run(boefje_meta):
            return None
    """,
}


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    root = tmp_path / "plugins"
    for name, code in BOEFJES.items():
        write_plugin(root / f"boefje_{name}", code, id=name.replace("_", "-"), name=name,
                     oci_image=f"test/{name}:latest")
    return root


def running_task(api: BoefjeAPIServer, boefje_id: str, **kwargs) -> str:
    """Enqueue a task and set it running, as OpenKAT does before it starts a one-shot container."""
    task_id = api.enqueue(make_task(boefje_id, **kwargs))
    answer = requests.patch(f"{api.url}/api/v0/scheduler/tasks/{task_id}", json={"status": "running"}, timeout=10)
    answer.raise_for_status()
    return task_id


def input_url(api: BoefjeAPIServer, task_id: str) -> str:
    return f"{api.url}/api/v0/tasks/{task_id}"


@contextlib.contextmanager
def one_shot_process(api: BoefjeAPIServer, plugin_dir: Path, task_id: str) -> Iterator[subprocess.Popen]:
    """The one-shot CLI for ``task_id``, for a test that signals it. In a session of its own, so a
    SIGINT to its process group is what a terminal's Ctrl-C does; killed if the test leaves it running."""
    process = subprocess.Popen([*helpers.CLI, "--plugin-dir", str(plugin_dir), input_url(api, task_id)],
                               env=helpers.cli_env(), stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for_the_output_post(api: BoefjeAPIServer, attempts: int = 1) -> None:
    """Until the API has seen ``attempts`` output POSTs (retries included)."""
    wait_until(lambda: sum(record.endpoint == "output" for record in api.request_log()) >= attempts, timeout=30,
               what=f"output POST attempt {attempts}")


def run_cli(url: str, plugin_dir: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 90) -> subprocess.CompletedProcess:
    """``boefje-worker --plugin-dir PLUGIN_DIR ARGS URL``: one-shot mode."""
    return helpers.run_cli("--plugin-dir", str(plugin_dir), *args, url, env=env, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line a failure must print; no traceback anywhere."""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "[error]" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def contents(files: list[dict]) -> list[bytes]:
    return [item["content"] for item in files]


# -- the boefje's outcome does not decide the exit code -------------------------------------------


def test_success_delivers_the_output_and_exits_ok(api, plugin_dir):
    task_id = running_task(api, "hello", input_ooi="Hostname|internet|example.com")
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.OK, result.stderr
    assert api.status(task_id) == "completed"
    (file,) = api.files(task_id)
    assert file["content"] == b"hello Hostname|internet|example.com"
    assert file["name"] == "0"
    assert set(file["tags"]) == {"text/plain", "openkat/hello", "boefje/hello"}
    assert "[error]" not in result.stderr
    assert f'HTTP Request: POST {input_url(api, task_id)} "HTTP/1.1 200 OK"' in result.stderr
    assert result.stdout == ""


def test_boefje_exception_posts_failed_with_the_traceback_and_exits_ok(api, plugin_dir):
    task_id = running_task(api, "raiser")
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.OK, result.stderr
    assert api.status(task_id) == "failed"
    error = error_text(api, task_id)
    assert "RuntimeError: the scan broke" in error
    assert "Traceback" in error


def test_empty_result_still_closes_the_task(api, plugin_dir):
    task_id = running_task(api, "empty")
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.OK, result.stderr
    assert api.status(task_id) == "completed"
    assert api.files(task_id) == []
    assert len(api.outputs(task_id)) == 1


def test_wrong_return_shape_fails_the_task_and_exits_ok(api, plugin_dir):
    task_id = running_task(api, "wrong-shape")
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.OK, result.stderr
    assert api.status(task_id) == "failed"
    assert "invalid result" in error_text(api, task_id)


def test_the_task_environment_is_visible_to_the_boefje_over_the_process_environment(api, plugin_dir):
    task_id = running_task(api, "env-reader", environment={"TASK_ONLY": "from-task", "BOTH": "task-wins"})
    result = run_cli(input_url(api, task_id), plugin_dir, env={"PARENT_ONLY": "from-parent", "BOTH": "parent"})
    assert result.returncode == ExitCode.OK, result.stderr
    (file,) = api.files(task_id)
    answer = json.loads(file["content"])
    assert answer["seen"] == {"TASK_ONLY": "from-task", "PARENT_ONLY": "from-parent", "BOTH": "task-wins"}
    assert answer["meta_env"] == {"TASK_ONLY": "from-task", "BOTH": "task-wins"}


def test_environment_is_restored_after_the_run(api, plugin_dir):
    """In-process: after run_oneshot, the task's variables are gone from os.environ again."""
    task_id = running_task(api, "env-reader", environment={"TASK_ONLY": "from-task"})
    os.environ.pop("TASK_ONLY", None)
    config = RuntimeConfig(plugin_dir=str(plugin_dir))
    assert run_oneshot(input_url(api, task_id), config) == ExitCode.OK
    assert "TASK_ONLY" not in os.environ
    assert api.status(task_id) == "completed"


# -- the input --------------------------------------------------------------------------------


def test_input_403_when_the_task_is_not_running(api, plugin_dir):
    task_id = api.enqueue(make_task("hello"))  # queued, not running
    url = input_url(api, task_id)
    result = run_cli(url, plugin_dir)
    assert result.returncode == ExitCode.INPUT_UNAVAILABLE
    line = error_line(result)
    assert url in line and "403" in line
    assert api.status(task_id) == "queued"


def test_input_404_for_an_unknown_task(api, plugin_dir):
    url = input_url(api, "00000000-0000-0000-0000-000000000000")
    result = run_cli(url, plugin_dir)
    assert result.returncode == ExitCode.INPUT_UNAVAILABLE
    line = error_line(result)
    assert url in line and "404" in line


def test_input_5xx_after_retries(api, plugin_dir):
    task_id = running_task(api, "hello")
    api.inject("input", status=503, times=None)
    url = input_url(api, task_id)
    result = run_cli(url, plugin_dir)
    assert result.returncode == ExitCode.INPUT_UNAVAILABLE
    assert "503" in error_line(result)
    assert api.request_counts().get("input", 0) > 1  # retried before giving up
    assert api.status(task_id) == "running"


def test_input_unreachable(plugin_dir):
    with refused_port() as port:  # a port nobody listens on
        url = f"http://127.0.0.1:{port}/api/v0/tasks/abc"
        result = run_cli(url, plugin_dir, "--outgoing-request-timeout", "2")
    assert result.returncode == ExitCode.INPUT_UNAVAILABLE
    assert url in error_line(result)


def test_input_that_is_not_json_is_malformed(api, plugin_dir):
    task_id = running_task(api, "hello")
    api.inject("input", malformed=True)
    url = input_url(api, task_id)
    result = run_cli(url, plugin_dir)
    assert result.returncode == ExitCode.INPUT_MALFORMED
    assert url in error_line(result)
    assert api.outputs(task_id) == []


def test_input_that_is_not_a_task_is_malformed_and_names_the_field(api, plugin_dir):
    task_id = running_task(api, "hello")
    task = api.task(task_id)
    del task["data"]["boefje"]["id"]
    api.inject("input", body=json.dumps({"task": task, "output_url": input_url(api, task_id)}))
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.INPUT_MALFORMED
    line = error_line(result)
    assert "input.task.data.boefje.id" in line
    assert api.outputs(task_id) == []  # nothing posted on the word of an input we could not validate


@pytest.mark.parametrize("value", [123456, 98765.4321, True, "not-a-map-s3cr3t"])
def test_a_malformed_environment_never_shows_its_values(api, plugin_dir, value):
    """A non-string secret (or an environment that is not an object) is named by type only."""
    task_id = running_task(api, "hello")
    task = api.task(task_id)
    task["data"]["environment"] = value if isinstance(value, str) else {"PASSWORD": value}
    api.inject("input", body=json.dumps({"task": task, "output_url": input_url(api, task_id)}))
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.INPUT_MALFORMED
    line = error_line(result)
    assert "environment" in line and str(value) not in line and str(value).lower() not in line, line
    assert str(value) not in result.stderr


# -- the boefje -------------------------------------------------------------------------------


def test_unknown_boefje_exits_not_found_and_marks_the_task_failed(api, plugin_dir):
    task_id = running_task(api, "no-such-boefje", oci_image="test/nothing:latest")
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.BOEFJE_NOT_FOUND
    line = error_line(result)
    assert "no-such-boefje" in line and input_url(api, task_id) in line
    assert api.status(task_id) == "failed"  # not left running
    assert "no-such-boefje" in error_text(api, task_id)


def test_broken_plugin_exits_not_found_and_marks_the_task_failed(api, plugin_dir):
    task_id = running_task(api, "broken")
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.BOEFJE_NOT_FOUND
    assert "broken" in error_line(result)
    assert api.status(task_id) == "failed"


def test_boefje_found_by_oci_image_when_the_id_is_unknown(api, plugin_dir):
    task_id = running_task(api, "hello-renamed", oci_image="test/hello:latest")
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.OK, result.stderr
    assert api.status(task_id) == "completed"


def test_a_boefje_returning_none_warns_and_still_completes_the_task(api, plugin_dir):
    task_id = running_task(api, "returns-none")
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.OK, result.stderr
    assert api.status(task_id) == "completed" and api.files(task_id) == []
    (warning,) = [line for line in result.stderr.splitlines() if "[warning]" in line]
    assert "returned None" in warning and "returns-none" in warning


def test_max_output_size_fails_a_larger_output(api, plugin_dir):
    task_id = running_task(api, "big")
    result = run_cli(input_url(api, task_id), plugin_dir, "--max-output-size", "0.001")  # 1048 bytes < 2 KiB
    assert result.returncode == ExitCode.OK, result.stderr
    assert api.status(task_id) == "failed"
    assert "output too large" in error_text(api, task_id)


def test_a_boefje_process_that_exits_fails_the_task_saying_how(api, plugin_dir):
    task_id = running_task(api, "exiter")
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.OK, result.stderr  # the boefje's status does not decide the exit code
    assert api.status(task_id) == "failed"
    assert "exited with code 3" in error_text(api, task_id)


# -- stopping a boefje: TASK_TIMEOUT, SIGTERM, SIGINT --------------------------------------------


def spawner_pids(pid_file: Path) -> tuple[int, int]:
    """The spawner boefje's own pid and its child's, once it has written them."""
    wait_until(pid_file.exists, timeout=30, what="the boefje to start its child")
    boefje_pid, child_pid = map(int, pid_file.read_text().split())
    return boefje_pid, child_pid


def assert_gone(*pids: int) -> None:
    try:
        wait_until(lambda: not any(alive(pid) for pid in pids), timeout=5, what=f"processes {pids} to end")
    finally:
        for pid in pids:  # never leave them behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_task_timeout_kills_the_boefje_and_its_child_and_fails_the_task(api, plugin_dir, tmp_path):
    pid_file = tmp_path / "pids"
    task_id = running_task(api, "spawner", arguments={"pid_file": str(pid_file)})
    result = run_cli(input_url(api, task_id), plugin_dir, "--task-timeout", "1.5")
    assert result.returncode == ExitCode.TASK_TIMED_OUT == 8, result.stderr
    line = error_line(result)
    assert f"Task {task_id} timed out after 1.5 s" in line and "the task was marked failed" in line
    assert api.status(task_id) == "failed"
    assert "it ran longer than TASK_TIMEOUT (1.5 s)" in error_text(api, task_id)
    assert_gone(*spawner_pids(pid_file))


def test_a_boefje_process_that_exits_leaving_a_child_behind_takes_the_child_with_it(api, plugin_dir, tmp_path):
    pid_file = tmp_path / "pids"
    task_id = running_task(api, "spawn-and-exit", arguments={"pid_file": str(pid_file)})
    result = run_cli(input_url(api, task_id), plugin_dir, timeout=30)
    assert result.returncode == ExitCode.OK, result.stderr
    assert api.status(task_id) == "failed"
    assert "exited with code 4" in error_text(api, task_id)
    assert_gone(*spawner_pids(pid_file))


def test_task_timeout_when_closing_the_task_fails_too_says_so(api, plugin_dir, tmp_path):
    pid_file = tmp_path / "pids"
    task_id = running_task(api, "spawner", arguments={"pid_file": str(pid_file)})
    api.inject("output", status=500, times=None)
    result = run_cli(input_url(api, task_id), plugin_dir, "--task-timeout", "1")
    assert result.returncode == ExitCode.TASK_TIMED_OUT, result.stderr
    line = error_line(result)
    assert "timed out" in line and "marking the task failed did not work either" in line and "500" in line
    assert_gone(*spawner_pids(pid_file))


def test_a_boefje_that_closes_the_result_pipe_still_times_out(api, plugin_dir, tmp_path):
    """EOF on the result pipe is not the boefje's end: the deadline still kills it, well before
    its 60 s sleep ends (run_cli's bound fails the test otherwise)."""
    pid_file = tmp_path / "pid"
    task_id = running_task(api, "fd-closer", arguments={"pid_file": str(pid_file)})
    result = run_cli(input_url(api, task_id), plugin_dir, "--task-timeout", "2", timeout=30)
    assert result.returncode == ExitCode.TASK_TIMED_OUT == 8, result.stderr
    assert f"Task {task_id} timed out after 2 s" in error_line(result)
    assert api.status(task_id) == "failed"
    assert "it ran longer than TASK_TIMEOUT (2 s)" in error_text(api, task_id)
    assert_gone(int(pid_file.read_text()))


def test_a_boefje_that_closes_the_result_pipe_is_stopped_by_sigterm(api, plugin_dir, tmp_path):
    pid_file = tmp_path / "pid"
    task_id = running_task(api, "fd-closer", arguments={"pid_file": str(pid_file)})
    with one_shot_process(api, plugin_dir, task_id) as process:
        wait_until(pid_file.exists, timeout=30, what="the boefje to write its pid")
        boefje_pid = int(pid_file.read_text())
        wait_until(lambda: not _has_fd(boefje_pid, 3), timeout=10, what="the boefje to close its descriptors")
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == ExitCode.INTERRUPTED == 9, stderr
    assert api.status(task_id) == "failed"
    assert "the one-shot process received SIGTERM" in error_text(api, task_id)
    assert_gone(boefje_pid)


def test_closing_after_a_timeout_is_short_whatever_the_api_asks(api, plugin_dir, tmp_path):
    """The closing POST after a stop uses the short policy: a Retry-After of 30 s would keep the
    normal one waiting about 60 s, past a container runtime's 10 s grace (run_cli's bound fails)."""
    pid_file = tmp_path / "pids"
    task_id = running_task(api, "spawner", arguments={"pid_file": str(pid_file)})
    api.inject("output", status=503, headers={"Retry-After": "30"}, times=None)
    result = run_cli(input_url(api, task_id), plugin_dir, "--task-timeout", "1", timeout=30)
    assert result.returncode == ExitCode.TASK_TIMED_OUT, result.stderr
    line = error_line(result)
    assert "timed out" in line and "marking the task failed did not work either" in line and "503" in line
    assert_gone(*spawner_pids(pid_file))


@pytest.mark.parametrize(("boefje", "code"), [("raiser", ExitCode.OK), ("exiter", ExitCode.OK),
                                              ("no-such-boefje", ExitCode.BOEFJE_NOT_FOUND)])
def test_a_failed_task_outlasts_an_outage_the_closing_policy_would_not(api, plugin_dir, boefje, code):
    """In one-shot nobody else closes the task: a FAILED output that is not a stop's (the boefje
    raised, its process died, the image lacks it) gets the normal policy, so an API refusing as
    often as the closing policy tries in all does not leave the task running (review finding: the
    short policy left it running for good after a few seconds of outage)."""
    task_id = running_task(api, boefje)
    api.inject("output", status=503, times=CLOSE_POLICY.attempts)
    result = run_cli(input_url(api, task_id), plugin_dir, timeout=90)
    assert result.returncode == code, result.stderr
    assert api.status(task_id) == "failed"


@pytest.mark.parametrize("boefje", ["raiser", "hello"])
def test_two_signals_end_the_output_post_after_the_boefje_finished(api, plugin_dir, boefje):
    """The first signal after the boefje finished (failed or not) keeps the output's POST going; the
    second ends it: exit 9 and one line, no traceback."""
    task_id = running_task(api, boefje)
    api.inject("output", status=503, headers={"Retry-After": "3"}, times=None)
    with one_shot_process(api, plugin_dir, task_id) as process:
        wait_for_the_output_post(api)
        os.kill(process.pid, signal.SIGTERM)  # during the Retry-After wait: recorded, the POST goes on
        # Two signals in a row merge while the first's Python handler has not run yet (the kernel's
        # "not pending" is too early). The next attempt shows the POST went on and the first was counted.
        wait_for_the_output_post(api, attempts=2)
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    errors = [line for line in stderr.splitlines() if "[error]" in line]
    assert len(errors) == 1 and "a second signal ended the attempt to deliver its output" in errors[0], stderr
    assert "Traceback" not in stderr
    assert api.status(task_id) == "running"


def test_a_completed_result_gets_the_full_retry_policy(api, plugin_dir):
    """The scan's files are lost if they do not land: a COMPLETED output outlasts as many refusals as
    the closing policy allows in all, and is delivered."""
    task_id = running_task(api, "hello")
    api.inject("output", status=503, times=CLOSE_POLICY.attempts)
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.OK, result.stderr
    assert api.status(task_id) == "completed"


def test_a_second_signal_ends_the_closing_post(api, plugin_dir, tmp_path):
    pid_file = tmp_path / "pids"
    task_id = running_task(api, "spawner", arguments={"pid_file": str(pid_file)})
    api.inject("output", status=503, headers={"Retry-After": "3"}, times=None)
    with one_shot_process(api, plugin_dir, task_id) as process:
        pids = spawner_pids(pid_file)
        os.kill(process.pid, signal.SIGTERM)
        wait_for_the_output_post(api)
        os.kill(process.pid, signal.SIGTERM)  # during the Retry-After wait
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    errors = [line for line in stderr.splitlines() if "[error]" in line]
    assert len(errors) == 1 and "a second signal ended the attempt to mark the task failed" in errors[0], stderr
    assert "Traceback" not in stderr
    assert_gone(*pids)


def _has_fd(pid: int, fd: int) -> bool:
    return os.path.exists(f"/proc/{pid}/fd/{fd}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_stop_signal_kills_the_boefje_and_its_child_and_fails_the_task(api, plugin_dir, tmp_path, signum):
    pid_file = tmp_path / "pids"
    task_id = running_task(api, "spawner", arguments={"pid_file": str(pid_file)})
    with one_shot_process(api, plugin_dir, task_id) as process:
        pids = spawner_pids(pid_file)
        if signum == signal.SIGINT:
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)  # what a container runtime sends
        _, stderr = process.communicate(timeout=30)
    name = signal.Signals(signum).name
    assert process.returncode == ExitCode.INTERRUPTED == 9, stderr
    errors = [line for line in stderr.splitlines() if "[error]" in line]
    assert len(errors) == 1 and f"interrupted by {name}" in errors[0] and "marked failed" in errors[0], stderr
    assert "Traceback" not in stderr
    assert api.status(task_id) == "failed"
    assert f"the one-shot process received {name}" in error_text(api, task_id)
    assert_gone(*pids)


def test_a_one_shot_process_started_with_the_stop_signals_blocked_stops_on_sigterm(api, plugin_dir, tmp_path):
    """A parent that blocked SIGTERM when it started us (a careless fork) must not make us deaf to
    the container runtime's SIGTERM: the task would stay running until the SIGKILL."""
    pid_file = tmp_path / "pids"
    task_id = running_task(api, "spawner", arguments={"pid_file": str(pid_file)})
    with contextlib.ExitStack() as stack:
        with helpers.stop_signals_blocked():
            process = stack.enter_context(one_shot_process(api, plugin_dir, task_id))
        pids = spawner_pids(pid_file)
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert api.status(task_id) == "failed"
    assert_gone(*pids)


def test_a_sigkilled_one_shot_process_takes_its_boefje_with_it(api, plugin_dir, tmp_path):
    """SIGKILL cannot be handled: the kernel ends the boefje's process (PR_SET_PDEATHSIG). What that
    process started is orphaned, out of our reach (a SIGTERM kills it too, see above)."""
    pid_file = tmp_path / "pids"
    task_id = running_task(api, "spawner", arguments={"pid_file": str(pid_file)})
    with one_shot_process(api, plugin_dir, task_id) as process:
        boefje_pid, child_pid = spawner_pids(pid_file)
        try:
            process.kill()
            process.wait(timeout=30)  # not communicate(): the orphan holds its stderr open
            assert_gone(boefje_pid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)  # the orphan: not the test's subject
            process.stderr.close()


# -- the output -------------------------------------------------------------------------------


def test_output_post_failing_exits_undeliverable(api, plugin_dir):
    task_id = running_task(api, "hello")
    api.inject("output", status=500, times=None)
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.OUTPUT_UNDELIVERABLE
    line = error_line(result)
    assert input_url(api, task_id) in line and "500" in line


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_input_url_works(plugin_dir):
    with BoefjeAPIServer(host="::1") as api:
        task_id = running_task(api, "hello", input_ooi="Hostname|internet|example.com")
        url = input_url(api, task_id)
        assert url.startswith("http://[::1]:")
        result = run_cli(url, plugin_dir, "--api-header", "X-Token: v6")
        assert result.returncode == ExitCode.OK, result.stderr
        assert api.status(task_id) == "completed"
        assert contents(api.files(task_id)) == [b"hello Hostname|internet|example.com"]
        assert f'HTTP Request: POST {url} "HTTP/1.1 200 OK"' in result.stderr


def test_an_unknown_boefje_when_closing_the_task_fails_too_says_so(api, plugin_dir):
    task_id = running_task(api, "no-such-boefje")
    api.inject("output", status=500, times=None)
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.BOEFJE_NOT_FOUND
    line = error_line(result)
    assert "no-such-boefje" in line and "marking the task failed did not work either" in line and "500" in line
    assert api.status(task_id) == "running"  # nothing we could do: the line says so


def forge_output_url(api: BoefjeAPIServer, task_id: str, output_url: str) -> None:
    api.inject("input", body=json.dumps({"task": api.task(task_id), "output_url": output_url}))


def test_output_url_on_another_origin_is_refused_before_the_boefje_runs(api, plugin_dir, foreign_host):
    foreign_port, received = foreign_host
    task_id = running_task(api, "hello")
    foreign = f"http://127.0.0.1:{foreign_port}/collect"
    forge_output_url(api, task_id, foreign)
    result = run_cli(input_url(api, task_id), plugin_dir, "--api-header", "Authorization: Bearer api-token-123")
    assert result.returncode == ExitCode.OUTPUT_UNDELIVERABLE
    line = error_line(result)
    assert foreign in line and "ALLOW_FOREIGN_OUTPUT" in line
    assert received == []
    assert "Boefje hello finished" not in result.stderr  # refused before running
    assert api.status(task_id) == "running" and api.outputs(task_id) == []


def test_another_host_name_for_the_same_address_is_another_origin(api, plugin_dir):
    task_id = running_task(api, "hello")
    forge_output_url(api, task_id, f"http://localhost:{api.port}/api/v0/tasks/{task_id}")
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.OUTPUT_UNDELIVERABLE
    assert api.outputs(task_id) == []


def test_foreign_output_when_allowed_gets_no_api_headers(api, plugin_dir, foreign_host):
    foreign_port, received = foreign_host
    task_id = running_task(api, "hello")
    forge_output_url(api, task_id, f"http://127.0.0.1:{foreign_port}/collect")
    result = run_cli(input_url(api, task_id), plugin_dir, "--allow-foreign-output",
                     "--api-header", "Authorization: Bearer api-token-123")
    assert result.returncode == ExitCode.OK, result.stderr
    (request,) = received
    assert request["path"] == "/collect"
    assert json.loads(request["body"])["status"] == "COMPLETED"
    assert "Authorization" not in request["headers"]
    assert "api-token-123" not in result.stderr


def test_same_origin_with_default_port_spelled_differently_is_accepted(api, plugin_dir):
    task_id = running_task(api, "hello")
    forge_output_url(api, task_id, f"HTTP://127.0.0.1:{api.port}/api/v0/tasks/{task_id}")
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.OK, result.stderr
    assert api.status(task_id) == "completed"


def test_relative_output_url_is_resolved_against_the_input_url(api, plugin_dir):
    task_id = running_task(api, "hello")
    forge_output_url(api, task_id, f"/api/v0/tasks/{task_id}")
    result = run_cli(input_url(api, task_id), plugin_dir)
    assert result.returncode == ExitCode.OK, result.stderr
    assert api.status(task_id) == "completed"


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("http://boefje:8000/a", "http://BOEFJE:8000/b", True),
        ("http://boefje/a", "http://boefje:80/b", True),
        ("https://boefje/a", "https://boefje:443/b", True),
        ("http://boefje/a", "https://boefje/a", False),
        ("http://boefje:8000/a", "http://boefje:8001/a", False),
        ("http://boefje:8000/a", "http://boefje:8000@evil.example/a", False),
        ("http://boefje./a", "http://boefje/a", True),
        ("http://[::1]:8000/a", "http://[::1]:8000/b", True),
    ],
)
def test_origin_normalises_case_and_default_ports(first, second, same):
    assert (origin(first) == origin(second)) is same


@pytest.mark.parametrize("url", ["ftp://boefje/x", "/api/v0/tasks/1", "http:///x", "http://boefje:notaport/x"])
def test_origin_refuses_what_is_not_an_http_url(url):
    with pytest.raises(ValueError):
        origin(url)


# -- logs -------------------------------------------------------------------------------------


def test_json_log_lines_parse_and_carry_the_task_id(api, plugin_dir):
    task_id = running_task(api, "hello")
    result = run_cli(input_url(api, task_id), plugin_dir, "--logging-format", "json")
    assert result.returncode == ExitCode.OK, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines, "expected log lines"
    assert all({"timestamp", "level", "logger", "message", "pid"} <= set(line) for line in lines)
    after_input = lines[1:]  # the first line is the GET of the input, before the task is known
    assert after_input
    for line in after_input:
        assert (line.get("task_id"), line.get("boefje_id"), line.get("organisation")) == (task_id, "hello", "org"), line
    assert any(re.fullmatch(r"Boefje completed in \d+\.\d{3} s with 1 files", line["message"]) for line in after_input)
    last = after_input[-1]  # the line that ends the task says how
    assert last["outcome"] == "completed" and last["status_code"] == 200
    assert isinstance(last["duration_s"], float) and 0 <= last["duration_s"] < 30


def test_json_error_line_carries_the_task_id(api, plugin_dir):
    task_id = running_task(api, "no-such-boefje")
    result = run_cli(input_url(api, task_id), plugin_dir, "--logging-format", "json")
    assert result.returncode == ExitCode.BOEFJE_NOT_FOUND
    errors = [json.loads(line) for line in result.stderr.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1 and errors[0]["task_id"] == task_id
    assert errors[0]["boefje_id"] == "no-such-boefje" and errors[0]["organisation"] == "org"
    assert errors[0]["outcome"] == "failed"  # the line that ends the task says how


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_planted_secret_never_reaches_stdout_or_stderr(api, plugin_dir, fmt):
    task_id = running_task(api, "leaker", environment={"API_TOKEN": SECRET})
    result = run_cli(input_url(api, task_id), plugin_dir, "--logging-format", fmt, "--log-level", "DEBUG")
    assert result.returncode == ExitCode.OK, result.stderr
    assert SECRET not in result.stdout
    assert SECRET not in result.stderr
    assert "using token ***" in (result.stderr if fmt == "text" else result.stderr.replace('\\"', '"'))
    (file,) = api.files(task_id)
    assert SECRET.encode() not in file["content"]  # the error file is redacted too...
    assert b"ValueError: token '***' was refused" in file["content"]  # ...where the secret was


def test_api_header_values_never_reach_the_logs(api, plugin_dir):
    task_id = running_task(api, "hello")
    result = run_cli(input_url(api, task_id), plugin_dir, "--log-level", "DEBUG",
                     env={"BOEFJES_API_HEADERS": "Authorization: Bearer header-s3cr3t-77"})
    assert result.returncode == ExitCode.OK, result.stderr
    assert "header-s3cr3t-77" not in result.stderr + result.stdout


# -- as a library -----------------------------------------------------------------------------


def test_run_oneshot_with_a_registered_callable(api):
    from boefje_runtime.plugins import BoefjeRegistry

    registry = BoefjeRegistry()
    registry.register("inline", lambda meta: [({"text/plain"}, f"ran {meta['boefje']['id']}")])
    task_id = running_task(api, "inline")
    assert run_oneshot(input_url(api, task_id), RuntimeConfig(), registry=registry) == ExitCode.OK
    assert contents(api.files(task_id)) == [b"ran inline"]


def test_an_internal_error_is_one_line_and_still_closes_the_task(api, caplog):
    class Exploding:
        def find(self, boefje_id, oci_image=None):
            raise RuntimeError("a bug in the runtime")

    task_id = running_task(api, "hello")
    with caplog.at_level("INFO"):
        code = run_oneshot(input_url(api, task_id), RuntimeConfig(), registry=Exploding())
    assert code == ExitCode.INTERNAL_ERROR
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "\n" not in message and "a bug in the runtime" in message and "marked failed" in message
    assert api.status(task_id) == "failed"


def test_a_bad_input_url_is_input_unavailable(caplog):
    with caplog.at_level("ERROR"):
        assert run_oneshot("ftp://boefje/api/v0/tasks/1", RuntimeConfig()) == ExitCode.INPUT_UNAVAILABLE
    assert "ftp://boefje/api/v0/tasks/1" in caplog.text


def test_one_shot_words_a_childs_end_as_worker_mode_does():
    from boefje_runtime.process_exit import describe_exit
    from boefje_runtime.supervised import describe_status

    sigkill_status, exit_3_status = signal.SIGKILL, 3 << 8  # as waitpid reports them
    assert describe_status(sigkill_status) == describe_exit(-signal.SIGKILL)  # no second wording to drift
    assert describe_status(exit_3_status) == "exited with code 3 without a result"
