"""``benchmarks/readme_table.py`` turns one run's JSON into the README's table (a pure function)."""

from __future__ import annotations

import importlib.util

from .helpers import ROOT


def load_module():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def figure(key: str, value: float, target: str = "", passed: bool | None = None, low=None, high=None) -> dict:
    return {"key": key, "value": value, "target": target, "passed": passed, "low": low, "high": high}


def test_the_table_shows_each_value_with_its_spread_and_the_benchmarks_own_verdict():
    module = load_module()
    results = {
        "meta": {"plan": {"tasks": 1000, "memory_checkpoints": [1000, 10000]}},
        "figures": [
            figure("tput_ratio.default_session", 0.93, ">= 0.9", True, low=0.88, high=0.97),
            figure("memory.after_10000.pss_mb", 61.2, "<= 60", False),
            figure("memory.idle.pss_mb", 50.0),
        ],
    }

    lines = module.table(results).splitlines()

    assert lines[0] == "| figure | value (min-max) | target |"
    assert "| pool-2 / 2 bare loops | 0.93x (0.88-0.97) | >= 0.9 (met) |" in lines
    [memory] = [line for line in lines if line.startswith("| PSS")]
    assert "after 10,000 tasks" in memory and "50.0 / - / 61.2 MB" in memory and "<= 60 (missed)" in memory
    # a figure the run did not measure is shown as "-", never as a made-up value
    [oneshot] = [line for line in lines if line.startswith("| one-shot")]
    assert "| - s / - s; floor - s (-x it) |" in oneshot
