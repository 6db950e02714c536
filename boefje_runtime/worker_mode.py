"""Worker mode as the CLI runs it: a pool from the configuration, plus the optional operator endpoint.

Lives in the library (not the CLI) so an image that embeds boefje-runtime without click gets the
same behaviour from ``run_worker_mode(RuntimeConfig.from_env())``.
"""

from __future__ import annotations

import logging

from .config import RuntimeConfig, scrub_secret_env
from .errors import ConfigError

logger = logging.getLogger("boefje_runtime")


def run_worker_mode(config: RuntimeConfig) -> int:
    """Log the start-up lines, run the pool until it stops, return the exit code."""
    config.check_worker_mode()
    scrub_secret_env()
    logger.info("Starting runtime")
    logger.info(config.describe())
    logger.debug("Settings: %s", config.summary())
    from .pool import WorkerPool

    pool = WorkerPool.from_config(config)
    endpoint = None
    if config.health_port is not None:
        from .health import attach_operator_endpoints

        # A supervisor blocked on one slow pop (and its one retry) is not dead: liveness must not
        # get the container restarted for what is only a slow API.
        stale_after = max(3 * config.worker_heartbeat, 2 * config.outgoing_request_timeout + 10)
        try:
            endpoint = attach_operator_endpoints(
                pool, config.health_host, config.health_port, stale_after=stale_after
            )
        except OSError as exc:
            raise ConfigError(f"cannot serve health on {config.health_host}:{config.health_port}: {exc}") from None
        logger.info("Serving /healthz, /readyz and /metrics on %s", endpoint.url)
    try:
        return pool.run()
    finally:
        if endpoint is not None:
            endpoint.close()
