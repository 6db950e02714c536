"""Worker mode through the real CLI: start-up lines, signals and exit codes, in a subprocess."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from boefje_runtime.testing import make_task

from .helpers import CLI, alive, cli_env, run_cli, stop_signals_blocked, wait_until, write_plugin

IMAGE = "ghcr.io/example/worker-mode-test:latest"
#: Waits for what a CLI subprocess does (it starts slower than an in-process pool).
WAIT = 15.0

HOLD_MAIN = '''
import os, time
from pathlib import Path

def run(boefje_meta):
    arguments = boefje_meta["arguments"]
    # written whole, then renamed: a test that sees the file must never read it empty (CI did, under load)
    Path(arguments["pid_file"] + ".tmp").write_text(str(os.getpid()))
    os.rename(arguments["pid_file"] + ".tmp", arguments["pid_file"])
    release = Path(arguments["release_file"])
    deadline = time.monotonic() + 30
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return [({"text/plain"}, b"released")]
'''


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    root = tmp_path / "boefjes" / "plugins"
    hold = write_plugin(root / "kat_hold", HOLD_MAIN, id="hold", name="Hold", oci_image=IMAGE)
    (tmp_path / "boefjes" / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (hold / "__init__.py").write_text("")
    return tmp_path


class Worker:
    """The CLI in worker mode as a child process, with its log lines collected as they come."""

    def __init__(self, api_url: str, plugin_dir: Path, *extra: str, **env: str) -> None:
        environment = cli_env({
            "BOEFJES_API": api_url,
            "OCI_IMAGE": IMAGE,
            "PLUGIN_DIR": str(plugin_dir),
            "POLL_INTERVAL": "0.2",
            **env,
        })
        self.process = subprocess.Popen(
            [*CLI, *extra],
            env=environment,
            cwd=plugin_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for_line(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if match := re.search(pattern, line):
                return match
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match
        raise TimeoutError(f"no line matching {pattern!r} within {timeout} s; got:\n" + "\n".join(self.lines))

    def worker_pids(self, count: int) -> list[int]:
        pids: list[int] = []
        while len(pids) < count:
            match = self.wait_for_line(r"Started listening for tasks from worker pid=(\d+)")
            pids.append(int(match.group(1)))
            self.lines.remove(match.string)
        return pids

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def workers():
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


def hold_task(tmp_path: Path, name: str, **extra) -> tuple[dict, Path, Path]:
    pid_file, release_file = tmp_path / f"{name}.pid", tmp_path / f"{name}.release"
    arguments = {"pid_file": str(pid_file), "release_file": str(release_file)}
    task = make_task("hold", oci_image=IMAGE, arguments=arguments, input_ooi=f"Hostname|internet|{name}", **extra)
    return task, pid_file, release_file


def test_start_up_lines_are_the_seeds(boefje_api, plugin_dir, tmp_path, workers):
    task, _, release_file = hold_task(tmp_path, "quick")
    release_file.touch()  # a pop that finds a task logs at INFO; an empty one only at DEBUG
    boefje_api.enqueue(task)
    worker = Worker(boefje_api.url, plugin_dir, "-p", "hold", "--burst")
    workers.append(worker)

    assert worker.wait() == 0
    worker.wait_for_line(r"\[info\] Starting runtime")
    worker.wait_for_line(
        re.escape(
            f"[info] Configured BoefjeAPI [base_url={boefje_api.url}, outgoing_request_timeout=30, "
            f"images=['{IMAGE}'], plugins=['hold']]"
        )
    )
    worker.wait_for_line(r"\[info\] Created worker pool for queue 'boefje'")
    worker.wait_for_line(r"\[info\] Started listening for tasks from worker pid=\d+")
    worker.wait_for_line(
        r'HTTP Request: POST http://127\.0\.0\.1:\d+/api/v0/scheduler/boefje/pop\?limit=\d+ "HTTP/1\.1 200 OK"'
    )


@pytest.mark.boefje_api(pop_mode="limit")  # prefetch takes unrelated tasks only where the limit is honoured
def test_sigterm_pushes_back_unstarted_tasks_unchanged_and_drains_the_running_one(
    boefje_api, plugin_dir, tmp_path, workers
):
    running, pid_file, release = hold_task(tmp_path, "running")
    waiting = [hold_task(tmp_path, f"waiting{i}", deduplication_key=f"dk{i}", custom_field={"keep": i})[0]
               for i in range(2)]
    running_id = boefje_api.enqueue(running)
    waiting_ids = boefje_api.enqueue(waiting)
    worker = Worker(boefje_api.url, plugin_dir, POOL_SIZE="1", PREFETCH="2")
    workers.append(worker)
    wait_until(pid_file.exists, WAIT, what="the first task to start")
    wait_until(lambda: all(boefje_api.status(i) == "dispatched" for i in waiting_ids), WAIT, what="prefetched tasks")

    worker.process.send_signal(signal.SIGTERM)
    worker.wait_for_line(r"Shutting down")
    release.touch()

    assert worker.wait() == 0
    assert boefje_api.status(running_id) == "completed"
    for original, task_id in zip(waiting, waiting_ids, strict=True):
        assert boefje_api.status(task_id) == "queued"
        pushed_back = boefje_api.task(task_id)
        assert {k: v for k, v in pushed_back.items() if k != "modified_at"} == {
            k: v for k, v in original.items() if k != "modified_at"
        }
    assert not [s for s in boefje_api.statuses().values() if s in ("dispatched", "running")]


def test_a_second_sigterm_skips_the_grace_period(boefje_api, plugin_dir, tmp_path, workers):
    running, pid_file, _ = hold_task(tmp_path, "stubborn")
    running_id = boefje_api.enqueue(running)
    worker = Worker(boefje_api.url, plugin_dir, POOL_SIZE="1", SHUTDOWN_TIMEOUT="60")
    workers.append(worker)
    wait_until(pid_file.exists, WAIT, what="the task to start")

    worker.process.send_signal(signal.SIGTERM)
    worker.wait_for_line(r"Shutting down")
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)

    assert worker.wait() == 0
    assert time.monotonic() - started < 10
    assert boefje_api.status(running_id) == "failed"
    assert b"shut down before this task finished" in boefje_api.files(running_id)[0]["content"]
    assert not alive(int(pid_file.read_text()))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_sigint_and_sighup_drain_like_sigterm(boefje_api, plugin_dir, tmp_path, workers, signum):
    running, pid_file, release = hold_task(tmp_path, signum.name.lower())
    running_id = boefje_api.enqueue(running)
    worker = Worker(boefje_api.url, plugin_dir, POOL_SIZE="1")
    workers.append(worker)
    wait_until(pid_file.exists, WAIT, what="the task to start")

    worker.process.send_signal(signum)
    worker.wait_for_line(r"Shutting down")
    release.touch()

    assert worker.wait() == 0
    assert boefje_api.status(running_id) == "completed"


def test_a_supervisor_started_with_the_stop_signals_blocked_drains_on_sigterm(
    boefje_api, plugin_dir, tmp_path, workers
):
    running, pid_file, release = hold_task(tmp_path, "blocked")
    running_id = boefje_api.enqueue(running)
    with stop_signals_blocked():  # the mask survives exec: as under a parent that forks carelessly
        worker = Worker(boefje_api.url, plugin_dir, POOL_SIZE="1")
    workers.append(worker)
    wait_until(pid_file.exists, WAIT, what="the task to start")

    worker.process.send_signal(signal.SIGTERM)
    worker.wait_for_line(r"Shutting down")
    release.touch()

    assert worker.wait() == 0
    assert boefje_api.status(running_id) == "completed"


def test_no_worker_survives_a_sigkilled_supervisor(boefje_api, plugin_dir, tmp_path, workers):
    running, pid_file, _ = hold_task(tmp_path, "orphan")
    boefje_api.enqueue(running)
    worker = Worker(boefje_api.url, plugin_dir, POOL_SIZE="2")
    workers.append(worker)
    pids = worker.worker_pids(2)
    wait_until(pid_file.exists, WAIT, what="the task to start")

    worker.process.kill()
    worker.process.wait(10)

    for pid in pids:
        wait_until(lambda pid=pid: not alive(pid), timeout=10, what=f"worker {pid} to die with its supervisor")


def test_a_pool_size_over_the_maximum_exits_2_with_one_line(boefje_api, plugin_dir):
    result = run_cli(env={"BOEFJES_API": boefje_api.url, "OCI_IMAGE": IMAGE, "PLUGIN_DIR": str(plugin_dir),
                          "POOL_SIZE": "100000"}, cwd=plugin_dir, timeout=30)

    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "Error" in line]  # click adds its usage lines
    assert len(errors) == 1 and "POOL_SIZE" in errors[0] and "at most 256" in errors[0], result.stderr
    assert boefje_api.request_counts().get("pop", 0) == 0


def test_sigint_during_start_up_stops_the_pool(boefje_api, plugin_dir, workers):
    # Given a big pool that is still forking its workers
    worker = Worker(boefje_api.url, plugin_dir, POOL_SIZE="200", SHUTDOWN_TIMEOUT="5")
    workers.append(worker)
    worker.wait_for_line(r"Created worker pool")

    # When SIGINT comes while it forks
    worker.process.send_signal(signal.SIGINT)

    # Then the pool stops: spawning ends at once and the drain is bounded
    assert worker.wait(timeout=60) == 0
    worker.wait_for_line(r"Worker pool stopped")
    started = sum(1 for line in worker.lines if "Started listening" in line)
    assert started < 200, "it did not go on forking all 200 workers"
