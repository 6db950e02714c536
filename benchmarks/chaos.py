"""Chaos run: a worker pool drains a queue while its processes are killed and its API misbehaves.

    python benchmarks/chaos.py                      # 1,000 tasks, pool of 4, seed 1
    python benchmarks/chaos.py --tasks 200 --seed 7 --json

A pool of ``--pool-size`` worker processes (``WorkerPool.start()``, in a background thread) drains
``--tasks`` tasks of a small boefje from the test Boefje API on 127.0.0.1 while, at random moments
drawn from ``--seed``:

- a worker process is SIGKILLed (mostly one holding a task);
- the API answers 500/503 for a few seconds (every endpoint, or one);
- connections are dropped, before the request has an effect or after it (a lost answer);
- answers are delayed past the client timeout (1 s by default, so this is cheap);
- the API is stopped and restarted on the same port.

A restart can cut a pop's answer after the API dispatched its tasks: nothing in the protocol lets
a worker find those tasks again (mula fails a dispatched task only after its stall grace period;
docs/deploying.md). The report counts them apart, as "lost by a cut pop answer", after checking
that they never ran and that the pop that dispatched them did not get its answer through; a task
left dispatched any other way is "stuck", a problem.

The boefje writes one record file per run (task id, pid, start and end on the system-wide
monotonic clock), so the end state can be checked from the outside: every task completed or
failed (none queued by mistake, none stuck dispatched/running), no task run twice at the same
time, every failed task has an error file saying why, every completed task has its own output,
and the supervisor is alive with a full pool. The end state is read once it has held still for a
few request timeouts, so a task reopened by a late PATCH is not missed. Exit code 0 when it holds.

Four faults are left out by default:

- ``--late-patches`` also delays PATCHes past the timeout. A ``running`` PATCH the client gave up
  on may land after the task closed and reopen it (the scheduler does not guard transitions). The
  pool looks at every task it closed again a few request timeouts later and closes it again if
  so; the CI-sized run in tests/test_chaos.py turns this on.
- ``--lossy-pops`` also loses pop answers (dropped after the pop, or delayed past the timeout). No
  worker can survive that under this protocol (SECURITY.md, "What the runtime does not
  guarantee"): such a pop already dispatched its tasks on the server, and nothing in the API lets a
  worker find them again. They are counted as lost by a cut pop answer, as above.
- ``--client-errors`` also answers PATCHes and output POSTs with a 4xx (409, 403, 401, 408) for a
  request or three: answers an API gives while a task is in fact still running (a conflict with a
  scheduler restart, a token being rotated, a proxy's timeout). The pool must neither leave the
  task open nor close it twice.
- ``--throttling`` also answers with 429 and a ``Retry-After`` for a window (every endpoint, or
  one): the pool must wait and go on, losing nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from boefje_runtime import BoefjeAPIClient, RetryPolicy, TaskFilter
from boefje_runtime.plugins import BoefjeRegistry
from boefje_runtime.pool import PoolSettings, WorkerPool
from boefje_runtime.testing import BoefjeAPIServer, make_task

IMAGE = "chaos-image"
BOEFJE_ID = "chaos"
PLANNED_FAILURE = "chaos: this task fails on purpose"
TERMINAL = frozenset({"completed", "failed"})
IN_FLIGHT = frozenset({"dispatched", "running"})
#: The kinds of API fault episode (see the module docstring).
FAULT_KINDS = ("errors", "drops", "delays", "restart", "malformed-pop", "client-errors", "throttle")


# -- the boefje -----------------------------------------------------------------------------------


def chaos_boefje(meta: dict) -> list:
    """Record this run (start, then end), work a little, then succeed or fail as planned.

    Runs in a forked worker: everything it needs comes in the task's ``arguments``.
    """
    arguments = meta["arguments"]
    record = Path(arguments["record_dir"]) / f"{meta['id']}.{os.getpid()}.{time.monotonic_ns()}.run"
    with open(record, "w") as out:
        out.write(f"start {time.monotonic()!r} {os.getpid()}\n")
    time.sleep(arguments["work"])
    with open(record, "a") as out:
        out.write(f"end {time.monotonic()!r}\n")
    if arguments["fail"]:
        raise RuntimeError(PLANNED_FAILURE)
    return [({"text/plain"}, f"done {meta['id']}")]


def registry() -> BoefjeRegistry:
    boefjes = BoefjeRegistry()
    boefjes.register(BOEFJE_ID, chaos_boefje, oci_image=IMAGE)
    return boefjes


# -- settings and report --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosSettings:
    """One chaos run. Defaults are the full run; tests/test_chaos.py uses a smaller one."""

    tasks: int = 1000
    pool_size: int = 4
    seed: int = 1
    #: Seconds the boefje works (sleeps) per task, drawn uniformly from this range.
    work: tuple[float, float] = (0.02, 0.2)
    #: Share of tasks whose boefje raises (an error file with its traceback).
    fail_share: float = 0.05
    #: The client's per-request timeout; "delayed past the timeout" means this plus a little.
    client_timeout: float = 1.0
    #: Seconds between SIGKILLs of a worker, drawn uniformly.
    kill_every: tuple[float, float] = (0.5, 2.0)
    #: Seconds between two fault episodes.
    fault_pause: tuple[float, float] = (0.3, 1.5)
    #: How long a 500/503 window lasts.
    error_window: tuple[float, float] = (1.0, 3.0)
    #: How long the API stays down when it is stopped and restarted.
    outage: tuple[float, float] = (0.5, 2.5)
    #: After the last task is closed (or this long after the start), the chaos stops.
    chaos_budget: float = 300.0
    #: ... or once no task was closed for this long (a stuck task would otherwise use the budget).
    stall: float = 20.0
    #: After the chaos stops, how long every task may take to be closed.
    settle_timeout: float = 60.0
    late_patches: bool = False
    lossy_pops: bool = False
    client_errors: bool = False
    throttling: bool = False
    #: Inject only these kinds of API fault (names as in the report); None: every default kind,
    #: plus those the flags above turn on.
    fault_kinds: tuple[str, ...] | None = None
    #: Where the boefje's run records go (a temporary folder when None).
    record_dir: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.fault_kinds or ()) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")


@dataclass
class ChaosReport:
    """What one chaos run did and what it found. ``ok`` is the verdict."""

    tasks: int = 0
    completed: int = 0
    failed: int = 0
    kills: int = 0
    kills_holding_a_task: int = 0
    fault_episodes: Counter = field(default_factory=Counter)
    fault_hits: int = 0
    restarts: int = 0
    #: Tasks neither closed nor in flight at the end (queued by mistake, or unknown).
    lost: int = 0
    #: Tasks left dispatched or running.
    stuck: int = 0
    #: Tasks with two runs overlapping in time.
    duplicates: int = 0
    #: Tasks that ran more than once (one after the other).
    reruns: int = 0
    #: Runs with a start record but no end, not explained by a kill of ours.
    unexplained_unfinished_runs: int = 0
    failed_without_error_file: int = 0
    #: Of those, tasks whose error file (or the running PATCH it needs first) the API refused with a
    #: 4xx (--client-errors): the pool then closes the task with a PATCH to failed, as documented;
    #: counted, not a problem.
    error_file_refused: int = 0
    #: Completed tasks whose output is not their own (or that were planned to fail).
    wrong_output: int = 0
    #: Tasks left dispatched, never run, by a pop whose answer did not reach the pool (an API
    #: restart cut it, or --lossy-pops lost it): a loss mode of the protocol, not a problem of the pool.
    lost_by_cut_pop_answer: int = 0
    #: Tasks a late running PATCH reopened after they closed, and that were closed again.
    reopened: int = 0
    supervisor_alive: bool = False
    pool_full: bool = False
    wall_time: float = 0.0
    failure_reasons: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        episodes = ", ".join(f"{kind} {count}" for kind, count in sorted(self.fault_episodes.items()))
        reasons = "; ".join(f"{reason}: {count}" for reason, count in self.failure_reasons.most_common())
        lines = [
            f"tasks: {self.tasks} ({self.completed} completed, {self.failed} failed)",
            f"kills: {self.kills} ({self.kills_holding_a_task} holding a task)",
            f"faults injected: {sum(self.fault_episodes.values())} episodes ({episodes}); "
            f"{self.fault_hits} requests hit; {self.restarts} API restarts",
            f"lost: {self.lost}",
            f"lost by a cut pop answer (a protocol limit, see docs/deploying.md): {self.lost_by_cut_pop_answer}",
            f"stuck: {self.stuck}",
            f"duplicates: {self.duplicates} (reruns: {self.reruns})",
            f"failed without error file: {self.failed_without_error_file} ({self.error_file_refused} because the "
            f"API refused it with a 4xx); wrong output: {self.wrong_output}",
            f"reopened by a late PATCH and closed again: {self.reopened}",
            f"supervisor alive: {self.supervisor_alive}; pool at full size: {self.pool_full}",
            f"failure reasons: {reasons or 'none'}",
            f"wall time: {self.wall_time:.1f} s",
        ]
        if self.problems:
            lines.append("PROBLEMS:")
            lines.extend(f"  - {problem}" for problem in self.problems[:30])
        else:
            lines.append("verdict: OK")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["fault_episodes"] = dict(self.fault_episodes)
        data["failure_reasons"] = dict(self.failure_reasons)
        data["ok"] = self.ok
        return data


# -- the chaos ------------------------------------------------------------------------------------


class _Chaos:
    """The two chaos threads (kills; API faults) and what they did."""

    def __init__(self, settings: ChaosSettings, api: BoefjeAPIServer, pool: WorkerPool) -> None:
        self.settings = settings
        self.api = api
        self.pool = pool
        self.stop = threading.Event()
        self.kill_times: dict[int, float] = {}  # pid -> monotonic time of our SIGKILL
        self.kills_holding_a_task = 0
        self.episodes: Counter = Counter()
        self.faults: list = []
        self.restarts = 0
        self.errors: list[str] = []
        # One generator per thread, so the plan of each depends on the seed only.
        self._threads = [
            threading.Thread(target=self._guard, args=(self._kills, random.Random(settings.seed * 2 + 1)),
                             name="chaos-kills", daemon=True),
            threading.Thread(target=self._guard, args=(self._api_faults, random.Random(settings.seed * 2 + 2)),
                             name="chaos-api", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def finish(self) -> None:
        """Stop the chaos and leave the API up and well-behaved."""
        self.stop.set()
        for thread in self._threads:
            thread.join(30)
        self.api.clear_faults()
        self._ensure_api_up()

    def _guard(self, loop, rng: random.Random) -> None:
        try:
            loop(rng)
        except Exception as exc:  # a bug in the harness must show in the report, not vanish
            self.errors.append(f"{threading.current_thread().name}: {type(exc).__name__}: {exc}")

    def _kills(self, rng: random.Random) -> None:
        while not self.stop.wait(rng.uniform(*self.settings.kill_every)):
            workers = [w for w in list(self.pool.workers) if w.ready and w.exitcode is None and w.pid]
            if not workers:
                continue
            busy = [w for w in workers if w.assignment is not None]
            # Mostly a worker holding a task (the interesting case), sometimes an idle one.
            victim = rng.choice(busy if busy and rng.random() < 0.85 else workers)
            holding = victim.assignment is not None
            try:
                os.kill(victim.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kill_times[victim.pid] = time.monotonic()
            self.kills_holding_a_task += holding

    def _api_faults(self, rng: random.Random) -> None:
        s = self.settings
        # A shuffled bag of episodes, refilled when empty: random order, yet every kind happens
        # (a short run still sees an API restart), in proportions a long run keeps.
        bag: list[str] = []
        while not self.stop.wait(rng.uniform(*s.fault_pause)):
            if not bag:
                bag = list(s.fault_kinds) if s.fault_kinds else [
                    "errors", "errors", "drops", "drops", "delays", "delays", "restart", "malformed-pop",
                    *(["client-errors", "client-errors"] if s.client_errors else []),
                    *(["throttle"] if s.throttling else [])]
                rng.shuffle(bag)
            kind = bag.pop()
            self.episodes[kind] += 1
            if kind == "restart":
                self._restart(rng.uniform(*s.outage))
                continue
            if kind == "errors":
                endpoint = rng.choice(["*", "*", "pop", "patch", "output", "get"])
                status = rng.choice([500, 503])
                headers = {"Retry-After": "0.2"} if status == 503 and rng.random() < 0.3 else None
                self.faults.append(self.api.inject(endpoint, status=status, times=None, headers=headers))
                duration = rng.uniform(*s.error_window)
            elif kind == "drops":
                endpoint = rng.choice(["pop", "patch", "output", "get"])
                when = rng.choice(["before", "after"])
                if endpoint == "pop" and when == "after" and not s.lossy_pops:
                    when = "before"
                self.faults.append(self.api.inject(endpoint, drop=when, times=rng.randint(1, 4)))
                duration = 1.0
            elif kind == "delays":
                endpoint = rng.choice(["output", "get", *(["patch"] if s.late_patches else []),
                                       *(["pop"] if s.lossy_pops else [])])
                times = rng.randint(1, 3)
                self.faults.append(self.api.inject(endpoint, delay=s.client_timeout + 0.3, times=times))
                duration = s.client_timeout + 1.0
            elif kind == "client-errors":  # a 4xx for a task that is in fact still running
                endpoint = rng.choice(["patch", "output"])
                status = rng.choice([409, 403, 401, 408])
                self.faults.append(self.api.inject(endpoint, status=status, times=rng.randint(1, 3)))
                duration = 1.0
            elif kind == "throttle":  # 429 with Retry-After, on everything or one endpoint, for a window
                endpoint = rng.choice(["*", "*", "pop", "patch", "output"])
                headers = {"Retry-After": rng.choice(["0.2", "0.5", "1"])}
                self.faults.append(self.api.inject(endpoint, status=429, headers=headers, times=None))
                duration = rng.uniform(*s.error_window)
            else:  # a pop answered 200 with truncated JSON: nothing dispatched, the supervisor backs off
                self.faults.append(self.api.inject("pop", malformed=True, times=rng.randint(1, 3)))
                duration = 0.5
            self.stop.wait(duration)
            self.api.clear_faults()

    def _restart(self, down: float) -> None:
        self.api.stop()
        self.stop.wait(down)
        self._ensure_api_up()
        self.restarts += 1

    def _ensure_api_up(self) -> None:
        deadline = time.monotonic() + 10
        while not self.api.running:
            try:
                self.api.start()
            except OSError:  # the port is briefly unavailable: try again
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


# -- the API ----------------------------------------------------------------------------------------


class ChaosAPI(BoefjeAPIServer):
    """The test API, noting the tasks of each pop whose answer may not have reached the pool.

    A pop's tasks are noted when it dispatches them and struck off once its answer was sent whole
    (the transport records a request only then). An answer cut by a restart or dropped by a fault
    is never recorded; one delayed by a fault may arrive after the client gave up, so it stays
    noted too. The mark only explains a task that also never ran and was left dispatched.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: Ids of tasks dispatched by a pop whose answer may not have reached the client.
        self.unanswered_pops: set[str] = set()
        self._notes_lock = threading.Lock()
        self._request = threading.local()

    def _arrival(self, endpoint: str, *, routed: bool):
        fault = super()._arrival(endpoint, routed=routed)
        self._request.delayed = bool(fault is not None and fault.delay)
        self._request.popped = []
        return fault

    def _pop(self, *args, **kwargs) -> list:
        answer = super()._pop(*args, **kwargs)
        self._request.popped = [task["id"] for task in answer]
        with self._notes_lock:
            self.unanswered_pops.update(self._request.popped)
        return answer

    def _record(self, method: str, path: str, endpoint: str, status: int | None, *args, **kwargs) -> None:
        super()._record(method, path, endpoint, status, *args, **kwargs)
        if endpoint == "pop" and status is not None and not getattr(self._request, "delayed", False):
            with self._notes_lock:
                self.unanswered_pops.difference_update(getattr(self._request, "popped", ()))


