"""CPU per task of the pool in two or more checkouts, measured in turns: ``python benchmarks/compare.py A B``.

Why: on a shared machine the CPU a task costs drifts by more than most changes move it (the same
code measured 5.2 and 6.8 ms per task an hour apart), so a before/after taken from two benchmark
runs says little. This runs a pool of 2 from each checkout (``PYTHONPATH`` set to it, a burst of
``--tasks`` tasks against the test Boefje API) and one bare ``requests`` loop, in turns, for
``--rounds`` rounds, after one uncounted warm-up run each: whatever the machine does meanwhile hits
all of them alike. It prints each one's
median CPU per task (the whole process tree: the pool reaps its workers) and, per round, the ratio
of each pool to that round's bare loop.

Example: ``git worktree add /tmp/before HEAD~3`` and ``python benchmarks/compare.py /tmp/before .``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

HERE = Path(__file__).resolve().parent


def cpu_per_task(checkout: Path, code: str, tasks: int, pycache: Path) -> float:
    """CPU milliseconds per task of ``code`` (run with ``harness`` importable and ``checkout`` first
    on the path) and every process it waited for."""
    env = h.child_env(pycache / checkout.name, PYTHONPATH=str(checkout))
    program = f"import sys; sys.path.insert(0, {str(HERE)!r}); import harness as h; {code}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", program], env=env, check=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return 1000 * (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / tasks


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
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="boefje-compare-") as scratch, h.APIServerProcess() as server:
        jobs = [(f"[{index}] {path}", path, f"h.pool_main({server.url!r}, 2)")  # numbered: the same
                for index, path in enumerate(checkouts, 1)]  # checkout may be given twice (an A/A run)
        jobs.append(("bare loop", checkouts[0], f"h.bare_loop({server.url!r}, True)"))
        for _, checkout, code in jobs:  # not counted: byte-code compiled and files cached first
            server.call("reset")
            server.call("enqueue", 100, False, 1)
            cpu_per_task(checkout, code, 100, Path(scratch))
        for round_number in range(args.rounds):
            for name, checkout, code in jobs:
                server.call("reset")
                server.call("enqueue", args.tasks, False, 1)
                runs.setdefault(name, []).append(cpu_per_task(checkout, code, args.tasks, Path(scratch)))
            print(f"round {round_number + 1}/{args.rounds}: "
                  + ", ".join(f"{name} {values[-1]:.2f}" for name, values in runs.items()), flush=True)
    bare = runs["bare loop"]
    for name, values in runs.items():
        line = f"{name}: {statistics.median(values):.2f} ms per task ({min(values):.2f}-{max(values):.2f})"
        if name != "bare loop":
            ratios = [value / floor for value, floor in zip(values, bare, strict=True)]
            line += f"; / bare loop, median {statistics.median(ratios):.3f}, per round {[round(r, 3) for r in ratios]}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
