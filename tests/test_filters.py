"""The scheduler filter: what a worker asks for, and the one evaluator that decides what matches.

The property test at the end checks the two sides agree over HTTP: what the test Boefje API hands
out for a TaskFilter is exactly what ``TaskFilter.matches`` accepts.
"""

from __future__ import annotations

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from boefje_runtime.errors import ParseError
from boefje_runtime.filters import OPERATORS, TaskFilter, check_filter, check_filters, evaluate
from boefje_runtime.models import Task
from boefje_runtime.testing import BoefjeAPIServer, make_task

TASK = make_task(
    "dns-records",
    oci_image="ghcr.io/minvws/openkat/dns:latest",
    organisation="Org_1",
    priority=3,
    arguments={"ports": [80, 443], "input": {"name": "example.com", "level": 2}},
    deduplication_key="k1",
)


def where(field, operator, value, column="data"):
    return {"column": column, "field": field, "operator": operator, "value": value}


# -- each operator ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "field", "operator", "value", "expected"),
    [
        ("data", "boefje__id", "==", "dns-records", True),
        ("data", "boefje__id", "eq", "nmap", False),
        ("data", "boefje__id", "!=", "nmap", True),
        ("data", "boefje__id", "ne", "dns-records", False),
        ("priority", None, "is", 3, True),
        ("priority", None, "is", 3.0, False),  # same value, other type: not "is"
        ("priority", None, "is_not", 3.0, True),
        ("data", "boefje__version", "is", None, True),
        ("data", "boefje__version", "is_null", None, True),
        ("data", "boefje__id", "is_null", None, False),
        ("data", "boefje__id", "is_not_null", None, True),
        ("data", "boefje__version", "is_not_null", None, False),
        ("priority", None, ">", 2, True),
        ("priority", None, "gt", 3, False),
        ("priority", None, "<", 4, True),
        ("priority", None, "lt", 3, False),
        ("priority", None, ">=", 3, True),
        ("priority", None, "gte", 4, False),
        ("priority", None, "<=", 3, True),
        ("priority", None, "lte", 2, False),
        ("priority", None, "gt", "1", False),  # a number against a string is not ordered
        ("data", "boefje__version", "lt", 5, False),  # null is not ordered
        ("data", "boefje__id", "like", "dns-%", True),
        ("data", "boefje__id", "like", "dns_records", True),
        ("data", "boefje__id", "like", "DNS-%", False),
        ("data", "boefje__id", "like", "dns", False),  # LIKE matches the whole value
        ("data", "boefje__oci_image", "like", "ghcr.io%", True),
        ("data", "boefje__oci_image", "like", "ghcrXio%", False),  # "." is literal
        ("data", "boefje__id", "not_like", "nmap%", True),
        ("data", "boefje__id", "not_like", "dns%", False),
        ("data", "boefje__version", "not_like", "x%", False),  # null is neither like nor not like
        ("organisation", None, "ilike", "org\\_1", False),  # no escape syntax: "\" is literal
        ("organisation", None, "ilike", "org_1", True),
        ("organisation", None, "ilike", "ORG%", True),
        ("organisation", None, "not_ilike", "ORG%", False),
        ("organisation", None, "not_ilike", "x%", True),
        ("data", "boefje__id", "in", ["nmap", "dns-records"], True),
        ("data", "boefje__id", "in", ["nmap"], False),
        ("data", "boefje__id", "in", "dns-records", False),  # "in" wants a list
        ("data", "boefje__id", "not_in", ["nmap"], True),
        ("data", "boefje__id", "not_in", ["dns-records"], False),
        ("data", "boefje__id", "contains", "records", True),
        ("data", "boefje__id", "contains", "nmap", False),
        ("data", "arguments__ports", "contains", 443, True),
        ("data", "arguments__ports", "contains", [80, 443], True),
        ("data", "arguments__ports", "contains", [80, 22], False),
        ("data", "arguments__input", "contains", {"name": "example.com"}, True),
        ("data", "arguments__input", "contains", {"name": "other"}, False),
        ("data", "boefje__id", "starts_with", "dns", True),
        ("data", "boefje__id", "starts_with", "records", False),
        ("deduplication_key", None, "==", "k1", True),
    ],
)
def test_each_operator(column, field, operator, value, expected):
    filters = [{"column": column, "field": field, "operator": operator, "value": value}]

    assert evaluate(filters, TASK) is expected


def test_every_operator_the_scheduler_knows_is_supported():
    documented = [
        "==", "eq", "!=", "ne", "is", "is_not", "is_null", "is_not_null", ">", "gt", "<", "lt", ">=", "gte", "<=",
        "lte", "like", "not_like", "ilike", "not_ilike", "in", "not_in", "contains", "starts_with",
    ]

    assert set(documented) <= set(OPERATORS)


