"""The pop policy for deduplication (pool/pop_policy.py), as a pure function of answers: what limit to
ask for, what to keep of an answer, and when to stop asking for whole groups."""

from __future__ import annotations

import logging

import pytest

from boefje_runtime.models import Task
from boefje_runtime.pool.pop_policy import DEFAULT_GROUP_LIMIT, PopMode, PopPolicy
from boefje_runtime.testing import make_task


def task(boefje_id="dns", input_ooi="Hostname|internet|a.example", **kwargs) -> Task:
    return Task.from_dict(make_task(boefje_id, input_ooi=input_ooi, **kwargs))


def ids(groups):
    return [[t.id for t in group] for group in groups]


def test_with_deduplication_a_pop_asks_for_a_whole_group_whatever_is_free():
    policy = PopPolicy(deduplicate=True)

    assert policy.mode is PopMode.GROUPS
    assert [policy.limit(wanted) for wanted in (1, 2, 40)] == [DEFAULT_GROUP_LIMIT] * 3
    assert PopPolicy(deduplicate=True, group_limit=4).limit(1) == 4


@pytest.mark.parametrize("policy", [PopPolicy(deduplicate=False), PopPolicy(deduplicate=True, group_limit=1)])
def test_without_deduplication_a_pop_asks_for_the_free_workers(policy):
    assert policy.mode is PopMode.FREE
    assert [policy.limit(wanted) for wanted in (1, 3)] == [1, 3]


def test_a_group_is_kept_whole_for_one_worker():
    policy = PopPolicy(deduplicate=True)
    group = [task(organisation=f"org{i}") for i in range(4)]

    settled = policy.settle(group, room=1)

    assert ids(settled.keep) == [[t.id for t in group]]
    assert settled.surplus == []
    assert policy.mode is PopMode.GROUPS


def test_members_of_one_key_group_that_differ_are_not_merged_and_the_ones_without_room_go_back():
    """mula groups one boefje on one input for several organisations; their settings may differ."""
    policy = PopPolicy(deduplicate=True)
    env1 = [task(environment={"K": "1"}) for _ in range(2)]
    env2 = task(environment={"K": "2"})
    v2 = task(version="2", environment={"K": "1"})

    settled = policy.settle([env1[0], env2, env1[1], v2], room=2)

    assert ids(settled.keep) == [[env1[0].id, env1[1].id], [env2.id]]
    assert settled.surplus == [v2]
    assert policy.mode is PopMode.GROUPS, "one boefje on one input: still mula's kind of answer"


def test_unrelated_tasks_in_one_answer_switch_to_popping_for_the_free_workers(caplog):
    policy = PopPolicy(deduplicate=True)
    answer = [task(input_ooi=f"Hostname|internet|h{i}") for i in range(5)]

    with caplog.at_level(logging.INFO, logger="boefje_runtime.pool"):
        settled = policy.settle(answer, room=2)
        mode_after_first = policy.mode
        policy.settle([task("a"), task("b")], room=2)

    assert ids(settled.keep) == [[answer[0].id], [answer[1].id]]
    assert settled.surplus == answer[2:], "pushed back in pop order, the same tasks (raw) unchanged"
    assert all(t.raw is a.raw for t, a in zip(settled.surplus, answer[2:], strict=True))
    assert mode_after_first is PopMode.FREE, "one boefje on several inputs is no mula answer"
    assert policy.limit(2) == 2
    assert len([r for r in caplog.records if "unrelated tasks" in r.getMessage()]) == 1, "logged once"


def test_another_boefje_on_the_same_input_is_unrelated_too():
    policy = PopPolicy(deduplicate=True)

    policy.settle([task("dns"), task("nmap")], room=5)

    assert policy.mode is PopMode.FREE


def test_without_room_everything_goes_back():
    policy = PopPolicy(deduplicate=True)
    group = [task() for _ in range(3)]

    settled = policy.settle(group, room=0)

    assert settled.keep == [] and settled.surplus == group
    assert policy.settle(group, room=-1).surplus == group


def test_without_deduplication_each_task_is_its_own_group():
    policy = PopPolicy(deduplicate=False)
    same = [task() for _ in range(3)]

    settled = policy.settle(same, room=2)

    assert ids(settled.keep) == [[same[0].id], [same[1].id]]
    assert settled.surplus == [same[2]]


def test_a_group_limit_below_one_is_refused():
    with pytest.raises(ValueError, match="group_limit"):
        PopPolicy(deduplicate=True, group_limit=0)
