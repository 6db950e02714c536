"""Nothing a boefje started outlives its task: a `sleep` child and a daemon that double-forked and
left the session (setsid), under a task timeout, a drain past its grace period, an immediate stop,
a second SIGTERM, a SIGKILLed worker, and with the supervisor as PID 1 of a PID namespace (no
zombie piles up). Real pools, the real CLI, real signals.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from boefje_runtime import process_tree

from . import abuse_boefjes
from .helpers import CLI, Strays, alive, cli_env, error_text, task, wait_until, write_plugin

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process trees are read from /proc"),
]

IMAGE = "ghcr.io/example/trees-test:latest"


@pytest.fixture
def pool_options():
    return {"registry": abuse_boefjes.registry(), "pool_size": 1, "poll_interval": 0.1}


def daemonizing_task(tmp_path: Path, then: str = "hang", **arguments) -> tuple[dict, Path]:
    pid_file = tmp_path / f"daemonize-{then}.json"
    return task("daemonize", arguments={"pid_file": str(pid_file), "then": then, **arguments}), pid_file


def started(pid_file: Path, strays: Strays) -> dict:
    wait_until(pid_file.exists, timeout=15, what="the boefje to start its processes")
    record = json.loads(pid_file.read_text())
    strays.extend(record["children"])
    assert all(alive(pid) for pid in record["children"])
    return record


def all_gone(record: dict) -> None:
    pids = [record["worker"], *record["children"]]
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=5,
               what=f"every process of the task to be gone ({[pid for pid in pids if alive(pid)]} alive)")


def test_a_timed_out_task_takes_every_process_it_started_with_it(boefje_api, make_pool, tmp_path, strays):
    # Given a boefje that leaves a daemon and a child behind, then hangs, under a 1 s task timeout
    pool = make_pool(task_timeout=1.0).start()
    daemonizing, pid_file = daemonizing_task(tmp_path)
    task_id = boefje_api.enqueue(daemonizing)
    record = started(pid_file, strays)

    # When the timeout passes
    boefje_api.wait_for_status(task_id, "failed", timeout=15)

    # Then the task says so (and does not blame the OOM killer), and none of its processes lives on
    text = error_text(boefje_api, task_id)
    assert "timed out after 1 s" in text and "OOM" not in text
    all_gone(record)
    assert pool.phase == "running"


def test_a_drain_past_its_grace_period_takes_every_process_with_it(boefje_api, make_pool, tmp_path, strays):
    pool = make_pool(shutdown_timeout=0.5).start()
    daemonizing, pid_file = daemonizing_task(tmp_path)
    task_id = boefje_api.enqueue(daemonizing)
    record = started(pid_file, strays)

    assert pool.stop(timeout=20) == 0

    assert "shut down before this task finished" in error_text(boefje_api, task_id)
    all_gone(record)


def test_an_immediate_stop_takes_every_process_with_it(boefje_api, make_pool, tmp_path, strays):
    pool = make_pool(shutdown_timeout=60).start()
    daemonizing, pid_file = daemonizing_task(tmp_path)
    task_id = boefje_api.enqueue(daemonizing)
    record = started(pid_file, strays)

    started_at = time.monotonic()
    assert pool.stop(immediate=True, timeout=20) == 0

    assert time.monotonic() - started_at < 15, "an immediate stop does not wait for the 60 s grace period"
    assert "killed at an immediate shutdown" in error_text(boefje_api, task_id)
    all_gone(record)


def test_a_returning_boefje_leaves_no_daemon_behind(boefje_api, make_pool, tmp_path, strays):
    make_pool().start()
    release_file = tmp_path / "release"
    daemonizing, pid_file = daemonizing_task(tmp_path, then="return", release_file=str(release_file))
    task_id = boefje_api.enqueue(daemonizing)
    record = started(pid_file, strays)  # the boefje holds until released: its children are still ours
    release_file.touch()

    boefje_api.wait_for_status(task_id, "completed")

    wait_until(lambda: not any(alive(pid) for pid in record["children"]), timeout=5, what="the children to be gone")


# -- worker mode (the CLI): the supervisor adopts orphans ------------------------------------------------


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    write_plugin(tmp_path / "plugins" / "daemonize", abuse_boefjes.DAEMONIZE_SOURCE, id="daemonize", oci_image=IMAGE)
    return tmp_path / "plugins"


class Cli(subprocess.Popen):
    """The CLI in worker mode (after ``prefix``, e.g. unshare), its log lines collected as they come."""

    def __init__(self, api_url: str, plugin_dir: Path, *prefix: str, **env: str) -> None:
        environment = cli_env({"BOEFJES_API": api_url, "OCI_IMAGE": IMAGE, "PLUGIN_DIR": str(plugin_dir),
                               "POLL_INTERVAL": "0.2", "POOL_SIZE": "1", **env})
        super().__init__([*prefix, *CLI], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, cwd=plugin_dir)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.stderr), daemon=True).start()

    def wait_for_line(self, text: str, timeout: float = 15.0) -> None:
        wait_until(lambda: any(text in line for line in list(self.lines)), timeout, what=f"a line with {text!r}")


cli = Cli


@pytest.fixture
def processes():
    started_: list[subprocess.Popen] = []
    yield started_
    for process in started_:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def cli_task(tmp_path: Path, then: str = "hang") -> tuple[dict, Path]:
    from boefje_runtime.testing import make_task

    pid_file = tmp_path / f"cli-{then}.json"
    return make_task("daemonize", oci_image=IMAGE, arguments={"pid_file": str(pid_file), "then": then}), pid_file


def test_a_second_sigterm_takes_every_process_with_it(boefje_api, plugin_dir, tmp_path, strays, processes):
    daemonizing, pid_file = cli_task(tmp_path)
    task_id = boefje_api.enqueue(daemonizing)
    worker = cli(boefje_api.url, plugin_dir, SHUTDOWN_TIMEOUT="60")
    processes.append(worker)
    record = started(pid_file, strays)

    worker.send_signal(signal.SIGTERM)
    worker.wait_for_line("Shutting down")
    worker.send_signal(signal.SIGTERM)

    assert worker.wait(30) == 0, "".join(worker.lines)
    text = error_text(boefje_api, task_id)
    assert "killed at a second shutdown signal" in text and "of the 60 s grace period" not in text.split("(")[0]
    all_gone(record)


def test_a_sigkilled_worker_takes_every_process_with_it(boefje_api, plugin_dir, tmp_path, strays, processes):
    # Given worker mode (the supervisor adopts orphans) and a boefje that left a daemon and a child
    daemonizing, pid_file = cli_task(tmp_path)
    task_id = boefje_api.enqueue(daemonizing)
    worker = cli(boefje_api.url, plugin_dir)
    processes.append(worker)
    record = started(pid_file, strays)

    # When its worker is SIGKILLed from outside (the OOM killer, an operator)
    os.kill(record["worker"], signal.SIGKILL)

    # Then the task fails saying so, and the daemon (re-parented to the supervisor) is gone too
    boefje_api.wait_for_status(task_id, "failed", timeout=15)
    assert "SIGKILL" in error_text(boefje_api, task_id)
    all_gone(record)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare and root")
def test_the_supervisor_as_pid_1_leaves_no_zombie(boefje_api, plugin_dir, tmp_path, processes):
    # Given the CLI as PID 1 of a new PID namespace (as in a container without an init)
    unshare = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")
    namespace = cli(boefje_api.url, plugin_dir, *unshare, TASK_TIMEOUT="2")
    processes.append(namespace)
    wait_until(lambda: boefje_api.request_counts().get("pop", 0) > 0, timeout=20, what="the pool to pop")

    # When boefjes leave daemons behind: one ends its worker, one hangs past its timeout, one returns
    ids = []
    for then in ("exit", "hang", "return"):
        daemonizing, _ = cli_task(tmp_path, then)
        ids.append(boefje_api.enqueue(daemonizing))
    boefje_api.wait_for_status(ids, ["failed", "failed", "completed"], timeout=30)

    # Then nothing is left in the namespace but the supervisor, its fork server and the worker that
    # forked: no daemon, no zombie
    [pid_1] = process_tree.children(namespace.pid)

    def leftovers() -> list[tuple[int, str]]:
        ours = {pid_1, *process_tree.children(pid_1)}  # the supervisor and its fork server
        # each process's stat read once: one that ends between two reads must not fail the look (it did)
        stats = [(pid, process_tree.proc_stat(pid)) for pid in process_tree.descendants(pid_1)]
        return [(pid, stat.state) for pid, stat in stats
                if stat is not None and (stat.ppid not in ours or stat.state in "ZX")]

    wait_until(lambda: not leftovers(), timeout=15, what="no stray and no zombie in the namespace")
    [fork_server] = process_tree.children(pid_1)
    assert len(process_tree.children(fork_server)) == 1, "one worker, nothing else"
    os.kill(pid_1, signal.SIGTERM)  # the supervisor itself: unshare does not pass signals on
    assert namespace.wait(30) == 0, "".join(namespace.lines)
