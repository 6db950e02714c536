"""Protocol-shaped task dicts for tests, benchmarks and the demo server.

Tasks are plain JSON dicts, not :class:`~boefje_runtime.models.Task` objects, so a test can break
any field on purpose and the server hands out exactly what was built.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone
from typing import Any

#: The boefjes ``python -m boefje_runtime.testing --seed-examples`` enqueues tasks for.
EXAMPLE_BOEFJE_IDS = ("hello-world", "dns-hosts")
#: The OCI image of the example tasks (a worker filters its queue on it).
EXAMPLE_OCI_IMAGE = "ghcr.io/minvws/openkat/generic:latest"
EXAMPLE_INPUT_OOI = "Hostname|internet|example.com"


def make_task(
    boefje_id: str = "dns-records",
    *,
    oci_image: str | None = None,
    version: str | None = None,
    organisation: str = "org",
    input_ooi: str | None = "Hostname|internet|example.com",
    environment: dict[str, str] | None = None,
    arguments: dict[str, Any] | None = None,
    deduplication_key: str | None = None,
    priority: int = 1,
    task_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A queued boefje task as the scheduler sends it (``data.id`` equals ``id``).

    ``deduplication_key`` is set top-level only when given. ``extra`` keys go top-level and win
    over the defaults, e.g. ``make_task(status="running")`` or an unknown field for round-trip tests.
    """
    task_id = task_id or str(uuid.uuid4())
    now = datetime.now(timezone.utc).isoformat()
    # The scheduler's task hash identifies "this boefje on this input for this organisation".
    digest = hashlib.md5(f"{input_ooi}-{boefje_id}-{organisation}".encode(), usedforsecurity=False).hexdigest()
    task: dict[str, Any] = {
        "id": task_id,
        "scheduler_id": "boefje",
        "schedule_id": None,
        "organisation": organisation,
        "priority": priority,
        "status": "queued",
        "type": "boefje",
        "hash": digest,
        "data": {
            "id": task_id,
            "boefje": {"id": boefje_id, "version": version, "oci_image": oci_image},
            "input_ooi": input_ooi,
            "arguments": {} if arguments is None else arguments,
            "organization": organisation,
            "runnable_hash": None,
            "environment": environment,
            "started_at": None,
            "ended_at": None,
        },
        "created_at": now,
        "modified_at": now,
    }
    if deduplication_key is not None:
        task["deduplication_key"] = deduplication_key
    task.update(extra)
    return task


def example_tasks(per_boefje: int = 1, *, organisation: str = "org") -> list[dict[str, Any]]:
    """``per_boefje`` tasks for each example boefje, all on :data:`EXAMPLE_OCI_IMAGE`."""
    return [
        make_task(boefje_id, oci_image=EXAMPLE_OCI_IMAGE, organisation=organisation, input_ooi=EXAMPLE_INPUT_OOI)
        for _ in range(per_boefje)
        for boefje_id in EXAMPLE_BOEFJE_IDS
    ]
