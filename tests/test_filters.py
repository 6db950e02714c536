"""The scheduler filter: what a worker asks for, and the one evaluator that decides what matches.

The property tests at the end check the evaluator (and the test Boefje API over HTTP, which uses it)
against an oracle written in this file from mula's filter code, not against the evaluator itself.
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

from .helpers import examples

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
        ("organisation", None, "ilike", "org\\_1", True),  # a backslash escapes, as in Postgres
        ("organisation", None, "ilike", "org\\%", False),  # an escaped % is a literal %
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
        ("data", "boefje__id", "starts_with", "dns_r", True),  # LIKE 'dns_r%': _ is a wildcard
        ("data", "boefje__id", "contains", "s-r", True),
        ("data", "boefje__id", "contains", "%-%", True),  # LIKE '%%-%%'
        ("data", "boefje__version", "!=", "1", False),  # null != x is unknown in SQL, not true
        ("data", "boefje__version", "not_in", ["1"], False),
        ("data", "arguments__missing", "ne", "x", False),
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


def test_unknown_is_neither_true_nor_false():
    """SQL's three-valued logic: a comparison with null is unknown, and so is NOT of it; OR with a
    true part is true, AND with a false part is false."""
    unknown, hit, miss = where("boefje__version", "==", "1"), where("boefje__id", "==", "dns-records"), where(
        "boefje__id", "==", "nmap"
    )

    assert not evaluate({"not": [unknown]}, TASK)
    assert evaluate({"or": [unknown, hit]}, TASK)
    assert not evaluate({"or": [unknown, miss]}, TASK)
    assert not evaluate({"not": [miss, unknown]}, TASK)  # NOT (false OR unknown) is unknown
    assert evaluate({"not": [miss, hit]}, TASK) is False


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


# -- the property: the server pops what mula would, by an oracle written from mula's source -----------
#
# An independent reading of mula's filters (mula/scheduler/storage/filters/*.py over Postgres), so the
# test API (which uses ``evaluate``) is checked against the scheduler, not against itself:
# - a ``data`` field is JSON walked with ``->``; with a string (or a list of strings) value it is read
#   as text (``->>``): a JSON null, a missing key and a step into a non-object are SQL NULL;
# - a column without a field is compared as the column itself (here: organisation, priority);
# - ``==``/``!=``/``in``/``not_in``/ordering are SQL's; ``like``/``ilike`` are LIKE/ILIKE with the
#   backslash as escape; ``starts_with`` and ``contains`` are SQLAlchemy's LIKE 'x%' and LIKE '%x%',
#   whose value's % and _ stay wildcards;
# - any comparison with NULL is unknown; AND, OR and NOT are Kleene's; a task is popped only when
#   the whole condition is true. A list means ``and``; ``not`` takes one filter (``not_(*exprs)``).
# The strategies stay inside what mula accepts (it refuses e.g. a null value on a JSON field).

JSON_TEXT_OPERATORS = {"==", "eq", "!=", "ne", "in", "not_in", "like", "not_like", "ilike", "not_ilike",
                       "starts_with", "contains"}
ORDER = {">": "gt", "<": "lt", ">=": "ge", "<=": "le", "gt": "gt", "lt": "lt", "gte": "ge", "lte": "le"}


def sql_like(value: str, pattern: str, fold: bool = False) -> bool:
    """LIKE by dynamic programming over the pattern's tokens (no regex, unlike filters.py)."""
    if fold:
        value, pattern = value.lower(), pattern.lower()
    tokens, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\":
            assert i + 1 < len(pattern), "Postgres refuses a pattern ending in the escape character"
            tokens.append(("char", pattern[i + 1]))
            i += 2
        else:
            tokens.append({"%": ("any", None), "_": ("one", None)}.get(pattern[i], ("char", pattern[i])))
            i += 1
    # states: how many tokens are matched so far; % may match nothing, so close over it.
    def close(states):
        states = set(states)
        for n in sorted(states):
            while n < len(tokens) and tokens[n][0] == "any":
                n += 1
                states.add(n)
        return states

    states = close({0})
    for ch in value:
        following = set()
        for n in states:
            if n < len(tokens):
                kind, literal = tokens[n]
                if kind == "any":
                    following.add(n)
                elif kind == "one" or literal == ch:
                    following.add(n + 1)
        states = close(following)
    return len(tokens) in states


