"""``boefje-worker run BOEFJE_ID INPUT_OOI``: run one boefje here and now, no Boefje API involved.

The work is :func:`boefje_runtime.local_run.run_local` (the same execution path as a real task);
this module only parses the command line, prints the output files and picks the exit code.
``boefje-worker`` hands its arguments here when the first one is ``run`` (see ``main.main``): an
INPUT_URL is always an http(s) URL, so the word cannot be mistaken for one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from boefje_runtime.config import MIB, SETTINGS_BY_NAME, Setting
from boefje_runtime.exit_codes import ExitCode
from boefje_runtime.logs import configure_logging

PROG_NAME = "boefje-worker run"


def _setting_option(setting: Setting, **extra: Any) -> Any:
    """A click option for a row of the settings table: same flag, env var, parser and help as the
    worker's, so ``PLUGIN_DIR`` or ``MAX_OUTPUT_SIZE`` mean the same here as in the pool."""

    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            return setting.parser(setting.default if value is None else value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return click.option(*setting.flags, setting.name, envvar=setting.env, show_envvar=True, default=None,
                        show_default=setting.default_text, help=setting.help, callback=parse, **extra)


def _parse_arguments(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        arguments = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", ctx=ctx, param=param) from None
    if not isinstance(arguments, dict):
        raise click.BadParameter("must be a JSON object", ctx=ctx, param=param)
    return arguments


def _parse_env(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    from boefje_runtime.local_run import parse_env_pairs

    try:
        return parse_env_pairs(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command(PROG_NAME, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("boefje_id")
@click.argument("input_ooi", required=False)
@_setting_option(SETTINGS_BY_NAME["plugin_dir"], metavar="DIR")
@click.option("-e", "--env", "environment", multiple=True, metavar="NAME=VALUE", callback=_parse_env,
              help="Set for the boefje's call only, like the task's environment (the organisation's "
                   "settings for the boefje). Repeatable.")
@click.option("--arguments", metavar="JSON", callback=_parse_arguments,
              help="The task's arguments, a JSON object (OpenKAT puts the input object in arguments.input).")
@click.option("--organisation", "--organization", default="local", show_default=True,
              help="The organisation the task is for.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write each output file to DIR/<name> and the list of files with their tags to "
                   "DIR/output.json, instead of printing the content.")
@click.option("--pdb", "debug", is_flag=True,
              help="Open the Python debugger (pdb) post-mortem where the boefje raised.")
@_setting_option(SETTINGS_BY_NAME["max_output_size"], metavar="MIB")
@click.option("-l", "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="WARNING", show_default=True, help="Log level of the runtime's own lines (on stderr).")
def run_command(boefje_id: str, input_ooi: str | None, plugin_dir: str, environment: dict[str, str],
                arguments: dict[str, Any], organisation: str, out_dir: Path | None, debug: bool,
                max_output_size: float, log_level: str) -> None:
    """Run boefje BOEFJE_ID on INPUT_OOI (e.g. 'IPAddressV4|internet|192.0.2.1') once, here, and
    print its output files. No Boefje API is needed.

    The boefje is found under --plugin-dir by its boefje.json id, and run exactly as a worker
    runs a task: the environment set for the call only, the same tag rules and output cap, an
    exception saved as an error/boefje file with the traceback.

    Exit code: 0 when the boefje completed, 7 when it failed (its traceback is printed), 5 when
    no boefje has that id, 2 for a bad option.
    """
    from boefje_runtime.errors import BoefjeNotFound, ParseError, PluginError
    from boefje_runtime.local_run import run_local

    configure_logging(log_level.upper())
    try:
        result = run_local(boefje_id, input_ooi, plugin_dir=plugin_dir, organisation=organisation,
                           arguments=arguments, environment=environment,
                           max_output_bytes=int(max_output_size * MIB), on_exception=_post_mortem if debug else None)
    except (BoefjeNotFound, PluginError) as exc:
        click.echo(f"{PROG_NAME}: {_one_line(str(exc))}", err=True)
        sys.exit(int(ExitCode.BOEFJE_NOT_FOUND))
    except ParseError as exc:
        click.echo(f"{PROG_NAME}: invalid task: {_one_line(str(exc))}", err=True)
        sys.exit(int(ExitCode.USAGE))
    _print_result(result, boefje_id, input_ooi, out_dir)
    sys.exit(int(ExitCode.BOEFJE_FAILED if result.failed else ExitCode.OK))


def _print_result(result: Any, boefje_id: str, input_ooi: str | None, out_dir: Path | None) -> None:
    import base64

    from boefje_runtime.file_view import file_lines

    files = [(item.name, item.tags or [], base64.b64decode(item.content)) for item in result.output.files]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, _, content in files:
            (out_dir / name).write_bytes(content)
        listing = {"status": result.output.status.value,
                   "files": [{"name": name, "tags": tags, "size": len(content)} for name, tags, content in files]}
        (out_dir / "output.json").write_text(json.dumps(listing, indent=2) + "\n")
    for name, tags, content in files:
        saved = str(out_dir / name) if out_dir is not None else None
        click.echo("\n".join(file_lines(name, tags, content, saved_to=saved)))
    count = f"{len(files)} file" + ("" if len(files) == 1 else "s")
    on = f" on {input_ooi}" if input_ooi is not None else ""
    click.echo(f"{boefje_id}{on}: {result.output.status.value} in {result.duration:.3f} s, {count}")


def _post_mortem(exc: BaseException) -> None:
    import pdb

    click.echo(f"--pdb: the boefje raised {type(exc).__name__}: {exc}; entering the debugger "
               "(c to continue, q to quit)", err=True)
    pdb.post_mortem(exc.__traceback__)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> None:
    """``boefje-worker run ...`` (``argv`` without the word ``run``)."""
    run_command.main(args=argv, prog_name=PROG_NAME)
