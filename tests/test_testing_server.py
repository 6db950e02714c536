"""The test Boefje API over real HTTP: each endpoint's semantics, the pop modes, faults, restarts,
bookkeeping, the pytest fixture and the ``python -m boefje_runtime.testing`` command."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from http.client import HTTPConnection

import pytest
import requests

from boefje_runtime.filters import TaskFilter
from boefje_runtime.models import Task
from boefje_runtime.testing import (
    EXAMPLE_BOEFJE_IDS,
    EXAMPLE_OCI_IMAGE,
    BoefjeAPIServer,
    example_tasks,
    make_task,
)

from .helpers import ROOT, b64

TIMEOUT = 5  # seconds, on every HTTP call: a hung server fails a test instead of hanging it


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def pop(http, api, limit=1, filters=None, queue_name="boefje"):
    return http.post(
        f"{api.url}/api/v0/scheduler/{queue_name}/pop",
        params={"limit": limit},
        json={"filters": filters if filters is not None else []},
        timeout=TIMEOUT,
    )


def patch(http, api, task_id, status):
    return http.patch(f"{api.url}/api/v0/scheduler/tasks/{task_id}", json={"status": status}, timeout=TIMEOUT)


def output(http, api, task_id, status="COMPLETED", files=None):
    return http.post(f"{api.url}/api/v0/tasks/{task_id}", json={"status": status, "files": files}, timeout=TIMEOUT)


def running_task(api, **kwargs):
    task_id = api.enqueue(make_task(**kwargs))
    api.set_status(task_id, "dispatched")
    api.set_status(task_id, "running")
    return task_id


# -- health, transport -----------------------------------------------------------------------------------


def test_health_answers_ok_as_json(boefje_api, http):
    answer = http.get(f"{boefje_api.url}/healthz", timeout=TIMEOUT)

    assert answer.status_code == 200
    assert answer.json() == "OK"
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Content-Length"] == str(len(answer.content))
    assert answer.raw.version == 11


def test_one_keep_alive_connection_serves_successes_and_errors(boefje_api):
    """Every answer carries Content-Length, so the connection stays usable after errors too."""
    connection = HTTPConnection("127.0.0.1", boefje_api.port, timeout=TIMEOUT)
    try:
        seen = []
        for method, path, body in [
            ("GET", "/healthz", None),
            ("GET", "/nope", None),
            ("POST", "/api/v0/scheduler/boefje/pop?limit=1", b"not json"),
            ("GET", f"/api/v0/tasks/{uuid.uuid4()}", None),
            ("POST", "/api/v0/scheduler/boefje/pop?limit=1", b'{"filters": []}'),
            ("GET", "/healthz", None),
        ]:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            assert response.getheader("Content-Length") is not None
            response.read()
            seen.append(response.status)
        sock = connection.sock
        assert sock is not None, "the server closed the keep-alive connection"
    finally:
        connection.close()

    assert seen == [200, 404, 422, 404, 200, 200]


def test_unknown_paths_answer_404_json_and_wrong_methods_405(boefje_api, http):
    missing = http.get(f"{boefje_api.url}/api/v1/everything", timeout=TIMEOUT)
    wrong_method = http.delete(f"{boefje_api.url}/healthz", timeout=TIMEOUT)

    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}
    assert wrong_method.status_code == 405
    assert boefje_api.request_counts() == {"unknown": 2}


def test_a_body_over_the_cap_is_refused_with_413(http):
    with BoefjeAPIServer(max_body=1000) as api:
        task = make_task(arguments={"blob": "x" * 2000})

        too_big = http.post(f"{api.url}/api/v0/scheduler/boefje/push", json=task, timeout=TIMEOUT)
        afterwards = http.get(f"{api.url}/healthz", timeout=TIMEOUT)

    assert too_big.status_code == 413
    assert afterwards.status_code == 200
    assert api.statuses() == {}


def test_a_chunked_body_is_read(boefje_api, http):
    task = make_task()
    chunks = (part.encode() for part in (json.dumps(task)[:10], json.dumps(task)[10:]))

    answer = http.post(f"{boefje_api.url}/api/v0/scheduler/boefje/push", data=chunks, timeout=TIMEOUT)

    assert answer.status_code == 200, answer.text
    assert boefje_api.status(task["id"]) == "queued"


# -- pop ----------------------------------------------------------------------------------------------


def test_pop_dispatches_and_answers_the_task_as_it_was(boefje_api, http):
    task = make_task(deduplication_key="k", added_by_openkat={"x": 1})
    boefje_api.enqueue(task)

    first = pop(http, boefje_api)
    second = pop(http, boefje_api)

    assert first.status_code == 200
    handed_out = {name: value for name, value in task.items() if name != "deduplication_key"}
    assert first.json() == [handed_out], "the task as stored before dispatching, unknown fields and all, but the key"
    assert boefje_api.task(task["id"])["deduplication_key"] == "k", "the scheduler keeps the key"
    assert first.json()[0]["status"] == "queued"
    assert boefje_api.status(task["id"]) == "dispatched"
    assert boefje_api.history(task["id"]) == ["queued", "dispatched"]
    assert second.json() == []
    assert boefje_api.queued_count() == 0


@pytest.mark.boefje_api(pop_mode="limit")
def test_pop_takes_lower_priority_numbers_first_then_enqueue_order(boefje_api, http):
    ids = boefje_api.enqueue([make_task(priority=p, task_id=f"t{i}-p{p}") for i, p in enumerate([3, 1, 2, 1, 3])])

    popped = [task["id"] for task in pop(http, boefje_api, limit=10).json()]

    assert popped == ["t1-p1", "t3-p1", "t2-p2", "t0-p3", "t4-p3"]
    assert sorted(popped) == sorted(ids)


@pytest.mark.boefje_api(pop_mode="limit")
def test_pop_applies_the_filter_and_the_limit(boefje_api, http):
    wanted = boefje_api.enqueue([make_task("a", oci_image="img:a") for _ in range(3)])
    other = boefje_api.enqueue(make_task("b", oci_image="img:b"))

    first = pop(http, boefje_api, limit=2, filters=TaskFilter("img:a").filters()).json()
    rest = pop(http, boefje_api, limit=2, filters=TaskFilter("img:a").filters()).json()

    assert [task["id"] for task in first + rest] == wanted
    assert boefje_api.status(other) == "queued"
    assert boefje_api.queued_count() == 1


def test_pop_accepts_the_and_or_not_form(boefje_api, http):
    boefje_api.enqueue([make_task("a", organisation="o1"), make_task("b", organisation="o2")])
    filters = {"not": [{"column": "organisation", "operator": "==", "value": "o1"}]}

    answer = pop(http, boefje_api, limit=5, filters=filters).json()

    assert [task["data"]["boefje"]["id"] for task in answer] == ["b"]


def test_pop_without_a_filter_key_takes_anything(boefje_api, http):
    boefje_api.enqueue(make_task())

    answer = http.post(f"{boefje_api.url}/api/v0/scheduler/boefje/pop", json={}, timeout=TIMEOUT)

    assert len(answer.json()) == 1


@pytest.mark.parametrize(
    ("query", "body", "detail"),
    [
        ("limit=1", None, "body: a JSON body is required"),
        ("limit=1", b"{", "body: not valid JSON"),
        ("limit=1", b"[]", "body: expected an object with 'filters'"),
        ("limit=1", b'{"filters": [{"column": "data", "operator": "~"}]}', "filters[0].operator: unknown operator"),
        ("limit=1", b'{"filters": "all"}', "filters: expected a list or an and/or/not object"),
        ("limit=0", b'{"filters": []}', "limit: expected a positive integer, got '0'"),
        ("limit=many", b'{"filters": []}', "limit: expected a positive integer, got 'many'"),
    ],
)
def test_a_bad_pop_is_refused_with_422_and_takes_nothing(boefje_api, http, query, body, detail):
    task_id = boefje_api.enqueue(make_task())

    answer = http.post(f"{boefje_api.url}/api/v0/scheduler/boefje/pop?{query}", data=body, timeout=TIMEOUT)

    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(detail)
    assert boefje_api.status(task_id) == "queued"


def test_pop_on_an_unknown_queue_is_404(boefje_api, http):
    assert pop(http, boefje_api, queue_name="boefjes").status_code == 404


def test_queues_are_separate(boefje_api, http):
    boefje_api.enqueue(make_task(), queue="normalizer")

    assert pop(http, boefje_api).json() == []
    assert len(pop(http, boefje_api, queue_name="normalizer").json()) == 1


@pytest.mark.boefje_api(results_envelope=True)
def test_pop_can_answer_in_the_schedulers_envelope(boefje_api, http):
    task = make_task()
    boefje_api.enqueue(task)

    answer = pop(http, boefje_api, limit=5).json()

    assert answer["results"] == [task]
    assert answer["count"] == 1


def test_mula_mode_answers_the_first_key_group_before_older_tasks_without_a_key(boefje_api, http):
    """mula's pop_boefje: a key group (priority, then age) beats keyless tasks queued before it."""
    old = make_task("c", oci_image="img", task_id="old-no-key", priority=1)
    b1 = make_task("b", oci_image="img", deduplication_key="kb", task_id="b1", priority=3)
    a1 = make_task("a", oci_image="img", deduplication_key="ka", task_id="a1", priority=2)
    other_image = make_task("a", oci_image="other", deduplication_key="ka", task_id="x", priority=2)
    a2 = make_task("a", oci_image="img", deduplication_key="ka", task_id="a2", priority=4)
    b2 = make_task("b", oci_image="img", deduplication_key="kb", task_id="b2", priority=3)
    boefje_api.enqueue([old, b1, a1, other_image, a2, b2])
    mine = TaskFilter("img").filters()

    groups = [[task["id"] for task in pop(http, boefje_api, limit=10, filters=mine).json()] for _ in range(4)]

    assert groups == [["a1", "a2"], ["b1", "b2"], ["old-no-key"], []]
    assert boefje_api.status("x") == "queued"