# -- the run and the checks -----------------------------------------------------------------------


def run_chaos(settings: ChaosSettings, *, log: logging.Logger | None = None) -> ChaosReport:
    """Run one chaos experiment and check its end state; never raises for what it finds."""
    log = log or logging.getLogger("chaos")
    record_root = settings.record_dir or tempfile.mkdtemp(prefix="boefje-chaos-")
    record_dir = Path(record_root)
    record_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(settings.seed)
    report = ChaosReport(tasks=settings.tasks)
    started = time.monotonic()

    api = ChaosAPI().start()
    planned_failures: set[str] = set()
    tasks = []
    for index in range(settings.tasks):
        fail = rng.random() < settings.fail_share
        task = make_task(
            BOEFJE_ID,
            oci_image=IMAGE,
            input_ooi=f"Hostname|internet|chaos-{settings.seed}-{index}.example",
            arguments={"record_dir": str(record_dir), "work": rng.uniform(*settings.work), "fail": fail},
        )
        tasks.append(task)
        if fail:
            planned_failures.add(task["id"])
    ids = api.enqueue(tasks)

    # Retries cover the longest outage or error window; the timeout makes "delayed" cheap.
    retry = RetryPolicy(attempts=12, total_seconds=max(settings.error_window[1], settings.outage[1]) + 8,
                        initial_wait=0.05, max_wait=1.0)
    pool = WorkerPool(
        BoefjeAPIClient(api.url, timeout=settings.client_timeout, retry=retry),
        TaskFilter([IMAGE]),
        registry=registry(),
        settings=PoolSettings(pool_size=settings.pool_size, poll_interval=0.2, heartbeat=0.5,
                              max_error_backoff=1.0, shutdown_timeout=5.0),
    )
    chaos = _Chaos(settings, api, pool)
    pool.start()
    chaos.start()
    try:
        budget_end = started + settings.chaos_budget
        closed, progress_at = 0, time.monotonic()
        while time.monotonic() < budget_end and closed < len(ids):
            if _closed(api, ids) != closed:
                closed, progress_at = _closed(api, ids), time.monotonic()
            elif time.monotonic() - progress_at > settings.stall:
                log.warning("No task closed for %g s; stopping the chaos", settings.stall)
                break
            time.sleep(0.1)
        log.info("Chaos over after %.1f s; letting every task close", time.monotonic() - started)
        chaos.finish()
        _settle(api, ids, chaos, settings)
        report.supervisor_alive = pool._thread is not None and pool._thread.is_alive() and pool.phase == "running"
        report.pool_full = _wait_full(pool, settings.pool_size, timeout=15)
        report.wall_time = time.monotonic() - started
        _check(report, api, ids, planned_failures, record_dir, chaos)
    finally:
        chaos.stop.set()
        pool.stop(immediate=True, timeout=30)
        api.stop()
    if pool._thread is not None and pool._thread.is_alive():
        report.problems.append("the pool did not stop within 30 s")
    return report


