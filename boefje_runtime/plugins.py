"""Finding boefjes in OpenKAT's plugin layout, and registering plain callables.

Discovery only reads ``boefje.json`` files, so start-up stays cheap however big the tree; a
boefje's ``main.py`` is imported once per process (a warm worker must not pay an import per task),
by :mod:`boefje_runtime._plugin_import`. One broken plugin never hides the others: it is logged,
kept in ``registry.errors``, and a task asking for it fails with that message.

Discovery stays in its folder. The default plugin folder is the working directory, and importing a
``main.py`` runs it: a worker started from a home or temp folder must not run other projects'
code. So the walk skips hidden folders, virtual environments (a ``pyvenv.cfg``), ``site-packages``,
``dist-packages``, ``node_modules`` and ``__pycache__``, symlinks leading out of the folder, and
anything deeper than :data:`MAX_DEPTH`. And when a folder holds more than
:data:`EAGER_IMPORT_LIMIT` boefjes, a worker imports each only when a task asks for it.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._plugin_import import RunFunction, check_run, import_run
from .errors import BoefjeNotFound, PluginError

logger = logging.getLogger("boefje_runtime.plugins")

DEFINITION_FILE = "boefje.json"
ENTRYPOINT = "main.py"
#: Folders never searched, wherever they are: installed packages and caches, not boefjes to run.
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages"})
#: How many folders below the plugin folder a ``boefje.json`` may be. OpenKAT's layout puts boefjes
#: 3 deep (``boefjes/plugins/kat_nmap``); 6 leaves room for any image's layout while a walk started
#: in a home folder does not descend into every project's source tree.
MAX_DEPTH = 6
#: Up to this many discovered boefjes, a worker imports them all at start, so a broken one shows at
#: boot and the first task pays no import. Above it (a whole collection, or a folder that is not an
#: image's plugin folder), a worker imports only what its tasks ask for: no code runs that no task
#: needs, and a worker does not hold every boefje's imports in memory.
EAGER_IMPORT_LIMIT = 20
_ID_GUESS = re.compile(r'"id"\s*:\s*"([^"\\]+)"')


class ImportMode(enum.Enum):
    """When a worker imports the discovered boefjes (see :data:`EAGER_IMPORT_LIMIT`)."""

    AT_START = "at start"
    ON_FIRST_USE = "on first use"


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
    :meth:`load_all` at worker start (it imports as :attr:`import_mode` says), and :meth:`find` per
    task. A Boefje holds its imported module: pass boefje ids between processes, not Boefje objects.
    """

    def __init__(self, *, root: str | Path | None = None, eager_limit: int = EAGER_IMPORT_LIMIT) -> None:
        self.root = None if root is None else Path(root).absolute()
        self.eager_limit = eager_limit
        self.errors: list[PluginProblem] = []
        self._discovered: dict[str, Boefje] = {}
        self._registered: dict[str, Boefje] = {}
        self._broken: dict[str, str] = {}  # boefje id (as far as it could be read) -> problem

    @classmethod
    def discover(cls, root: str | Path = ".", *, max_depth: int = MAX_DEPTH,
                 eager_limit: int = EAGER_IMPORT_LIMIT) -> BoefjeRegistry:
        """Find the folders under ``root`` holding a ``boefje.json`` (see the module docstring for
        what is skipped); imports nothing yet. Logs :meth:`summary`: a worker's start-up line."""
        registry = cls(root=root, eager_limit=eager_limit)
        top = Path(root).absolute()
        if not top.is_dir():
            logger.warning("Plugin folder %s is not a directory: no boefjes there", top)
        for folder in _walk(top, max_depth):
            registry._add_folder(folder)
        # DEBUG when some were found: import errors are not known yet, so the broken count can be
        # low; worker mode checks every import and then logs the summary at INFO (worker_mode.py).
        logger.log(logging.DEBUG if registry._discovered else logging.WARNING, "%s", registry.summary())
        return registry

    def usable(self) -> list[Boefje]:
        """The boefjes not known to be broken (a registered callable, or a folder whose import has
        not failed so far)."""
        return [boefje for boefje in self.boefjes.values() if boefje.error is None]

    def mark_broken(self, boefje_id: str, message: str) -> None:
        """Record that ``boefje_id`` cannot be used, as found out elsewhere (worker mode imports
        every boefje once in a throwaway process): logged once here, counted in ``errors``, and
        never imported by this registry (so forked workers neither retry it nor warn again)."""
        boefje = self._discovered.get(boefje_id)
        path = boefje.path if boefje is not None else None
        self._problem(path, message, boefje_id)
        if boefje is not None:
            with boefje._lock:
                boefje._error = PluginError(f"boefje {boefje_id!r} at {path} is broken: {message}")

    @property
    def import_mode(self) -> ImportMode:
        """When :meth:`load_all` imports the discovered boefjes: decided by how many there are."""
        return ImportMode.AT_START if len(self._discovered) <= self.eager_limit else ImportMode.ON_FIRST_USE

    def summary(self) -> str:
        """One line for a worker's start-up: the folder, how many boefjes, and when they are imported."""
        count = sum(1 for boefje in self._discovered.values() if boefje.error is None)
        found = f"Found {count} boefje{'' if count == 1 else 's'} under {self.root} ({len(self.errors)} broken)"
        if not count:
            return f"{found}: a task for a boefje that is not registered in code will fail"
        if self.import_mode is ImportMode.AT_START:
            return f"{found}; each worker imports them at start"
        return f"{found}; more than {self.eager_limit}, so each is imported when a task first asks for it"

    def register(self, boefje_id: str, func: RunFunction, *, version: str | None = None,
                 oci_image: str | None = None, name: str | None = None) -> Boefje:
        """Register a callable as boefje ``boefje_id``; it wins over a discovered folder with that id."""
        if not isinstance(boefje_id, str) or not boefje_id:
            raise PluginError(f"a boefje id must be a non-empty string, got {boefje_id!r}")
        if not callable(func):
            raise PluginError(f"boefje {boefje_id!r}: expected a callable, got {type(func).__name__}")
        check_run(func, f"boefje {boefje_id!r}")
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

    def load_all(self, mode: ImportMode | None = None) -> list[PluginProblem]:
        """Import the boefjes a worker imports at start; returns the problems this found (also added
        to ``errors``). ``mode`` defaults to :attr:`import_mode`: every boefje when there are at most
        ``eager_limit`` of them, none otherwise (then :meth:`Boefje.load` imports each on first use)."""
        if (mode or self.import_mode) is ImportMode.ON_FIRST_USE:
            return []
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
            return import_run(boefje.path / ENTRYPOINT, self.root)
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


