"""Importing a boefje's ``main.py`` the way OpenKAT's images do, and finding its ``run``.

Kept apart from discovery (:mod:`boefje_runtime.plugins`) because this is the one place that
touches ``sys.path`` and ``sys.modules``: the plugin root goes first on ``sys.path`` and ``main.py``
is imported by its dotted package path, so a boefje's absolute imports of its siblings work as in
production. When that name is not importable or is taken by another tree's package, ``main.py``
is imported under a unique synthetic package instead, so its relative imports still work.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import keyword
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import PluginError

RunFunction = Callable[[dict], Any]


def import_run(main_py: Path, root: Path) -> RunFunction:
    """Import ``main.py`` as OpenKAT's images do (root on sys.path, dotted package path), else by file."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # first, like PYTHONPATH=/app/boefje:/app in OpenKAT's images
    importlib.invalidate_caches()
    parts = main_py.relative_to(root).with_suffix("").parts
    name = ".".join(parts)
    importable = all(part.isidentifier() and not keyword.iskeyword(part) for part in parts)
    if not importable or _shadowed(name, main_py, root):
        return check_run(_import_by_location(main_py), main_py.name)
    try:
        module = importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        if _shadowed(name, main_py, root):  # another tree's package of the same name answered
            return check_run(_import_by_location(main_py), main_py.name)
        raise PluginError(f"cannot import {name}: {type(exc).__name__}: {exc}") from exc
    if not _same_file(getattr(module, "__file__", None), main_py):
        module = _import_by_location(main_py)
    return check_run(module, main_py.name)


def check_run(obj: Any, where: str) -> RunFunction:
    """``run`` itself when given a callable, else the module's ``run``; it must take one argument."""
    run = obj if callable(obj) and not inspect.ismodule(obj) else getattr(obj, "run", None)
    if run is None:
        raise PluginError(f"{where} defines no run(boefje_meta)")
    if not callable(run):
        raise PluginError(f"{where}: run must be callable, got {type(run).__name__}")
    try:
        signature = inspect.signature(run)
    except (TypeError, ValueError):
        return run  # builtins and some C callables have no signature to check
    try:
        signature.bind(None)
    except TypeError:
        raise PluginError(f"{where}: run{signature} cannot be called with one argument (boefje_meta)") from None
    return run


def _shadowed(name: str, main_py: Path, root: Path) -> bool:
    """Whether a module already imported under one of ``name``'s prefixes comes from elsewhere."""
    parts = name.split(".")
    for depth in range(1, len(parts)):
        package = sys.modules.get(".".join(parts[:depth]))
        if package is None:
            return False
        where = root.joinpath(*parts[:depth])
        if not any(_same_file(entry, where) for entry in getattr(package, "__path__", None) or []):
            return True
    module = sys.modules.get(name)
    return module is not None and not _same_file(getattr(module, "__file__", None), main_py)


def _same_file(a: str | os.PathLike | None, b: Path) -> bool:
    return a is not None and os.path.realpath(a) == os.path.realpath(b)


def _import_by_location(main_py: Path) -> Any:
    """Last resort: main.py as ``<synthetic package>.main``, so its relative imports still work."""
    package = "_boefje_runtime_plugin_" + hashlib.sha256(str(main_py).encode()).hexdigest()[:16]
    if package not in sys.modules:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = [str(main_py.parent)]
        sys.modules[package] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module(f"{package}.main")
    except (Exception, SystemExit) as exc:
        raise PluginError(f"cannot import {main_py.name}: {type(exc).__name__}: {exc}") from exc
