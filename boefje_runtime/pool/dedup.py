"""Which tasks of one pop are duplicates (protocol.md, "Duplicates").

Tasks group when they share a visible deduplication key, or else the same boefje id and version,
the same ``input_ooi`` and the same ``environment``. Nothing else is merged: posting one task's
output to another that differs would silently corrupt data.
"""

from __future__ import annotations

import json
from collections.abc import Hashable

from ..models import Task


def duplicate_key(task: Task) -> Hashable:
    if task.deduplication_key is not None:
        return ("key", task.deduplication_key)
    meta = task.data
    environment = json.dumps(meta.environment, sort_keys=True) if meta.environment is not None else None
    return ("meta", meta.boefje.id, meta.boefje.version, meta.input_ooi, environment)


def group_duplicates(tasks: list[Task], enabled: bool = True) -> list[list[Task]]:
    """Groups in pop order; the first task of a group is the one that runs."""
    if not enabled:
        return [[task] for task in tasks]
    groups: dict[Hashable, list[Task]] = {}
    for task in tasks:
        groups.setdefault(duplicate_key(task), []).append(task)
    return list(groups.values())
