"""Worker mode as the CLI runs it: checked plugins, a pool from the configuration, the optional
operator endpoint, and burst mode's limit on an unreachable API.

Lives in the library (not the CLI) so an image that embeds boefje-runtime without click gets the
same behaviour from ``run_worker_mode(RuntimeConfig.from_env())``.

Start-up refuses, with exit 2 and one error line, what could only fail every task: a plugin folder
that is missing, a file, or holds no usable boefje (unless the caller registered callables). Every
boefje is imported once, in a throwaway child process, so each broken one is reported once, here,
and counted (import errors included); workers forked later never import those again, so they do
not repeat the warnings. The throwaway process also keeps a boefje that crashes while importing
(``os._exit``, a segfault) from taking the supervisor down: it is named and marked broken instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import time
from pathlib import Path

from .config import RuntimeConfig, scrub_secret_env
from .errors import ConfigError, PluginError
from .exit_codes import ExitCode
from .logs import register_secrets
from .plugins import BoefjeRegistry, ImportMode
from .pool.events import PoolEvents
from .process_exit import exit_now

logger = logging.getLogger("boefje_runtime")


#: Longest the start-up import check may take: a boefje whose import hangs (a network call at import
#: time) is marked broken instead of keeping the worker from starting.
IMPORT_CHECK_TIMEOUT = 60.0


class StartupError(ConfigError):
    """Worker mode cannot start with this configuration; the message is the one line to log."""


def run_worker_mode(config: RuntimeConfig, *, registry: BoefjeRegistry | None = None) -> int:
    """Log the start-up lines, run the pool until it stops, return the exit code.

    ``registry`` (e.g. with callables registered in code) replaces discovery under
    ``config.plugin_dir`` and its checks. A start-up problem is one error line and exit 2.
    """
    config.check_worker_mode()
    scrub_secret_env()
    # For the life of the process (forked workers inherit it): the API header values (a token).
    register_secrets(config.api_headers.values())
    logger.info("Starting runtime")
    logger.info(config.describe())
    logger.debug("Settings: %s", config.summary())
    try:
        if registry is None:
            registry = load_plugins(config.plugin_dir)
        from .pool import WorkerPool

        pool = WorkerPool.from_config(config, registry=registry)
        endpoint = _operator_endpoint(pool, config)
    except StartupError as exc:
        logger.error("%s", exc)
        return ExitCode.USAGE
    give_up = None
    if config.burst and config.burst_unreachable_timeout is not None:
        give_up = GiveUpWhenUnreachable(pool, config.burst_unreachable_timeout, config.boefjes_api or "")
        pool.listeners.append(give_up)
    try:
        code = pool.run()
    finally:
        if endpoint is not None:
            endpoint.close()
    if give_up is not None and give_up.gave_up:
        return max(code, ExitCode.INTERNAL_ERROR)
    return code


def _operator_endpoint(pool, config: RuntimeConfig):
    if config.health_port is None:
        return None
    from .health import attach_operator_endpoints

    # A supervisor blocked on one slow pop (and its one retry) is not dead: liveness must not
    # get the container restarted for what is only a slow API.
    stale_after = max(3 * config.worker_heartbeat, 2 * config.outgoing_request_timeout + 10)
    try:
        return attach_operator_endpoints(pool, config.health_host, config.health_port, stale_after=stale_after)
    except OSError as exc:
        raise StartupError(
            f"Cannot serve health on {config.health_host}:{config.health_port} (HEALTH_PORT): {exc}"
        ) from None


# -- plugins ------------------------------------------------------------------------------------


def load_plugins(plugin_dir: str) -> BoefjeRegistry:
    """The boefjes under ``plugin_dir``, every one import-checked; :class:`StartupError` when there
    is no usable one. Logs each broken boefje once and the count at INFO."""
    folder = Path(plugin_dir).absolute()
    if not folder.exists():
        raise StartupError(f"Plugin folder {folder} (PLUGIN_DIR, --plugin-dir) does not exist")
    if not folder.is_dir():
        raise StartupError(f"Plugin folder {folder} (PLUGIN_DIR, --plugin-dir) is not a directory")
    registry = BoefjeRegistry.discover(folder)
    check_imports(registry)
    logger.info(registry.summary())
    if not registry.usable():
        why = f"{len(registry.errors)} broken, see above" if registry.errors else "no boefje.json found"
        raise StartupError(
            f"No usable boefje under {folder} (PLUGIN_DIR, --plugin-dir): {why}; every task would fail"
        )
    return registry


def check_imports(registry: BoefjeRegistry) -> None:
    """Import every boefje of ``registry`` in a throwaway child and mark the ones that fail broken
    (when the registry imports at start; above its eager limit, imports stay lazy).

    The child reports one JSON line per boefje before and after importing it, so a boefje that
    kills the process while importing is known by the last "importing" line.
    """
    boefjes = [boefje for boefje in registry.usable() if boefje.path is not None]
    if not boefjes or not hasattr(os, "fork") or registry.import_mode is ImportMode.ON_FIRST_USE:
        return  # a large tree is imported lazily (plugins.py): its import errors show on first use
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; coverage does not follow a fork
        os.close(read_fd)
        _import_in_child(write_fd, registry)
    os.close(write_fd)
    data, timed_out = _read_until_eof(read_fd, time.monotonic() + IMPORT_CHECK_TIMEOUT)
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    lines = data.decode("utf-8", "replace").splitlines()
    importing = None
    for line in lines:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            report = json.loads(line)
            if report["step"] == "importing":
                importing = report["id"]
            elif report["step"] == "broken":
                registry.mark_broken(report["id"], report["error"])
                importing = None
            else:
                importing = None
    if importing is not None and timed_out:
        registry.mark_broken(importing, f"importing its main.py took longer than {IMPORT_CHECK_TIMEOUT:g} s")
    elif importing is not None:
        how = _describe(status)
        registry.mark_broken(importing, f"importing its main.py ended the process ({how})")


def _read_until_eof(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Everything written to ``fd`` until EOF, or until ``deadline`` (then True: timed out)."""
    chunks = []
    try:
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                return b"".join(chunks), True
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks), False
            chunks.append(chunk)
    finally:
        os.close(fd)