def mula_read(task, column, field):
    """The value mula compares: SQL NULL is None."""
    assert column in ("data", "organisation", "priority"), f"the oracle does not model column {column!r}"
    value = task.get(column)
    if not field:
        return value
    for part in field.split("__"):
        value = value.get(part) if isinstance(value, dict) else None
    assert value is None or isinstance(value, str), "the oracle only reads JSON text (->>)"
    return value


def mula_filter(task, item):
    """True, False, or None (unknown) for one filter, as Postgres would answer it."""
    name, target = item.get("operator", "eq"), item.get("value")
    if item["column"] == "data":
        assert name in JSON_TEXT_OPERATORS and (isinstance(target, str) or (
            isinstance(target, list) and target and all(isinstance(t, str) for t in target)))
    value = mula_read(task, item["column"], item.get("field"))
    if value is None:
        return None
    if name in ("==", "eq"):
        return value == target
    if name in ("!=", "ne"):
        return value != target
    if name == "in":
        return value in target
    if name == "not_in":
        return value not in target
    if name in ORDER:
        return {"gt": value > target, "lt": value < target, "ge": value >= target, "le": value <= target}[ORDER[name]]
    if name == "starts_with":
        return sql_like(value, target + "%")
    if name == "contains":
        return sql_like(value, "%" + target + "%")
    negated, fold = name.startswith("not_"), "ilike" in name
    assert name in ("like", "not_like", "ilike", "not_ilike"), f"the oracle does not model {name!r}"
    matched = sql_like(value, target, fold)
    return not matched if negated else matched


def kleene_and(results):
    results = list(results)
    return False if False in results else None if None in results else True


def kleene_or(results):
    results = list(results)
    return True if True in results else None if None in results else False


def mula_pops(task, filters):
    if isinstance(filters, list):
        filters = {"and": filters}
    parts = [kleene_and(mula_filter(task, item) for item in filters.get("and", []))]
    if filters.get("or"):
        parts.append(kleene_or(mula_filter(task, item) for item in filters["or"]))
    if "not" in filters:
        [negated] = filters["not"]  # sqlalchemy's not_() takes one clause
        result = mula_filter(task, negated)
        parts.append(None if result is None else not result)
    return kleene_and(parts) is True


def test_the_oracle_reads_like_as_postgres_does():
    assert sql_like("dns-records", "dns%") and sql_like("dns", "d_s") and not sql_like("dns", "d_")
    assert sql_like("a%b", "a\\%b") and not sql_like("axb", "a\\%b") and sql_like("", "%")
    assert sql_like("ABC", "a%", fold=True) and not sql_like("ABC", "a%")
    assert mula_pops({"organisation": "o"}, {"not": [where("x", "==", "y")]}) is False


BOEFJE_IDS = ["dns-records", "dns-hosts", "nmap", "hello-world", "dns_x"]
IMAGES = [None, "ghcr.io/minvws/openkat/dns:latest", "ghcr.io/minvws/openkat/nmap:latest", "img_x"]
ORGS = ["org1", "org2", "Org3", "org_1"]
VERSIONS = [None, "1", "2"]

tasks_strategy = st.lists(
    st.builds(
        lambda boefje_id, image, org, priority, version: make_task(
            boefje_id, oci_image=image, organisation=org, priority=priority, version=version
        ),
        st.sampled_from(BOEFJE_IDS),
        st.sampled_from(IMAGES),
        st.sampled_from(ORGS),
        st.integers(0, 5),
        st.sampled_from(VERSIONS),
    ),
    max_size=15,
)

TEXT_FIELDS = ["boefje__id", "boefje__oci_image", "boefje__version", "organization", "arguments__missing",
               "boefje__id__deeper"]