def _settle(api: ChaosAPI, ids: list[str], chaos: _Chaos, settings: ChaosSettings) -> None:
    """Wait until every task is closed and stays so for a few request timeouts: a PATCH delayed
    past the timeout may still land and reopen a task, which the pool then closes again."""
    quiet = 4 * settings.client_timeout + 1.0
    deadline = time.monotonic() + settings.settle_timeout
    settled_since = None
    while time.monotonic() < deadline:
        if _closed(api, ids) + _cut_off(api, ids) < len(ids):
            settled_since = None
        elif settled_since is None:
            settled_since = time.monotonic()
        elif time.monotonic() - settled_since >= quiet:
            return
        time.sleep(0.1)


def _closed(api: BoefjeAPIServer, ids: list[str]) -> int:
    statuses = api.statuses()
    return sum(1 for task_id in ids if statuses.get(task_id) in TERMINAL)


def _cut_off(api: ChaosAPI, ids: list[str]) -> int:
    """Tasks left dispatched by a pop whose answer did not reach the pool (see :class:`ChaosAPI`)."""
    return sum(1 for task_id in ids
               if task_id in api.unanswered_pops and api.history(task_id) == ["queued", "dispatched"])


def _wait_full(pool: WorkerPool, size: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for w in list(pool.workers) if w.ready and w.exitcode is None) == size:
            return True
        time.sleep(0.05)
    return False


