"""Workers are never forked from a process that runs threads (issue 10, last item).

The supervisor runs threads (the health endpoint, the pops in flight); Python 3.12+ warns
(DeprecationWarning) when a process with threads forks, because a lock another thread held at that
moment stays locked in the child. The real CLI runs here with the health endpoint on, under
``-W error::DeprecationWarning``, with ``os.fork`` wrapped so every fork made by a process with
more than one thread is written down: on any Python version that list must stay empty, and the
workers' log lines must come through.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from boefje_runtime.testing import make_task

from .helpers import cli_env, unused_port, write_plugin

IMAGE = "ghcr.io/minvws/openkat/fork-safety:latest"

#: Runs the CLI with ``os.fork`` wrapped: a fork by a process with threads is appended to the file
#: named by FORK_GUARD_FILE (the thread count comes from /proc, as Python 3.12's own check does).
FORK_GUARD = """
import os, runpy, sys
record = os.environ.pop("FORK_GUARD_FILE")
real_fork = os.fork

def threads():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))

def guarded_fork():
    count = threads()
    if count > 1:
        with open(record, "a") as out:
            out.write(f"pid {os.getpid()} forked with {count} threads\\n")
    return real_fork()

os.fork = guarded_fork
sys.argv[0] = "boefje-worker"
runpy.run_module("boefje_runtime_cli", run_name="__main__", alter_sys=True)
"""

LOGGING_BOEFJE = """
import logging

def run(boefje_meta):
    logging.getLogger("boefje.talker").warning("hello from task %s", boefje_meta["id"])
    return [({"text/plain"}, b"ok")]
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(90)
def test_workers_are_forked_by_a_process_without_threads_and_their_logs_come_through(boefje_api, tmp_path):
    # given a boefje that logs, tasks for it, and the CLI with the health endpoint (a thread) on
    write_plugin(tmp_path / "plugins" / "talker", LOGGING_BOEFJE, id="talker", oci_image=IMAGE)
    ids = boefje_api.enqueue([make_task("talker", oci_image=IMAGE, input_ooi=f"Hostname|internet|h{index}.example")
                              for index in range(6)])
    guard = tmp_path / "forks-with-threads.txt"
    env = cli_env({"BOEFJES_API": boefje_api.url, "OCI_IMAGE": IMAGE, "POOL_SIZE": "2", "BURST": "true",
                   "HEALTH_PORT": str(unused_port()), "FORK_GUARD_FILE": str(guard)})

    # when it drains the queue under -W error::DeprecationWarning
    result = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", FORK_GUARD,
                             "--plugin-dir", str(tmp_path / "plugins")],
                            capture_output=True, text=True, env=env, timeout=60)

    # then every task ran, no process forked while it had threads, and nothing warned
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Serving /healthz" in result.stderr  # the health thread did run
    assert [boefje_api.status(task_id) for task_id in ids] == ["completed"] * len(ids)
    assert not guard.exists(), guard.read_text()
    assert "DeprecationWarning" not in result.stderr
    # and each worker's log line came through its inherited handler
    for task_id in ids:
        assert f"hello from task {task_id}" in result.stderr


def test_the_guard_sees_a_fork_made_with_threads(tmp_path):
    """The wrapper itself works: a program that forks while a second thread runs is written down."""
    guard = tmp_path / "forks.txt"
    program = FORK_GUARD.replace(
        'runpy.run_module("boefje_runtime_cli", run_name="__main__", alter_sys=True)',
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n    os._exit(0)\n"
        "os.waitpid(pid, 0)\n",
    )
    subprocess.run([sys.executable, "-c", program], env=cli_env({"FORK_GUARD_FILE": str(guard)}), timeout=30,
                   check=True)

    assert "forked with 2 threads" in guard.read_text()
