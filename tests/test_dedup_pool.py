"""Deduplication at steady state, against the scheduler's real pop (issue 12): real worker processes,
real HTTP, the test API popping like mula unless a test says otherwise.

Each duplicate group is queued while every worker is busy, so the pop that takes it is made for
one free worker: the case OpenKAT's own worker (``limit=1``) never merges.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path

import pytest

from boefje_runtime.plugins import BoefjeRegistry
from boefje_runtime.testing import make_task

from . import pool_boefjes
from .helpers import CLI, cli_env, hold_task, task, wait_until, write_plugin

WAIT = 30.0
SAME_INPUT = "Hostname|internet|duplicated.example"


def echo_meta(meta: dict) -> list:
    """Count the run, and answer with what makes a task's output its own: version and environment."""
    with open(meta["arguments"]["count_file"], "a") as runs:
        runs.write("run\n")
    answer = {"version": meta["boefje"]["version"], "environment": meta["environment"]}
    return [({"application/json"}, json.dumps(answer, sort_keys=True).encode())]


def registry() -> BoefjeRegistry:
    return pool_boefjes.register(pool_boefjes.registry(), {"echo-meta": echo_meta})


def runs(counter: Path) -> int:
    return counter.read_text().count("run") if counter.exists() else 0


def record_pops(api) -> list[list[str]]:
    """The ids each pop answered, in order (the request log does not hold answers)."""
    answers: list[list[str]] = []
    pop = api._pop

    def recording_pop(*args, **kwargs):
        answer = pop(*args, **kwargs)
        answers.append([item["id"] for item in answer])
        return answer

    api._pop = recording_pop
    return answers


def requests_for(api, ids: list[str], pops: list[list[str]]) -> dict[str, int]:
    """Requests spent on ``ids``: the pops that answered any of them, and every request naming one."""
    wanted = set(ids)
    counts = {"pop": sum(1 for answer in pops if wanted & set(answer))}
    for record in api.request_log():
        task_id = record.path.rstrip("/").rsplit("/", 1)[-1]
        if record.endpoint != "pop" and task_id in wanted:
            counts[record.endpoint] = counts.get(record.endpoint, 0) + 1
    return counts


def busy_pool(make_pool, boefje_api, tmp_path, *, pool_size, **settings):
    """Start a pool with every worker held by an ordinary task, ten ordinary tasks queued in all;
    returns the ordinary ids and the release files (one per worker)."""
    holds = [hold_task(tmp_path, f"hold{i}") for i in range(pool_size)]
    ordinary = boefje_api.enqueue([held for held, _, _ in holds] + [task() for _ in range(10 - pool_size)])
    make_pool(pool_size=pool_size, registry=registry(), **settings).start()
    for _, pid_file, _ in holds:
        wait_until(pid_file.exists, WAIT, what="every worker busy with an ordinary task")
    return ordinary, [release for _, _, release in holds]


@pytest.mark.parametrize(
    ("pool_size", "group_size", "deduplicate", "expected_runs"),
    [(2, 4, True, 1), (2, 4, False, 4), (1, 16, True, 1), (1, 16, False, 16)],
    ids=["pool2-group4", "pool2-group4-off", "pool1-group16", "pool1-group16-off"],
)
def test_a_group_queued_behind_busy_workers_runs_once(boefje_api, make_pool, tmp_path, pool_size, group_size,
                                                      deduplicate, expected_runs):
    pops = record_pops(boefje_api)
    ordinary, releases = busy_pool(make_pool, boefje_api, tmp_path, pool_size=pool_size, deduplicate=deduplicate)
    counter = tmp_path / "group-runs"
    group = boefje_api.enqueue([
        task("count", input_ooi=SAME_INPUT, organisation=f"org{i}", arguments={"count_file": str(counter)},
             deduplication_key="first-task-id")
        for i in range(group_size)
    ])

    for release in releases:  # one worker free at a time: the steady state
        release.touch()
        boefje_api.wait_for_status(ordinary[releases.index(release)], "completed", timeout=WAIT)
    boefje_api.wait_for_status(ordinary + group, "completed", timeout=WAIT)

    assert runs(counter) == expected_runs
    assert len({boefje_api.files(task_id)[0]["content"] for task_id in group}) == 1
    for task_id in group:
        assert boefje_api.history(task_id) == ["queued", "dispatched", "running", "completed"]
    spent = requests_for(boefje_api, group, pops)
    if deduplicate:
        assert spent == {"pop": 1, "patch": group_size, "output": group_size}
        assert sum(spent.values()) / group_size <= 2.3
    assert boefje_api.request_counts().get("push", 0) == 0, "against mula nothing is pushed back"


def test_members_of_a_group_that_differ_in_environment_or_version_are_not_merged(boefje_api, make_pool, tmp_path):
    pops = record_pops(boefje_api)
    ordinary, releases = busy_pool(make_pool, boefje_api, tmp_path, pool_size=1)
    counter = tmp_path / "runs"

    def member(environment, version=None):
        return task("echo-meta", input_ooi=SAME_INPUT, version=version, environment=environment,
                    arguments={"count_file": str(counter)}, deduplication_key="k")

    same = [member({"TOKEN": "a"}), member({"TOKEN": "a"})]
    other_environment, other_version = member({"TOKEN": "b"}), member({"TOKEN": "a"}, version="2")
    group = boefje_api.enqueue([same[0], other_environment, same[1], other_version])
    releases[0].touch()

    boefje_api.wait_for_status(ordinary + group, "completed", timeout=WAIT)

    assert runs(counter) == 3, "the two equal members ran once, the others each on their own"
    for member_task, task_id in zip([same[0], other_environment, same[1], other_version], group, strict=True):
        [file] = boefje_api.files(task_id)
        expected = {"version": member_task["data"]["boefje"]["version"],
                    "environment": member_task["data"]["environment"]}
        assert json.loads(file["content"]) == expected, "each task got an output made for it"
    group_pops = [answer for answer in pops if set(answer) & set(group)]
    assert sorted(group_pops[0]) == sorted(group), "mula answered the whole key group at once"
    assert boefje_api.request_counts()["push"] == 2, "the two that no free worker could start went back"