def test_mula_mode_answers_one_task_without_keys_whatever_the_limit(boefje_api, http):
    ids = boefje_api.enqueue([make_task() for _ in range(3)])

    answers = [[task["id"] for task in pop(http, boefje_api, limit=10).json()] for _ in range(4)]

    assert answers == [[ids[0]], [ids[1]], [ids[2]], []]


def test_mula_mode_sees_a_key_group_that_comes_back_to_the_queue(boefje_api, http):
    """The store tracks which queued tasks have a key (so a pop without any need not scan the queue):
    a keyed task put back to queued must be found before older keyless tasks again."""
    keyless = boefje_api.enqueue([make_task(task_id=f"plain-{n}") for n in range(3)])
    boefje_api.enqueue([make_task(deduplication_key="k", task_id="keyed")])
    assert [task["id"] for task in pop(http, boefje_api, limit=10).json()] == ["keyed"]
    assert [task["id"] for task in pop(http, boefje_api, limit=10).json()] == [keyless[0]]  # no key left

    http.patch(f"{boefje_api.url}/api/v0/scheduler/tasks/keyed", json={"status": "queued"}, timeout=10)

    assert [task["id"] for task in pop(http, boefje_api, limit=10).json()] == ["keyed"]
    assert [task["id"] for task in pop(http, boefje_api, limit=10).json()] == [keyless[1]]