def _import_in_child(write_fd: int, registry: BoefjeRegistry) -> None:  # pragma: no cover - the child
    code = 70
    try:
        logging.getLogger("boefje_runtime.plugins").disabled = True  # the parent reports each problem
        with os.fdopen(write_fd, "w", encoding="utf-8", buffering=1) as out:
            for boefje in registry.usable():
                if boefje.path is None:
                    continue
                out.write(json.dumps({"step": "importing", "id": boefje.id}) + "\n")
                out.flush()
                try:
                    boefje.load()
                except PluginError as exc:
                    message = str(exc).removeprefix(f"boefje {boefje.id!r} at {boefje.path} is broken: ")
                    report = {"step": "broken", "id": boefje.id, "error": " ".join(message.split())}
                    out.write(json.dumps(report) + "\n")
                else:
                    out.write(json.dumps({"step": "ok", "id": boefje.id}) + "\n")
        code = 0
    finally:
        exit_now(code)


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


# -- burst mode and an unreachable API ----------------------------------------------------------


class GiveUpWhenUnreachable(PoolEvents):
    """In burst mode, drain and exit 1 once every pop has failed for ``bound`` seconds.

    A Kubernetes Job with a wrong ``BOEFJES_API`` (refused, or a DNS typo) must end, not retry
    forever. Checked each time the supervisor loop turns, which it does at least once per
    heartbeat, so the pool stops within ``bound`` plus one heartbeat of the first failed pop.
    """

    def __init__(self, pool, bound: float, api_url: str) -> None:
        self.pool = pool
        self.bound = bound
        self.api_url = api_url
        self.gave_up = False
        self._failing_since: float | None = None

    def api_reachable(self, reachable: bool, now: float) -> None:
        if reachable:
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = now

    def loop_turned(self, now: float) -> None:
        since = self._failing_since
        if self.gave_up or since is None or now - since < self.bound:
            return
        self.gave_up = True
        logger.error(
            "Giving up: every pop from the Boefje API at %s has failed for %.0f s "
            "(BURST_UNREACHABLE_TIMEOUT=%g); exiting with code 1",
            self.api_url, now - since, self.bound,
        )
        self.pool.request_shutdown()
