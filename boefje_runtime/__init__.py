"""boefje-runtime: run OpenKAT boefjes one-shot or in an always-warm worker pool.

Public names are imported lazily, so ``boefje-worker --help`` or a one-shot run only pays for
the modules its mode needs (the pool and ``requests`` are not imported by ``import boefje_runtime``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "BoefjeAPIClient": "client",
    "RetryPolicy": "retry",
    "TaskFilter": "filters",
    "WorkerPool": "pool",
    "PoolSettings": "pool",
    "RuntimeConfig": "config",
    "BoefjeRegistry": "plugins",
    "Boefje": "plugins",
    "Task": "models",
    "TaskStatus": "models",
    "BoefjeMeta": "models",
    "BoefjeRef": "models",
    "BoefjeInput": "models",
    "BoefjeOutput": "models",
    "OutputFile": "models",
    "OutputStatus": "models",
    "ExitCode": "exit_codes",
    "BoefjeRuntimeError": "errors",
    "ParseError": "errors",
    "ConfigError": "errors",
    "PluginError": "errors",
    "BoefjeNotFound": "errors",
    "APIError": "errors",
    "APIConnectionError": "errors",
    "APIStatusError": "errors",
    "APIResponseError": "errors",
    "APIResponseTooLarge": "errors",
}

__all__ = [*_EXPORTS, "__version__"]


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # let type checkers and IDEs see the real names
    from .client import BoefjeAPIClient
    from .config import RuntimeConfig
    from .errors import (
        APIConnectionError,
        APIError,
        APIResponseError,
        APIResponseTooLarge,
        APIStatusError,
        BoefjeNotFound,
        BoefjeRuntimeError,
        ConfigError,
        ParseError,
        PluginError,
    )
    from .exit_codes import ExitCode
    from .filters import TaskFilter
    from .models import BoefjeInput, BoefjeMeta, BoefjeOutput, BoefjeRef, OutputFile, OutputStatus, Task, TaskStatus
    from .plugins import Boefje, BoefjeRegistry
    from .pool import PoolSettings, WorkerPool
    from .retry import RetryPolicy