def test_mula_mode_honours_the_limit_within_a_group_and_reads_the_key_in_data_too(boefje_api, http):
    in_data = [make_task(task_id=f"d{i}") for i in range(3)]
    for task in in_data:
        task["data"]["deduplication_key"] = "k"
    boefje_api.enqueue([make_task(task_id="no-key"), *in_data])

    first, second = pop(http, boefje_api, limit=2).json(), pop(http, boefje_api, limit=2).json()

    assert [task["id"] for task in first] == ["d0", "d1"]
    assert [task["id"] for task in second] == ["d2"]


def test_mula_mode_hands_tasks_out_without_their_keys_as_the_boefje_api_does(boefje_api, http):
    task = make_task(deduplication_key="top")
    task["data"]["deduplication_key"] = "in-data"
    boefje_api.enqueue(task)

    [handed_out] = pop(http, boefje_api).json()

    assert "deduplication_key" not in handed_out and "deduplication_key" not in handed_out["data"]
    assert handed_out["data"]["boefje"] == task["data"]["boefje"]
    stored = boefje_api.task(task["id"])
    assert (stored["deduplication_key"], stored["data"]["deduplication_key"]) == ("top", "in-data")


@pytest.mark.boefje_api(strip_dedup_keys=False)
def test_mula_mode_can_leave_the_keys_visible(boefje_api, http):
    boefje_api.enqueue([make_task(deduplication_key="k", task_id=f"t{i}") for i in range(2)])

    answer = pop(http, boefje_api, limit=5).json()

    assert [(task["id"], task["deduplication_key"]) for task in answer] == [("t0", "k"), ("t1", "k")]


@pytest.mark.boefje_api(pop_mode="dedup")
def test_dedup_mode_answers_a_group_sharing_the_first_tasks_key(boefje_api, http):
    a1 = make_task("a", oci_image="img", deduplication_key="k1", task_id="a1")
    b = make_task("b", oci_image="img", deduplication_key="k2", task_id="b")
    a2 = make_task("a", oci_image="img", deduplication_key="k1", task_id="a2")
    other_image = make_task("a", oci_image="other", deduplication_key="k1", task_id="x")
    no_key = make_task("c", oci_image="img", task_id="c")
    no_key_2 = make_task("c", oci_image="img", task_id="c2")
    a3 = make_task("a", oci_image="img", deduplication_key="k1", task_id="a3")
    boefje_api.enqueue([a1, b, a2, other_image, no_key, no_key_2, a3])
    mine = TaskFilter("img").filters()

    groups = [[task["id"] for task in pop(http, boefje_api, limit=10, filters=mine).json()] for _ in range(5)]

    assert groups == [["a1", "a2", "a3"], ["b"], ["c"], ["c2"], []]
    assert boefje_api.status("x") == "queued"


@pytest.mark.boefje_api(pop_mode="dedup")
def test_dedup_mode_still_honours_the_limit(boefje_api, http):
    boefje_api.enqueue([make_task(deduplication_key="k") for _ in range(3)])

    assert len(pop(http, boefje_api, limit=2).json()) == 2
    assert len(pop(http, boefje_api, limit=1).json()) == 1


@pytest.mark.boefje_api(pop_mode="single")
def test_single_mode_ignores_the_limit(boefje_api, http):
    boefje_api.enqueue([make_task() for _ in range(3)])

    assert len(pop(http, boefje_api, limit=10).json()) == 1
    assert boefje_api.queued_count() == 2


def test_concurrent_pops_hand_out_each_task_once(boefje_api):
    ids = boefje_api.enqueue([make_task() for _ in range(200)])
    got: queue.Queue = queue.Queue()

    def worker():
        with requests.Session() as session:
            while True:
                batch = pop(session, boefje_api, limit=3).json()
                if not batch:
                    return
                for task in batch:
                    got.put(task["id"])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    popped = [got.get_nowait() for _ in range(got.qsize())]
    assert sorted(popped) == sorted(ids)
    assert set(boefje_api.statuses().values()) == {"dispatched"}
    assert boefje_api.errors == []


# -- push ---------------------------------------------------------------------------------------------


@pytest.mark.boefje_api(strip_dedup_keys=False)
def test_push_puts_a_task_back_keeping_every_field(boefje_api, http):
    task_id = boefje_api.enqueue(make_task())
    popped = pop(http, boefje_api).json()[0]
    popped["deduplication_key"] = "kept"
    popped["data"]["added_by_openkat"] = [1, {"two": 2}]
    popped["status"] = "dispatched"

    pushed = http.post(f"{boefje_api.url}/api/v0/scheduler/boefje/push", json=popped, timeout=TIMEOUT)
    again = pop(http, boefje_api).json()

    assert pushed.status_code == 200
    assert pushed.json()["status"] == "queued"
    assert again == [{**popped, "status": "queued"}]
    assert boefje_api.history(task_id) == ["queued", "dispatched", "queued", "dispatched"]


