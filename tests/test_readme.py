"""The README is the front door: its commands and its settings table must match the code."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

from boefje_runtime.config import SETTINGS

from .helpers import ROOT

README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    """The first ``sh`` block of the README: the two commands a new user runs."""
    return README.split("```sh\n", 1)[1].split("```", 1)[0].strip().splitlines()


def settings_table() -> dict[str, dict[str, str]]:
    """The README's configuration table, one dict of cells per env var."""
    lines = README[README.index("| flag | env var |"):].splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (cell.strip() for cell in line.strip().strip("|").split(" | ")), strict=True))
        rows[cells["env var"].strip("`")] = cells
    return rows


def test_readme_starts_with_the_two_commands():
    assert readme_commands() == ["make demo", "make test"]


def test_the_ci_script_runs_the_readme_test_command(tmp_path):
    """CI must run exactly what the README tells a user to run to test. Checked by running .ci/run
    (in a copy of its folder) with a ``make`` that only records its arguments: however the script
    reaches make (a loop, a function, a ``timeout`` wrapper), a comment or an echo does not count."""
    program, *arguments = shlex.split(next(command for command in readme_commands() if "test" in command))
    assert program == "make"
    shutil.copytree(ROOT / ".ci", tmp_path / ".ci")
    fake_bin, calls = tmp_path / "bin", tmp_path / "make-calls"
    fake_bin.mkdir()
    (fake_bin / "make").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{calls}"\n')
    (fake_bin / "make").chmod(0o755)
    environ = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(["bash", str(tmp_path / ".ci" / "run")], cwd=tmp_path, env=environ, capture_output=True,
                   text=True, timeout=120)  # its exit code says which Pythons this machine has: not ours to judge
    made = [line.split() for line in calls.read_text().splitlines()] if calls.exists() else []
    assert any(words[: len(arguments)] == arguments for words in made), made


def test_every_setting_is_in_the_configuration_table():
    table = settings_table()
    assert set(table) == {setting.env for setting in SETTINGS}
    for setting in SETTINGS:
        flags = re.findall(r"`([^`]+)`", table[setting.env]["flag"])
        assert flags == list(setting.flags), setting.env


def test_the_mode_column_matches_the_settings_table_in_code():
    table = settings_table()
    for setting in SETTINGS:
        assert table[setting.env]["mode"] == setting.mode.value, setting.env
