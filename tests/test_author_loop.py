"""A boefje author's loop, as a user drives it: ``boefje-worker run``, the standalone test API
(``python -m boefje_runtime.testing --enqueue ... --running``, ``show``) and one-shot on its URL.

Everything runs as real subprocesses talking HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from boefje_runtime.exit_codes import ExitCode
from boefje_runtime.file_view import file_lines
from boefje_runtime.local_run import parse_env_pairs
from boefje_runtime.testing import make_task

from . import pool_boefjes
from .helpers import ROOT, cli_env, run_cli, task, write_plugin

pytestmark = pytest.mark.timeout(90)

GREETER = """
    import os

    def run(boefje_meta):
        host = boefje_meta["input_ooi"].rsplit("|", 1)[-1]
        return [
            ({"text/plain", "not-a-mime"}, f"{os.environ.get('GREETING', 'hello')} {host}"),
            ({"application/octet-stream"}, bytes(range(256))),
        ]
"""

RAISER = """
    def run(boefje_meta):
        answer = 41
        raise ValueError(f"cannot scan {boefje_meta['input_ooi']!r}")
"""


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    root = tmp_path / "boefjes"
    write_plugin(root / "greeter", GREETER, id="greeter", version="2", oci_image="example/greeter:1")
    write_plugin(root / "raiser", RAISER, id="raiser", oci_image="example/raiser:1")
    write_plugin(root / "big", "def run(boefje_meta):\n    return [({'text/plain'}, 'x' * 2_000_000)]\n", id="big")
    return root


def run_boefje(plugins: Path, *args: str, **options) -> subprocess.CompletedProcess:
    return run_cli("run", *args, "--plugin-dir", str(plugins), **options)


# -- boefje-worker run ------------------------------------------------------------------------------


def test_run_prints_every_output_file_with_its_tags_and_size(plugins):
    result = run_boefje(plugins, "greeter", "Hostname|internet|example.com")

    assert result.returncode == ExitCode.OK, result.stderr
    lines = result.stdout.splitlines()
    # the tag rules of a real task: non-MIME tags dropped (with a warning), defaults added
    assert lines[0] == "== file 0: 17 bytes, tags: text/plain, boefje/greeter, boefje/greeter-2"
    assert lines[1] == "hello example.com"
    assert lines[2] == "== file 1: 256 bytes, tags: application/octet-stream, boefje/greeter, boefje/greeter-2"
    assert lines[3] == "(binary content, not shown)"
    assert re.fullmatch(r"greeter on Hostname\|internet\|example.com: COMPLETED in \d+\.\d{3} s, 2 files", lines[4])
    assert "'not-a-mime'" in result.stderr


def test_run_with_env_sets_the_variable_for_the_boefje(plugins):
    result = run_boefje(plugins, "greeter", "Hostname|internet|example.com", "--env", "GREETING=hoi",
                        env={"GREETING": "from the shell"})

    assert result.returncode == ExitCode.OK, result.stderr
    assert "hoi example.com" in result.stdout.splitlines()


def test_run_writes_the_files_to_out_dir(plugins, tmp_path):
    out = tmp_path / "out"

    result = run_boefje(plugins, "greeter", "Hostname|internet|example.com", "--out", str(out))

    assert result.returncode == ExitCode.OK, result.stderr
    assert (out / "0").read_text() == "hello example.com"
    assert (out / "1").read_bytes() == bytes(range(256))
    listing = json.loads((out / "output.json").read_text())
    assert listing["status"] == "COMPLETED"
    assert [file["size"] for file in listing["files"]] == [17, 256]
    assert f"(saved to {out / '1'})" in result.stdout


def test_a_raising_boefje_prints_its_traceback_and_exits_non_zero(plugins):
    result = run_boefje(plugins, "raiser", "Hostname|internet|example.com")

    assert result.returncode == ExitCode.BOEFJE_FAILED, result.stderr
    assert "tags: error/boefje, boefje/raiser" in result.stdout
    assert "Traceback (most recent call last):" in result.stdout
    assert "ValueError: cannot scan 'Hostname|internet|example.com'" in result.stdout
    assert "boefje_runtime" not in result.stdout  # the traceback starts in the boefje's own code
    assert "raiser on Hostname|internet|example.com: FAILED" in result.stdout


def test_a_secret_from_env_is_masked_in_the_printed_traceback(plugins, tmp_path):
    write_plugin(tmp_path / "more" / "leaky", """
        import os

        def run(boefje_meta):
            raise RuntimeError("login refused for " + os.environ["API_KEY"])
    """, id="leaky")

    result = run_cli("run", "leaky", "x", "--plugin-dir", str(tmp_path / "more"), "--env", "API_KEY=s3cr3t-k3y")

    assert result.returncode == ExitCode.BOEFJE_FAILED
    assert "RuntimeError: login refused for ***" in result.stdout
    assert "s3cr3t-k3y" not in result.stdout + result.stderr


def test_the_output_cap_applies_as_in_the_pool(plugins):
    result = run_boefje(plugins, "big", "x", "--max-output-size", "1")

    assert result.returncode == ExitCode.BOEFJE_FAILED
    assert "boefje output too large" in result.stdout


def test_an_unknown_boefje_id_is_one_line_naming_it_and_the_known_ones(plugins):
    result = run_boefje(plugins, "nmap", "IPAddressV4|internet|192.0.2.1")

    assert result.returncode == ExitCode.BOEFJE_NOT_FOUND
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "no boefje with id 'nmap'" in line and "big, greeter, raiser" in line


@pytest.mark.parametrize(("option", "reason"), [
    (("--arguments", "[1]"), "must be a JSON object"),
    (("--arguments", "{"), "not valid JSON"),
    (("--env", "NOVALUE"), "is not NAME=VALUE"),
])
def test_bad_options_are_usage_errors(plugins, option, reason):
    result = run_boefje(plugins, "greeter", "x", *option)

    assert result.returncode == ExitCode.USAGE
    assert reason in result.stderr


def test_pdb_opens_the_debugger_in_the_boefjes_frame(plugins):
    # given: commands typed into pdb: show a local of the boefje's frame, then continue
    result = run_boefje(plugins, "raiser", "Hostname|internet|example.com", "--pdb", input="p answer + 1\nc\n")

    assert result.returncode == ExitCode.BOEFJE_FAILED
    assert re.search(r"raiser/main\.py\(\d+\)run\(\)", result.stdout)
    assert "(Pdb) 42" in result.stdout
    assert "ValueError: cannot scan" in result.stdout  # the run still ends as a failed task


def test_the_plain_command_still_takes_an_input_url_and_flags():
    # `run` is dispatched on the first word only: INPUT_URL and worker-mode flags are unchanged
    assert run_cli("not-a-url").returncode == ExitCode.USAGE
    assert "is not an http(s) URL" in run_cli("not-a-url").stderr
    assert "worker mode (no INPUT_URL) needs" in run_cli("-p", "x").stderr
    help_text = " ".join(run_cli("--help").stdout.split())
    assert "boefje-worker run --help" in help_text


def test_run_help_documents_the_exit_codes():
    result = run_cli("run", "--help")

    assert result.returncode == 0
    assert result.stdout.startswith("Usage: boefje-worker run [OPTIONS] BOEFJE_ID [INPUT_OOI]")
    assert "7 when it failed" in " ".join(result.stdout.split())



# -- the standalone test API as a tool --------------------------------------------------------------


def read_lines_until(process: subprocess.Popen, pattern: str, timeout: float = 20.0) -> list[str]:
    """Lines of ``process``'s stdout up to the first matching ``pattern``; TimeoutError after ``timeout`` s.

    A thread reads, so the deadline holds even when the process prints nothing more.
    """
    found: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            found.put(line.rstrip("\n"))
            if re.search(pattern, line):
                return
        found.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while True:
        try:
            line = found.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"no line matching {pattern!r} within {timeout} s; got {lines}") from None
        if line is None:
            raise AssertionError(f"the server closed its output; got {lines}")
        lines.append(line)
        if re.search(pattern, line):
            return lines


@pytest.fixture
def test_api():
    """``python -m boefje_runtime.testing ARGS`` started; stopped with SIGTERM (it must exit 0)."""
    processes: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-m", "boefje_runtime.testing", "--port", "0", *args],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                   env=cli_env())
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.terminate()
        assert process.wait(timeout=10) == 0
        process.stdout.close()
        process.stderr.close()


def show(base_url: str, task_id: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "boefje_runtime.testing", "show", task_id, "--url", base_url, *args],
                          capture_output=True, text=True, timeout=30, env=cli_env())


def test_enqueue_running_then_one_shot_then_show_reads_the_output_back(plugins, test_api):
    # given: the test API with two running tasks for our own boefje
    server = test_api("--enqueue", "greeter", "-n", "2", "--running", "--input-ooi", "Hostname|internet|example.org",
                      "--env", "GREETING=hi", "--oci-image", "example/greeter:1")
    lines = read_lines_until(server, r"^See a task:")
    base_url = lines[0]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
    input_urls = [line.split()[-1] for line in lines if line.strip().startswith("INPUT_URL ")]
    task_ids = [line.split()[1] for line in lines if line.startswith("running ")]
    assert len(input_urls) == len(task_ids) == 2
    assert input_urls[0] == f"{base_url}/api/v0/tasks/{task_ids[0]}"

    # when: the first one runs one-shot, as the printed line says
    oneshot = run_cli(input_urls[0], "--plugin-dir", str(plugins))

    # then: show reads back its history and its files; the other task is untouched
    assert oneshot.returncode == ExitCode.OK, oneshot.stderr
    shown = show(base_url, task_ids[0])
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.splitlines()
    assert "status: completed; history: queued -> running -> completed" in text
    assert "hi example.org" in text  # the task's environment reached the boefje
    assert "== file 0: 14 bytes, tags: text/plain, boefje/greeter" in text
    other = json.loads(show(base_url, task_ids[1], "--json").stdout)
    assert other["status"] == "running" and other["history"] == ["queued", "running"] and other["outputs"] == []


def test_enqueued_tasks_are_queued_for_a_worker_of_their_image(plugins, test_api):
    server = test_api("--enqueue", "greeter", "--enqueue", "raiser", "--oci-image", "example/image:1",
                      "--input-ooi", "Hostname|internet|example.net")
    lines = read_lines_until(server, r"^See a task:")
    base_url = lines[0]
    ids = {line.split()[2]: line.split()[1] for line in lines if line.startswith("queued ")}
    assert not any("INPUT_URL" in line for line in lines)

    result = run_cli("--burst", "--plugin-dir", str(plugins), "--pool-size", "1",
                     env={"BOEFJES_API": base_url, "OCI_IMAGE": "example/image:1", "POLL_INTERVAL": "0.1"})

    assert result.returncode == 0, result.stderr
    assert json.loads(show(base_url, ids["greeter"], "--json").stdout)["status"] == "completed"
    failed = show(base_url, ids["raiser"]).stdout
    assert "status: failed" in failed and "ValueError: cannot scan 'Hostname|internet|example.net'" in failed


def test_show_of_an_unknown_task_is_one_line(test_api):
    server = test_api()
    [base_url] = read_lines_until(server, r"^http://")

    result = show(base_url, "no-such-task")

    assert result.returncode == 1
    assert result.stderr.strip() == f"python -m boefje_runtime.testing show: {base_url}/test-api/tasks/no-such-task: " \
                                    "no such task"


# -- the README's example, copied into a new project ------------------------------------------------

README = (ROOT / "README.md").read_text()
#: "`path`:" on its own line, a blank line, then a fenced block: a file of the README's example project.
_CAPTIONED_BLOCK = re.compile(r"^`(?P<path>[\w./-]+)`:\n\n```\w*\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
RAISING_MAIN = '''
def run(boefje_meta):
    raise ValueError("my-boefje cannot greet " + boefje_meta["input_ooi"])
'''


def readme_project(root: Path) -> Path:
    """The files the README's "Writing and testing a boefje" section shows, written under ``root``."""
    section = README.split("## Writing and testing a boefje", 1)[1].split("\n## ", 1)[0]
    files = {match["path"]: match["body"] for match in _CAPTIONED_BLOCK.finditer(section)}
    assert set(files) == {"boefjes/my_boefje/boefje.json", "boefjes/my_boefje/main.py", "tests/test_my_boefje.py"}
    for path, body in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(body)
    return root