def test_push_of_a_new_task_queues_it(boefje_api, http):
    task = make_task()

    answer = http.post(f"{boefje_api.url}/api/v0/scheduler/boefje/push", json=task, timeout=TIMEOUT)

    assert answer.json() == task
    assert boefje_api.task(task["id"]) == task
    assert boefje_api.history(task["id"]) == ["queued"]


@pytest.mark.boefje_api(pop_mode="limit")
def test_push_requeues_at_the_back_of_its_priority(boefje_api, http):
    first, second = boefje_api.enqueue([make_task(task_id="first"), make_task(task_id="second")])
    popped = pop(http, boefje_api).json()[0]

    http.post(f"{boefje_api.url}/api/v0/scheduler/boefje/push", json=popped, timeout=TIMEOUT)

    assert [task["id"] for task in pop(http, boefje_api, limit=5).json()] == [second, first]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (None, "body: a JSON body is required"),
        (b"[1]", "task: expected an object, got a list"),
        (
            json.dumps(make_task() | {"data": {**make_task()["data"], "boefje": {"id": None}}}).encode(),
            "task.data.boefje.id: expected a non-empty string, got null",
        ),
    ],
)
def test_push_refuses_a_malformed_task_with_422(boefje_api, http, body, detail):
    answer = http.post(f"{boefje_api.url}/api/v0/scheduler/boefje/push", data=body, timeout=TIMEOUT)

    assert answer.status_code == 422
    assert answer.json() == {"detail": detail}
    assert boefje_api.statuses() == {}


# -- patch and get ---------------------------------------------------------------------------------------


def test_patch_sets_a_status_without_guarding_like_the_scheduler(boefje_api, http):
    task_id = boefje_api.enqueue(make_task())
    pop(http, boefje_api)

    steps = [patch(http, boefje_api, task_id, status) for status in ("running", "completed", "running")]

    assert [step.status_code for step in steps] == [200, 200, 200]
    assert steps[-1].json()["status"] == "running"
    assert boefje_api.history(task_id) == ["queued", "dispatched", "running", "completed", "running"]


def test_patch_to_queued_puts_the_task_back_on_the_queue(boefje_api, http):
    task_id = boefje_api.enqueue(make_task())
    pop(http, boefje_api)

    patch(http, boefje_api, task_id, "queued")

    assert boefje_api.queued_count() == 1
    assert [task["id"] for task in pop(http, boefje_api).json()] == [task_id]


def test_patch_of_a_queued_task_to_failed_takes_it_off_the_queue(boefje_api, http):
    task_id = boefje_api.enqueue(make_task())

    patch(http, boefje_api, task_id, "failed")

    assert pop(http, boefje_api).json() == []


def test_patch_refuses_unknown_tasks_and_statuses(boefje_api, http):
    task_id = boefje_api.enqueue(make_task())

    unknown = patch(http, boefje_api, "no-such-task", "running")
    bad_status = patch(http, boefje_api, task_id, "RUNNING")
    no_body = http.patch(f"{boefje_api.url}/api/v0/scheduler/tasks/{task_id}", timeout=TIMEOUT)

    assert unknown.status_code == 404
    assert bad_status.status_code == 422
    assert "'RUNNING'" in bad_status.json()["detail"]
    assert no_body.status_code == 422
    assert boefje_api.history(task_id) == ["queued"]


def test_get_answers_the_task_as_stored_now(boefje_api, http):
    task = make_task(deduplication_key="k")
    boefje_api.enqueue(task)
    pop(http, boefje_api)

    answer = http.get(f"{boefje_api.url}/api/v0/scheduler/tasks/{task['id']}", timeout=TIMEOUT)
    missing = http.get(f"{boefje_api.url}/api/v0/scheduler/tasks/{uuid.uuid4()}", timeout=TIMEOUT)

    assert answer.json()["status"] == "dispatched"
    assert answer.json()["deduplication_key"] == "k"
    assert Task.from_dict(answer.json()).id == task["id"]
    assert missing.status_code == 404


# -- input and output ----------------------------------------------------------------------------------


def test_input_is_refused_unless_the_task_is_running(boefje_api, http):
    task_id = boefje_api.enqueue(make_task())
    url = f"{boefje_api.url}/api/v0/tasks/{task_id}"

    queued = http.get(url, timeout=TIMEOUT)
    pop(http, boefje_api)
    dispatched = http.get(url, timeout=TIMEOUT)
    patch(http, boefje_api, task_id, "running")
    running = http.get(url, timeout=TIMEOUT)
    unknown = http.get(f"{boefje_api.url}/api/v0/tasks/{uuid.uuid4()}", timeout=TIMEOUT)

    assert (queued.status_code, dispatched.status_code, running.status_code) == (403, 403, 200)
    assert "dispatched" in dispatched.json()["detail"]
    assert running.json()["output_url"] == url
    assert running.json()["task"]["id"] == task_id
    assert running.json()["task"]["status"] == "running"
    assert unknown.status_code == 404