def test_the_operator_defaults_to_equality():
    assert evaluate([{"column": "organisation", "value": "Org_1"}], TASK)
    assert not evaluate([{"column": "organisation", "value": "Org_2"}], TASK)


# -- paths ------------------------------------------------------------------------------------------


def test_double_underscore_walks_into_nested_json():
    assert evaluate([where("arguments__input__level", "==", 2)], TASK)
    assert evaluate([where("boefje__oci_image", "in", ["ghcr.io/minvws/openkat/dns:latest"])], TASK)


def test_a_missing_step_is_null():
    assert evaluate([where("arguments__nothing__here", "is_null", None)], TASK)
    assert evaluate([where("boefje__id__deeper", "is_null", None)], TASK)  # walking into a string
    assert evaluate([{"column": "no_such_column", "operator": "is_null"}], TASK)
    assert not evaluate([where("arguments__nothing", "==", "x")], TASK)


def test_no_field_compares_the_column_itself():
    assert evaluate([{"column": "priority", "field": None, "operator": "==", "value": 3}], TASK)


# -- combinations -------------------------------------------------------------------------------------


def test_an_empty_or_absent_filter_matches_everything():
    assert evaluate([], TASK)
    assert evaluate(None, TASK)
    assert evaluate({}, TASK)


def test_a_list_means_every_filter_must_hold():
    hit, miss = where("boefje__id", "==", "dns-records"), where("boefje__id", "==", "nmap")

    assert evaluate([hit, hit], TASK)
    assert not evaluate([hit, miss], TASK)


def test_and_or_not_follow_the_scheduler():
    hit, miss = where("boefje__id", "==", "dns-records"), where("boefje__id", "==", "nmap")

    assert evaluate({"and": [hit]}, TASK)
    assert not evaluate({"and": [hit, miss]}, TASK)
    assert evaluate({"or": [miss, hit]}, TASK)
    assert not evaluate({"or": [miss]}, TASK)
    assert evaluate({"not": [miss]}, TASK)
    assert not evaluate({"not": [miss, hit]}, TASK)
    assert evaluate({"and": [hit], "or": [miss, hit], "not": [miss]}, TASK)
    assert not evaluate({"and": [hit], "or": [miss]}, TASK)
    assert evaluate({"and": [], "or": [], "not": []}, TASK)


# -- TaskFilter -------------------------------------------------------------------------------------


def test_task_filter_builds_the_pop_body():
    task_filter = TaskFilter(oci_images=["img:1", "img:2"], plugins=["nmap", "dns-records"])

    assert task_filter.to_request() == {
        "filters": [
            {"column": "data", "field": "boefje__oci_image", "operator": "in", "value": ["img:1", "img:2"]},
            {"column": "data", "field": "boefje__id", "operator": "in", "value": ["nmap", "dns-records"]},
        ]
    }


def test_task_filter_always_sends_a_body():
    assert TaskFilter().to_request() == {"filters": []}


def test_one_image_may_be_given_as_a_string():
    assert TaskFilter("img:1").oci_images == ("img:1",)
    assert TaskFilter("img:1").filters() == [
        {"column": "data", "field": "boefje__oci_image", "operator": "in", "value": ["img:1"]}
    ]


def test_extra_filters_are_appended_and_copied():
    extra = {"column": "organisation", "operator": "==", "value": "Org_1"}
    task_filter = TaskFilter(plugins=["dns-records"], extra=[extra])
    extra["value"] = "changed later"

    assert task_filter.filters()[-1] == {"column": "organisation", "operator": "==", "value": "Org_1"}
    assert task_filter.matches(TASK)


def test_matches_takes_a_dict_or_a_task():
    task_filter = TaskFilter(oci_images="ghcr.io/minvws/openkat/dns:latest", plugins=["dns-records"])
    other = TaskFilter(oci_images="ghcr.io/minvws/openkat/nmap:latest")

    assert task_filter.matches(TASK)
    assert task_filter.matches(Task.from_dict(TASK))
    assert not other.matches(TASK)
    assert not other.matches(Task.from_dict(TASK))


def test_task_filters_are_values():
    assert TaskFilter(["a"], ["b"]) == TaskFilter(("a",), ("b",))
    assert hash(TaskFilter(["a"])) == hash(TaskFilter(("a",)))
    with pytest.raises(AttributeError):
        TaskFilter().plugins = ("x",)


