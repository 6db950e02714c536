"""The README is the front door: its commands and its settings table must match the code."""

from __future__ import annotations

import re
import shlex

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


def test_the_ci_script_runs_the_readme_test_command():
    """CI must run exactly what the README tells a user to run to test: a command line of .ci/run
    (not a comment, not an echo) that invokes the README's test command."""
    test_command = shlex.split(next(command for command in readme_commands() if "test" in command))
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    runs = []
    for line in ci_lines:
        code = line.split("#", 1)[0].strip()
        if not code or code.startswith(("echo ", "printf ")):
            continue
        words = shlex.split(code)
        if words[: len(test_command)] == test_command:
            runs.append(line)
    assert runs, f"no line of .ci/run runs {' '.join(test_command)!r}"


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