def run_pytest(project: Path) -> subprocess.CompletedProcess:
    # A new project: pytest finds the boefje_api fixture through boefje-runtime's pytest11 entry point.
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=project,
                          capture_output=True, text=True, timeout=120, env=cli_env())


def test_the_readme_example_passes_as_written(tmp_path):
    project = readme_project(tmp_path)

    result = run_pytest(project)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_readme_example_with_a_raising_boefje_fails_saying_why(tmp_path):
    project = readme_project(tmp_path)
    (project / "boefjes" / "my_boefje" / "main.py").write_text(RAISING_MAIN)

    result = run_pytest(project)

    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "ValueError: my-boefje cannot greet Hostname|internet|example.com" in out
    assert "tags: error/boefje, boefje/my-boefje" in out  # the error file, with the traceback:
    assert 'raise ValueError("my-boefje cannot greet " + boefje_meta["input_ooi"])' in out
    assert "history: queued -> dispatched -> running -> failed" in out
    # a line the forked worker logged reached the parent's report
    assert re.search(r"\[warning\] Boefje failed in [\d.]+ s: ValueError: my-boefje cannot greet", out), out


def test_the_readme_run_command_prints_what_the_readme_shows(tmp_path):
    project = readme_project(tmp_path)
    section = README.split("**Run it on an input**", 1)[1]
    command = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    shown = section.split("\n```\n\n```\n", 1)[1].split("\n```", 1)[0]  # the block right after the command
    assert command.startswith("boefje-worker run ")

    result = subprocess.run(command.replace("boefje-worker", f"{sys.executable} -m boefje_runtime_cli", 1),
                            shell=True, cwd=project, capture_output=True, text=True, timeout=60, env=cli_env())

    assert result.returncode == 0, result.stderr
    timing = re.compile(r"in \d+\.\d+ s")
    assert timing.sub("in T s", result.stdout.strip()) == timing.sub("in T s", shown.strip())