def test_output_stores_decoded_files_and_closes_the_task(boefje_api, http):
    task_id = running_task(boefje_api)
    files = [
        {"name": "0", "content": b64(b"\x00binary\xff"), "tags": ["application/octet-stream", "boefje/dns-records"]},
        {"name": "1", "content": b64("text ✓".encode()), "tags": None},
    ]

    answer = output(http, boefje_api, task_id, files=files)

    assert answer.status_code == 200
    assert set(answer.json()) == {"0", "1"}
    assert all(uuid.UUID(value) for value in answer.json().values())
    assert boefje_api.status(task_id) == "completed"
    assert boefje_api.history(task_id)[-2:] == ["running", "completed"]
    assert boefje_api.files(task_id) == [
        {"name": "0", "content": b"\x00binary\xff", "tags": ["application/octet-stream", "boefje/dns-records"]},
        {"name": "1", "content": "text ✓".encode(), "tags": None},
    ]
    assert boefje_api.outputs(task_id)[0]["status"] == "COMPLETED"


def test_output_is_accepted_once(boefje_api, http):
    task_id = running_task(boefje_api)

    first = output(http, boefje_api, task_id, status="FAILED", files=[{"name": "0", "content": "", "tags": []}])
    repeat = output(http, boefje_api, task_id)

    assert (first.status_code, repeat.status_code) == (200, 403)
    assert boefje_api.status(task_id) == "failed"
    assert len(boefje_api.outputs(task_id)) == 1


def test_output_after_a_reopening_patch_is_accepted_again(boefje_api, http):
    """The unguarded scheduler lets a stray PATCH running reopen a task: the output lands twice."""
    task_id = running_task(boefje_api)
    output(http, boefje_api, task_id)

    patch(http, boefje_api, task_id, "running")
    again = output(http, boefje_api, task_id, status="FAILED")

    assert again.status_code == 200
    assert [item["status"] for item in boefje_api.outputs(task_id)] == ["COMPLETED", "FAILED"]
    assert boefje_api.files(task_id) == []


def test_output_without_files_still_closes_the_task(boefje_api, http):
    task_id = running_task(boefje_api)

    answer = output(http, boefje_api, task_id, files=None)

    assert answer.json() == {}
    assert boefje_api.status(task_id) == "completed"
    assert boefje_api.outputs(task_id) == [{"status": "COMPLETED", "files": []}]


def test_output_is_refused_unless_running(boefje_api, http):
    task_id = boefje_api.enqueue(make_task())
    pop(http, boefje_api)

    answer = output(http, boefje_api, task_id)
    unknown = output(http, boefje_api, "no-such-task")

    assert answer.status_code == 403
    assert unknown.status_code == 404
    assert boefje_api.status(task_id) == "dispatched"
    assert boefje_api.outputs(task_id) == []


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (None, "body: a JSON body is required"),
        ({"status": "DONE", "files": []}, "output.status: expected one of COMPLETED, FAILED, got string 'DONE'"),
        ({"status": "COMPLETED", "files": "x"}, "output.files: expected a list or null, got string 'x'"),
        ({"status": "COMPLETED", "files": [{"name": "0"}]}, "output.files[0].content: missing"),
        (
            {"status": "COMPLETED", "files": [{"name": "0", "content": "not base64!"}]},
            "output.files[0].content: not valid base64",
        ),
    ],
)
def test_a_malformed_output_is_refused_with_422_and_leaves_the_task_running(boefje_api, http, body, detail):
    task_id = running_task(boefje_api)

    answer = http.post(
        f"{boefje_api.url}/api/v0/tasks/{task_id}",
        data=None if body is None else json.dumps(body),
        timeout=TIMEOUT,
    )

    assert answer.status_code == 422
    assert answer.json() == {"detail": detail}
    assert boefje_api.status(task_id) == "running"


# -- faults -------------------------------------------------------------------------------------------


