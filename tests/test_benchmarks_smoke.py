"""Keeps ``benchmarks/bench.py`` from rotting: a quick run of a few measurements must finish, print
its table and write its JSON. Targets are not asserted here: a shared CI machine makes the numbers
noisy, and the benchmark exists to report them, not to gate a commit on them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from .helpers import ROOT

BENCH = ROOT / "benchmarks" / "bench.py"
#: Throughput (forked pools and bare loops), memory (the CLI in worker mode, /proc) and one-shot
#: (the CLI per task) exercise every moving part of the harness.
MEASUREMENTS = "throughput,memory,oneshot"


def run_bench(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_quick_run_writes_every_figure_of_the_chosen_measurements(tmp_path):
    # given a quick plan with small throughput runs
    out = tmp_path / "bench.json"

    # when
    result = run_bench("--quick", "--repeat", "1", "--tasks", "60", "--only", MEASUREMENTS, "--json", str(out),
                       timeout=150)

    # then it ran without measurement errors, printed the table and wrote the JSON
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "figure" in result.stdout and "target" in result.stdout
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    keys = {figure["key"] for figure in report["figures"]}
    for key in ("pool-2.tasks_per_s", "cpu_ratio.default_session", "cpu_ratio.no_env", "tput_ratio.no_env",
                "pool-2.requests_per_task", "pool-2-limit.requests_per_task", "tput_ratio.pool4_pool2",
                "memory.idle.pss_mb", "memory.pss_mb_growth_pct", "oneshot.wall_s", "oneshot.bare_wall_s",
                "oneshot.ratio"):
        assert key in keys
    assert all(figure["value"] is not None for figure in report["figures"])
    assert next(f for f in report["figures"] if f["key"] == "throughput.lost")["value"] == 0


@pytest.mark.slow  # half a minute of forked pools: with the other bench run, after the fast suite
@pytest.mark.timeout(170)
def test_quick_latency_and_group_runs_report_ratios_idle_fractions_and_requests(tmp_path):
    # given a quick plan: pops delayed 0/50/200 ms, a 20 ms boefje; duplicate groups of 1-16
    out = tmp_path / "bench.json"

    # when
    result = run_bench("--quick", "--repeat", "1", "--only", "latency,groups", "--json", str(out), timeout=150)

    # then every ratio to the bare loops, idle fraction and requests-per-task figure has a value
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    figures = {figure["key"]: figure for figure in report["figures"]}
    for ms in (0, 50, 200):
        for size in (2, 8):
            assert figures[f"lat{ms}.pool-{size}.ratio"]["value"] > 0
            assert 0 <= figures[f"lat{ms}.pool-{size}.idle"]["value"] <= 100
    assert figures["lat50.pool-8.ratio"]["target"] == ">= 1.3"
    for size in (1, 2, 4, 16):
        # at least the protocol's minimum (2 + 1/K): the server counted every request
        assert figures[f"groups-{size}.requests_per_task"]["value"] >= 2 + 1 / size - 1e-9
    assert figures["groups-4.requests_per_task"]["target"] == "<= 2.3"
    assert figures["latency.lost"]["value"] == 0 and figures["groups.lost"]["value"] == 0


def test_unknown_measurement_is_a_usage_error():
    result = run_bench("--only", "nonsense", timeout=30)

    assert result.returncode == 2
    assert "unknown measurement" in result.stderr


COMPARE = ROOT / "benchmarks" / "compare.py"


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_compare_runs_each_checkout_and_the_bare_loops_in_turns(tmp_path):
    # Given a second checkout (a copy of the package), and compare run from the repository root, as
    # one does: a child that imported the root's code there measured the root twice
    other = tmp_path / "other"
    shutil.copytree(ROOT / "boefje_runtime", other / "boefje_runtime", ignore=shutil.ignore_patterns("__pycache__"))

    result = subprocess.run([sys.executable, str(COMPARE), str(ROOT), str(other), "--tasks", "40", "--rounds", "2"],
                            capture_output=True, text=True, timeout=150, cwd=ROOT)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"[1] {ROOT}: boefje_runtime from {ROOT}", f"[2] {other}: boefje_runtime from {other}"]
    assert [line.split(":")[0] for line in lines[2:4]] == ["round 1/2", "round 2/2"]
    summary = [line for line in lines if "ms per task" in line]
    assert len(summary) == 4
    assert summary[-2].startswith("bare loop: ") and summary[-1].startswith("2 bare loops: ")
    assert all("CPU / bare loop, median" in line and "tasks/s / 2 bare loops, median" in line
               for line in summary[:2])


def test_compare_refuses_a_folder_that_is_not_a_checkout(tmp_path):
    result = subprocess.run([sys.executable, str(COMPARE), str(tmp_path)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert f"{tmp_path} is not a checkout of this repository" in result.stderr
