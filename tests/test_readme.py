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


_KEYWORDS = frozenset({"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}"})


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script as word lists: comments dropped (a ``#`` inside
    quotes or ``${#...}`` is not one), split at ``;``, ``&&``, ``||``, ``|``, ``(`` and ``)``."""
    commands: list[list[str]] = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError:  # a quote spanning lines: not a command line worth reading here
            continue
        current: list[str] = []
        for word in words:
            if word and set(word) <= set(";&|()"):
                commands.append(current)
                current = []
            elif current or word not in _KEYWORDS:  # "if make test; then ..." runs make test
                current.append(word)
        commands.append(current)
    return [command for command in commands if command]


def test_the_ci_script_runs_the_readme_test_command():
    """CI must run exactly what the README tells a user to run to test: a command of .ci/run (not
    a comment, not an echo) that invokes the README's test command, possibly through a wrapper
    such as ``timeout ... make test ...``."""
    test_command = shlex.split(next(command for command in readme_commands() if "test" in command))
    runs = []
    for command in shell_commands((ROOT / ".ci" / "run").read_text()):
        if command[0] in ("echo", "printf"):
            continue
        if any(command[i:i + len(test_command)] == test_command for i in range(len(command))):
            runs.append(command)
    assert runs, f"no command of .ci/run runs {' '.join(test_command)!r}"


def test_shell_commands_skip_comments_and_echoes():
    script = 'echo "make test"  # make test\n# make test\nif timeout 20m make test VENV=x; then echo "${#a[@]}"; fi\n'
    commands = shell_commands(script)
    assert ["timeout", "20m", "make", "test", "VENV=x"] in commands
    assert ["echo", "make test"] in commands and not any(c[:2] == ["make", "test"] for c in commands)


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