TEXTS = ["dns-records", "nmap", "1", "org1", "img_x", "x"]
PATTERNS = ["dns-%", "%o%", "nmap", "dns_%", "dns\\_%", "ORG%", "%1", "img\\_x", "_"]
PREFIXES = ["dns", "n", "x", "dns_", "img_", "%s"]

one_filter = st.one_of(
    st.builds(lambda f, o, v: where(f, o, v), st.sampled_from(TEXT_FIELDS),
              st.sampled_from(["==", "eq", "!=", "ne"]), st.sampled_from(TEXTS)),
    st.builds(lambda f, o, v: where(f, o, v), st.sampled_from(TEXT_FIELDS), st.sampled_from(["in", "not_in"]),
              st.lists(st.sampled_from(TEXTS), min_size=1, max_size=3)),
    st.builds(lambda f, o, v: where(f, o, v), st.sampled_from(TEXT_FIELDS),
              st.sampled_from(["like", "not_like", "ilike", "not_ilike"]), st.sampled_from(PATTERNS)),
    st.builds(lambda f, o, v: where(f, o, v), st.sampled_from(TEXT_FIELDS),
              st.sampled_from(["starts_with", "contains"]), st.sampled_from(PREFIXES)),
    st.builds(lambda o, v: {"column": "organisation", "operator": o, "value": v},
              st.sampled_from(["==", "!=", "like", "ilike", "not_ilike", "starts_with"]),
              st.sampled_from(["org1", "ORG%", "org_1", "org\\_1", "Org"])),
    st.builds(lambda o, p: {"column": "priority", "field": None, "operator": o, "value": p},
              st.sampled_from([*ORDER, "==", "!="]), st.integers(0, 5)),
    st.builds(lambda o, p: {"column": "priority", "operator": o, "value": p}, st.sampled_from(["in", "not_in"]),
              st.lists(st.integers(0, 5), min_size=1, max_size=3)),
)

filters_strategy = st.one_of(
    st.lists(one_filter, max_size=3),
    st.fixed_dictionaries({}, optional={"and": st.lists(one_filter, max_size=2),
                                        "or": st.lists(one_filter, max_size=3),
                                        "not": st.lists(one_filter, min_size=1, max_size=1)}),
    st.builds(lambda f: f.to_request()["filters"], st.builds(
        TaskFilter,
        oci_images=st.lists(st.sampled_from([image for image in IMAGES if image]), max_size=2),
        plugins=st.lists(st.sampled_from(BOEFJE_IDS), max_size=3),
        extra=st.lists(one_filter, max_size=2),
    )),
)


@pytest.fixture(scope="module")
def shared_api():
    # "limit" mode: one pop answers every match (mula itself answers one task, or one key group).
    with BoefjeAPIServer(pop_mode="limit") as api, requests.Session() as session:
        yield api, session


@settings(max_examples=examples(200), deadline=None)
@given(tasks=tasks_strategy, filters=filters_strategy)
def test_the_server_pops_what_mula_would(shared_api, tasks, filters):
    api, session = shared_api
    api.reset()
    api.enqueue(tasks)

    answer = session.post(
        f"{api.url}/api/v0/scheduler/boefje/pop", params={"limit": 1000}, json={"filters": filters}, timeout=10
    )

    assert answer.status_code == 200, answer.text
    popped = [task["id"] for task in answer.json()]
    expected = [task for task in tasks if mula_pops(task, filters)]
    # The queue order: priority ascending, then enqueue order (sorted() is stable).
    assert popped == [task["id"] for task in sorted(expected, key=lambda task: task["priority"])]
    statuses = api.statuses()
    assert all(statuses[task["id"]] == ("dispatched" if task in expected else "queued") for task in tasks)


@settings(max_examples=examples(100), deadline=None)
@given(tasks=tasks_strategy, filters=filters_strategy)
def test_evaluate_agrees_with_the_oracle(tasks, filters):
    for task in tasks:
        assert evaluate(filters, task) == mula_pops(task, filters), (filters, task)
