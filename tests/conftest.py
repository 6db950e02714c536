"""Fixtures shared by the test modules; plain helper functions are in ``tests/helpers.py``.

(``boefje_api``, the test Boefje API, comes from the package's own pytest plugin.)
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from boefje_runtime.pool import WorkerPool
from boefje_runtime.testing import BoefjeAPIServer

from .helpers import Strays, new_pool

TREES = Path(__file__).parent / "plugin_trees"

# In CI, hypothesis draws the same examples every run: a red CI must be reproducible, and a new
# counterexample found by chance belongs in a developer's run (which stays random), not in CI.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


# -- worker pools ---------------------------------------------------------------------------------


@pytest.fixture
def pool_options() -> dict[str, Any]:
    """Defaults for every ``make_pool`` call of a test; a module overrides this fixture to give its own."""
    return {}


@pytest.fixture
def make_pool(boefje_api, pool_options) -> Iterator[Callable[..., WorkerPool]]:
    """``make_pool(**options)`` builds a pool (not started) against ``boefje_api``: the options of
    :func:`tests.helpers.new_pool` (registry, client retry and timeout, PoolSettings fields) over
    ``pool_options``. Afterwards every pool is stopped, and no worker may outlive its pool."""
    pools: list[WorkerPool] = []

    def make(**options: Any) -> WorkerPool:
        pool = new_pool(boefje_api.url, **{**pool_options, **options})
        pools.append(pool)
        return pool

    yield make
    for pool in pools:  # all stopped before the check, so one failure cannot leave another pool running
        if pool.phase not in ("new", "stopped"):
            pool.stop(immediate=True, timeout=20)
    survivors = []
    for pool in pools:
        for worker in pool.workers:
            worker.process.join(5)
            if worker.process.is_alive():
                survivors.append(worker.pid)
                worker.process.kill()  # so it cannot disturb the next test either
    assert not survivors, f"workers {survivors} outlived their pool"


# -- the test API without log capture --------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[BoefjeAPIServer]:
    """A started test Boefje API, for tests whose workers are other processes (the CLI): unlike
    ``boefje_api`` it installs no capture of forked workers' log lines."""
    with BoefjeAPIServer() as server:
        yield server


# -- processes a test leaves behind ---------------------------------------------------------------


@pytest.fixture
def strays() -> Iterator[Strays]:
    """Pids a test's processes started (``strays.extend(pids)``): SIGKILLed after the test whatever
    happened, so a failed test cannot leave them running. Only these processes, never a search of
    the machine: under pytest-xdist other tests' processes run beside ours."""
    recorded = Strays()
    yield recorded
    recorded.kill_all()


# -- plugin trees ---------------------------------------------------------------------------------


def _lives_under(module: object, folder: str) -> bool:
    paths = [getattr(module, "__file__", None) or "", *list(getattr(module, "__path__", None) or [])]
    return any(str(path).startswith(folder) for path in paths)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Copy a plugin tree of tests/plugin_trees into tmp_path; afterwards forget every module
    imported from there."""
    saved_path = list(sys.path)

    def copy(name: str) -> Path:
        return Path(shutil.copytree(TREES / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__")))

    yield copy
    sys.path[:] = saved_path
    for name, module in list(sys.modules.items()):
        if _lives_under(module, str(tmp_path)) or name.startswith("_boefje_runtime_plugin_"):
            del sys.modules[name]


# -- another origin -------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Another origin a forged input points at: records every request, answers 200 ``{}``."""

    requests: list[dict] = []

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                    "body": self.rfile.read(length)})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = do_PATCH = _record

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def foreign_host() -> Iterator[tuple[int, list[dict]]]:
    """A second HTTP server on 127.0.0.1, another origin than the test API: yields its port and the
    requests it received (method, path, headers, raw body)."""
    handler = type("Recorder", (_Recorder,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler.requests
    finally:
        server.shutdown()
        server.server_close()


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
def no_ca_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No CA bundle or certificate location from the developer's environment; set them on the
    returned monkeypatch."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch
