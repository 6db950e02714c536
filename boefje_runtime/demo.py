"""``python -m boefje_runtime.demo``: worker mode end to end, on one machine, in a few seconds.

What it does, so a new user sees the whole loop without OpenKAT, Docker or a network:

1. starts the test Boefje API (:mod:`boefje_runtime.testing`) on 127.0.0.1, on a free port;
2. queues a dozen tasks for the example boefjes shipped in :mod:`boefje_runtime.examples`
   (``hello-world`` and ``dns-hosts``), one of which fails on purpose;
3. runs a :class:`~boefje_runtime.pool.WorkerPool` in burst mode (it exits once the queue is empty),
   printing a line per finished task on stderr through a :class:`~boefje_runtime.pool.PoolEvents`
   listener;
4. prints a summary table on stdout from what the API recorded, and exits 0 when every task ended
   as planned (1 otherwise).

This is an application of the library, like the benchmarks: it may use the test API, which the
runtime itself never imports. argparse, not click: only the CLI package imports click.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from .client import BoefjeAPIClient
from .examples import BOEFJES_DIR
from .execution import ERROR_TAG
from .filters import TaskFilter
from .logs import configure_logging
from .plugins import BoefjeRegistry
from .pool import PoolEvents, PoolSettings, WorkerPool
from .retry import RetryPolicy
from .testing import EXAMPLE_OCI_IMAGE, BoefjeAPIServer, make_task

#: Statuses in which the Boefje API holds a task closed.
CLOSED = frozenset({"completed", "failed"})


@dataclass(frozen=True)
class DemoTask:
    """One task of the demo and the status it should end in."""

    boefje_id: str
    input_ooi: str
    organisation: str = "demo-org"
    environment: dict[str, str] | None = None
    expected: str = "completed"

    def to_task(self) -> dict[str, Any]:
        return make_task(
            self.boefje_id,
            oci_image=EXAMPLE_OCI_IMAGE,
            organisation=self.organisation,
            input_ooi=self.input_ooi,
            environment=self.environment,
        )


#: The default run. The 6th task fails on purpose: its name is not in dns-hosts' hosts file, so the
#: boefje raises and the task ends FAILED with an error/boefje file holding the traceback.
DEMO_TASKS: tuple[DemoTask, ...] = (
    DemoTask("hello-world", "Hostname|internet|example.com"),
    DemoTask("dns-hosts", "Hostname|internet|example.com"),
    DemoTask("hello-world", "IPAddressV4|internet|192.0.2.10"),
    DemoTask("dns-hosts", "Hostname|internet|www.example.com"),
    DemoTask("hello-world", "Hostname|internet|openkat.example", environment={"GREETING": "Hoi"}),
    DemoTask("dns-hosts", "Hostname|internet|no-such-host.example", expected="failed"),
    DemoTask("hello-world", "IPAddressV6|internet|2001:db8::10"),
    DemoTask("dns-hosts", "Hostname|internet|mail.example.com"),
    DemoTask("hello-world", "Network|internet", organisation="second-org"),
    DemoTask("dns-hosts", "Hostname|internet|openkat.example"),
    DemoTask("hello-world", "Hostname|internet|ns1.example.net", organisation="second-org"),
    DemoTask("dns-hosts", "Hostname|internet|ns2.example.net"),
)


def demo_tasks(count: int = len(DEMO_TASKS)) -> list[DemoTask]:
    """``count`` tasks: the list above, cycled. Repeats are duplicates of earlier tasks (same boefje,
    input and environment), which the pool may run once when they arrive in the same pop."""
    return list(itertools.islice(itertools.cycle(DEMO_TASKS), count))


class Progress(PoolEvents):
    """A line on ``stream`` per finished run, with how many of the demo's tasks the API holds closed.

    Runs and closed tasks are counted apart: a worker posts its output before it reports, so two
    tasks may close before the first report arrives, and a run of a group of duplicates closes
    several tasks at once.
    """

    def __init__(self, api: BoefjeAPIServer, task_ids: Sequence[str], stream: IO[str]) -> None:
        self.api = api
        self.task_ids = list(task_ids)
        self.stream = stream
        self.runs = 0

    def task_finished(self, boefje_id: str, outcome: str, duration: float) -> None:
        self.runs += 1
        statuses = self.api.statuses()
        closed = sum(1 for task_id in self.task_ids if statuses.get(task_id) in CLOSED)
        total = len(self.task_ids)
        width = len(str(total))
        print(
            f"  run {self.runs:>{width}}: {boefje_id:<12} {outcome:<10} {duration * 1000:5.0f} ms"
            f"   ({closed:>{width}}/{total} tasks closed)",
            file=self.stream,
            flush=True,
        )


@dataclass(frozen=True)
class Row:
    """One line of the summary table, read back from the test API."""

    task_id: str
    spec: DemoTask
    status: str
    duration: float | None  # from PATCH running to the accepted output, as the API saw them
    files: list[dict[str, Any]]

    @property
    def as_planned(self) -> bool:
        return self.status == self.spec.expected

    @property
    def error(self) -> str | None:
        """The last line of the error file (the exception), when there is one."""
        for file in self.files:
            if ERROR_TAG in (file.get("tags") or []):
                lines = file["content"].decode("utf-8", "replace").strip().splitlines()
                return lines[-1] if lines else ""
        return None


def collect(api: BoefjeAPIServer, task_ids: Sequence[str], specs: Sequence[DemoTask]) -> list[Row]:
    """What became of each task: status, files and duration, from the API's own records."""
    running_at: dict[str, float] = {}
    output_at: dict[str, float] = {}
    for record in api.request_log():
        task_id = record.path.rsplit("/", 1)[-1]
        if record.status != 200:
            continue
        if record.endpoint == "patch" and task_id not in output_at:
            running_at[task_id] = record.time  # the last PATCH before the output: running
        elif record.endpoint == "output":
            output_at[task_id] = record.time
    rows = []
    for task_id, spec in zip(task_ids, specs, strict=True):
        start, end = running_at.get(task_id), output_at.get(task_id)
        duration = end - start if start is not None and end is not None else None
        rows.append(Row(task_id, spec, api.status(task_id), duration, api.files(task_id)))
    return rows


