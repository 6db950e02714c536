"""A boefje author's loop, as a user drives it: ``boefje-worker run``, the standalone test API
(``python -m boefje_runtime.testing --enqueue ... --running``, ``show``) and one-shot on its URL.

Everything runs as real subprocesses talking HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from boefje_runtime.exit_codes import ExitCode

from .helpers import run_cli, write_plugin

pytestmark = pytest.mark.timeout(90)

GREETER = """
    import os

    def run(boefje_meta):
        host = boefje_meta["input_ooi"].rsplit("|", 1)[-1]
        return [
            ({"text/plain", "not-a-mime"}, f"{os.environ.get('GREETING', 'hello')} {host}"),
            ({"application/octet-stream"}, bytes(range(256))),
        ]
"""

RAISER = """
    def run(boefje_meta):
        answer = 41
        raise ValueError(f"cannot scan {boefje_meta['input_ooi']!r}")
"""


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    root = tmp_path / "boefjes"
    write_plugin(root / "greeter", GREETER, id="greeter", version="2", oci_image="example/greeter:1")
    write_plugin(root / "raiser", RAISER, id="raiser", oci_image="example/raiser:1")
    write_plugin(root / "big", "def run(boefje_meta):\n    return [({'text/plain'}, 'x' * 2_000_000)]\n", id="big")
    return root


def run_boefje(plugins: Path, *args: str, **options) -> subprocess.CompletedProcess:
    return run_cli("run", *args, "--plugin-dir", str(plugins), **options)


# -- boefje-worker run ------------------------------------------------------------------------------


def test_run_prints_every_output_file_with_its_tags_and_size(plugins):
    result = run_boefje(plugins, "greeter", "Hostname|internet|example.com")

    assert result.returncode == ExitCode.OK, result.stderr
    lines = result.stdout.splitlines()
    # the tag rules of a real task: non-MIME tags dropped (with a warning), defaults added
    assert lines[0] == "== file 0: 17 bytes, tags: text/plain, boefje/greeter, boefje/greeter-2"
    assert lines[1] == "hello example.com"
    assert lines[2] == "== file 1: 256 bytes, tags: application/octet-stream, boefje/greeter, boefje/greeter-2"
    assert lines[3] == "(binary content, not shown)"
    assert re.fullmatch(r"greeter on Hostname\|internet\|example.com: COMPLETED in \d+\.\d{3} s, 2 files", lines[4])
    assert "'not-a-mime'" in result.stderr


def test_run_with_env_sets_the_variable_for_the_boefje(plugins):
    result = run_boefje(plugins, "greeter", "Hostname|internet|example.com", "--env", "GREETING=hoi",
                        env={"GREETING": "from the shell"})

    assert result.returncode == ExitCode.OK, result.stderr
    assert "hoi example.com" in result.stdout.splitlines()


def test_run_writes_the_files_to_out_dir(plugins, tmp_path):
    out = tmp_path / "out"

    result = run_boefje(plugins, "greeter", "Hostname|internet|example.com", "--out", str(out))

    assert result.returncode == ExitCode.OK, result.stderr
    assert (out / "0").read_text() == "hello example.com"
    assert (out / "1").read_bytes() == bytes(range(256))
    listing = json.loads((out / "output.json").read_text())
    assert listing["status"] == "COMPLETED"
    assert [file["size"] for file in listing["files"]] == [17, 256]
    assert f"(saved to {out / '1'})" in result.stdout


def test_a_raising_boefje_prints_its_traceback_and_exits_non_zero(plugins):
    result = run_boefje(plugins, "raiser", "Hostname|internet|example.com")

    assert result.returncode == ExitCode.BOEFJE_FAILED, result.stderr
    assert "tags: error/boefje, boefje/raiser" in result.stdout
    assert "Traceback (most recent call last):" in result.stdout
    assert "ValueError: cannot scan 'Hostname|internet|example.com'" in result.stdout
    assert "boefje_runtime" not in result.stdout  # the traceback starts in the boefje's own code
    assert "raiser on Hostname|internet|example.com: FAILED" in result.stdout


def test_the_output_cap_applies_as_in_the_pool(plugins):
    result = run_boefje(plugins, "big", "x", "--max-output-size", "1")

    assert result.returncode == ExitCode.BOEFJE_FAILED
    assert "boefje output too large" in result.stdout


def test_an_unknown_boefje_id_is_one_line_naming_it_and_the_known_ones(plugins):
    result = run_boefje(plugins, "nmap", "IPAddressV4|internet|192.0.2.1")

    assert result.returncode == ExitCode.BOEFJE_NOT_FOUND
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "no boefje with id 'nmap'" in line and "big, greeter, raiser" in line


@pytest.mark.parametrize(("option", "reason"), [
    (("--arguments", "[1]"), "must be a JSON object"),
    (("--arguments", "{"), "not valid JSON"),
    (("--env", "NOVALUE"), "is not NAME=VALUE"),
])
def test_bad_options_are_usage_errors(plugins, option, reason):
    result = run_boefje(plugins, "greeter", "x", *option)

    assert result.returncode == ExitCode.USAGE
    assert reason in result.stderr


def test_pdb_opens_the_debugger_in_the_boefjes_frame(plugins):
    # given: commands typed into pdb: show a local of the boefje's frame, then continue
    result = run_boefje(plugins, "raiser", "Hostname|internet|example.com", "--pdb", input="p answer + 1\nc\n")

    assert result.returncode == ExitCode.BOEFJE_FAILED
    assert re.search(r"raiser/main\.py\(\d+\)run\(\)", result.stdout)
    assert "(Pdb) 42" in result.stdout
    assert "ValueError: cannot scan" in result.stdout  # the run still ends as a failed task


def test_the_plain_command_still_takes_an_input_url_and_flags():
    # `run` is dispatched on the first word only: INPUT_URL and worker-mode flags are unchanged
    assert run_cli("not-a-url").returncode == ExitCode.USAGE
    assert "is not an http(s) URL" in run_cli("not-a-url").stderr
    assert "worker mode (no INPUT_URL) needs" in run_cli("-p", "x").stderr
    help_text = " ".join(run_cli("--help").stdout.split())
    assert "boefje-worker run --help" in help_text


def test_run_help_documents_the_exit_codes():
    result = run_cli("run", "--help")

    assert result.returncode == 0
    assert result.stdout.startswith("Usage: boefje-worker run [OPTIONS] BOEFJE_ID [INPUT_OOI]")
    assert "7 when it failed" in " ".join(result.stdout.split())

