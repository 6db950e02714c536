"""What one-shot's supervised child costs: ``execute()`` in-process vs ``run_in_child()``.

One-shot runs the boefje in a forked child so TASK_TIMEOUT, SIGTERM and SIGINT can kill its whole
process tree (boefje_runtime/supervised.py). This measures the price of that fork, per run, for a
trivial boefje, in this process (requests imported, as in the CLI). Run it on a quiet machine:

    python benchmarks/oneshot_child.py [RUNS]

Measured 2026-11-30 on 2 shared cores at load ~7.6 (8 helpers busy): execute() 0.15 ms wall;
run_in_child() 28.5 ms wall, 9.9 ms CPU (parent and child). The CLI end to end, interleaved A/B
(n=20, same load): median wall 728 -> 754 ms, CPU 539 -> 562 ms, before vs after the change.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time

import boefje_runtime.client  # noqa: F401 - the one-shot process has requests imported when it forks
from boefje_runtime.execution import execute
from boefje_runtime.plugins import BoefjeRegistry
from boefje_runtime.stop_signals import StopSignals
from boefje_runtime.supervised import run_in_child


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(run, runs: int) -> tuple[float, float]:
    """Median wall and mean CPU (this process and its children) of ``run()``, in ms."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), _cpu()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu() - cpu)
    return statistics.median(walls) * 1000, statistics.mean(cpus) * 1000


def main(runs: int = 40) -> None:
    registry = BoefjeRegistry()
    boefje = registry.register("trivial", lambda meta: [({"text/plain"}, b"hi")])
    meta = {"id": "1", "boefje": {"id": "trivial"}, "environment": {}}
    signals = StopSignals()
    with signals.installed():
        cases = {
            "execute() in-process": lambda: execute(boefje, meta, max_output_bytes=None),
            "run_in_child()": lambda: run_in_child(boefje, meta, max_output_bytes=None, timeout=None, signals=signals),
        }
        for name, run in cases.items():
            wall, cpu = measure(run, runs)
            print(f"{name:22} wall median {wall:7.2f} ms   CPU mean {cpu:6.2f} ms")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {runs} runs each")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