def _read_runs(record_dir: Path) -> dict[str, list[tuple[float, float | None, int]]]:
    """Task id -> [(start, end or None, pid)] from the boefje's record files."""
    runs: dict[str, list[tuple[float, float | None, int]]] = defaultdict(list)
    for path in record_dir.glob("*.run"):
        task_id = path.name.split(".", 1)[0]
        start = end = None
        pid = 0
        for line in path.read_text().splitlines():
            parts = line.split()
            if parts and parts[0] == "start" and len(parts) == 3:
                start, pid = float(parts[1]), int(parts[2])
            elif parts and parts[0] == "end" and len(parts) == 2:
                end = float(parts[1])
        if start is not None:  # a kill between open() and write(): no run to speak of
            runs[task_id].append((start, end, pid))
    return runs


def _check(report: ChaosReport, api: ChaosAPI, ids: list[str], planned_failures: set[str],
           record_dir: Path, chaos: _Chaos) -> None:
    problems = report.problems
    problems.extend(chaos.errors)
    problems.extend(f"test API internal error: {error.strip().splitlines()[-1]}" for error in api.errors)
    report.kills = len(chaos.kill_times)
    report.kills_holding_a_task = chaos.kills_holding_a_task
    report.fault_episodes = chaos.episodes
    report.fault_hits = sum(fault.hits for fault in chaos.faults)
    report.restarts = chaos.restarts
    runs = _read_runs(record_dir)

    statuses = api.statuses()
    # An error file can only be posted to a running task: when the API refused the output POST, or
    # the running PATCH that must come first, with a 4xx, the pool closes the task with a PATCH to
    # failed and no file (docs/task-exits.md). Counted, not a problem.
    refused = {record.path.rsplit("/", 1)[-1] for record in api.request_log()
               if record.endpoint in ("output", "patch") and record.status is not None
               and 400 <= record.status < 500}
    for task_id in ids:
        status = statuses.get(task_id)
        history = api.history(task_id)
        closes = [i for i, step in enumerate(history) if step in TERMINAL]
        if closes and "running" in history[closes[0]:]:
            report.reopened += 1
        if status == "completed":
            report.completed += 1
            files = api.files(task_id)
            if task_id in planned_failures or [f["content"] for f in files] != [f"done {task_id}".encode()]:
                report.wrong_output += 1
                problems.append(f"task {task_id} completed with the wrong output: {files!r:.200}")
        elif status == "failed":
            report.failed += 1
            errors = [f for f in api.files(task_id) if "error/boefje" in (f["tags"] or []) and f["content"]]
            if not errors:
                report.failed_without_error_file += 1
                if task_id in refused:
                    report.error_file_refused += 1
                    report.failure_reasons["its error file (or the running PATCH) refused with a 4xx"] += 1
                else:
                    problems.append(f"task {task_id} failed without an error file; history {history}")
            else:
                report.failure_reasons[_reason(errors[0]["content"])] += 1
        elif history == ["queued", "dispatched"] and task_id not in runs and task_id in api.unanswered_pops:
            report.lost_by_cut_pop_answer += 1
        elif status in IN_FLIGHT:
            report.stuck += 1
            problems.append(f"task {task_id} stuck {status}; history {history}")
        else:
            report.lost += 1
            problems.append(f"task {task_id} not closed: {status}; history {history}")

    for task_id, task_runs in runs.items():
        if len(task_runs) > 1:
            report.reruns += 1
            problems.append(f"task {task_id} ran {len(task_runs)} times")
        ordered = sorted(task_runs)
        ends = []
        for start, end, pid in ordered:
            if end is None:
                end = chaos.kill_times.get(pid)
                if end is None:
                    report.unexplained_unfinished_runs += 1
                    problems.append(f"a run of task {task_id} in pid {pid} never ended and was not killed by us")
                    end = float("inf")
            ends.append((start, end))
        if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(ends)):
            report.duplicates += 1
            problems.append(f"task {task_id} ran twice at the same time: {ends}")

    if not report.supervisor_alive:
        problems.append("the supervisor is not running")
    if not report.pool_full:
        problems.append("the pool is not back at full size")