def _files_text(files: list[dict[str, Any]]) -> str:
    """File count and the boefje's own tags (the boefje/{id} tags every file carries are left out)."""
    tags = dict.fromkeys(tag for file in files for tag in file.get("tags") or [] if not tag.startswith("boefje/"))
    return f"{len(files)}" + (f" ({', '.join(tags)})" if tags else "")


def render_table(rows: Sequence[Row]) -> str:
    """The summary table, columns separated by two or more spaces (easy to read and to parse)."""
    header = ("TASK", "BOEFJE", "INPUT", "STATUS", "DURATION", "FILES")
    lines = [header]
    for row in rows:
        duration = "-" if row.duration is None else f"{row.duration * 1000:.0f} ms"
        status = row.status if row.as_planned else f"{row.status} (expected {row.spec.expected})"
        lines.append((row.task_id[:8], row.spec.boefje_id, row.spec.input_ooi, status, duration,
                      _files_text(row.files)))
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def worker_pids(rows: Sequence[Row]) -> Counter[int]:
    """Tasks per worker process, as reported by hello-world (it writes its pid into its JSON file)."""
    pids: Counter[int] = Counter()
    for row in rows:
        for file in row.files if row.spec.boefje_id == "hello-world" else ():
            if "application/json" in (file.get("tags") or []):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    pids[int(json.loads(file["content"])["worker_pid"])] += 1
    return pids