def test_a_status_fault_answers_instead_and_has_no_effect(boefje_api, http):
    task_id = boefje_api.enqueue(make_task())
    fault = boefje_api.inject("pop", status=503, times=2, headers={"Retry-After": "1"})

    answers = [pop(http, boefje_api) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [503, 503, 200]
    assert answers[0].headers["Retry-After"] == "1"
    assert [task["id"] for task in answers[2].json()] == [task_id]
    assert fault.hits == 2
    assert boefje_api.history(task_id) == ["queued", "dispatched"]


def test_faults_apply_per_endpoint_and_in_order(boefje_api, http):
    boefje_api.inject("health", status=500)
    boefje_api.inject("health", status=429)

    pop_answer = pop(http, boefje_api)
    health = [http.get(f"{boefje_api.url}/healthz", timeout=TIMEOUT).status_code for _ in range(3)]

    assert pop_answer.status_code == 200
    assert health == [500, 429, 200]


def test_a_delay_fault_slows_the_answer_then_handles_it(boefje_api, http):
    task_id = running_task(boefje_api)
    boefje_api.inject("output", delay=0.3)

    started = time.monotonic()
    answer = output(http, boefje_api, task_id)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.3
    assert answer.status_code == 200
    assert boefje_api.status(task_id) == "completed"


def test_a_delay_can_precede_a_status(boefje_api, http):
    boefje_api.inject("health", delay=0.1, status=502)

    started = time.monotonic()
    answer = http.get(f"{boefje_api.url}/healthz", timeout=TIMEOUT)

    assert answer.status_code == 502
    assert time.monotonic() - started >= 0.1


def test_a_drop_before_closes_the_connection_and_has_no_effect(boefje_api, http):
    task_id = boefje_api.enqueue(make_task())
    boefje_api.inject("pop", drop=True)

    with pytest.raises(requests.ConnectionError):
        pop(http, boefje_api)

    assert boefje_api.status(task_id) == "queued"
    assert boefje_api.request_log()[-1].status is None
    assert [task["id"] for task in pop(http, boefje_api).json()] == [task_id]


def test_a_drop_after_acts_then_loses_the_answer(boefje_api, http):
    pop_task = boefje_api.enqueue(make_task())
    output_task = running_task(boefje_api)
    boefje_api.inject("pop", drop="after")
    boefje_api.inject("output", drop="after")

    with pytest.raises(requests.ConnectionError):
        pop(http, boefje_api)
    with pytest.raises(requests.ConnectionError):
        output(http, boefje_api, output_task)

    assert boefje_api.status(pop_task) == "dispatched", "the pop took effect; only its answer was lost"
    assert boefje_api.status(output_task) == "completed"
    assert output(http, boefje_api, output_task).status_code == 403, "a retried output finds the task closed"


def test_a_malformed_fault_answers_200_with_broken_json(boefje_api, http):
    task_id = boefje_api.enqueue(make_task())
    boefje_api.inject("pop", malformed=True)

    answer = pop(http, boefje_api)

    assert answer.status_code == 200
    with pytest.raises(ValueError):
        answer.json()
    assert boefje_api.status(task_id) == "queued"


def test_a_body_fault_answers_the_given_bytes(boefje_api, http):
    forged = {"task": make_task(status="running"), "output_url": "http://elsewhere.invalid/api/v0/tasks/x"}
    boefje_api.inject("input", body=json.dumps(forged))
    boefje_api.inject("get", body=b"[]", status=201)

    answer = http.get(f"{boefje_api.url}/api/v0/tasks/anything", timeout=TIMEOUT)
    get_answer = http.get(f"{boefje_api.url}/api/v0/scheduler/tasks/anything", timeout=TIMEOUT)

    assert answer.status_code == 200
    assert answer.json() == forged
    assert (get_answer.status_code, get_answer.content) == (201, b"[]")


def test_a_lasting_fault_holds_until_cleared_and_star_matches_every_endpoint(boefje_api, http):
    boefje_api.inject("*", status=503, times=None)

    down = [pop(http, boefje_api).status_code, http.get(f"{boefje_api.url}/healthz", timeout=TIMEOUT).status_code]
    boefje_api.clear_faults()
    up = http.get(f"{boefje_api.url}/healthz", timeout=TIMEOUT).status_code

    assert down == [503, 503]
    assert up == 200


@pytest.mark.parametrize(
    ("endpoint", "kwargs", "message"),
    [
        ("popp", {"status": 500}, "unknown endpoint 'popp'"),
        ("pop", {}, "inject needs one of"),
        ("pop", {"drop": "later"}, "drop must be"),
        ("pop", {"status": 500, "times": 0}, "times must be at least 1"),
    ],
)
def test_inject_refuses_nonsense(boefje_api, endpoint, kwargs, message):
    with pytest.raises(ValueError, match=message):
        boefje_api.inject(endpoint, **kwargs)


# -- lifecycle --------------------------------------------------------------------------------------------


def test_a_restart_binds_the_same_port_and_keeps_the_state(http):
    api = BoefjeAPIServer().start()
    try:
        port, url = api.port, api.url
        task_id = api.enqueue(make_task())
        assert http.get(f"{url}/healthz", timeout=TIMEOUT).ok  # leaves a pooled keep-alive connection

        api.stop()
        with pytest.raises(requests.ConnectionError):
            http.get(f"{url}/healthz", timeout=TIMEOUT)
        api.start()

        assert api.port == port
        assert http.get(f"{url}/healthz", timeout=TIMEOUT).ok
        assert [task["id"] for task in pop(http, api).json()] == [task_id]
    finally:
        api.stop()


def test_stop_cuts_open_keep_alive_connections():
    api = BoefjeAPIServer().start()
    try:
        with socket.create_connection(("127.0.0.1", api.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            api.stop()
            assert sock.recv(4096) == b"", "an open connection outlived the server"
    finally:
        api.stop()


class _HeldAtArrival(BoefjeAPIServer):
    """Holds each pop after its request was read, before it is answered, until the test lets go."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived, self.go_on = threading.Event(), threading.Event()

    def _arrival(self, endpoint, *, routed):
        fault = super()._arrival(endpoint, routed=routed)
        if endpoint == "pop":
            self.arrived.set()
            self.go_on.wait(TIMEOUT)
        return fault


def test_a_pop_read_before_stop_hands_out_no_task_after_it():
    # Given a pop that the API has read but not yet answered
    api = _HeldAtArrival().start()
    try:
        task_id = api.enqueue(make_task("hello"))
        popping, answers = _pop_in_background(api.url)
        assert api.arrived.wait(TIMEOUT)

        # When the API stops (its connections cut) and only then goes on with that pop
        api.stop()
        api.go_on.set()
        popping.join(TIMEOUT)

        # Then the pop went unanswered and the task is still queued: nobody could have received it
        assert isinstance(answers[0], requests.ConnectionError), answers
        assert api.status(task_id) == "queued"
    finally:
        api.go_on.set()
        api.stop()


def _pop_in_background(url: str) -> tuple[threading.Thread, list]:
    """A pop in a thread of its own; its answer (or the error it ended with) lands in the list."""
    answers: list = []
    popping = threading.Thread(target=lambda: answers.append(_pop_or_error(url)), daemon=True)
    popping.start()
    return popping, answers


def _pop_or_error(url: str):
    try:
        return requests.post(f"{url}/api/v0/scheduler/boefje/pop", json={"filters": []}, timeout=TIMEOUT).json()
    except requests.RequestException as exc:
        return exc


def test_start_is_fast_and_the_context_manager_stops(http):
    started = time.monotonic()
    with BoefjeAPIServer() as api:
        assert time.monotonic() - started < 0.5
        assert api.running
        url = api.url
        assert http.get(f"{url}/healthz", timeout=TIMEOUT).ok

    assert not api.running
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=TIMEOUT)


def test_a_bad_pop_mode_is_refused():
    with pytest.raises(ValueError, match="pop_mode"):
        BoefjeAPIServer(pop_mode="all")


# -- bookkeeping and helpers ---------------------------------------------------------------------------


def test_requests_are_counted_per_endpoint_and_logged(boefje_api, http):
    task_id = boefje_api.enqueue(make_task())
    pop(http, boefje_api)
    patch(http, boefje_api, task_id, "running")
    http.get(f"{boefje_api.url}/api/v0/scheduler/tasks/{task_id}", timeout=TIMEOUT)
    http.get(f"{boefje_api.url}/api/v0/tasks/{task_id}", timeout=TIMEOUT)
    output(http, boefje_api, task_id)
    output(http, boefje_api, task_id)
    http.get(f"{boefje_api.url}/healthz", timeout=TIMEOUT)

    counts = boefje_api.request_counts()
    log = boefje_api.request_log()

    assert counts == {"pop": 1, "patch": 1, "get": 1, "input": 1, "output": 2, "health": 1}
    assert [(record.method, record.endpoint, record.status) for record in log] == [
        ("POST", "pop", 200),
        ("PATCH", "patch", 200),
        ("GET", "get", 200),
        ("GET", "input", 200),
        ("POST", "output", 200),
        ("POST", "output", 403),
        ("GET", "health", 200),
    ]
    assert log[0].path == "/api/v0/scheduler/boefje/pop"
    assert log[0].time <= log[-1].time
    counts["pop"] = 99
    assert boefje_api.request_counts()["pop"] == 1, "request_counts returns a copy"

    boefje_api.reset_counts()
    assert boefje_api.request_counts() == {}
    assert boefje_api.request_log() == []


def test_enqueue_takes_dicts_model_objects_and_lists(boefje_api):
    raw = make_task()
    model = Task.from_dict(make_task(task_id="model-task"))

    single = boefje_api.enqueue(raw)
    many = boefje_api.enqueue([model, make_task()])

    assert single == raw["id"]
    assert many[0] == "model-task"
    assert boefje_api.queued_count() == 3
    assert boefje_api.statuses() == dict.fromkeys([single, *many], "queued")


def test_a_task_without_an_id_can_still_be_served(boefje_api, http):
    internal_id = boefje_api.enqueue({"data": {"boefje": {"id": None}}})

    answer = pop(http, boefje_api).json()

    assert answer == [{"data": {"boefje": {"id": None}}, "status": "queued"}]
    assert boefje_api.status(internal_id) == "dispatched"


def test_inspection_helpers_return_copies(boefje_api):
    task_id = boefje_api.enqueue(make_task())

    boefje_api.task(task_id)["data"]["boefje"]["id"] = "changed"
    boefje_api.history(task_id).append("completed")

    assert boefje_api.task(task_id)["data"]["boefje"]["id"] == "dns-records"
    assert boefje_api.history(task_id) == ["queued"]
    with pytest.raises(KeyError):
        boefje_api.task("no-such-task")
    with pytest.raises(KeyError):
        boefje_api.set_status("no-such-task", "running")
    with pytest.raises(ValueError):
        boefje_api.set_status(task_id, "done")


def test_wait_for_status_returns_once_reached(boefje_api, http):
    task_id = running_task(boefje_api)
    threading.Timer(0.05, output, args=(http, boefje_api, task_id)).start()

    assert boefje_api.wait_for_status(task_id, timeout=5) == {task_id: "completed"}
    assert boefje_api.wait_for_status([task_id], "completed", timeout=0) == {task_id: "completed"}


def test_wait_for_status_times_out_saying_which_tasks_are_late(boefje_api):
    done, late = boefje_api.enqueue([make_task(), make_task()])
    boefje_api.set_status(done, "completed")

    with pytest.raises(TimeoutError) as caught:
        boefje_api.wait_for_status([done, late], timeout=0.05)

    message = str(caught.value)
    assert f"{late!r}: 'queued'" in message
    assert done not in message
    with pytest.raises(KeyError):
        boefje_api.wait_for_status(["no-such-task"], timeout=0.05)


def test_wait_for_times_out_with_what_it_waited_for(boefje_api):
    boefje_api.enqueue(make_task())

    def everything_done(server):
        return server.queued_count() == 0

    with pytest.raises(TimeoutError, match=r"everything_done.*'queued': 1"):
        boefje_api.wait_for(everything_done, timeout=0.05)
    boefje_api.wait_for(lambda server: server.queued_count() == 1, timeout=0)


def test_reset_forgets_everything(boefje_api, http):
    boefje_api.enqueue(make_task())
    boefje_api.inject("health", status=500)
    pop(http, boefje_api)

    boefje_api.reset()

    assert boefje_api.statuses() == {}
    assert boefje_api.request_counts() == {}
    assert http.get(f"{boefje_api.url}/healthz", timeout=TIMEOUT).status_code == 200


# -- the factory ---------------------------------------------------------------------------------------


def test_make_task_is_protocol_shaped():
    task = make_task("nmap", oci_image="img", version="1", environment={"K": "v"}, priority=4)

    assert uuid.UUID(task["id"])
    assert task["data"]["id"] == task["id"]
    assert (task["status"], task["scheduler_id"], task["type"]) == ("queued", "boefje", "boefje")
    assert task["data"]["boefje"] == {"id": "nmap", "version": "1", "oci_image": "img"}
    assert task["data"]["environment"] == {"K": "v"}
    assert task["data"]["arguments"] == {}
    assert task["organisation"] == task["data"]["organization"] == "org"
    assert "deduplication_key" not in task
    assert Task.from_dict(task).created_at.tzinfo is not None
    assert make_task()["id"] != make_task()["id"]


def test_make_task_puts_extra_keywords_top_level():
    task = make_task(task_id="fixed", deduplication_key="k", status="running", unknown_field=[1])

    assert task["id"] == task["data"]["id"] == "fixed"
    assert task["deduplication_key"] == "k"
    assert task["status"] == "running"
    assert task["unknown_field"] == [1]


def test_example_tasks_use_the_example_boefjes_and_image():
    tasks = example_tasks(2)

    assert sorted(task["data"]["boefje"]["id"] for task in tasks) == sorted(EXAMPLE_BOEFJE_IDS * 2)
    assert {task["data"]["boefje"]["oci_image"] for task in tasks} == {EXAMPLE_OCI_IMAGE}
    assert set(EXAMPLE_BOEFJE_IDS) == {"hello-world", "dns-hosts"}
    assert EXAMPLE_OCI_IMAGE == "ghcr.io/minvws/openkat/generic:latest"


# -- the pytest fixture --------------------------------------------------------------------------------


def test_the_fixture_is_a_started_server(boefje_api, http):
    assert isinstance(boefje_api, BoefjeAPIServer)
    assert boefje_api.running
    assert boefje_api.pop_mode == "mula"
    assert http.get(f"{boefje_api.url}/healthz", timeout=TIMEOUT).json() == "OK"


@pytest.mark.boefje_api(pop_mode="dedup", results_envelope=True)
def test_the_fixture_takes_its_settings_from_a_marker(boefje_api):
    assert (boefje_api.pop_mode, boefje_api.results_envelope) == ("dedup", True)


def test_the_plugin_is_found_by_entry_point_and_stops_the_server(tmp_path):
    """A project without our conftest gets the fixture, and the server is gone after the test."""
    url_file = tmp_path / "url.txt"
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path

            def test_uses_the_fixture(boefje_api):
                assert boefje_api.running
                Path({str(url_file)!r}).write_text(boefje_api.url)
            """
        )
    )

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url_file.read_text()}/healthz", timeout=TIMEOUT)


