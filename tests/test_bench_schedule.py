"""Which throughput runs ``benchmarks/bench.py`` makes in each repetition, and which runs it pairs
into a ratio (pure functions: a mistake here puts a ratio together from runs minutes apart)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from .helpers import ROOT


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # (bench.py imports its harness by that name)
    spec = importlib.util.spec_from_file_location("bench_under_test", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up while they are made)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        sys.path.remove(str(ROOT / "benchmarks"))


def test_the_runs_behind_the_targets_repeat_more_often_than_the_what_ifs(bench):
    plan = bench.Plan(repeat=2, target_repeat=4)
    specs = bench.throughput_specs(plan)

    repetitions = bench.schedule(plan, specs)

    assert len(repetitions) == 4
    assert all(sorted(spec.key for spec in order) == sorted(spec.key for spec in specs) for order in repetitions[:2])
    assert all({spec.key for spec in order} == bench.TARGET_SPECS for order in repetitions[2:])
    # shuffled per repetition, the same way in every run
    assert bench.schedule(plan, specs) == repetitions
    assert len({tuple(spec.key for spec in order) for order in repetitions[:2]}) == 2


def test_a_given_repeat_makes_every_spec_run_that_often(bench):
    plan = bench.Plan(repeat=3, target_repeat=3)

    repetitions = bench.schedule(plan, bench.throughput_specs(plan))

    assert len(repetitions) == 3 and all(len(order) == len(repetitions[0]) for order in repetitions)


def test_a_ratio_pairs_runs_of_the_same_repetition_only(bench):
    # given a what-if run in repetitions 0-1 and a target spec run in 0-3, listed out of order
    what_if = [{"repetition": 1, "rate": 10.0}, {"repetition": 0, "rate": 20.0}]
    target = [{"repetition": r, "rate": 100.0 + r} for r in (3, 0, 2, 1)]

    pairs = bench.pairs(what_if, target)

    assert [(a["repetition"], b["repetition"]) for a, b in pairs] == [(1, 1), (0, 0)]
    assert [(b["repetition"]) for _, b in bench.pairs(target, what_if)] == [0, 1]