# -- the fixture explains failures ------------------------------------------------------------------


def leaky(meta: dict) -> list:
    raise RuntimeError(f"login refused for key {os.environ['API_KEY']}")


def test_assert_completed_quotes_the_history_the_traceback_and_the_workers_log_lines(boefje_api, make_pool):
    # given: a boefje that raises, run by a pool whose workers are forked processes
    failing = boefje_api.enqueue(task("boom"))
    fine = boefje_api.enqueue(task("hello", input_ooi="Hostname|internet|fine.example"))
    assert make_pool(burst=True).run() == 0

    # when
    with pytest.raises(AssertionError) as failure:
        boefje_api.assert_completed(failing)
    report = boefje_api.assert_completed(fine)

    # then
    message = str(failure.value)
    assert message.startswith(f"task {failing} is failed, expected completed: its error/boefje file below says why")
    assert "history: queued -> dispatched -> running -> failed" in message
    assert "tags: error/boefje, boefje/boom" in message
    assert 'raise RuntimeError("boom went the boefje")' in message  # the traceback of the error file
    assert re.search(rf"\[warning\] Boefje failed .*task_id={failing}", message)  # from the forked worker
    assert fine not in message  # another task's lines stay out
    assert report["outputs"][0]["files"][0]["text"] == "hi Hostname|internet|fine.example"
    boefje_api.assert_failed(failing)
    with pytest.raises(AssertionError, match="is completed, expected failed"):
        boefje_api.assert_failed(fine)