# -- python -m boefje_runtime.testing ---------------------------------------------------------------------


def read_line(stream, timeout: float) -> str:
    """One line from a subprocess pipe, or AssertionError after ``timeout`` (never hangs the test)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line within {timeout} s") from None


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_the_command_serves_seeded_examples_until_signalled(http, stop_signal):
    process = subprocess.Popen(
        [sys.executable, "-m", "boefje_runtime.testing", "--port", "0", "--seed-examples", "--pop-mode", "limit"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        url = read_line(process.stdout, timeout=20).strip()
        assert url.startswith("http://127.0.0.1:")

        health = http.get(f"{url}/healthz", timeout=TIMEOUT)
        tasks = http.post(
            f"{url}/api/v0/scheduler/boefje/pop",
            params={"limit": 10},
            json=TaskFilter(EXAMPLE_OCI_IMAGE).to_request(),
            timeout=TIMEOUT,
        ).json()

        assert health.json() == "OK"
        assert sorted(task["data"]["boefje"]["id"] for task in tasks) == sorted(EXAMPLE_BOEFJE_IDS)

        process.send_signal(stop_signal)
        assert process.wait(timeout=10) == 0
        assert process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()


def test_the_command_reports_a_port_in_use():
    with BoefjeAPIServer() as api:
        result = subprocess.run(
            [sys.executable, "-m", "boefje_runtime.testing", "--port", str(api.port)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{api.port}" in result.stderr
    assert result.stdout == ""


def test_a_bug_in_the_server_answers_500_and_is_kept_for_the_test(boefje_api, http, monkeypatch):
    def broken_get(task_id):
        raise RuntimeError("bug in the test API")

    monkeypatch.setattr(boefje_api, "_get", broken_get)

    answer = http.get(f"{boefje_api.url}/api/v0/scheduler/tasks/x", timeout=TIMEOUT)

    assert answer.status_code == 500
    assert len(boefje_api.errors) == 1
    assert "RuntimeError: bug in the test API" in boefje_api.errors[0]
    assert http.get(f"{boefje_api.url}/healthz", timeout=TIMEOUT).ok