def _walk(root: Path, max_depth: int = MAX_DEPTH) -> Iterator[Path]:
    """Folders holding a boefje.json, depth first in name order (so the first of a duplicate is stable).

    ``root`` itself is depth 0 and is searched whatever it is (the user named it); below it, the
    folders of the module docstring are skipped, and nothing deeper than ``max_depth`` is read.
    """
    real_root = os.path.realpath(root)
    seen: set[tuple[int, int]] = set()  # (device, inode): a symlink loop is visited once
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            stat = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        names = {entry.name for entry in entries}
        if "pyvenv.cfg" in names and depth:
            continue  # a virtual environment: its packages are installed code, not boefjes
        if DEFINITION_FILE in names:
            yield folder
        if depth < max_depth:
            subdirs = [Path(e.path) for e in entries if _searched(e, real_root)]
            stack.extend((subdir, depth + 1) for subdir in reversed(subdirs))


def _searched(entry: os.DirEntry, real_root: str) -> bool:
    """Whether discovery looks inside this entry of a searched folder."""
    if entry.name.startswith(".") or entry.name in _SKIPPED_DIRS:
        return False
    try:
        if not entry.is_dir():
            return False
        if not entry.is_symlink():
            return True  # below a searched folder, so inside the root
    except OSError:
        return False
    target = os.path.realpath(entry.path)
    if target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep):
        return True
    logger.warning("Not searching %s for boefjes: it links to %s, outside the plugin folder", entry.path, target)
    return False
