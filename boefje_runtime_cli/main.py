"""The ``boefje-worker`` command: argv and environment to a ``RuntimeConfig``, then the library.

Thin on purpose. Every option is generated from :data:`boefje_runtime.config.SETTINGS` (flag,
env var, default, help, parser), so the CLI and ``RuntimeConfig.from_env`` cannot disagree.
A bad value from a flag or an env var is a click usage error naming the option (exit 2).

Import time matters (``--help`` and every one-shot run pay it): the pool, the HTTP client and
``requests`` are imported inside the function of the mode that needs them. A one-shot run ends the
process with ``exit_now`` (no ``SystemExit``, no interpreter teardown): a program that embeds
one-shot calls :func:`boefje_runtime.oneshot.run_oneshot`, not :func:`main`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any
from urllib.parse import urlsplit

import click
from click.core import ParameterSource

from boefje_runtime.config import SETTINGS, Mode, RuntimeConfig, Setting, spelling_hint
from boefje_runtime.errors import ConfigError
from boefje_runtime.logs import configure_logging

PROG_NAME = "boefje-worker"

logger = logging.getLogger("boefje_runtime.cli")


class _RawText(click.ParamType):
    """Passes the text through untouched: the settings table's parser does the work (in
    :func:`_parse_callback`), so a flag and an env var are parsed by the same function."""

    name = "text"

    def split_envvar_value(self, rv: str) -> list[str]:
        # Lists in env vars are comma-separated (PLUGINS=a,b); the table's parser splits them,
        # not click (which would split on whitespace).
        return [rv]


class _TableBool(click.types.BoolParamType):
    """``--x/--no-x`` whose env var is read by the table's parser (``DEDUPLICATE=false`` is false;
    ``DEDUPLICATE=maybe`` is a usage error)."""

    def __init__(self, setting: Setting) -> None:
        self.setting = setting

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.setting.parser(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _parse_callback(setting: Setting):
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or value == ():
            return setting.default
        try:
            return setting.parser(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


def _option(setting: Setting) -> click.Option:
    """The click option for one row of the settings table."""
    help_text = f"{setting.help} [{setting.mode.label}]"
    common: dict[str, Any] = {"envvar": setting.env, "show_envvar": True, "help": help_text}
    if setting.boolean:
        long_flag = setting.flag
        decls = [f"{long_flag}/--no-{long_flag[2:]}", setting.name]
        return click.Option(decls, type=_TableBool(setting), default=setting.default, show_default=True, **common)
    # The default is given as the text a user would type ("10", "off"): --help shows it, and the
    # callback parses it like any other value, to the table's typed default.
    default = None if setting.multiple else setting.default_text
    return click.Option(
        [*setting.flags, setting.name],
        type=_RawText(),
        multiple=setting.multiple,
        default=default,
        metavar=setting.metavar,
        show_default=default is not None,
        callback=_parse_callback(setting),
        **common,
    )


def _check_input_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r} is not an http(s) URL", ctx=ctx, param=param)
    return value


def _run(input_url: str | None, **values: Any) -> None:
    """Run a boefje for INPUT_URL (one-shot), or without it start a worker pool (worker mode).

    One-shot: GET the task at INPUT_URL, run its boefje and POST the output; exit 0 once the output
    is delivered. Worker mode: poll BOEFJES_API for tasks of OCI_IMAGE until SIGTERM/SIGINT.
    Each option says whether it applies to one-shot, worker mode or both; a flag given for the
    other mode is ignored with a warning.

    To run a boefje on an input object without any API: boefje-worker run --help.
    """
    try:
        config = RuntimeConfig(**values)
    except ConfigError as exc:  # the callbacks already parsed each value; this is a safety net
        raise click.UsageError(str(exc)) from None
    if input_url is None:
        missing = config.missing_for_worker_mode()
        if missing:
            names = " and ".join(f"{setting.env} (or {setting.flag})" for setting in missing)
            raise click.UsageError(f"worker mode (no INPUT_URL) needs {names}{spelling_hint(missing)}")
    if config.span_export_grpc_endpoint:  # fail now, in either mode, when the extra is missing
        from boefje_runtime.tracing import tracing_for

        try:
            tracing_for(config.span_export_grpc_endpoint)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    configure_logging(config.log_level, config.logging_format)
    # The API header values are masked by run_oneshot and run_worker_mode themselves (they are
    # documented for embedding); nothing logged before them shows a header.
    _warn_about_flags_of_the_other_mode(Mode.ONE_SHOT if input_url is not None else Mode.WORKER)
    if input_url is not None:
        from boefje_runtime.oneshot import run_oneshot
        from boefje_runtime.process_exit import exit_now

        code = int(run_oneshot(input_url, config))
        # The task is closed and its lines are written: skip the interpreter's teardown of every
        # module we imported (requests above all), which costs more CPU than the task's own HTTP.
        # Nothing is left for it to do: run_oneshot closed its clients, its trace and its child.
        logging.shutdown()
        exit_now(code)

    from boefje_runtime.worker_mode import run_worker_mode

    try:
        sys.exit(int(run_worker_mode(config)))
    except ConfigError as exc:  # e.g. the health port is taken
        raise click.UsageError(str(exc)) from None


def _warn_about_flags_of_the_other_mode(mode: Mode) -> None:
    """One line naming the flags given on the command line that this mode ignores.

    Flags only: an image's environment (``ENV POOL_SIZE=4``) serves both of its modes, so env vars
    of the other mode are expected and not worth a word.
    """
    ctx = click.get_current_context()
    ignored = [
        setting.flag for setting in SETTINGS
        if not setting.mode.applies_to(mode) and ctx.get_parameter_source(setting.name) is ParameterSource.COMMANDLINE
    ]
    if ignored:
        other = "worker mode" if mode is Mode.ONE_SHOT else "one-shot mode (an INPUT_URL)"
        this = "one-shot" if mode is Mode.ONE_SHOT else "worker mode"
        logger.warning("Ignoring %s: only for %s, and this is %s", ", ".join(ignored), other, this)


def build_command() -> click.Command:
    """The click command, options generated from the settings table."""
    params: list[click.Parameter] = [
        click.Argument(["input_url"], required=False, callback=_check_input_url),
        *(_option(setting) for setting in SETTINGS),
    ]
    command = click.Command(
        PROG_NAME,
        callback=_run,
        params=params,
        help=_run.__doc__,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    )
    return click.version_option(package_name="boefje-runtime", prog_name=PROG_NAME)(command)


cli = build_command()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``boefje-worker``) and ``python -m boefje_runtime_cli``."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["run"]:  # `boefje-worker run ...`: never an INPUT_URL, which must be http(s)
        from .run import main as run_main

        return run_main(args[1:])
    cli.main(args=args, prog_name=PROG_NAME)
