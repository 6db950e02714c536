"""Worker recycling (max tasks and memory per child): pure decisions the worker makes after each task."""

from __future__ import annotations

import os
import sys

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_mib() -> float:
    """This process's resident memory in MiB (current on Linux, peak elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def retire_reason(tasks_done: int, max_tasks: int | None, max_memory_mib: float | None) -> str | None:
    """Why a worker should exit after its current task, or None to keep going."""
    if max_tasks and tasks_done >= max_tasks:
        return f"max tasks per child reached ({tasks_done} tasks)"
    if max_memory_mib:
        used = resident_mib()
        if used > max_memory_mib:
            return f"max memory per child passed ({used:.0f} MiB > {max_memory_mib:g} MiB)"
    return None
