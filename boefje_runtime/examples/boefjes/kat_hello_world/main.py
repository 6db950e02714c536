"""hello-world: greet the input object, and show what a boefje gets to work with.

It reads ``GREETING`` from the environment because that is how OpenKAT hands a boefje its
organisation's settings: the task's ``environment`` is added to the process environment for this
call only. The JSON file names the worker process, which makes the point of worker mode visible:
one warm process runs task after task, instead of one container per task.
"""

from __future__ import annotations

import json
import os


def run(boefje_meta: dict) -> list[tuple[set[str], bytes | str]]:
    """Return a greeting (text/plain) and what the boefje was given (application/json)."""
    target = boefje_meta.get("input_ooi") or "world"
    greeting = os.environ.get("GREETING", "Hello")
    details = {
        "boefje": boefje_meta["boefje"]["id"],
        "input_ooi": boefje_meta.get("input_ooi"),
        "organization": boefje_meta.get("organization"),
        "greeting": greeting,
        "worker_pid": os.getpid(),
        "started_at": boefje_meta.get("started_at"),
    }
    return [
        ({"text/plain"}, f"{greeting}, {target}!\n"),
        ({"application/json"}, json.dumps(details, sort_keys=True)),
    ]
