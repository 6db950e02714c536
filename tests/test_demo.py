"""``python -m boefje_runtime.demo``, the README's first command, run as a user runs it: a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from boefje_runtime.demo import DEMO_TASKS, demo_tasks

pytestmark = pytest.mark.timeout(90)

ROW = re.compile(r"^(?P<task>[0-9a-f]{8})\s{2,}(?P<boefje>\S+)\s{2,}(?P<input>\S+)\s{2,}(?P<status>\S+)\s{2,}"
                 r"(?P<duration>\d+ ms|-)\s{2,}(?P<files>\d+.*)$")


def run_demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "boefje_runtime.demo", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


def rows(stdout: str) -> list[dict[str, str]]:
    return [match.groupdict() for line in stdout.splitlines() if (match := ROW.match(line))]


def test_the_demo_runs_every_task_and_ends_each_as_planned():
    # when
    result = run_demo()

    # then
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert [(row["boefje"], row["input"]) for row in table] == [(t.boefje_id, t.input_ooi) for t in DEMO_TASKS]
    assert [row["status"] for row in table] == [t.expected for t in DEMO_TASKS]
    assert len({row["task"] for row in table}) == len(DEMO_TASKS)
    failed = [row for row in table if row["status"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["boefje"] == "dns-hosts" and failed[0]["files"] == "1 (error/boefje)"
    assert all(row["duration"] != "-" for row in table)
    assert "failed on purpose: LookupError: 'no-such-host.example' is not in the hosts file" in result.stdout
    assert "11 completed, 1 failed" in result.stdout
    # progress: one line per run on stderr, ending with every task closed
    assert f"({len(DEMO_TASKS)}/{len(DEMO_TASKS)} tasks closed)" in result.stderr
    # quiet by default: the one warning is the failure on purpose, and nothing at INFO
    assert "[info]" not in result.stderr
    assert result.stderr.count("[warning]") == 1


def test_options_change_the_number_of_tasks_and_workers():
    # when
    result = run_demo("--tasks", "3", "--pool-size", "1", "--verbose")

    # then
    assert result.returncode == 0, result.stderr
    assert [row["status"] for row in rows(result.stdout)] == ["completed"] * 3
    assert "3 tasks in" in result.stdout and "with 1 worker process:" in result.stdout
    assert "[info] Created worker pool for queue 'boefje'" in result.stderr


def test_more_tasks_than_the_list_cycle_through_it():
    specs = demo_tasks(len(DEMO_TASKS) + 2)

    assert specs[len(DEMO_TASKS):] == list(DEMO_TASKS[:2])


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_option_is_a_usage_error(value):
    result = run_demo("--tasks", value)

    assert result.returncode == 2
    assert "--tasks" in result.stderr
