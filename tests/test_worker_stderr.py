"""Workers' stderr: inherited from the supervisor (the container's log stream), not a pipe of the pool.

What was checked: the pool forks its workers (forkserver.py) without touching fd 2, and the
supervisor reads nothing from them but their message pipes. So a boefje, or a worker, writing a
lot to stderr writes where the supervisor's own log lines go: as long as whoever collects the
container's output reads it (the container runtime does), the write finishes, and the pool never
waits on it. (Had each worker a stderr pipe the supervisor did not read, the first 64 KiB would
fill it and the worker would hang in ``write``.)

Real parts: the CLI in worker mode as a subprocess, its stderr a pipe a thread of the test reads
(as a container runtime does), the test Boefje API on 127.0.0.1, a boefje that keeps writing to
stderr after it returned, while its worker is idle and then runs the next task.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from .helpers import CLI, IMAGE, cli_env, task, wait_until, write_plugin

pytestmark = pytest.mark.timeout(90)

#: Far more than a pipe's buffer (64 KiB on Linux): a stderr no one drained would block on it.
FLOOD_BYTES = 8 * 1024 * 1024

SHOUT = '''
import os
import sys
import threading


def run(boefje_meta):
    arguments = boefje_meta["arguments"]
    with open(arguments["pid_file"], "w") as pid_file:
        pid_file.write(str(os.getpid()))

    def shout():  # goes on after run returned: the worker is idle, then runs the next task
        line = "x" * 1023 + "\\n"
        for _ in range(arguments["bytes"] // 1024):
            sys.stderr.write(line)
        sys.stderr.flush()
        open(arguments["done_file"], "w").close()

    threading.Thread(target=shout, daemon=True).start()
    return [({"text/plain"}, "shouting")]
'''

HELLO = '''
def run(boefje_meta):
    return [({"text/plain"}, "hello")]
'''


@pytest.fixture
def cli_worker(boefje_api, tmp_path: Path):
    plugins = tmp_path / "plugins"
    write_plugin(plugins / "shout", SHOUT, id="shout", oci_image=IMAGE)
    write_plugin(plugins / "hello", HELLO, id="hello", oci_image=IMAGE)
    environment = cli_env({"BOEFJES_API": boefje_api.url, "OCI_IMAGE": IMAGE, "PLUGIN_DIR": str(plugins),
                           "POLL_INTERVAL": "0.2", "POOL_SIZE": "1", "SHUTDOWN_TIMEOUT": "5"})
    process = subprocess.Popen(CLI, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               cwd=plugins)
    read: list[int] = [0]

    def drain():  # the container runtime's part: read the stream as it comes
        for chunk in iter(lambda: process.stderr.read1(65536), b""):
            read[0] += len(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield process, read
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        reader.join(10)


def test_a_flood_on_stderr_from_an_idle_worker_does_not_block_the_pool(boefje_api, cli_worker, tmp_path):
    process, read = cli_worker
    pid_file, done_file = tmp_path / "shout.pid", tmp_path / "shout.done"

    # given: a boefje that floods stderr from a thread that outlives its run
    shouting = boefje_api.enqueue(task("shout", arguments={"pid_file": str(pid_file), "done_file": str(done_file),
                                                           "bytes": FLOOD_BYTES}))
    boefje_api.wait_for_status([shouting], "completed", timeout=30)
    worker_pid = int(pid_file.read_text())

    # then: the worker's stderr is the supervisor's own (inherited), not a pipe between them
    assert os.readlink(f"/proc/{worker_pid}/fd/2") == os.readlink(f"/proc/{process.pid}/fd/2")

    # when: the same worker (pool size 1), idle while the flood goes on, gets the next task
    hello = boefje_api.enqueue(task("hello"))

    # then: the flood was written out, and the pool went on working through it
    boefje_api.wait_for_status([hello], "completed", timeout=30)
    wait_until(done_file.exists, timeout=30, what="the flood to be written")
    wait_until(lambda: read[0] >= FLOOD_BYTES, timeout=30, what="the flood to reach the reader")
    assert process.poll() is None, "the pool is still running"
