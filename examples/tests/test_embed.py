"""examples/embed.py, run as a program against the test Boefje API, in burst mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from boefje_runtime.testing import make_task

EMBED = Path(__file__).resolve().parents[1] / "embed.py"
IMAGE = "example/embedded:latest"

pytestmark = pytest.mark.timeout(60)


def run_embed(env: dict[str, str]) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if key not in ("BOEFJES_API", "OCI_IMAGE")}
    return subprocess.run([sys.executable, str(EMBED)], env={**environ, **env}, capture_output=True, text=True,
                          timeout=45, check=False)


def test_the_embedded_callable_runs_every_task_and_the_program_exits_0(boefje_api):
    # given
    good = boefje_api.enqueue([
        make_task("ooi-parts", oci_image=IMAGE, input_ooi="Hostname|internet|example.com"),
        make_task("ooi-parts", oci_image=IMAGE, input_ooi="IPAddressV6|internet|2001:db8::1"),
    ])
    bad = boefje_api.enqueue(make_task("ooi-parts", oci_image=IMAGE, input_ooi=None))

    # when
    result = run_embed({"BOEFJES_API": boefje_api.url, "OCI_IMAGE": IMAGE, "BURST": "true", "POOL_SIZE": "1"})

    # then
    assert result.returncode == 0, result.stderr
    assert [boefje_api.status(task_id) for task_id in good] == ["completed", "completed"]
    [file] = boefje_api.files(good[0])
    assert json.loads(file["content"]) == {"type": "Hostname", "key": ["internet", "example.com"]}
    assert "boefje/ooi-parts" in file["tags"]
    assert boefje_api.status(bad) == "failed"
    assert "ooi-parts: {'completed': 2, 'failed': 1}" in result.stderr


def test_without_the_worker_settings_it_says_what_is_missing():
    result = run_embed({})

    assert result.returncode == 2
    assert "BOEFJES_API" in result.stderr and "OCI_IMAGE" in result.stderr