def render_footer(rows: Sequence[Row], api: BoefjeAPIServer, elapsed: float, pool_size: int) -> str:
    statuses = Counter(row.status for row in rows)
    counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    requests = api.request_counts()
    calls = ", ".join(f"{name} {requests[name]}" for name in ("pop", "patch", "output", "get", "push")
                      if requests.get(name))
    lines = [
        "",
        f"{len(rows)} tasks in {elapsed:.1f} s with {_plural(pool_size, 'worker process', 'es')}: {counts}.",
        f"Boefje API requests: {sum(requests.values())} ({calls})"
        + ("; no GET after a task." if not requests.get("get") else "."),
    ]
    pids = worker_pids(rows)
    if pids:
        shown = ", ".join(f"{pid}: {count}" for pid, count in sorted(pids.items()))
        lines.append(f"hello-world ran {sum(pids.values())} times in {_plural(len(pids), 'warm worker process', 'es')} "
                     f"(pid {shown}), not one process per task.")
    for row in rows:
        if row.error is not None:
            note = "on purpose" if row.as_planned else "unexpectedly"
            lines.append(f"Task {row.task_id[:8]} ({row.spec.boefje_id}) failed {note}: {row.error}")
    lines += [
        "",
        "Next: `make test`, docs/deploying.md, and examples/ (your own boefje, embedding, Docker, Kubernetes).",
        f"The example boefjes live in {BOEFJES_DIR}",
    ]
    return "\n".join(lines)


def build_pool(api: BoefjeAPIServer, pool_size: int, listeners: Sequence[PoolEvents]) -> WorkerPool:
    """A burst-mode pool for the example image, on the packaged example boefjes."""
    # Short waits: the test API answers in microseconds, and a demo should not sit idle for the
    # production poll interval (10 s) or grace period (25 s).
    settings = PoolSettings(pool_size=pool_size, burst=True, poll_interval=0.5, shutdown_timeout=5.0)
    client = BoefjeAPIClient(api.url, timeout=10.0, retry=RetryPolicy(attempts=3, total_seconds=5.0))
    registry = BoefjeRegistry.discover(BOEFJES_DIR)
    return WorkerPool(client, TaskFilter([EXAMPLE_OCI_IMAGE]), registry=registry, settings=settings,
                      listeners=listeners)


def run_demo(task_count: int, pool_size: int, *, out: IO[str], err: IO[str]) -> int:
    """Run the demo; returns 0 when every task ended as planned."""
    specs = demo_tasks(task_count)
    with BoefjeAPIServer() as api:
        task_ids = api.enqueue([spec.to_task() for spec in specs])
        print(f"Test Boefje API on {api.url}: {len(task_ids)} tasks queued for {EXAMPLE_OCI_IMAGE}", file=err)
        workers = _plural(pool_size, "process", "es")
        print(f"Worker pool: {workers}, burst mode (exits once the queue is empty)", file=err, flush=True)
        pool = build_pool(api, pool_size, [Progress(api, task_ids, err)])
        started = time.monotonic()
        exit_code = pool.run()
        elapsed = time.monotonic() - started
        rows = collect(api, task_ids, specs)
        print(render_table(rows), file=out)
        print(render_footer(rows, api, elapsed, pool_size), file=out, flush=True)
    if exit_code:
        print(f"The worker pool exited with code {exit_code}", file=err)
        return exit_code
    unplanned = [row for row in rows if not row.as_planned]
    if unplanned:
        print(f"{len(unplanned)} tasks did not end as planned", file=err)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m boefje_runtime.demo",
        description="Run the example boefjes in a worker pool against a local test Boefje API, then show "
        "what happened to every task.",
    )
    parser.add_argument("--tasks", type=_positive, default=len(DEMO_TASKS), metavar="N",
                        help=f"tasks to queue (default {len(DEMO_TASKS)}; the 6th fails on purpose)")
    parser.add_argument("--pool-size", type=_positive, default=2, metavar="N",
                        help="worker processes (default 2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO instead of WARNING")
    return parser


def _plural(count: int, noun: str, suffix: str = "s") -> str:
    return f"{count} {noun}{'' if count == 1 else suffix}"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The failing task logs a warning on purpose: it is what an operator would see.
    configure_logging("INFO" if args.verbose else "WARNING", "text")
    return run_demo(args.tasks, args.pool_size, out=sys.stdout, err=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