def _reason(content: bytes) -> str:
    text = content.decode("utf-8", "replace")
    if PLANNED_FAILURE in text:
        return "the boefje raised"
    if "SIGKILL" in text:
        return "worker SIGKILLed"
    if "could not reach the Boefje API" in text:
        return "worker could not reach the API"
    return text.strip().splitlines()[0][:100] if text.strip() else "(empty)"


# -- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=ChaosSettings.tasks)
    parser.add_argument("--pool-size", type=int, default=ChaosSettings.pool_size)
    parser.add_argument("--seed", type=int, default=ChaosSettings.seed, help="seed of every random choice")
    parser.add_argument("--client-timeout", type=float, default=ChaosSettings.client_timeout)
    parser.add_argument("--late-patches", action="store_true", help="also delay PATCHes (see the docstring)")
    parser.add_argument("--lossy-pops", action="store_true", help="also lose pop answers (see the docstring)")
    parser.add_argument("--client-errors", action="store_true", help="also answer PATCH/output with a 4xx")
    parser.add_argument("--throttling", action="store_true", help="also answer 429 with Retry-After for a while")
    parser.add_argument("--faults", help="only these API faults, comma-separated (e.g. client-errors,throttle)")
    parser.add_argument("--record-dir", help="keep the boefje's run records here")
    parser.add_argument("--log-file", help="write the pool's log lines (INFO) here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    if args.log_file:
        logging.basicConfig(filename=args.log_file, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
    else:
        logging.basicConfig(level=logging.CRITICAL)
    settings = ChaosSettings(tasks=args.tasks, pool_size=args.pool_size, seed=args.seed,
                             client_timeout=args.client_timeout, late_patches=args.late_patches,
                             lossy_pops=args.lossy_pops, client_errors=args.client_errors,
                             throttling=args.throttling, record_dir=args.record_dir,
                             fault_kinds=tuple(args.faults.split(",")) if args.faults else None)
    report = run_chaos(settings)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
