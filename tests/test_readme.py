"""The README is the front door: its commands and its settings table must match the code."""

from __future__ import annotations

from boefje_runtime.config import SETTINGS

from .helpers import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert first_block == ["make demo", "make test"]


def test_the_ci_script_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_every_setting_is_in_the_configuration_table():
    for setting in SETTINGS:
        assert f"`{setting.env}`" in README, setting.env
        for flag in setting.flags:
            assert f"`{flag}`" in README, flag