def test_a_task_no_worker_took_says_where_to_look(boefje_api):
    task_id = boefje_api.enqueue(make_task("my-boefje", oci_image="other-image:1"))

    with pytest.raises(AssertionError) as failure:
        boefje_api.assert_completed(task_id, timeout=0.05)

    message = str(failure.value)
    assert "is queued, expected completed: no worker took it" in message
    assert "(image other-image:1)" in message and "no output was posted" in message


def test_secrets_of_the_task_stay_out_of_the_explanation(boefje_api, make_pool):
    secret = "k3y-" + os.urandom(8).hex()
    task_id = boefje_api.enqueue(task("leaky", environment={"API_KEY": secret}))
    registry = pool_boefjes.register(pool_boefjes.registry(), {"leaky": leaky})
    assert make_pool(burst=True, registry=registry).run() == 0

    text = boefje_api.explain(task_id)

    assert "login refused for key ***" in text
    assert "worker log lines for this task (1)" in text
    assert secret not in text


# -- pure parts ---------------------------------------------------------------------------------------


def test_file_lines_show_text_cut_long_text_on_a_character_and_hide_binary():
    assert file_lines("0", ["text/plain"], b"a\nb") == ["== file 0: 3 bytes, tags: text/plain", "a", "b"]
    assert file_lines("1", None, b"\x00\x01")[1] == "(binary content, not shown)"
    long = "é" * 10  # two bytes each: a cut after 5 bytes falls inside the third character
    assert file_lines("2", [], long.encode(), max_shown=5)[1:] == ["éé", "... (15 more bytes not shown)"]
    assert file_lines("3", [], b"x", saved_to="/out/3")[1] == "(saved to /out/3)"


def test_env_pairs_keep_everything_after_the_first_equals_sign():
    assert parse_env_pairs(["A=b=c", "EMPTY="]) == {"A": "b=c", "EMPTY": ""}
    with pytest.raises(ValueError, match="'=x' is not NAME=VALUE"):
        parse_env_pairs(["=x"])