#: (pop-ahead, the most tasks dispatched and not yet running at a worker's PATCH running): up to
#: ``pool_size`` handed to workers and not started yet, plus what the pool holds. It holds one task per
#: idle worker and the prefetch; with pop-ahead also one per moment a worker will be free within the
#: pop horizon: the end of its task and of the one after (its boefje usually takes less; here every
#: task does), docs/deploying.md "Pop-ahead".
HOLD_BOUND = {False: lambda pool_size, prefetch: pool_size + prefetch,
              True: lambda pool_size, prefetch: 3 * pool_size + prefetch}


@pytest.mark.parametrize("pop_ahead", [False, True], ids=["pop-ahead-off", "pop-ahead-on"])
@pytest.mark.boefje_api(pop_mode="limit")
def test_against_a_scheduler_honouring_the_limit_the_pool_holds_no_more_than_it_can_start(
    boefje_api, make_pool, caplog, pop_ahead
):
    pool_size, prefetch = 2, 1
    snapshots: list[dict[str, int]] = []
    patch = boefje_api._patch

    def watching_patch(task_id, body):
        # At a worker's PATCH running: which tasks are dispatched, and how far each one's history had
        # come (the last status of a history is the task's status, read under one lock)
        histories = {other: boefje_api.history(other) for other in ids}
        snapshots.append({other: len(history) for other, history in histories.items() if history[-1] == "dispatched"})
        return patch(task_id, body)

    boefje_api._patch = watching_patch
    ids = boefje_api.enqueue([task() for _ in range(40)])

    with caplog.at_level(logging.INFO, logger="boefje_runtime.pool"):
        make_pool(pool_size=pool_size, prefetch=prefetch, pop_ahead=pop_ahead).start()
        boefje_api.wait_for_status(ids, "completed", timeout=WAIT)

    # What the pool held at each PATCH: the dispatched tasks less the surplus on its way back (the
    # next status of its history is "queued"). The first pop's surplus is pushed back over several
    # of the finalizer's steps (each has a time budget), so under load a worker may PATCH running
    # before all of it is back (14 dispatched at the first PATCH, against a bound of 3, under xdist).
    def held(snapshot: dict[str, int]) -> int:
        return sum(1 for other, seen in snapshot.items() if boefje_api.history(other)[seen:seen + 1] != ["queued"])

    most_dispatched = [held(snapshot) for snapshot in snapshots]
    assert max(most_dispatched) <= HOLD_BOUND[pop_ahead](pool_size, prefetch)
    switched = [record for record in caplog.records if "unrelated tasks" in record.getMessage()]
    assert len(switched) == 1, "the switch to popping for the free workers is logged once"
    pushes = boefje_api.request_counts().get("push", 0)
    assert 0 < pushes <= 32 - 1, "only the first pop's surplus went back"
    for task_id in ids:
        assert boefje_api.history(task_id)[-2:] == ["running", "completed"]


# -- several images -----------------------------------------------------------------------------------

HELLO_MAIN = '''
def run(boefje_meta):
    return [({"text/plain"}, b"hello " + boefje_meta["boefje"]["oci_image"].encode())]
'''
OLD, NEW, OTHER = "ghcr.io/minvws/openkat/hello:1", "registry.example/openkat/hello:1", "ghcr.io/other/hello:1"


@pytest.mark.parametrize("how", ["env", "flags"])
def test_a_worker_takes_tasks_of_each_of_its_images_and_no_other(boefje_api, tmp_path, how):
    write_plugin(tmp_path / "plugins" / "kat_hello", HELLO_MAIN, id="hello", name="Hello", oci_image=NEW)
    ids = {image: boefje_api.enqueue([make_task("hello", oci_image=image, input_ooi=f"Hostname|internet|{i}")
                                      for i in range(2)])
           for image in (OLD, NEW, OTHER)}
    env = {"BOEFJES_API": boefje_api.url, "PLUGIN_DIR": str(tmp_path / "plugins"), "BURST": "true",
           "POLL_INTERVAL": "0.2"}
    args = ["--oci-image", OLD, "--oci-image", NEW] if how == "flags" else []
    if how == "env":
        env["OCI_IMAGE"] = f"{OLD},{NEW}"

    result = subprocess.run([*CLI, *args], env=cli_env(env), cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    for image in (OLD, NEW):
        assert [boefje_api.status(task_id) for task_id in ids[image]] == ["completed", "completed"]
    assert [boefje_api.status(task_id) for task_id in ids[OTHER]] == ["queued", "queued"]
    log = result.stdout + result.stderr
    filter_lines = [line for line in log.splitlines() if re.search(r"filters?\b.*boefje__oci_image", line)]
    assert len(filter_lines) == 1, log
    assert OLD in filter_lines[0] and NEW in filter_lines[0] and OTHER not in filter_lines[0]
