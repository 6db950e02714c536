"""Gzip bombs against the whole runtime: one-shot and a worker pool, black-box over HTTP.

The answer-size cap counts decoded bytes (``tests/test_client.py`` checks that per call). Here:
what a worker does when the Boefje API answers with a gzip bomb (``BoefjeAPIServer.inject(...,
gzip_bomb=N)``: a few KB on the wire, N bytes of whitespace before the real answer once decoded).
One-shot exits with INPUT_UNAVAILABLE and one line; a pool logs the refusal, keeps running and
closes every task the way the protocol says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from boefje_runtime import BoefjeAPIClient, TaskFilter
from boefje_runtime.client import DEFAULT_MAX_RESPONSE_BYTES
from boefje_runtime.exit_codes import ExitCode
from boefje_runtime.pool import PoolSettings, WorkerPool

from . import pool_boefjes
from .helpers import FAST_RETRY, IMAGE, error_text, run_cli, task, write_plugin

MIB = 1024 * 1024


# -- one-shot ----------------------------------------------------------------------------------------------


def test_one_shot_refuses_a_gzip_bomb_input_with_one_line_and_input_unavailable(boefje_api, tmp_path):
    """Default cap (256 MiB), a 300 MiB bomb of ~300 KB on the wire. Before the fix the whole bomb was
    decoded (and, being valid JSON, run as a task)."""
    write_plugin(tmp_path / "plugins" / "hello", "def run(boefje_meta):\n    return [({'text/plain'}, b'hi')]\n",
                 id="hello")
    task_id = boefje_api.enqueue(task("hello"))
    boefje_api.set_status(task_id, "running")
    url = f"{boefje_api.url}/api/v0/tasks/{task_id}"
    boefje_api.inject("input", gzip_bomb=DEFAULT_MAX_RESPONSE_BYTES + 44 * MIB)

    result = run_cli("--plugin-dir", str(tmp_path / "plugins"), url, timeout=120)

    assert result.returncode == ExitCode.INPUT_UNAVAILABLE, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "[error]" in line]
    assert f"Cannot fetch input from {url}" in line
    assert f"larger than the cap of {DEFAULT_MAX_RESPONSE_BYTES} bytes once decoded (Content-Encoding: gzip)" in line
    assert boefje_api.request_counts() == {"input": 1}  # refused, not retried: the next answer would be the same
    assert boefje_api.outputs(task_id) == []  # nothing ran
    assert boefje_api.status(task_id) == "running"  # as for any input that cannot be fetched: no output URL known


# -- a worker pool --------------------------------------------------------------------------------------------

CAP = MIB
BOMB = 8 * MIB


@pytest.fixture
def capped_pool(boefje_api) -> Iterator[Callable[[], WorkerPool]]:
    """A started pool of one worker whose client (and so every worker's clone) caps answers at 1 MiB."""
    pools: list[WorkerPool] = []

    def start() -> WorkerPool:
        client = BoefjeAPIClient(boefje_api.url, retry=FAST_RETRY, max_response_bytes=CAP)
        settings = PoolSettings(pool_size=1, poll_interval=0.2, shutdown_timeout=5.0)
        pool = WorkerPool(client, TaskFilter([IMAGE]), registry=pool_boefjes.registry(), settings=settings)
        pools.append(pool)
        return pool.start()

    yield start
    for pool in pools:
        pool.stop(immediate=True, timeout=20)
        for worker in pool.workers:
            worker.process.join(5)
            assert not worker.process.is_alive(), f"worker {worker.pid} outlived its pool"


def test_a_pool_survives_a_bomb_instead_of_a_pop_answer_and_runs_the_task_later(boefje_api, capped_pool, caplog):
    """The bomb replaces the pop's answer (the pop has no effect): the supervisor refuses it, backs off,
    pops again and runs the task."""
    caplog.set_level(logging.WARNING)
    boefje_api.inject("pop", gzip_bomb=BOMB, body="[]")
    capped_pool()
    task_id = boefje_api.enqueue(task())

    boefje_api.wait_for_status(task_id, "completed", timeout=20)

    assert boefje_api.history(task_id) == ["queued", "dispatched", "running", "completed"]
    assert len(boefje_api.outputs(task_id)) == 1
    assert f"larger than the cap of {CAP} bytes once decoded (Content-Encoding: gzip)" in caplog.text


@pytest.mark.parametrize(
    ("endpoint", "closed_as"),
    [
        # The running PATCH lands, its answer is refused: the worker cannot know the task started, so
        # the task is closed failed with an error file, never left running.
        ("patch", "failed"),
        # The output is stored, its answer is refused: a 2xx means delivered, nothing is undone.
        ("output", "completed"),
    ],
)
def test_a_pool_closes_a_task_whose_answer_is_a_bomb_and_goes_on(boefje_api, capped_pool, endpoint, closed_as):
    pool = capped_pool()
    boefje_api.inject(endpoint, gzip_bomb=BOMB)  # pads the real answer: the request has its effect
    bombed = boefje_api.enqueue(task())

    boefje_api.wait_for_status(bombed, timeout=20)
    assert boefje_api.status(bombed) == closed_as
    if closed_as == "failed":
        assert error_text(boefje_api, bombed)  # an error/boefje file says why (the pool's own wording)
    else:
        assert len(boefje_api.outputs(bombed)) == 1

    follow_up = boefje_api.enqueue(task())
    boefje_api.wait_for_status(follow_up, "completed", timeout=20)
    assert pool.phase == "running"
    assert boefje_api.errors == []
