"""Finding boefjes in OpenKAT's plugin layout, and registering plain callables.

Discovery only reads ``boefje.json`` files, so start-up stays cheap however big the tree; a
boefje's ``main.py`` is imported on first use, once per process (a warm worker must not pay an
import per task). One broken plugin never hides the others: it is logged, kept in
``registry.errors``, and a task asking for it fails with that message.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import keyword
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BoefjeNotFound, PluginError

logger = logging.getLogger("boefje_runtime.plugins")

DEFINITION_FILE = "boefje.json"
ENTRYPOINT = "main.py"
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules"})
_ID_GUESS = re.compile(r'"id"\s*:\s*"([^"\\]+)"')

RunFunction = Callable[[dict], Any]


@dataclass(frozen=True)
class PluginProblem:
    """A boefje package that cannot be used, and why."""

    path: Path | None
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(eq=False)
class Boefje:
    """One runnable boefje: its ``boefje.json`` metadata and a lazily imported ``run``."""

    id: str
    name: str | None = None
    version: str | None = None
    oci_image: str | None = None
    path: Path | None = None  # the package folder; None for a registered callable
    loader: Callable[[], RunFunction] | None = field(default=None, repr=False, kw_only=True)
    _run: RunFunction | None = field(default=None, init=False, repr=False)
    _error: PluginError | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def load(self) -> RunFunction:
        """Return ``run``, importing the code on the first call only; raises :class:`PluginError`.

        A failed import is remembered and re-raised, not retried: re-running a module that died
        half-way through its import on every task would only repeat its side effects.
        """
        with self._lock:
            if self._run is None and self._error is None:
                if self.loader is None:
                    self._error = PluginError(f"boefje {self.id!r} has no code to run")
                else:
                    try:
                        self._run = self.loader()
                    except PluginError as exc:
                        self._error = exc
                    except Exception as exc:  # a hand-made loader: still a PluginError for the caller
                        self._error = PluginError(f"boefje {self.id!r} cannot be loaded: {type(exc).__name__}: {exc}")
                        self._error.__cause__ = exc
            if self._error is not None:
                raise PluginError(str(self._error)) from self._error.__cause__
            assert self._run is not None
            return self._run

    @property
    def error(self) -> str | None:
        """Why loading failed, once it has; None otherwise."""
        return None if self._error is None else str(self._error)


class BoefjeRegistry:
    """The boefjes this process can run: discovered folders plus registered callables.

    Build one with :meth:`discover` (or ``BoefjeRegistry()`` and :meth:`register`), call
    :meth:`load_all` at worker start so import errors show at boot, and :meth:`find` per task.
    A Boefje holds its imported module: pass boefje ids between processes, not Boefje objects.
    """

    def __init__(self, *, root: str | Path | None = None) -> None:
        self.root = None if root is None else Path(root).absolute()
        self.errors: list[PluginProblem] = []
        self._discovered: dict[str, Boefje] = {}
        self._registered: dict[str, Boefje] = {}
        self._broken: dict[str, str] = {}  # boefje id (as far as it could be read) -> problem

    @classmethod
    def discover(cls, root: str | Path = ".") -> BoefjeRegistry:
        """Find every folder under ``root`` holding a ``boefje.json``; imports nothing yet."""
        registry = cls(root=root)
        top = Path(root).absolute()
        if not top.is_dir():
            logger.warning("Plugin folder %s is not a directory: no boefjes there", top)
        for folder in _walk(top):
            registry._add_folder(folder)
        logger.info("Found %d boefjes under %s (%d broken)", len(registry._discovered), top, len(registry.errors))
        return registry

    def register(self, boefje_id: str, func: RunFunction, *, version: str | None = None,
                 oci_image: str | None = None, name: str | None = None) -> Boefje:
        """Register a callable as boefje ``boefje_id``; it wins over a discovered folder with that id."""
        if not isinstance(boefje_id, str) or not boefje_id:
            raise PluginError(f"a boefje id must be a non-empty string, got {boefje_id!r}")
        if not callable(func):
            raise PluginError(f"boefje {boefje_id!r}: expected a callable, got {type(func).__name__}")
        _check_run(func, f"boefje {boefje_id!r}")
        boefje = Boefje(boefje_id, name=name, version=version, oci_image=oci_image, loader=lambda: func)
        self._registered[boefje_id] = boefje
        return boefje

    def boefje(self, boefje_id: str, **metadata: Any) -> Callable[[RunFunction], RunFunction]:
        """Decorator form of :meth:`register`: ``@registry.boefje("my-id")``."""
        def decorator(func: RunFunction) -> RunFunction:
            self.register(boefje_id, func, **metadata)
            return func
        return decorator

    def find(self, boefje_id: str, oci_image: str | None = None) -> Boefje:
        """The boefje with this id, else the one package built for ``oci_image``.

        Raises :class:`PluginError` when the id names a broken plugin (rather than quietly running
        another package of the image) and :class:`BoefjeNotFound` when nothing matches.
        """
        boefje = self._registered.get(boefje_id) or self._discovered.get(boefje_id)
        if boefje is not None:
            if boefje.error is not None:
                raise PluginError(boefje.error)
            return boefje
        if boefje_id in self._broken:
            raise PluginError(self._broken[boefje_id])
        everything = self.boefjes
        if oci_image:
            candidates = [b for b in everything.values() if b.oci_image == oci_image]
            if len(candidates) == 1:
                return candidates[0]
            if candidates:
                raise BoefjeNotFound(
                    f"no boefje with id {boefje_id!r}, and {len(candidates)} boefjes have oci_image {oci_image!r} "
                    f"({', '.join(b.id for b in candidates)}): cannot tell which one to run"
                )
        ids = sorted(everything)
        shown = ", ".join(ids[:20]) + (", ..." if len(ids) > 20 else "")
        image = f" nor with oci_image {oci_image!r}" if oci_image else ""
        broken = f"; {len(self.errors)} broken plugins were skipped (see the warnings)" if self.errors else ""
        raise BoefjeNotFound(
            f"no boefje with id {boefje_id!r}{image} in this image, which has {len(ids)} boefjes"
            f"{': ' + shown if ids else ''}{broken}"
        )

    def load_all(self) -> list[PluginProblem]:
        """Import every boefje now; returns the problems this found (also added to ``errors``)."""
        before = len(self.errors)
        for boefje in self.boefjes.values():
            with contextlib.suppress(PluginError):  # recorded and logged by the loader
                boefje.load()
        return self.errors[before:]

    @property
    def boefjes(self) -> dict[str, Boefje]:
        """Every usable boefje by id, registered callables over discovered folders."""
        return {**self._discovered, **self._registered}

    def __iter__(self) -> Iterator[Boefje]:
        return iter(sorted(self.boefjes.values(), key=lambda b: b.id))

    def __len__(self) -> int:
        return len(self.boefjes)

    def __contains__(self, boefje_id: object) -> bool:
        return boefje_id in self.boefjes

    def _problem(self, path: Path | None, message: str, boefje_id: str | None = None) -> None:
        self.errors.append(PluginProblem(path, message))
        logger.warning("Broken boefje at %s: %s", path, message)
        if boefje_id and boefje_id not in self._broken:
            self._broken[boefje_id] = f"boefje {boefje_id!r} at {path} is broken: {message}"

    def _add_folder(self, folder: Path) -> None:
        text = ""
        try:
            text = (folder / DEFINITION_FILE).read_text(encoding="utf-8")
            meta = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            guess = _ID_GUESS.search(text)
            self._problem(folder, f"cannot read {DEFINITION_FILE}: {exc}", guess.group(1) if guess else None)
            return
        try:
            boefje = _boefje_from_json(meta, folder)
        except ValueError as exc:
            self._problem(folder, str(exc), meta.get("id") if isinstance(meta, dict) else None)
            return
        if not (folder / ENTRYPOINT).is_file():
            self._problem(folder, f"no {ENTRYPOINT} next to {DEFINITION_FILE}", boefje.id)
        elif boefje.id in self._discovered:
            self._problem(folder, f"duplicate boefje id {boefje.id!r}, ignored: first found at "
                          f"{self._discovered[boefje.id].path}")
        else:
            boefje.loader = lambda: self._import(boefje)
            self._discovered[boefje.id] = boefje

    def _import(self, boefje: Boefje) -> RunFunction:
        assert boefje.path is not None and self.root is not None
        try:
            return _import_run(boefje.path / ENTRYPOINT, self.root)
        except PluginError as exc:
            self._problem(boefje.path, str(exc))
            raise PluginError(f"boefje {boefje.id!r} at {boefje.path} is broken: {exc}") from exc.__cause__


def _boefje_from_json(meta: Any, folder: Path) -> Boefje:
    if not isinstance(meta, dict):
        raise ValueError(f"{DEFINITION_FILE} must hold a JSON object, got {type(meta).__name__}")
    boefje_id = meta.get("id")
    if not isinstance(boefje_id, str) or not boefje_id:
        raise ValueError(f"{DEFINITION_FILE} has no \"id\" (a non-empty string)")
    values = {}
    for key in ("name", "version", "oci_image"):
        value = meta.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "version":
            value = str(value)  # "version": 2 is a slip worth forgiving; it only ends up in a tag
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{DEFINITION_FILE}: \"{key}\" must be a string, got {type(value).__name__}")
        values[key] = value
    return Boefje(boefje_id, path=folder, **values)


def _walk(root: Path) -> Iterator[Path]:
    """Folders holding a boefje.json, depth first in name order (so the first of a duplicate is stable)."""
    seen: set[tuple[int, int]] = set()  # (device, inode): a symlink loop is visited once
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            stat = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        names = {entry.name for entry in entries}
        if "pyvenv.cfg" in names and folder != root:
            continue
        if DEFINITION_FILE in names:
            yield folder
        subdirs = [Path(e.path) for e in entries if not e.name.startswith(".") and e.name not in _SKIPPED_DIRS
                   and _is_dir(e)]
        stack.extend(reversed(subdirs))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _import_run(main_py: Path, root: Path) -> RunFunction:
    """Import ``main.py`` as OpenKAT's images do (root on sys.path, dotted package path), else by file."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # first, like PYTHONPATH=/app/boefje:/app in OpenKAT's images
    importlib.invalidate_caches()
    parts = main_py.relative_to(root).with_suffix("").parts
    name = ".".join(parts)
    importable = all(part.isidentifier() and not keyword.iskeyword(part) for part in parts)
    if not importable or _shadowed(name, main_py, root):
        return _check_run(_import_by_location(main_py), ENTRYPOINT)
    try:
        module = importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        if _shadowed(name, main_py, root):  # another tree's package of the same name answered
            return _check_run(_import_by_location(main_py), ENTRYPOINT)
        raise PluginError(f"cannot import {name}: {type(exc).__name__}: {exc}") from exc
    if not _same_file(getattr(module, "__file__", None), main_py):
        module = _import_by_location(main_py)
    return _check_run(module, ENTRYPOINT)


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
        raise PluginError(f"cannot import {ENTRYPOINT}: {type(exc).__name__}: {exc}") from exc


def _check_run(obj: Any, where: str) -> RunFunction:
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