# -- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ("boefje", "filters: expected a list or an and/or/not object, got string 'boefje'"),
        ([3], "filters[0]: expected a filter object, got number 3"),
        ([{"field": "boefje__id"}], "filters[0].column: expected a non-empty string, got null"),
        ([{"column": ""}], "filters[0].column: expected a non-empty string, got string ''"),
        ([{"column": "data", "field": 3}], "filters[0].field: expected a string or null, got number 3"),
        (
            [where("boefje__id", "==", "x"), where("boefje__id", "equals", "x")],
            "filters[1].operator: unknown operator string 'equals'",
        ),
        ({"xor": []}, "filters: unknown keys ['xor']; expected and, or, not"),
        ({"and": {"column": "data"}}, "filters.and: expected a list, got an object"),
        ({"or": [where("x", "==", 1)], "not": [{"column": 1}]}, "filters.not[0].column: expected a non-empty string, "
         "got number 1"),
    ],
)
def test_check_filters_says_what_is_wrong(filters, message):
    with pytest.raises(ParseError) as caught:
        check_filters(filters)

    assert str(caught.value) == message


@pytest.mark.parametrize("filters", [None, [], {}, [where("boefje__id", "in", ["a"])], {"and": [], "not": []}])
def test_check_filters_accepts_valid_expressions(filters):
    check_filters(filters)


def test_check_filter_returns_the_filter():
    item = where("boefje__id", "==", "a")

    assert check_filter(item) is item


def test_task_filter_refuses_a_broken_extra_filter():
    with pytest.raises(ParseError, match=r"^extra\[0\]\.operator: unknown operator string 'nope'$"):
        TaskFilter(extra=[{"column": "data", "operator": "nope"}])


# -- the property: the server hands out exactly what TaskFilter.matches accepts ---------------------------

BOEFJE_IDS = ["dns-records", "dns-hosts", "nmap", "hello-world"]
IMAGES = [None, "ghcr.io/minvws/openkat/dns:latest", "ghcr.io/minvws/openkat/nmap:latest", "img_x"]
ORGS = ["org1", "org2", "Org3"]

tasks_strategy = st.lists(
    st.builds(
        lambda boefje_id, image, org, priority: make_task(
            boefje_id, oci_image=image, organisation=org, priority=priority
        ),
        st.sampled_from(BOEFJE_IDS),
        st.sampled_from(IMAGES),
        st.sampled_from(ORGS),
        st.integers(0, 5),
    ),
    max_size=15,
)

extra_filter_strategy = st.one_of(
    st.builds(lambda o: {"column": "organisation", "operator": "==", "value": o}, st.sampled_from(ORGS)),
    st.builds(lambda o: {"column": "organisation", "operator": "ilike", "value": o}, st.sampled_from(["org%", "ORG_"])),
    st.builds(lambda p: {"column": "priority", "operator": "lte", "value": p}, st.integers(0, 5)),
    st.builds(lambda p: {"column": "priority", "field": None, "operator": "gt", "value": p}, st.integers(0, 5)),
    st.builds(lambda s: where("boefje__id", "starts_with", s), st.sampled_from(["dns", "n", "x"])),
    st.builds(lambda s: where("boefje__id", "like", s), st.sampled_from(["dns-%", "%o%", "nmap"])),
    st.just(where("boefje__oci_image", "is_null", None)),
    st.just(where("boefje__version", "is_null", None)),
)

task_filter_strategy = st.builds(
    TaskFilter,
    oci_images=st.lists(st.sampled_from([image for image in IMAGES if image]), max_size=2),
    plugins=st.lists(st.sampled_from(BOEFJE_IDS), max_size=3),
    extra=st.lists(extra_filter_strategy, max_size=2),
)


@pytest.fixture(scope="module")
def shared_api():
    with BoefjeAPIServer() as api, requests.Session() as session:
        yield api, session


@settings(max_examples=50, deadline=None)
@given(tasks=tasks_strategy, task_filter=task_filter_strategy)
def test_the_server_pops_exactly_what_the_filter_matches(shared_api, tasks, task_filter):
    api, session = shared_api
    api.reset()
    api.enqueue(tasks)

    answer = session.post(
        f"{api.url}/api/v0/scheduler/boefje/pop", params={"limit": 1000}, json=task_filter.to_request(), timeout=10
    )

    assert answer.status_code == 200, answer.text
    popped = [task["id"] for task in answer.json()]
    expected = [task for task in tasks if task_filter.matches(task)]
    # The queue order: priority ascending, then enqueue order (sorted() is stable).
    assert popped == [task["id"] for task in sorted(expected, key=lambda task: task["priority"])]
    statuses = api.statuses()
    assert all(statuses[task["id"]] == ("dispatched" if task in expected else "queued") for task in tasks)
