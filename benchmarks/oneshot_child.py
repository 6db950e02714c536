"""What one-shot's supervised child costs (``execute()`` in-process vs ``run_in_child()``), and its exit.

One-shot runs the boefje in a forked child so TASK_TIMEOUT, SIGTERM and SIGINT can kill its whole
process tree (boefje_runtime/supervised.py). This measures the price of that fork, per run, for a
trivial boefje, in this process (requests imported, as in the CLI). Run it on a quiet machine:

    python benchmarks/oneshot_child.py [RUNS]

Measured 2026-11-30 on 2 shared cores at load ~7.6 (8 helpers busy): execute() 0.15 ms wall;
run_in_child() 28.5 ms wall, 9.9 ms CPU (parent and child). The CLI end to end, interleaved A/B
(n=20, same load): median wall 728 -> 754 ms, CPU 539 -> 562 ms, before vs after the change.

It also measures how one-shot's process ends: after importing what a one-shot run imports, the
interpreter's teardown (``sys.exit``) against :func:`~boefje_runtime.process_exit.exit_now`, which the
CLI uses once the task is closed. Measured 2026-11-30, 2 shared cores at load ~10 (n=30,
interleaved): CPU median 489 ms with the teardown, 361 ms with exit_now() (wall 991 -> 711 ms); the
CLI end to end against the test API, before vs after, by ``perf stat`` task-clock (n=25, load ~8):
CPU median 492 -> 385 ms, wall median 940 -> 733 ms.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
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
    measure_exit(runs)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {runs} runs each")


#: What a one-shot run has imported by the time it ends.
ONE_SHOT_IMPORTS = "import boefje_runtime_cli.main, boefje_runtime.oneshot, boefje_runtime.supervised"
EXITS = {
    "teardown (sys.exit)": f"{ONE_SHOT_IMPORTS}; import sys; sys.exit(0)",
    "exit_now()": f"{ONE_SHOT_IMPORTS}; from boefje_runtime.process_exit import exit_now; exit_now(0)",
}


def measure_exit(runs: int) -> None:
    """Median wall and CPU of a process that imports what one-shot does, then ends each way."""
    walls: dict[str, list[float]] = {name: [] for name in EXITS}
    cpus: dict[str, list[float]] = {name: [] for name in EXITS}
    for _ in range(runs):  # interleaved, so load drift hits both
        for name, code in EXITS.items():
            started = time.perf_counter()
            process = subprocess.Popen([sys.executable, "-c", code])
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            walls[name].append(time.perf_counter() - started)
            cpus[name].append(usage.ru_utime + usage.ru_stime)
    for name in EXITS:
        print(f"{name:22} wall median {statistics.median(walls[name]) * 1000:7.2f} ms   "
              f"CPU median {statistics.median(cpus[name]) * 1000:6.2f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
