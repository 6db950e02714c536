"""The README's benchmark table, from a run's JSON: ``python benchmarks/readme_table.py [results.json]``.

Why a script: the table in the README must be the figures of one run, side by side, not numbers
copied by hand from several; this prints it (markdown) from ``benchmarks/results/latest.json``, with
each target's verdict as the benchmark judged it. Paste its output over the README's table.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"

Figures = dict[str, dict[str, Any]]


def number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def with_spread(figure: dict[str, Any], digits: int = 2, unit: str = "") -> str:
    """``value unit (low-high)``; the spread only when the figure was repeated and it differs."""
    value, low, high = figure.get("value"), figure.get("low"), figure.get("high")
    text = f"{number(value, digits)}{unit}"
    if low is not None and high is not None and number(low, digits) != number(high, digits):
        text += f" ({number(low, digits)}-{number(high, digits)})"
    return text


def verdict(figures: Figures, *keys: str) -> str:
    """The targets of ``keys`` and whether each was met, as the benchmark judged them."""
    parts = []
    for key in keys:
        figure = figures.get(key)
        if figure is None or not figure.get("target"):
            continue
        met = {True: "met", False: "missed", None: "not judged"}[figure.get("passed")]
        parts.append(f"{figure['target']} ({met})")
    return ", ".join(parts)


Row = tuple[str, Callable[[Figures], str], tuple[str, ...]]


def _get(figures: Figures, key: str) -> dict[str, Any]:
    return figures.get(key) or {"value": None}


def _v(figures: Figures, key: str, digits: int = 2) -> str:
    return number(_get(figures, key)["value"], digits)


def rows(meta: dict[str, Any]) -> list[Row]:
    plan = meta.get("plan", {})
    tasks = plan.get("tasks", 1000)
    first, last = plan.get("memory_checkpoints", (1000, 10_000))
    memory = ("idle", f"after_{first}", f"after_{last}")
    soak_tasks = plan.get("soak_checkpoints", (10_000,))[-1]
    return [
        (f"throughput, pool size 1 / 2 / 4 / 8 ({tasks:,} tasks)",
         lambda f: " / ".join(_v(f, f"pool-{size}.tasks_per_s", 0) for size in (1, 2, 4, 8)) + " tasks/s", ()),
        ("2 bare loops in parallel (the floor)", lambda f: with_spread(_get(f, "bare-x2.tasks_per_s"), 0, " tasks/s"),
         ()),
        ("pool-2 / 2 bare loops", lambda f: with_spread(_get(f, "tput_ratio.default_session"), 2, "x"),
         ("tput_ratio.default_session",)),
        ("pool-4 / pool-2 (more workers than cores)", lambda f: with_spread(_get(f, "tput_ratio.pool4_pool2"), 2, "x"),
         ("tput_ratio.pool4_pool2",)),
        ("HTTP requests per task, API pops like mula (one task unless a duplicate group)",
         lambda f: _v(f, "pool-2.requests_per_task"), ("pool-2.requests_per_task",)),
        ("same, duplicate groups of 2 / 4 / 16",
         lambda f: " / ".join(_v(f, f"groups-{size}.requests_per_task") for size in (2, 4, 16)),
         ("groups-4.requests_per_task",)),
        ("same, API honours `limit` for unrelated tasks (not OpenKAT's scheduler); with `PREFETCH=1`",
         lambda f: f"{_v(f, 'pool-2-limit.requests_per_task')}; {_v(f, 'pool-2-prefetch-1.requests_per_task')}", ()),
        ("CPU per task, whole pool tree / bare loop",
         lambda f: f"{with_spread(_get(f, 'cpu_ratio.default_session'), 2, 'x')} "
                   f"({_v(f, 'pool-2.cpu_ms_per_task')} ms vs {_v(f, 'bare.cpu_ms_per_task')} ms)",
         ("cpu_ratio.default_session",)),
        ("same, against a bare loop with `trust_env=False`", lambda f: with_spread(_get(f, "cpu_ratio.no_env"), 2, "x"),
         ("cpu_ratio.no_env",)),
        (f"PSS supervisor + fork server + 2 workers, idle / after {first:,} / after {last:,} tasks",
         lambda f: " / ".join(_v(f, f"memory.{name}.pss_mb", 1) for name in memory)
         + f" MB (growth {_v(f, 'memory.pss_mb_growth_pct')} %)",
         (f"memory.{memory[-1]}.pss_mb", "memory.pss_mb_growth_pct")),
        ("one-shot CLI wall time / import time; the floor (bare `requests` GET + POST in a new interpreter)",
         lambda f: f"{with_spread(_get(f, 'oneshot.wall_s'), 3, ' s')} / {_v(f, 'imports.oneshot_s', 3)} s; "
                   f"floor {_v(f, 'oneshot.bare_wall_s', 3)} s ({_v(f, 'oneshot.ratio')}x it)",
         ("oneshot.wall_s", "imports.oneshot_s")),
        ("process per task (one-shot CLI, 2 at a time); worker mode pool-2 / that; 2 bare loops / that",
         lambda f: f"{_v(f, 'process_per_task.tasks_per_s', 1)} tasks/s; {_v(f, 'process_per_task.ratio', 0)}x; "
                   f"{_v(f, 'process_per_task.bare_ratio', 0)}x",
         ("process_per_task.ratio",)),
        ("pickup while busy, p50 / p95; pops per second meanwhile (`FIRST_POLL_WAIT` 0.25 s, the default)",
         lambda f: f"{_v(f, 'pickup.busy.p50_ms', 1)} ms / {_v(f, 'pickup.busy.p95_ms', 1)} ms; "
                   f"{_v(f, 'pickup.busy.pops_per_s', 1)}",
         ("pickup.busy.p50_ms",)),
        ("same, `FIRST_POLL_WAIT=0.02`",
         lambda f: f"{_v(f, 'pickup.busy_fast.p50_ms', 1)} ms / {_v(f, 'pickup.busy_fast.p95_ms', 1)} ms; "
                   f"{_v(f, 'pickup.busy_fast.pops_per_s', 1)}",
         ("pickup.busy_fast.p50_ms",)),
        ("pickup after idle, worst; idle pops per poll interval",
         lambda f: f"{_v(f, 'pickup.idle.max_s', 1)} s; {_v(f, 'pickup.idle.pops_per_interval')}",
         ("pickup.idle.max_s", "pickup.idle.pops_per_interval")),
        *(_latency_row(delay) for delay in (0, 50, 200)),
        (f"{soak_tasks:,} tasks at pool size {plan.get('soak_pool_size', 16)} (CLI, INFO logs)",
         lambda f: f"{_v(f, 'soak.tasks_per_s', 0)} tasks/s, {_v(f, 'soak.problems', 0)} lost, "
                   f"PSS growth {_v(f, 'soak.pss_mb_growth_pct')} %",
         ("soak.problems",)),
    ]


def _latency_row(delay: int) -> Row:
    def cell(f: Figures) -> str:
        parts = []
        for size in (2, 8):
            prefix = f"lat{delay}.pool-{size}"
            parts.append(f"pool {size}: {_v(f, prefix + '.tasks_per_s', 0)} tasks/s, "
                         f"{with_spread(_get(f, prefix + '.ratio'), 2, 'x')} the bare loops, "
                         f"idle {_v(f, prefix + '.idle', 0)} %")
        return "; ".join(parts)

    return (f"pop +{delay} ms, 20 ms boefje: pool / as many sequential bare loops", cell,
            (f"lat{delay}.pool-8.ratio",))


def table(results: dict[str, Any]) -> str:
    figures: Figures = {figure["key"]: figure for figure in results["figures"]}
    lines = ["| figure | value (min-max) | target |", "|---|---|---|"]
    for label, value, target_keys in rows(results.get("meta", {})):
        lines.append(f"| {label} | {value(figures)} | {verdict(figures, *target_keys)} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT_JSON
    results = json.loads(path.read_text())
    meta = results.get("meta", {})
    print(table(results))
    print()
    load = ", ".join(f"{value:.2f}" for value in meta.get("load_average", ()))
    print(f"({meta.get('elapsed_s', 0):.0f} s, {meta.get('cpus', '?')} CPUs, load average at start {load}, "
          f"commit {meta.get('commit', '?')}, Python {meta.get('python', '?')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
