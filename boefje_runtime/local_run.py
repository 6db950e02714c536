"""Running one boefje on one input object on this machine, with no Boefje API: the author's loop.

``boefje-worker run BOEFJE_ID INPUT_OOI`` is built on :func:`run_local`. It builds the task's
``data`` the way the scheduler would, finds the boefje the way a worker does
(:meth:`BoefjeRegistry.find`: by id, else by ``oci_image``) and runs it through
:func:`boefje_runtime.execution.execute`, the very function the pool and one-shot mode call. So
the environment is set for the call only, tags follow the same rules, the output cap applies and
an exception becomes an ``error/boefje`` file: what passes here passes in the pool.

Debugging (``--pdb``) hooks in by wrapping the boefje's ``run`` (and its import), not by changing
:func:`execute`: the wrapper hands the exception to a callback before it propagates, so the
debugger opens in the boefje's own frame, with the task's environment still set.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import PluginError
from .execution import DEFAULT_MAX_OUTPUT_BYTES, ExecutionResult, execute
from .logs import log_context, secret_values
from .models import BoefjeMeta
from .plugins import Boefje, BoefjeRegistry

logger = logging.getLogger("boefje_runtime.local_run")

#: The organisation a local run is for, unless told otherwise.
LOCAL_ORGANISATION = "local"

OnException = Callable[[BaseException], None]


def boefje_meta(boefje: Boefje, input_ooi: str | None, *, organisation: str = LOCAL_ORGANISATION,
                arguments: Mapping[str, Any] | None = None, environment: Mapping[str, str] | None = None,
                task_id: str | None = None) -> dict[str, Any]:
    """The ``data`` of a task for ``boefje`` as the scheduler would send it (checked like a real one).

    The version and image come from the boefje's own ``boefje.json``, so the default tags are
    the ones production gives. Raises :class:`~boefje_runtime.errors.ParseError` for values a real
    task could not carry (e.g. an environment value that is not a string).
    """
    task_id = task_id or str(uuid.uuid4())
    data = {
        "id": task_id,
        "boefje": {"id": boefje.id, "version": boefje.version, "oci_image": boefje.oci_image},
        "input_ooi": input_ooi,
        "arguments": dict(arguments or {}),
        "organization": organisation,
        "runnable_hash": None,
        "environment": dict(environment) if environment else None,
        "started_at": None,
        "ended_at": None,
    }
    BoefjeMeta.from_dict(data)  # the same checks a popped task's data gets
    return data


def run_local(boefje_id: str, input_ooi: str | None, *, plugin_dir: str | Path = ".",
              registry: BoefjeRegistry | None = None, organisation: str = LOCAL_ORGANISATION,
              arguments: Mapping[str, Any] | None = None, environment: Mapping[str, str] | None = None,
              max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
              on_exception: OnException | None = None) -> ExecutionResult:
    """Run boefje ``boefje_id`` on ``input_ooi`` and return what a worker would post.

    Raises :class:`~boefje_runtime.errors.BoefjeNotFound` (no such id) or
    :class:`~boefje_runtime.errors.PluginError` (its ``boefje.json`` is broken) before anything
    runs, and :class:`~boefje_runtime.errors.ParseError` for arguments a task could not carry.
    Whatever the boefje does is in the result, as for a real task. ``on_exception`` is called
    with the boefje's exception (or its import error) in the boefje's context, e.g. to debug it.
    """
    if registry is None:
        registry = BoefjeRegistry.discover(plugin_dir)
    boefje = registry.find(boefje_id)
    data = boefje_meta(boefje, input_ooi, organisation=organisation, arguments=arguments, environment=environment)
    if on_exception is not None:
        boefje = _reporting(boefje, on_exception)
    secrets = list((environment or {}).values())
    with log_context(task_id=data["id"], boefje_id=boefje.id, organisation=organisation), secret_values(secrets):
        return execute(boefje, data, max_output_bytes=max_output_bytes)


def _reporting(boefje: Boefje, on_exception: OnException) -> Boefje:
    """A copy of ``boefje`` whose import error and ``run`` exceptions go to ``on_exception`` first."""

    def load() -> Callable[[dict], Any]:
        try:
            run = boefje.load()
        except PluginError as exc:
            if exc.__cause__ is not None:
                on_exception(exc.__cause__)
            raise
        return _reporting_run(run, on_exception)

    return Boefje(boefje.id, name=boefje.name, version=boefje.version, oci_image=boefje.oci_image,
                  path=boefje.path, loader=load)


def _reporting_run(run: Callable[[dict], Any], on_exception: OnException) -> Callable[[dict], Any]:
    def reporting(meta: dict) -> Any:
        try:
            result = run(meta)
        except (Exception, SystemExit) as exc:
            on_exception(exc)
            raise
        # A generator boefje runs its code while execute() iterates it: report from there too.
        return _reporting_iter(result, on_exception) if isinstance(result, Iterator) else result

    return reporting


def _reporting_iter(items: Iterator[Any], on_exception: OnException) -> Iterator[Any]:
    try:
        yield from items
    except (Exception, SystemExit) as exc:
        on_exception(exc)
        raise


def parse_env_pairs(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["K=V", ...]`` as a dict; ValueError naming the first pair without a name or ``=``."""
    environment: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{pair!r} is not NAME=VALUE")
        environment[name] = value
    return environment


__all__ = ["LOCAL_ORGANISATION", "boefje_meta", "parse_env_pairs", "run_local"]
