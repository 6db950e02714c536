"""Boefjes registered as Python callables for the worker-pool tests.

They run inside forked worker processes, so they talk to the test through files named in the
task's ``arguments`` (a pid file to find the process, a release file to let it finish).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from boefje_runtime.plugins import BoefjeRegistry

#: The image these boefjes are registered for, and so the one the test pools' filter takes.
IMAGE = "test-image"
DEADLINE = 30.0


def hello(meta: dict) -> list:
    return [({"text/plain"}, b"hi " + meta["input_ooi"].encode())]


def boom(meta: dict) -> list:
    raise RuntimeError("boom went the boefje")


def hold(meta: dict) -> list:
    """Write our pid, then wait (bounded) until the test creates the release file."""
    arguments = meta["arguments"]
    # written whole, then renamed: a test that sees the file must never read it empty (it did, under load)
    Path(arguments["pid_file"] + ".tmp").write_text(str(os.getpid()))
    os.rename(arguments["pid_file"] + ".tmp", arguments["pid_file"])
    release = Path(arguments["release_file"])
    deadline = time.monotonic() + arguments.get("max_wait", DEADLINE)
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return [({"text/plain"}, b"released")]


def memory_hog(meta: dict) -> list:
    """Keep ``mib`` MiB alive in the process (module global), to trip the memory recycling."""
    global _HOARD
    _HOARD = bytearray(meta["arguments"]["mib"] * 2**20)
    for index in range(0, len(_HOARD), 4096):
        _HOARD[index] = 1
    return [({"text/plain"}, b"hoarded")]


def count(meta: dict) -> list:
    """Append a line per run, to count how often a boefje really ran."""
    with open(meta["arguments"]["count_file"], "a") as runs:
        runs.write("run\n")
    return [({"text/plain"}, b"counted")]


def env_echo(meta: dict) -> list:
    return [({"text/plain"}, os.environ.get("PLANTED", "<unset>").encode())]


_HOARD = bytearray()


def register(boefjes: BoefjeRegistry, funcs: dict[str, Callable[[dict], list]]) -> BoefjeRegistry:
    """Register each callable under its boefje id, for :data:`IMAGE`."""
    for boefje_id, func in funcs.items():
        boefjes.register(boefje_id, func, oci_image=IMAGE)
    return boefjes


def registry() -> BoefjeRegistry:
    return register(BoefjeRegistry(), {
        "hello": hello,
        "boom": boom,
        "hold": hold,
        "memory-hog": memory_hog,
        "env-echo": env_echo,
        "count": count,
    })
