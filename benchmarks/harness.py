"""The moving parts of the benchmark: the Boefje API in its own process, the processes under test
(a worker pool, a bare ``requests`` loop, the real CLI) and readings from ``/proc``.

Kept apart from ``bench.py`` so the measurements there read as "what we measure", and this file
as "how a process is started, stopped and read". Top-level imports are the standard library only:
``bench.py`` preloads the runtime before it forks the processes it measures, so a forked pool pays
no import (that cost is measured on its own, by the one-shot figures).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The boefje every benchmark task asks for: registered as a callable in forked pools, found as a
#: plugin folder (OpenKAT's layout) by the CLI.
BOEFJE_ID = "bench-trivial"
OCI_IMAGE = "ghcr.io/minvws/openkat/bench:latest"
#: The filter a worker of OCI_IMAGE sends; the bare loops send the same body, so the server
#: evaluates the same filter for both.
POP_BODY = {"filters": [{"column": "data", "field": "boefje__oci_image", "operator": "in", "value": [OCI_IMAGE]}]}
#: Every setting's env var is removed from a child's environment, so the developer's shell
#: (a POOL_SIZE, a LOG_LEVEL) cannot change what is measured.
SETTING_ENVS = (
    "BOEFJES_API", "OCI_IMAGE", "PLUGINS", "LOG_LEVEL", "LOGGING_FORMAT", "POOL_SIZE", "POLL_INTERVAL",
    "WORKER_HEARTBEAT", "DEDUPLICATE", "OUTGOING_REQUEST_TIMEOUT", "TASK_TIMEOUT", "MAX_TASKS_PER_CHILD",
    "MAX_MEMORY_PER_CHILD", "SHUTDOWN_TIMEOUT", "PREFETCH", "BURST", "MAX_TASKS", "HEALTH_PORT", "HEALTH_HOST",
    "PLUGIN_DIR", "MAX_OUTPUT_SIZE", "ALLOW_FOREIGN_OUTPUT", "BOEFJES_API_HEADERS", "QUEUE",
)

_FORK = multiprocessing.get_context("fork")

PLUGIN_MAIN = '''\
def run(boefje_meta: dict) -> list[tuple[set, bytes]]:
    return [({"text/plain"}, b"hi")]
'''


def trivial_boefje(boefje_meta: dict) -> list[tuple[set[str], bytes]]:
    """One 2-byte file: the boefje costs nothing, so what is measured is the runtime around it."""
    return [({"text/plain"}, b"hi")]


# -- the Boefje API in a process of its own -------------------------------------------------------


class APIServerProcess:
    """``BoefjeAPIServer`` in a child process, driven over a pipe.

    Why a process: the server's CPU must be read apart from the worker's (to tell whether the test
    API is the bottleneck), and an in-process server thread would share the benchmark's GIL. The
    pipe keeps ``request_counts()``, ``request_log()`` and the task state reachable.
    """

    def __init__(self, *, log_size: int = 200_000) -> None:
        self.log_size = log_size
        self.url = ""
        self.pid = 0
        self._conn: Any = None
        self._process: Any = None

    def start(self) -> APIServerProcess:
        self._conn, child_end = _FORK.Pipe()
        self._process = _FORK.Process(target=_server_main, args=(child_end, self.log_size), daemon=True,
                                      name="bench-api")
        self._process.start()
        child_end.close()
        if not self._conn.poll(30):
            raise RuntimeError("the test Boefje API did not start within 30 s")
        self.url = self._conn.recv()
        self.pid = self._process.pid
        return self

    def call(self, name: str, *args: Any) -> Any:
        """Run one of :class:`_ServerCommands`'s methods in the server process."""
        self._conn.send((name, args))
        if not self._conn.poll(120):
            raise RuntimeError(f"the test Boefje API did not answer {name!r} within 120 s")
        ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"server command {name!r} failed: {value}")
        return value

    def stop(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(OSError, EOFError):
            self._conn.send(("stop", ()))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._conn.close()
        self._process = None

    def __enter__(self) -> APIServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _ServerCommands:
    """What the benchmark may ask of the server process. Answers are plain data (they cross a pipe)."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def reset(self, pop_mode: str = "mula") -> None:
        """A clean server per run: an old run's 10,000 tasks must not slow down the next run's pops."""
        self.server.reset()
        self.server.pop_mode = pop_mode

    def enqueue(self, count: int, running: bool = False, group_size: int = 1) -> tuple[list[str], float]:
        """``count`` tasks for the trivial boefje; returns their ids and the wall-clock time they
        became visible (for pickup latency: compared with the request log's times, same clock).
        ``group_size`` > 1: consecutive tasks form duplicate groups of that size (one input object
        and one ``deduplication_key`` per group, one organisation per member), as mula queues them."""
        from boefje_runtime.testing import make_task

        tasks = []
        for i in range(count):
            group = i // group_size
            key = {"deduplication_key": f"bench-group-{group}"} if group_size > 1 else {}
            tasks.append(make_task(BOEFJE_ID, oci_image=OCI_IMAGE, input_ooi=f"Hostname|internet|h{group}.example",
                                   organisation=f"org{i % group_size}", **key))
        ids = self.server.enqueue(tasks)
        enqueued_at = time.time()
        if running:  # one-shot runs need a running task: the input endpoint answers 403 otherwise
            for task_id in ids:
                self.server.set_status(task_id, "running")
        return ids, enqueued_at

    def finished(self) -> int:
        """Tasks completed or failed so far."""
        return sum(1 for status in self.server.statuses().values() if status in ("completed", "failed"))

    def counts(self) -> dict[str, int]:
        return self.server.request_counts()

    def delay(self, endpoint: str, seconds: float) -> None:
        """Every request to ``endpoint`` waits ``seconds`` before it is answered (until the next
        ``reset``): a scheduler that takes that long to hand out a task."""
        self.server.inject(endpoint, delay=seconds, times=None)

    def empty_pops(self) -> int:
        return self.server.empty_pops

    def cpu(self) -> float:
        """CPU seconds of the whole server process (every handler thread)."""
        return time.process_time()

    def log(self) -> list[tuple[str, str, str, int | None, float]]:
        return [(r.method, r.path, r.endpoint, r.status, r.time) for r in self.server.request_log()]

    def outcome(self) -> dict[str, Any]:
        """Were all tasks closed exactly once? Status counts, plus tasks with more or fewer than one
        output or a history other than queued, dispatched, running, completed."""
        statuses = self.server.statuses()
        expected = ["queued", "dispatched", "running", "completed"]
        odd_outputs = odd_histories = 0
        for task_id in statuses:
            odd_outputs += len(self.server.outputs(task_id)) != 1
            odd_histories += self.server.history(task_id) != expected
        return {"tasks": len(statuses), "statuses": dict(Counter(statuses.values())),
                "not_one_output": odd_outputs, "unexpected_history": odd_histories,
                "server_errors": len(self.server.errors)}


def _counting_server_class() -> type:
    """``BoefjeAPIServer`` that also counts pops answered with no task: the request log cannot tell
    an empty pop from a full one, and empty pops are the end of a run, not a cost per task."""
    from boefje_runtime.testing import BoefjeAPIServer

    class CountingServer(BoefjeAPIServer):
        empty_pops = 0

        def _pop(self, *args: Any, **kwargs: Any) -> list:
            answer = super()._pop(*args, **kwargs)
            if not answer:
                with self._lock:
                    self.empty_pops += 1
            return answer

        def reset(self) -> None:
            super().reset()
            self.empty_pops = 0

    return CountingServer


def _server_main(conn: Any, log_size: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the benchmark's to handle; it stops us
    server = _counting_server_class()("127.0.0.1", 0, log_size=log_size).start()
    commands = _ServerCommands(server)
    conn.send(server.url)
    try:
        while True:
            try:
                name, args = conn.recv()
            except (EOFError, OSError):
                break
            if name == "stop":
                break
            try:
                conn.send((True, getattr(commands, name)(*args)))
            except Exception as exc:
                conn.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        server.stop()


# -- processes under test ----------------------------------------------------------------------


def preload() -> None:
    """Import what the forked processes run, once, in the benchmark process (see the module doc)."""
    import requests  # noqa: F401

    import boefje_runtime.client
    import boefje_runtime.logs
    import boefje_runtime.pool  # noqa: F401


def sleeping_boefje(seconds: float, boefje_meta: dict) -> list[tuple[set[str], bytes]]:
    """The trivial boefje after ``seconds`` of waiting, as a DNS lookup or a port check waits."""
    if seconds:  # no sleep(0) syscall in the floor's CPU figure
        time.sleep(seconds)
    return trivial_boefje(boefje_meta)


def pool_main(url: str, pool_size: int, *, info_log: bool = False, profile_dir: str | None = None,
              burst: bool = True, split_path: str | None = None, prefetch: int = 0,
              boefje_seconds: float = 0.0) -> int:
    """Run a ``WorkerPool`` with the trivial boefje registered as a callable until the queue is
    drained (burst mode); returns its exit code. ``info_log`` logs at INFO (the CLI's default level)
    to /dev/null, to show what logging costs; ``profile_dir`` profiles the supervisor and each worker;
    ``split_path`` gets the CPU seconds of the supervisor itself and of its (reaped) workers, as JSON;
    ``boefje_seconds`` makes the boefje wait that long per task."""
    from boefje_runtime.client import BoefjeAPIClient
    from boefje_runtime.filters import TaskFilter
    from boefje_runtime.plugins import BoefjeRegistry
    from boefje_runtime.pool import PoolSettings, WorkerPool

    if info_log:
        from boefje_runtime.logs import configure_logging

        configure_logging("INFO", "text", stream=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as we do
    registry = BoefjeRegistry()
    boefje = functools.partial(sleeping_boefje, boefje_seconds) if boefje_seconds else trivial_boefje
    registry.register(BOEFJE_ID, boefje, oci_image=OCI_IMAGE)

    def build() -> Any:
        return WorkerPool(BoefjeAPIClient(url), TaskFilter(oci_images=[OCI_IMAGE]), registry=registry,
                          settings=PoolSettings(pool_size=pool_size, burst=burst, prefetch=prefetch))

    code = build().run() if profile_dir is None else _profiled(build, Path(profile_dir))
    if split_path is not None:
        import resource

        own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        Path(split_path).write_text(json.dumps({"supervisor": own.ru_utime + own.ru_stime,
                                                "workers": workers.ru_utime + workers.ru_stime}))
    return code


def _profiled(build: Callable[[], Any], folder: Path) -> int:
    """Profile the supervisor's loop and, by wrapping the worker entry point (a module attribute the
    pool reads when it is built: its fork server forks that), every worker; one ``.prof`` file per
    process.
    The timer is CPU time: on a shared machine, wall time would blame whatever call was waiting
    when the scheduler ran someone else."""
    import cProfile

    from boefje_runtime.pool import worker

    original = worker.worker_main

    def profiled_worker(*args: Any) -> None:
        profiler = cProfile.Profile(time.process_time)
        try:
            profiler.runcall(original, *args)
        finally:
            profiler.dump_stats(folder / f"worker-{os.getpid()}.prof")

    worker.worker_main = profiled_worker
    pool = build()
    profiler = cProfile.Profile(time.process_time)
    try:
        return profiler.runcall(pool.run)
    finally:
        profiler.dump_stats(folder / "supervisor.prof")


def bare_loop(url: str, trust_env: bool, boefje_seconds: float = 0.0) -> None:
    """The floor: only the protocol's calls (pop limit=1, PATCH running, POST output) with plain
    ``requests``, until the queue is empty. ``trust_env=False`` skips requests' per-call scan of the
    environment for proxy and CA settings, which our client does once instead. ``boefje_seconds``:
    the boefje waits that long per task (the loop pays pop, PATCH, run and POST in turn)."""
    import requests

    session = requests.Session()
    session.trust_env = trust_env
    pop_url = f"{url}/api/v0/scheduler/boefje/pop?limit=1"
    while True:
        answer = session.post(pop_url, json=POP_BODY, timeout=30)
        answer.raise_for_status()
        tasks = answer.json()
        if not tasks:
            return
        task = tasks[0]
        task_id = task["id"]
        session.patch(f"{url}/api/v0/scheduler/tasks/{task_id}", json={"status": "running"},
                      timeout=30).raise_for_status()
        files = [
            {"name": str(index), "content": base64.b64encode(content).decode(),
             "tags": [*sorted(tags), f"boefje/{BOEFJE_ID}"]}
            for index, (tags, content) in enumerate(sleeping_boefje(boefje_seconds, task["data"]))
        ]
        session.post(f"{url}/api/v0/tasks/{task_id}", json={"status": "COMPLETED", "files": files},
                     timeout=30).raise_for_status()


#: The floor of one-shot mode: a fresh interpreter that imports requests, GETs the input and POSTs a
#: one-file output, nothing else (no CLI, no logging, no supervised child, no retries).
BARE_ONESHOT = """
import base64, sys
import requests
boefje_input = requests.get(sys.argv[1], timeout=30).json()
files = [{"name": "0", "content": base64.b64encode(b"hi").decode(), "tags": ["boefje/" + sys.argv[2]]}]
output = {"status": "COMPLETED", "files": files}
requests.post(boefje_input["output_url"], json=output, timeout=30).raise_for_status()
"""


def bare_oneshot_command(url: str) -> list[str]:
    """The command of :data:`BARE_ONESHOT` for the input at ``url``."""
    return [sys.executable, "-c", BARE_ONESHOT, url, BOEFJE_ID]


def _exit_with(function: Callable[..., int | None], *args: Any, **kwargs: Any) -> None:
    sys.exit(function(*args, **kwargs) or 0)


def fork(function: Callable[..., int | None], *args: Any, **kwargs: Any) -> Any:
    """Start ``function`` in a forked child (a ``multiprocessing`` process; ``join()`` reaps it, so
    its CPU, and that of the children it reaped, lands in our ``RUSAGE_CHILDREN``)."""
    process = _FORK.Process(target=_exit_with, args=(function, *args), kwargs=kwargs, daemon=False)
    process.start()
    return process


# -- the real CLI --------------------------------------------------------------------------------


def child_env(pycache: Path, **settings: str) -> dict[str, str]:
    """The environment for a CLI child: ours minus every runtime setting, plus ``settings``.

    Byte-code goes to ``pycache`` (``PYTHONPYCACHEPREFIX``), and ``PYTHONDONTWRITEBYTECODE`` is
    dropped: an image ships compiled modules, and compiling on every start would be measured
    otherwise (the repository itself must not get ``__pycache__`` folders from us).
    """
    env = {key: value for key, value in os.environ.items()
           if key not in SETTING_ENVS and key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env.update(settings)
    return env


def write_plugin_tree(root: Path) -> Path:
    """A plugin folder in OpenKAT's layout (``boefjes/plugins/kat_*/``) holding the trivial boefje."""
    package = root / "boefjes" / "plugins" / "kat_bench_trivial"
    package.mkdir(parents=True, exist_ok=True)
    for folder in (root / "boefjes", root / "boefjes" / "plugins", package):
        (folder / "__init__.py").touch()
    (package / "boefje.json").write_text(json.dumps(
        {"id": BOEFJE_ID, "name": "Bench trivial", "consumes": ["Hostname"], "oci_image": OCI_IMAGE}
    ))
    (package / "main.py").write_text(PLUGIN_MAIN)
    return root


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "boefje_runtime_cli", *args]


def start_cli_pool(env: dict[str, str], plugin_dir: Path, log_path: Path) -> subprocess.Popen:
    """The CLI in worker mode, as a container runs it; its log (INFO, the default) goes to a file."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(cli_command("--plugin-dir", str(plugin_dir)), env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)


def stop_process(process: subprocess.Popen, timeout: float = 40.0) -> int | None:
    """SIGTERM (a graceful drain), then SIGKILL after ``timeout``; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- /proc ---------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of ``pid``: ``/proc/<pid>/task/*/children``, else a scan of ``/proc`` for ppid."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                found.extend(int(item) for item in listing.read().split())
        return found
    except OSError:
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: workers may be its children or, forked by a fork server that is
    its child, its grandchildren."""
    found, todo = [], children(pid)
    while todo:
        member = todo.pop()
        found.append(member)
        todo.extend(children(member))
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """Rss, Pss and its anonymous and file-backed parts, in KiB, from ``/proc/<pid>/smaps_rollup``.

    Why the split: anonymous pages are shared only within the fork tree (a worker's heap after
    copy-on-write), so Pss_Anon is ours alone; file pages (libpython, extension modules) are
    shared with every process on the machine that maps them, so Pss_File moves with other load.
    """
    values = {"Rss": 0, "Pss": 0, "Pss_Anon": 0, "Pss_File": 0}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0])
    return values


def tree_memory(pid: int) -> dict[str, Any]:
    """RSS and PSS in MB (10^6 bytes; the kernel reports KiB) of a process and every process below
    it (supervisor + workers, and the fork server when there is one)."""
    pids = [pid, *descendants(pid)]
    totals = {"Rss": 0, "Pss": 0, "Pss_Anon": 0, "Pss_File": 0}
    supervisor_pss = 0
    for member in pids:
        with contextlib.suppress(OSError):  # a worker may exit between listing and reading
            values = memory_kib(member)
            for key, value in values.items():
                totals[key] += value
            if member == pid:
                supervisor_pss = values["Pss"]
    return {"processes": len(pids), "rss_mb": totals["Rss"] * 1024 / 1e6, "pss_mb": totals["Pss"] * 1024 / 1e6,
            "pss_anon_mb": totals["Pss_Anon"] * 1024 / 1e6, "pss_file_mb": totals["Pss_File"] * 1024 / 1e6,
            "supervisor_pss_mb": supervisor_pss * 1024 / 1e6}


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from ``/proc/stat``: how much of the CPU anyone,
    not only we, used during a run."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total
