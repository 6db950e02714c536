"""How much to ask of a pop, and what to keep of its answer, so duplicates arrive as whole groups.

Why: OpenKAT's scheduler (mula's ``pop_boefje``) answers a pop with the tasks sharing the first
deduplication key, up to ``limit``, or else with exactly one task, whatever ``limit`` says. A pool
that pops ``limit = free workers`` gets 1 at steady state and splits every group (OpenKAT issue
#4555). So with deduplication on we ask for a whole group (``DEDUP_GROUP_LIMIT``): against mula that
never brings unrelated tasks, only the rest of a group.

A scheduler that does honour ``limit`` for unrelated tasks (not OpenKAT's; the test API's ``limit``
mode) would then hand us up to a group limit's worth of work for busy workers. Two rules keep the
pool from hoarding there:

- an answer is trimmed to the groups the pool can start now (``room``); the rest is pushed back at
  once, unchanged (the caller does the push);
- an answer holding tasks mula never puts in one answer (another boefje, or another input object:
  a key group is one boefje on one input for several organisations) proves the scheduler honours
  the limit: from then on the policy asks for the free workers only, so no more pushes are needed.

Pure: no HTTP, no clock. The poller asks :meth:`PopPolicy.limit` before a pop and hands the answer
to :meth:`PopPolicy.settle`.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

from ..models import Task
from .dedup import group_duplicates

logger = logging.getLogger("boefje_runtime.pool")

#: Tasks asked for per pop with deduplication on: the largest group taken in one pop. One task per
#: organisation, so this covers a few dozen organisations; a larger group arrives in several pops
#: (and runs once per pop).
DEFAULT_GROUP_LIMIT = 32


class PopMode(enum.Enum):
    #: Ask for a whole group (``limit = group limit``); the scheduler answers one task or one group.
    GROUPS = "groups"
    #: Ask for what the free workers can start (``limit = wanted``): deduplication off, or a
    #: scheduler that was seen to honour the limit for unrelated tasks.
    FREE = "free"


@dataclass
class Settled:
    """One pop's answer, sorted: groups to start (the first task of each runs), tasks to push back."""

    keep: list[list[Task]] = field(default_factory=list)
    surplus: list[Task] = field(default_factory=list)


def _scheduler_group(task: Task) -> tuple[str, str | None]:
    """What every task of one mula answer shares: one boefje on one input object."""
    return task.data.boefje.id, task.data.input_ooi


class PopPolicy:
    """Decides each pop's ``limit`` and what of the answer to keep; see the module docstring."""

    def __init__(self, *, deduplicate: bool, group_limit: int = DEFAULT_GROUP_LIMIT) -> None:
        if group_limit < 1:
            raise ValueError("group_limit must be at least 1")
        self.deduplicate = deduplicate
        self.group_limit = group_limit
        self.mode = PopMode.GROUPS if deduplicate and group_limit > 1 else PopMode.FREE

    def limit(self, wanted: int) -> int:
        """The ``limit`` of a pop meant to give ``wanted`` workers a task each."""
        if self.mode is PopMode.GROUPS:
            return self.group_limit
        return max(1, wanted)

    def settle(self, tasks: list[Task], room: int) -> Settled:
        """Group an answer's tasks (in pop order) and keep as many groups as ``room`` (the workers,
        plus prefetch, that can start one now, less what is held); the rest is surplus."""
        groups = group_duplicates(tasks, self.deduplicate)
        if self.mode is PopMode.GROUPS and len({_scheduler_group(task) for task in tasks}) > 1:
            self.mode = PopMode.FREE
            logger.info(
                "The scheduler answered a pop with unrelated tasks (it honours the limit, unlike OpenKAT's): "
                "popping for the free workers only from now on, so duplicates are merged only when they "
                "arrive together"
            )
        room = max(0, room)
        return Settled(keep=groups[:room], surplus=[task for group in groups[room:] for task in group])
