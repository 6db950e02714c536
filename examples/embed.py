"""Embed boefje-runtime in your own program, with a boefje that is a plain Python function.

No plugin folder, no ``boefje.json``: the function is registered under a boefje id, and the
program runs a worker pool that takes that id's tasks from the Boefje API. Every setting is read
from the same environment variables as ``boefje-worker`` (``RuntimeConfig.from_env``), so an image
built around this program is configured like any other boefje image.

Try it against the test Boefje API::

    python -m boefje_runtime.testing --port 8000 &
    BOEFJES_API=http://127.0.0.1:8000 OCI_IMAGE=example/embedded:latest BURST=true python examples/embed.py

(The test API starts empty; ``examples/tests/test_embed.py`` queues tasks for ``ooi-parts`` and
runs this program against it.)
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter

from boefje_runtime import BoefjeRegistry, ConfigError, ExitCode, RuntimeConfig, WorkerPool
from boefje_runtime.logs import configure_logging
from boefje_runtime.pool import PoolEvents

logger = logging.getLogger("embed")

registry = BoefjeRegistry()


@registry.boefje("ooi-parts", name="OOI reference parts")
def ooi_parts(boefje_meta: dict) -> list[tuple[set[str], str]]:
    """Split an OOI reference (``Hostname|internet|example.com``) into its type and natural key."""
    reference = boefje_meta.get("input_ooi") or ""
    ooi_type, *key = reference.split("|")
    if not ooi_type or not key:
        raise ValueError(f"not an OOI reference: {reference!r}")
    return [({"application/json"}, json.dumps({"type": ooi_type, "key": key}))]


class Tally(PoolEvents):
    """A pool event listener: where your own metrics or alerts would hook in. Hooks run in the
    supervisor's loop, so they must be quick and must not raise."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()

    def task_finished(self, boefje_id: str, outcome: str, duration: float) -> None:
        self.outcomes[outcome] += 1
        logger.info("%s %s in %.3f s", boefje_id, outcome, duration)


def main() -> int:
    try:
        config = RuntimeConfig.from_env()
        config.check_worker_mode()
    except ConfigError as exc:
        print(f"embed.py: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    configure_logging(config.log_level, config.logging_format)
    pool = WorkerPool.from_config(config, registry=registry)
    tally = Tally()
    pool.listeners.append(tally)
    exit_code = pool.run()  # until SIGTERM/SIGINT, or (BURST=true) until the queue is empty
    print(f"ooi-parts: {dict(sorted(tally.outcomes.items()))}", file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
