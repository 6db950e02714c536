"""The ``tasks_finished`` metric speaks the exits' language: its help text lists the rows of
``TaskExit`` (docs/task-exits.md), and what the finalizer counts is one of them.

Real parts: a real :class:`Finalizer` with a real client (against the test Boefje API) settles one
task per exit, and :class:`PoolMetrics` hears it as the pool's listener does.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from boefje_runtime.client import BoefjeAPIClient
from boefje_runtime.metrics import PoolMetrics
from boefje_runtime.pool.exits import TaskExit, Ticket
from boefje_runtime.pool.finalizer import Finalizer


def finished_family(metrics: PoolMetrics):
    families = text_string_to_metric_families(metrics.exposition().decode())
    return next(family for family in families if family.name == "boefje_runtime_tasks_finished")


def listed_exits(help_text: str) -> list[str]:
    """The names the help text lists after its colon."""
    return re.findall(r"[a-z_]+", help_text.rsplit(":", 1)[1])


def test_the_help_text_lists_exactly_the_task_exits_in_table_order():
    assert listed_exits(finished_family(PoolMetrics()).documentation) == [how.outcome for how in TaskExit]


def test_every_exit_the_finalizer_settles_is_counted_under_a_label_the_help_text_names(boefje_api):
    # given: metrics listening to a real finalizer
    metrics = PoolMetrics()
    client = BoefjeAPIClient(boefje_api.url)
    finalizer = Finalizer(client, listeners=[metrics])
    try:
        # when: one task leaves by each exit (no API call is made before run())
        for number, how in enumerate(TaskExit):
            finalizer.settle(Ticket(f"task-{number}", "dns"), how, now=0.0, duration=1.0)
    finally:
        client.close()
    # then: each was counted once, under the exit's name, and the help text names each label
    family = finished_family(metrics)
    counted = {sample.labels["outcome"]: sample.value for sample in family.samples
               if sample.name.endswith("_total")}
    assert counted == {how.outcome: 1.0 for how in TaskExit}
    assert set(counted) == set(listed_exits(family.documentation))
