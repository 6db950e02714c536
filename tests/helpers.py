"""Small helpers shared by the test modules; the shared fixtures are in ``tests/conftest.py``.

- property tests: :func:`examples` (FUZZ_SHARE);
- bounded waiting: :func:`wait_until`, :func:`alive`;
- worker pools against the test Boefje API: :func:`new_pool`, :func:`task`, :func:`hold_task`, :func:`running_task`,
  :func:`ready_workers`, :func:`error_text`; :class:`GatedAPI`, a test API that holds a request until told;
- the real CLI as a subprocess: :data:`CLI`, :func:`cli_env`, :func:`run_cli`;
- plugin folders in OpenKAT's layout: :func:`write_plugin`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from boefje_runtime import BoefjeAPIClient, RetryPolicy, TaskFilter
from boefje_runtime.config import SETTINGS
from boefje_runtime.plugins import BoefjeRegistry
from boefje_runtime.pool import PoolSettings, WorkerPool
from boefje_runtime.pool.events import PoolEvents
from boefje_runtime.stop_signals import STOP_SIGNALS
from boefje_runtime.testing import BoefjeAPIServer, make_task

from . import pool_boefjes
from .pool_boefjes import IMAGE

#: The repository's root folder.
ROOT = Path(__file__).resolve().parent.parent
#: Retries fast enough for a test, but enough of them to ride out a few injected faults.
FAST_RETRY = RetryPolicy(attempts=6, total_seconds=15.0, initial_wait=0.05, max_wait=0.5)
CLI = [sys.executable, "-m", "boefje_runtime_cli"]
#: Every env var the CLI reads, removed so the developer's shell cannot change a test's outcome.
OUR_ENV = {setting.env for setting in SETTINGS}


# -- property tests -------------------------------------------------------------------------------


def _fuzz_share() -> float:
    text = os.environ.get("FUZZ_SHARE") or "1"
    try:
        share = float(text)
    except ValueError:
        share = 0.0
    if not 0 < share <= 1:
        raise ValueError(f"FUZZ_SHARE must be a number above 0 and at most 1, got {text!r}")
    return share


#: The share of each property test's examples a run draws (env var FUZZ_SHARE, default 1: all).
#: CI draws them all on one Python and a share on the others: the models, client and pool are the
#: same code on every Python, while the version-specific surface (json, http, enum, fork) is hit
#: by the first examples already.
FUZZ_SHARE = _fuzz_share()


def examples(full: int) -> int:
    """``max_examples`` for a property test that draws ``full`` examples in a full run."""
    return max(1, round(full * FUZZ_SHARE))


# -- waiting --------------------------------------------------------------------------------------


def unused_port() -> int:
    """A free loopback port for a program under test to bind, chosen below the kernel's ephemeral
    range: a port only probed free is released before its user binds it, and in between any
    ``bind(0)`` (another test's server, under xdist) may get it; below that range none can."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = list(range(max(1024, low - 8000), low))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low}")


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole block: bound here and never listened
    on, so no one else can take it meanwhile (a probed-free port could be listening by then)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Running (a zombie has ended; it only waits for its parent to read its status)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


# -- worker pools ---------------------------------------------------------------------------------


def new_pool(
    api_url: str,
    *,
    registry: BoefjeRegistry | None = None,
    retry: RetryPolicy | None = FAST_RETRY,
    timeout: float | None = None,
    listeners: Iterable[PoolEvents] = (),
    clock: Callable[[], float] | None = None,
    **settings: Any,
) -> WorkerPool:
    """A pool (not started) taking :data:`IMAGE`'s tasks from the Boefje API at ``api_url``.

    ``registry`` defaults to tests/pool_boefjes.py's; ``retry`` and ``timeout`` go to the client
    (None: the client's own default); ``listeners`` and ``clock`` go to the pool (None: its own
    clock); ``settings`` are :class:`PoolSettings` fields, by default a pool of two that polls
    often and shuts down within seconds.
    """
    settings = {"pool_size": 2, "poll_interval": 0.2, "shutdown_timeout": 5.0, **settings}
    client_options: dict[str, Any] = {"retry": retry} if timeout is None else {"retry": retry, "timeout": timeout}
    return WorkerPool(
        BoefjeAPIClient(api_url, **client_options),
        TaskFilter([IMAGE]),
        registry=registry if registry is not None else pool_boefjes.registry(),
        settings=PoolSettings(**settings),
        listeners=listeners,
        **({} if clock is None else {"clock": clock}),
    )


def task(boefje_id: str = "hello", **kwargs: Any) -> dict:
    """A task for :data:`IMAGE` with an input OOI of its own (so deduplication leaves it alone)."""
    kwargs.setdefault("input_ooi", f"Hostname|internet|{os.urandom(4).hex()}.example")
    return make_task(boefje_id, oci_image=IMAGE, **kwargs)


def hold_task(tmp_path: Path, name: str, boefje_id: str = "hold", max_wait: float = 30.0) -> tuple[dict, Path, Path]:
    """A task whose boefje writes its pid to the pid file, then runs until the release file exists
    (at most ``max_wait`` s); returns the task, the pid file and the release file."""
    pid_file, release_file = tmp_path / f"{name}.pid", tmp_path / f"{name}.release"
    arguments = {"pid_file": str(pid_file), "release_file": str(release_file), "max_wait": max_wait}
    return task(boefje_id, arguments=arguments), pid_file, release_file


class Gate:
    """Holds requests of one endpoint for one task until :meth:`open` (see :class:`GatedAPI`)."""

    def __init__(self, times: int | None) -> None:
        #: Set when a held request has arrived (it waits for :meth:`open`).
        self.arrived = threading.Event()
        self._opened = threading.Event()
        self._left = times
        self._lock = threading.Lock()

    def open(self) -> None:
        """Let the held requests go on."""
        self._opened.set()

    def let_through(self) -> None:
        """Hold no more requests; those held stay held until :meth:`open`."""
        with self._lock:
            self._left = 0

    def _hold(self, longest: float) -> None:
        with self._lock:
            if self._left is not None:
                if self._left <= 0:
                    return
                self._left -= 1
        self.arrived.set()
        self._opened.wait(longest)


class GatedAPI(BoefjeAPIServer):
    """The test Boefje API, able to hold a task's PATCH or output POST until the test opens a gate:
    a slow answer whose length is an event of the test, not a number of seconds that a loaded
    machine may overrun. A held request goes on as usual once opened (at the latest after
    ``longest`` seconds, so a forgotten gate cannot hang a test)."""

    def __init__(self, *args: Any, longest: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.longest = longest
        self._gates: dict[tuple[str, str], Gate] = {}

    def gate(self, endpoint: str, task_id: str, *, times: int | None = 1) -> Gate:
        """Hold the next ``times`` (None: every) ``endpoint`` request ("patch" or "output") of ``task_id``."""
        gate = self._gates[(endpoint, task_id)] = Gate(times)
        return gate

    def open_all(self) -> None:
        for gate in list(self._gates.values()):
            gate.open()

    def _held(self, endpoint: str, task_id: str) -> None:
        gate = self._gates.get((endpoint, task_id))
        if gate is not None:
            gate._hold(self.longest)

    def _patch(self, task_id: str, body: Any) -> dict[str, Any]:
        self._held("patch", task_id)
        return super()._patch(task_id, body)

    def _output(self, task_id: str, body: Any) -> dict[str, str]:
        self._held("output", task_id)
        return super()._output(task_id, body)


@contextmanager
def running_gated_api() -> Iterator[GatedAPI]:
    """A started :class:`GatedAPI`; every gate is opened before it stops, so no held request hangs."""
    api = GatedAPI().start()
    try:
        yield api
    finally:
        api.open_all()
        api.stop()


def running_task(api: BoefjeAPIServer, boefje_id: str, **kwargs: Any) -> str:
    """Enqueue a task (:func:`make_task` options) and set it running, as OpenKAT does before it starts
    a one-shot container; the test sets it, so no request is counted."""
    task_id = api.enqueue(make_task(boefje_id, **kwargs))
    api.set_status(task_id, "running")
    return task_id


def ready_workers(pool: WorkerPool) -> int:
    return sum(1 for worker in list(pool.workers) if worker.ready and worker.exitcode is None)


def error_text(api: BoefjeAPIServer, task_id: str) -> str:
    """The text of a task's only file, which must be the runtime's ``error/boefje`` file."""
    [error] = api.files(task_id)
    assert "error/boefje" in error["tags"]
    return error["content"].decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- the CLI as a subprocess ----------------------------------------------------------------------


def cli_env(extra: Mapping[str, str] | None = None, *, drop: Iterable[str] = ()) -> dict[str, str]:
    """This process's environment without :data:`OUR_ENV` and ``drop``, plus ``extra``."""
    removed = OUR_ENV | set(drop)
    environ = {key: value for key, value in os.environ.items() if key not in removed}
    environ.update(extra or {})
    return environ


def run_cli(*args: str, env: Mapping[str, str] | None = None, drop: Iterable[str] = (), timeout: float = 60,
            **run_options: Any) -> subprocess.CompletedProcess:
    """``boefje-worker ARGS`` to its end, output captured as text, in :func:`cli_env` (``env``, ``drop``)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=cli_env(env, drop=drop),
                          timeout=timeout, **run_options)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP blocked in this thread for the block. A process started meanwhile
    starts with them blocked (the mask survives exec), as under a parent that forks carelessly."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# -- plugin folders -------------------------------------------------------------------------------


def write_plugin(folder: Path, code: str, **meta: Any) -> Path:
    """A boefje in OpenKAT's layout: ``folder/boefje.json`` holding ``meta``, ``folder/main.py``
    holding ``code`` (dedented)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "boefje.json").write_text(json.dumps(meta))
    (folder / "main.py").write_text(textwrap.dedent(code))
    return folder


class Strays:
    """Processes a test started, held by pidfd from the moment they are recorded: the kill after the
    test reaches exactly them, never a process that reused a pid after they ended (under -n 4 the
    pid-hopping tests fork thousands of processes a second, so a bare pid can be reused by then)."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self._handles: list[int] = []
        self._bare: list[int] = []

    def extend(self, pids: Iterable[int]) -> None:
        for pid in pids:
            self.pids.append(pid)
            try:
                self._handles.append(os.pidfd_open(pid))
            except AttributeError:  # no pidfd here: the bare pid, as before
                self._bare.append(pid)
            except OSError:  # ended already (ESRCH): nothing to kill
                continue

    def kill_all(self) -> None:
        for handle in self._handles:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(handle, signal.SIGKILL)
            os.close(handle)
        self._handles.clear()
        for pid in self._bare:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._bare.clear()
