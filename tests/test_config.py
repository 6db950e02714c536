"""RuntimeConfig and the settings table: parsing, defaults, precedence, and errors that name the setting."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from boefje_runtime.config import SETTINGS, SETTINGS_BY_NAME, RuntimeConfig, parse_bool, parse_headers
from boefje_runtime.errors import ConfigError

# -- the table ----------------------------------------------------------------------------------


def test_every_field_is_a_row_of_the_table_with_the_same_default():
    fields = {f.name: f for f in dataclasses.fields(RuntimeConfig)}
    assert list(fields) == [setting.name for setting in SETTINGS]
    default = RuntimeConfig()
    for setting in SETTINGS:
        assert getattr(default, setting.name) == setting.default, setting.name


def test_env_and_flag_names_are_alike_and_unique():
    envs = [setting.env for setting in SETTINGS]
    flags = [flag for setting in SETTINGS for flag in setting.flags]
    assert len(set(envs)) == len(envs)
    assert len(set(flags)) == len(flags)
    for setting in SETTINGS:
        if setting.name != "api_headers":  # --api-header is repeated once per header
            assert setting.flag == "--" + setting.env.lower().replace("_", "-"), setting.name
        assert setting.help, setting.name


def test_openkat_defaults_are_kept():
    config = RuntimeConfig()
    assert config.boefjes_api is None and config.oci_image is None
    assert config.plugins == ()
    assert config.log_level == "INFO"
    assert config.logging_format == "text"
    assert config.pool_size == 2
    assert config.poll_interval == 10.0
    assert config.worker_heartbeat == 1.0
    assert config.outgoing_request_timeout == 30.0
    assert config.queue == "boefje"
    assert config.deduplicate is True  # ours: OpenKAT reads its default "false" as true
    assert config.plugin_dir == "."
    assert config.max_output_bytes == 64 * 1024 * 1024
    assert config.allow_foreign_output is False
    assert config.task_timeout is None and config.max_tasks is None and config.health_port is None


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.default_text is not None], ids=lambda s: s.name)
def test_default_text_shown_in_help_parses_back_to_the_default(setting):
    assert setting.parse(setting.default_text) == setting.default


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
     ("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False), (" off ", False)],
)
def test_booleans_parse_properly(text, expected):
    assert parse_bool(text) is expected
    assert RuntimeConfig.from_env({"DEDUPLICATE": text}).deduplicate is expected


@pytest.mark.parametrize("text", ["maybe", "2", "t", "enabled", "nee"])
def test_an_unknown_boolean_is_an_error_not_true(text):
    with pytest.raises(ConfigError) as caught:
        RuntimeConfig.from_env({"DEDUPLICATE": text})
    message = str(caught.value)
    assert "DEDUPLICATE" in message and "--deduplicate" in message and repr(text) in message


def test_plugins_are_comma_separated_in_the_env_and_repeatable_as_flags():
    assert RuntimeConfig.from_env({"PLUGINS": "nmap-udp, nmap-tcp,,dns"}).plugins == ("nmap-udp", "nmap-tcp", "dns")
    assert RuntimeConfig(plugins=["a", "b,c", "a"]).plugins == ("a", "b", "c")
    assert RuntimeConfig(plugins="x").plugins == ("x",)


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ("POOL_SIZE", "pool_size", ("4", 4)),
        ("POLL_INTERVAL", "poll_interval", ("0.5", 0.5)),
        ("TASK_TIMEOUT", "task_timeout", ("90", 90.0)),
        ("TASK_TIMEOUT", "task_timeout", ("0", None)),
        ("TASK_TIMEOUT", "task_timeout", ("off", None)),
        ("MAX_TASKS_PER_CHILD", "max_tasks_per_child", ("100", 100)),
        ("MAX_MEMORY_PER_CHILD", "max_memory_per_child", ("512", 512.0)),
        ("MAX_TASKS", "max_tasks", ("none", None)),
        ("HEALTH_PORT", "health_port", ("8080", 8080)),
        ("HEALTH_PORT", "health_port", ("0", None)),
        ("LOG_LEVEL", "log_level", ("debug", "DEBUG")),
        ("LOGGING_FORMAT", "logging_format", ("JSON", "json")),
        ("BOEFJES_API", "boefjes_api", ("http://boefje:8000/", "http://boefje:8000")),
        ("SHUTDOWN_TIMEOUT", "shutdown_timeout", ("0", 0.0)),
        ("PREFETCH", "prefetch", ("2", 2)),
        ("MAX_OUTPUT_SIZE", "max_output_size", ("0.5", 0.5)),
        ("PLUGIN_DIR", "plugin_dir", ("/app/boefjes", "/app/boefjes")),
        ("QUEUE", "queue", ("boefje", "boefje")),
        ("FIRST_POLL_WAIT", "first_poll_wait", ("0.02", 0.02)),
    ],
)
def test_values_parse_from_the_environment(env, field, expected):
    text, value = expected
    assert getattr(RuntimeConfig.from_env({env: text}), field) == value


@pytest.mark.parametrize(
    ("env", "text"),
    [
        ("POOL_SIZE", "0"), ("POOL_SIZE", "two"), ("POOL_SIZE", "1.5"), ("POOL_SIZE", "257"),
        ("POLL_INTERVAL", "0"), ("POLL_INTERVAL", "-1"), ("POLL_INTERVAL", "nan"), ("FIRST_POLL_WAIT", "0"),
        ("WORKER_HEARTBEAT", "inf"), ("OUTGOING_REQUEST_TIMEOUT", "0"),
        ("TASK_TIMEOUT", "-5"), ("PREFETCH", "-1"), ("SHUTDOWN_TIMEOUT", "-1"),
        ("HEALTH_PORT", "70000"), ("HEALTH_PORT", "http"),
        ("LOG_LEVEL", "TRACE"), ("LOGGING_FORMAT", "xml"),
        ("BOEFJES_API", "boefje:8000"), ("BOEFJES_API", "ftp://boefje"), ("BOEFJES_API", "http://boefje:99999"),
        ("BURST", "sometimes"), ("ALLOW_FOREIGN_OUTPUT", "2"),
    ],
)
def test_bad_values_raise_config_error_naming_env_var_flag_and_value(env, text):
    setting = next(s for s in SETTINGS if s.env == env)
    with pytest.raises(ConfigError) as caught:
        RuntimeConfig.from_env({env: text})
    message = str(caught.value)
    assert env in message
    assert setting.flag in message
    assert repr(text) in message


def test_typed_values_are_checked_too():
    with pytest.raises(ConfigError, match="POOL_SIZE"):
        RuntimeConfig(pool_size=0)
    with pytest.raises(ConfigError, match="DEDUPLICATE"):
        RuntimeConfig(deduplicate="perhaps")
    assert RuntimeConfig(deduplicate="false").deduplicate is False
    assert RuntimeConfig(task_timeout=0).task_timeout is None


def test_empty_env_var_counts_as_unset():
    config = RuntimeConfig.from_env({"POOL_SIZE": "", "DEDUPLICATE": "", "BOEFJES_API": ""})
    assert config.pool_size == 2 and config.deduplicate is True and config.boefjes_api is None


def test_overrides_win_over_the_environment():
    environ = {"POOL_SIZE": "8", "PLUGINS": "a", "DEDUPLICATE": "true"}
    config = RuntimeConfig.from_env(environ, pool_size=3, deduplicate=False)
    assert config.pool_size == 3
    assert config.deduplicate is False
    assert config.plugins == ("a",)


def test_an_unknown_override_is_a_type_error():
    with pytest.raises(TypeError, match="pool_sise"):
        RuntimeConfig.from_env({}, pool_sise=3)


def test_from_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("OCI_IMAGE", "ghcr.io/minvws/openkat/nmap:latest")
    assert RuntimeConfig.from_env().oci_image == "ghcr.io/minvws/openkat/nmap:latest"


# -- headers (secret) ---------------------------------------------------------------------------


def test_headers_from_newlines_or_commas_keep_commas_inside_values():
    assert parse_headers("Authorization: Bearer abc\nX-Tenant: one") == {
        "Authorization": "Bearer abc", "X-Tenant": "one"}
    assert parse_headers("Authorization: Bearer a,b, X-Tenant: one") == {
        "Authorization": "Bearer a,b", "X-Tenant": "one"}
    assert parse_headers(["Authorization: Bearer x", "X-A: 1"]) == {"Authorization": "Bearer x", "X-A": "1"}
    config = RuntimeConfig.from_env({"BOEFJES_API_HEADERS": "Authorization: Token s3cr3t-value"})
    assert config.api_headers == {"Authorization": "Token s3cr3t-value"}


@pytest.mark.parametrize("text", ["s3cr3t-value", "Bad Name: s3cr3t-value", ": s3cr3t-value"])
def test_bad_headers_are_errors_that_do_not_show_the_value(text):
    with pytest.raises(ConfigError) as caught:
        RuntimeConfig.from_env({"BOEFJES_API_HEADERS": text})
    message = str(caught.value)
    assert "BOEFJES_API_HEADERS" in message and "--api-header" in message
    assert "s3cr3t" not in message


def test_describe_is_the_seed_line_and_hides_header_values():
    config = RuntimeConfig(
        boefjes_api="http://boefje:8000",
        oci_image="ghcr.io/minvws/openkat/nmap:latest",
        plugins=("nmap-udp",),
        api_headers={"Authorization": "Bearer s3cr3t-token"},
    )
    line = config.describe()
    assert line.startswith(
        "Configured BoefjeAPI [base_url=http://boefje:8000, outgoing_request_timeout=30, "
        "images=['ghcr.io/minvws/openkat/nmap:latest'], plugins=['nmap-udp']"
    )
    assert "Authorization" in line
    for text in (line, config.summary(), repr(config), str(config)):
        assert "s3cr3t" not in text


def test_describe_without_headers_is_exactly_the_seed_line():
    config = RuntimeConfig(boefjes_api="http://boefje:8000", oci_image="img", plugins=("a", "b"))
    assert config.describe() == (
        "Configured BoefjeAPI [base_url=http://boefje:8000, outgoing_request_timeout=30, "
        "images=['img'], plugins=['a', 'b']]"
    )


# -- worker mode and hand-over ------------------------------------------------------------------


def test_worker_mode_needs_boefjes_api_and_oci_image():
    with pytest.raises(ConfigError) as caught:
        RuntimeConfig().check_worker_mode()
    assert "BOEFJES_API" in str(caught.value) and "OCI_IMAGE" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        RuntimeConfig(boefjes_api="http://boefje:8000").check_worker_mode()
    assert "OCI_IMAGE" in str(caught.value) and "BOEFJES_API" not in str(caught.value)
    RuntimeConfig(boefjes_api="http://boefje:8000", oci_image="img").check_worker_mode()


def test_config_is_frozen_picklable_and_replaceable():
    config = RuntimeConfig(boefjes_api="http://boefje:8000", api_headers={"X-A": "value"})
    assert pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pool_size = 3  # type: ignore[misc]
    assert config.replace(pool_size="5").pool_size == 5
    with pytest.raises(ConfigError):
        config.replace(pool_size=0)


def test_default_headers_are_not_shared_between_instances():
    first, second = RuntimeConfig(), RuntimeConfig()
    assert first.api_headers == {} and first.api_headers is not second.api_headers
    assert SETTINGS_BY_NAME["api_headers"].default == {}
