"""The real ``boefje-worker`` command, run as a subprocess: help, usage errors, import cost."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from boefje_runtime.config import SETTINGS
from boefje_runtime.exit_codes import ExitCode

from .helpers import cli_env, run_cli


@pytest.fixture(scope="module")
def help_text() -> str:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    # click wraps long lines; join them so "[env var: X]" is never split over two lines.
    return " ".join(result.stdout.split())


# -- help ---------------------------------------------------------------------------------------


def test_help_has_the_usage_line(help_text):
    assert help_text.startswith("Usage: boefje-worker [OPTIONS] [INPUT_URL]")


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_help_lists_every_setting_with_its_env_var(help_text, setting):
    for flag in setting.flags:
        assert flag in help_text
    assert f"env var: {setting.env}" in help_text


def test_help_shows_the_seed_options(help_text):
    assert "-p, --plugins" in help_text
    assert "-l, --log-level [DEBUG|INFO|WARNING|ERROR]" in help_text
    assert "--deduplicate / --no-deduplicate" in help_text
    assert "default: 30" in help_text  # OUTGOING_REQUEST_TIMEOUT


def test_entry_point_is_the_same_command():
    from boefje_runtime_cli.main import cli, main

    assert cli.name == "boefje-worker"
    assert callable(main)


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("boefje-worker, version ")


# -- usage errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ([], {"DEDUPLICATE": "maybe"}, "--deduplicate"),
        ([], {"POOL_SIZE": "0"}, "--pool-size"),
        (["--pool-size", "many"], {}, "--pool-size"),
        (["--poll-interval", "-1"], {}, "--poll-interval"),
        (["--log-level", "TRACE"], {}, "--log-level"),
        ([], {"LOGGING_FORMAT": "xml"}, "--logging-format"),
        ([], {"BOEFJES_API": "boefje:8000"}, "--boefjes-api"),
        ([], {"BURST": "sometimes"}, "--burst"),
        ([], {"HEALTH_PORT": "99999"}, "--health-port"),
        (["ftp://boefje/api/v0/tasks/1"], {}, "INPUT_URL"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(args, env, named):
    result = run_cli(*args, env=env)
    assert result.returncode == ExitCode.USAGE == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_header_is_a_usage_error_without_the_value():
    result = run_cli(env={"BOEFJES_API_HEADERS": "s3cr3t-token-without-name"})
    assert result.returncode == 2
    assert "--api-header" in result.stderr
    assert "s3cr3t" not in result.stderr


@pytest.mark.parametrize(
    ("env", "missing", "present"),
    [
        ({}, ["BOEFJES_API", "OCI_IMAGE"], []),
        ({"OCI_IMAGE": "img"}, ["BOEFJES_API"], ["OCI_IMAGE"]),
        ({"BOEFJES_API": "http://127.0.0.1:9"}, ["OCI_IMAGE"], ["BOEFJES_API"]),
    ],
)
def test_worker_mode_without_api_or_image_is_a_usage_error(env, missing, present):
    result = run_cli(env=env)
    assert result.returncode == 2
    for name in missing:
        assert name in result.stderr
    for name in present:
        assert name not in result.stderr


def test_flag_wins_over_env_var_for_the_worker_mode_check():
    # The env var is invalid, but the flag replaces it: the only complaint left is OCI_IMAGE.
    result = run_cli("--boefjes-api", "http://127.0.0.1:9", env={"BOEFJES_API": "not a url"})
    assert result.returncode == 2
    assert "OCI_IMAGE" in result.stderr
    assert "not a url" not in result.stderr


# -- worker mode --------------------------------------------------------------------------------


def test_worker_mode_logs_the_seed_start_up_lines_and_flags_win(tmp_path):
    from boefje_runtime.testing import BoefjeAPIServer

    with BoefjeAPIServer() as api:
        result = run_cli(
            "--burst", "-p", "nmap-udp", "-p", "nmap-tcp,dns", "--plugin-dir", str(tmp_path),
            env={"BOEFJES_API": api.url, "OCI_IMAGE": "ghcr.io/minvws/openkat/nmap:latest", "PLUGINS": "ignored",
                 "POLL_INTERVAL": "0.1", "SHUTDOWN_TIMEOUT": "5"},
        )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert re.match(r"^\S+ \[info\] Starting runtime$", lines[0])
    assert lines[1].endswith(
        f"[info] Configured BoefjeAPI [base_url={api.url}, outgoing_request_timeout=30, "
        "images=['ghcr.io/minvws/openkat/nmap:latest'], plugins=['nmap-udp', 'nmap-tcp', 'dns']]"
    )


# -- import cost --------------------------------------------------------------------------------


def imported_modules(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "boefje_runtime_cli", *args],
        capture_output=True, text=True, timeout=60,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {match.group(1).strip() for match in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(.+)$",
                                                            result.stderr, re.MULTILINE)}


def test_help_imports_neither_the_pool_nor_requests():
    modules = imported_modules("--help")
    assert "boefje_runtime_cli.main" in modules  # the parse is right: we do see our own module
    assert not any(name == "boefje_runtime.pool" or name.startswith("boefje_runtime.pool.") for name in modules)
    assert "requests" not in modules
    assert "pythonjsonlogger" not in modules
    assert "boefje_runtime.oneshot" not in modules
