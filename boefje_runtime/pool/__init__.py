"""Worker mode: a supervisor and a pool of always-warm worker processes."""

from .events import PoolEvents, PoolStats
from .settings import PoolSettings
from .supervisor import WorkerPool

__all__ = ["PoolEvents", "PoolSettings", "PoolStats", "WorkerPool"]
