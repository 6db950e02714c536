"""Tests of the ip-facts example boefje: how to test your own boefje with boefje-runtime.

Three levels, cheapest first:
1. ``run`` as a function, loaded the way a worker loads it (discovery by ``boefje.json``);
2. worker mode: a pool in burst mode against the test Boefje API (the ``boefje_api`` fixture that
   boefje-runtime registers with pytest), which exits once the queue is empty;
3. one-shot mode: ``boefje-worker INPUT_URL``, what ``docker run IMAGE INPUT_URL`` runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from boefje_runtime import BoefjeAPIClient, BoefjeRegistry, PoolSettings, TaskFilter, WorkerPool
from boefje_runtime.testing import make_task

BOEFJES = Path(__file__).resolve().parents[1] / "boefjes"
IMAGE = json.loads((BOEFJES / "kat_ip_facts" / "boefje.json").read_text())["oci_image"]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def registry() -> BoefjeRegistry:
    return BoefjeRegistry.discover(BOEFJES)


def task(address: str, **kwargs) -> dict:
    kind = "IPAddressV6" if ":" in address else "IPAddressV4"
    return make_task("ip-facts", oci_image=IMAGE, input_ooi=f"{kind}|internet|{address}", **kwargs)


def facts_of(files: list[dict]) -> dict:
    (file,) = files
    assert "application/json" in file["tags"]
    return json.loads(file["content"])


# -- 1. the function ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "block"),
    [
        ("192.0.2.1", "Documentation (TEST-NET-1)"),
        ("10.1.2.3", "Private-Use"),
        ("100.64.0.1", "Shared Address Space (CGNAT)"),
        ("2001:db8::1", "Documentation"),
        ("fe80::1", "Link-Local Unicast"),
    ],
)
def test_special_purpose_addresses_are_named(registry, address, block):
    run = registry.find("ip-facts").load()

    [(tags, content)] = run(task(address)["data"])

    facts = json.loads(content)
    assert tags == {"application/json"}
    assert facts["special_purpose"][0]["name"] == block
    assert facts["global"] is False


def test_a_global_address_is_in_no_special_block(registry):
    run = registry.find("ip-facts").load()

    [(_, content)] = run(task("9.9.9.9")["data"])

    facts = json.loads(content)
    assert facts == {**facts, "address": "9.9.9.9", "version": 4, "global": True, "special_purpose": []}
    assert facts["reverse_pointer"] == "9.9.9.9.in-addr.arpa"


def test_openkats_input_object_wins_over_the_reference(registry):
    # OpenKAT's Boefje API hands the input object itself in arguments.input
    meta = task("192.0.2.1", arguments={"input": {"object_type": "IPAddressV6", "address": "2001:db8::5"}})["data"]

    [(_, content)] = registry.find("ip-facts").load()(meta)

    assert json.loads(content)["address"] == "2001:db8::5"


def test_an_input_that_is_not_an_address_raises(registry):
    run = registry.find("ip-facts").load()

    with pytest.raises(ValueError, match="IPAddressV4 or IPAddressV6"):
        run(make_task("ip-facts", input_ooi="Hostname|internet|example.com")["data"])


# -- 2. worker mode ----------------------------------------------------------------------------


def test_a_pool_in_burst_mode_runs_every_task_then_exits(boefje_api):
    # given
    good = boefje_api.enqueue([task("192.0.2.1"), task("2001:db8::1"), task("9.9.9.9")])
    bad = boefje_api.enqueue(make_task("ip-facts", oci_image=IMAGE, input_ooi="IPAddressV4|internet|not-an-ip"))
    other_image = boefje_api.enqueue(make_task("ip-facts", oci_image="someone/else:latest"))
    pool = WorkerPool(
        BoefjeAPIClient(boefje_api.url),
        TaskFilter([IMAGE]),
        plugin_dir=BOEFJES,
        settings=PoolSettings(pool_size=2, burst=True, poll_interval=0.2, shutdown_timeout=5),
    )

    # when
    exit_code = pool.run()

    # then
    assert exit_code == 0
    for task_id in good:
        boefje_api.assert_completed(task_id)  # on failure: the history, the traceback, the worker's log lines
    assert [facts_of(boefje_api.files(task_id))["version"] for task_id in good] == [4, 6, 4]
    boefje_api.assert_failed(bad)
    [error] = boefje_api.files(bad)
    assert "error/boefje" in error["tags"] and b"ValueError" in error["content"]
    assert boefje_api.status(other_image) == "queued"  # the filter left it for another image's workers
    assert boefje_api.request_counts().get("get", 0) == 0


# -- 3. one-shot mode --------------------------------------------------------------------------


def test_one_shot_mode_runs_the_task_at_the_input_url(boefje_api):
    # given: OpenKAT's Boefje API sets a task running before it starts a container for it
    task_id = boefje_api.enqueue(task("203.0.113.9"))
    boefje_api.set_status(task_id, "running")

    # when
    result = subprocess.run(
        [sys.executable, "-m", "boefje_runtime_cli", f"{boefje_api.url}/api/v0/tasks/{task_id}",
         "--plugin-dir", str(BOEFJES)],
        capture_output=True, text=True, timeout=30, check=False,
    )

    # then
    assert result.returncode == 0, result.stderr
    assert boefje_api.status(task_id) == "completed"
    assert facts_of(boefje_api.files(task_id))["special_purpose"][0]["rfc"] == "RFC 5737"
