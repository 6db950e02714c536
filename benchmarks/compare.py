"""CPU per task and throughput of the pool in two or more checkouts, measured in turns:
``python benchmarks/compare.py A B``.

Why: on a shared machine the CPU a task costs drifts by more than most changes move it (the same
code measured 5.2 and 6.8 ms per task an hour apart), and so does throughput, so a before/after
taken from two benchmark runs says little. This runs a pool of 2 from each checkout (``PYTHONPATH``
set to it, a burst of ``--tasks`` tasks against the test Boefje API), one bare ``requests`` loop
(the CPU floor) and two bare loops in parallel (the throughput floor), in turns, for ``--rounds``
rounds, after one uncounted warm-up run each: whatever the machine does meanwhile hits all of them
alike. It prints each one's median CPU per task (the whole process tree: the pool reaps its
workers) and tasks/s (start of the processes to their exit, start-up included: use enough tasks),
and per round the ratio of each pool to that round's floors.

Example: ``git worktree add /tmp/before HEAD~3`` and ``python benchmarks/compare.py /tmp/before .``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

HERE = Path(__file__).resolve().parent
BARE, BARE_X2 = "bare loop", "2 bare loops"


def child(checkout: Path, code: str, scratch: Path) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``code`` (``harness`` importable) on ``checkout``'s code.

    Why the working directory is ``scratch``: ``python -c`` puts its working directory first on the
    path, before ``PYTHONPATH``, so a child started from a checkout (the repository root, where one
    runs this) imported that checkout's code whatever ``PYTHONPATH`` said, and every column measured
    the same code. :func:`code_folder` checks it."""
    env = h.child_env(scratch / "pycache" / checkout.name, PYTHONPATH=str(checkout))
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); import harness as h; {code}"], env


def code_folder(checkout: Path, scratch: Path) -> Path:
    """The folder the children of ``checkout`` import ``boefje_runtime`` from."""
    command, env = child(checkout, "import boefje_runtime; print(boefje_runtime.__file__)", scratch)
    found = subprocess.run(command, env=env, cwd=scratch, capture_output=True, text=True, timeout=60, check=True)
    return Path(found.stdout.strip()).parent.parent


def run_job(checkout: Path, code: str, tasks: int, scratch: Path, processes: int = 1) -> tuple[float, float]:
    """Run ``processes`` copies of ``code`` on ``checkout``'s code at once: CPU milliseconds per task
    of them and every process they waited for, and tasks/s."""
    command, env = child(checkout, code, scratch)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    running = [subprocess.Popen(command, env=env, cwd=scratch) for _ in range(processes)]
    try:
        for process in running:
            if process.wait(timeout=300) != 0:
                raise RuntimeError(f"{code} exited {process.returncode}")
    finally:  # a hung or failed run: its siblings are killed and reaped here, not left behind
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return 1000 * cpu / tasks, tasks / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="folders of checkouts of this repository")
    parser.add_argument("--tasks", type=int, default=1500, help="tasks per run (default 1500)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of one run each (default 6)")
    args = parser.parse_args(argv)
    checkouts = [path.resolve() for path in args.checkouts]
    for checkout in checkouts:
        if not (checkout / "boefje_runtime" / "__init__.py").exists():
            parser.error(f"{checkout} is not a checkout of this repository")
    h.preload()
    runs: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="boefje-compare-") as scratch_name, h.APIServerProcess() as server:
        scratch = Path(scratch_name)
        for index, checkout in enumerate(checkouts, 1):
            folder = code_folder(checkout, scratch)
            print(f"[{index}] {checkout}: boefje_runtime from {folder}", flush=True)
            if folder != checkout:  # e.g. an installed copy that shadows PYTHONPATH: nothing to compare
                print(f"error: the runs of {checkout} would import boefje_runtime from {folder}", file=sys.stderr)
                return 1
        jobs = [(f"[{index}] {path}", path, f"h.pool_main({server.url!r}, 2)", 1)  # numbered: the same
                for index, path in enumerate(checkouts, 1)]  # checkout may be given twice (an A/A run)
        jobs.append((BARE, checkouts[0], f"h.bare_loop({server.url!r}, True)", 1))
        jobs.append((BARE_X2, checkouts[0], f"h.bare_loop({server.url!r}, True)", 2))
        for _, checkout, code, processes in jobs:  # not counted: byte-code compiled and files cached first
            server.call("reset")
            server.call("enqueue", 100, False, 1)
            run_job(checkout, code, 100, scratch, processes)
        for round_number in range(args.rounds):
            for name, checkout, code, processes in jobs:
                server.call("reset")
                server.call("enqueue", args.tasks, False, 1)
                runs.setdefault(name, []).append(run_job(checkout, code, args.tasks, scratch, processes))
            print(f"round {round_number + 1}/{args.rounds}: "
                  + ", ".join(f"{name} {values[-1][0]:.2f} ms {values[-1][1]:.0f}/s" for name, values in runs.items()),
                  flush=True)
    for name, values in runs.items():
        cpu, rate = [value[0] for value in values], [value[1] for value in values]
        line = (f"{name}: {statistics.median(cpu):.2f} ms per task ({min(cpu):.2f}-{max(cpu):.2f}), "
                f"{statistics.median(rate):.0f} tasks/s")
        if name not in (BARE, BARE_X2):
            cpu_ratios = [value / floor for value, floor in zip(cpu, [v[0] for v in runs[BARE]], strict=True)]
            rate_ratios = [value / floor for value, floor in zip(rate, [v[1] for v in runs[BARE_X2]], strict=True)]
            line += (f"; CPU / bare loop, median {statistics.median(cpu_ratios):.3f}, per round "
                     f"{[round(r, 3) for r in cpu_ratios]}; tasks/s / 2 bare loops, median "
                     f"{statistics.median(rate_ratios):.3f}, per round {[round(r, 3) for r in rate_ratios]}")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
