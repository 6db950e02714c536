"""Boefjes that misbehave on purpose, for tests/test_abuse.py and tests/test_security.py.

Registered as callables, they run in forked pool workers and talk to the test through files named
in the task's ``arguments``. Every wait is bounded, so a broken test cannot leave them running.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from boefje_runtime.plugins import BoefjeRegistry

from . import pool_boefjes

MIB = 2**20


def _vm_size() -> int:
    """This process's virtual memory size in bytes (what RLIMIT_AS limits)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def memory_bomb(meta: dict) -> list:
    """Cap this worker's address space a little above what it uses, then allocate without end.

    The cap is set here, inside the worker, so no other process is limited. It is left in place on
    purpose: a boefje can change process-wide limits, and the worker lives on with them.
    """
    headroom = meta["arguments"].get("headroom_mib", 256) * MIB
    limit = _vm_size() + headroom
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    hoard = []
    while True:  # bytearray(n) is calloc'd: address space, hardly any resident memory
        hoard.append(bytearray(16 * MIB))


def stdout_flood(meta: dict) -> list:
    """Write ``mib`` MiB to stdout with print(), as a chatty scanner would."""
    chunk = "x" * (MIB - 1)
    for _ in range(meta["arguments"]["mib"]):
        print(chunk)
    sys.stdout.flush()
    return [({"text/plain"}, b"flooded")]


def fork_and_leave(meta: dict) -> list:
    """Start children that outlive this call (forked copies and a ``sleep`` process), record their
    pids, then return normally or end the worker process itself (``then: "exit"``)."""
    arguments = meta["arguments"]
    lifetime = arguments.get("lifetime", 60)
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # the child: never return into the worker's code
            try:
                time.sleep(lifetime)
            finally:
                os._exit(0)
        pids.append(pid)
    sleeper = subprocess.Popen(["sleep", str(lifetime)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    pids.append(sleeper.pid)
    Path(arguments["pid_file"] + ".tmp").write_text(json.dumps({"worker": os.getpid(), "children": pids}))
    os.rename(arguments["pid_file"] + ".tmp", arguments["pid_file"])  # a test must never read it half written
    if arguments.get("then") == "exit":
        os._exit(3)
    return [({"text/plain"}, b"forked")]


#: The body of a boefje that leaves processes behind the way a scanner's daemon does, as source text:
#: run here as a registered callable, and written as a plugin's main.py for the CLI tests.
DAEMONIZE_SOURCE = """
import json, os, subprocess, time
from pathlib import Path


def run(boefje_meta):
    \"\"\"Start a `sleep` child and a daemon that double-forked and left the session (setsid), write
    their pids (and ours) to the pid file, wait for the release file if given, then hang (bounded),
    return, or end the worker.\"\"\"
    arguments = boefje_meta["arguments"]
    lifetime = arguments.get("lifetime", 60)
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            if os.fork() == 0:
                os.setsid()
                os.write(write_end, str(os.getpid()).encode())
                time.sleep(lifetime)
        finally:
            os._exit(0)
    os.waitpid(middle, 0)
    daemon = int(os.read(read_end, 32))
    os.close(read_end)
    os.close(write_end)
    sleeper = subprocess.Popen(["sleep", str(lifetime)])
    record = {"worker": os.getpid(), "children": [daemon, sleeper.pid]}
    Path(arguments["pid_file"] + ".tmp").write_text(json.dumps(record))
    os.rename(arguments["pid_file"] + ".tmp", arguments["pid_file"])
    release_file = arguments.get("release_file")
    deadline = time.monotonic() + lifetime
    while release_file and not Path(release_file).exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # held until the test has seen the children alive (bounded)
    then = arguments.get("then", "hang")
    if then == "exit":
        os._exit(3)
    if then == "hang":
        time.sleep(arguments.get("hang", 30))
    return [({"text/plain"}, b"daemonized")]
"""
_daemonize: dict = {}
exec(compile(DAEMONIZE_SOURCE, "<daemonize boefje>", "exec"), _daemonize)
daemonize = _daemonize["run"]


def ignore_sigterm(meta: dict) -> list:
    """Ignore SIGTERM (for the rest of this process's life), then hold until released (bounded)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return pool_boefjes.hold(meta)


#: A scanner stand-in: on SIGTERM it appends "SIGTERM" to the marker file, then exits (``exit``) or
#: carries on (``ignore``); otherwise it sleeps its lifetime.
_SCANNER = """
import signal, sys, time
marker, on_term, lifetime = sys.argv[1], sys.argv[2], float(sys.argv[3])
def on_sigterm(signum, frame):
    with open(marker, "a") as out:
        out.write("SIGTERM\\n")
    if on_term == "exit":
        sys.exit(0)
signal.signal(signal.SIGTERM, on_sigterm)
open(marker, "a").close()
deadline = time.monotonic() + lifetime
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


def run_scanner(meta: dict) -> list:
    """Run a scanner child process (see ``_SCANNER``) and wait for it, as ``subprocess.run`` would;
    the boefje ignores SIGTERM itself when ``ignore_sigterm`` is set. Records both pids."""
    arguments = meta["arguments"]
    if arguments.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    marker = arguments["marker"]
    scanner = subprocess.Popen([sys.executable, "-c", _SCANNER, marker, arguments.get("on_term", "ignore"),
                                str(arguments.get("lifetime", 30))])
    deadline = time.monotonic() + 10
    while not os.path.exists(marker) and time.monotonic() < deadline:  # its handler is in place
        time.sleep(0.01)
    Path(arguments["pid_file"] + ".tmp").write_text(json.dumps({"worker": os.getpid(), "children": [scanner.pid]}))
    os.rename(arguments["pid_file"] + ".tmp", arguments["pid_file"])  # a test must never read it half written
    code = scanner.wait(60)
    return [({"text/plain"}, f"scanner ended with {code}".encode())]


def big_output(meta: dict) -> list:
    """One file of ``mib`` MiB, or (``pieces``) a generator of that many 1 MiB files."""
    arguments = meta["arguments"]
    if arguments.get("pieces"):
        return ([{"application/octet-stream"}, b"y" * MIB] for _ in range(arguments["pieces"]))
    return [({"application/octet-stream"}, b"x" * (arguments["mib"] * MIB))]


def dump_environment(meta: dict) -> list:
    """Everything the boefje can see in its environment, as its output."""
    return [({"application/json"}, json.dumps(dict(os.environ)))]


_LIST_FDS = """
import json, os
fds = {}
for name in os.listdir("/proc/self/fd"):
    try:
        fds[name] = os.readlink(f"/proc/self/fd/{name}")
    except OSError:
        pass  # the descriptor listdir itself used, closed by now
print(json.dumps(fds))
"""


def own_descriptors(meta: dict) -> list:
    """Every descriptor open in this worker and its target (what a boefje could read or write)."""
    return [({"application/json"}, json.dumps(_descriptors()))]


def _descriptors() -> dict[str, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the descriptor listdir itself used is closed by now)
            found[name] = os.readlink(f"/proc/self/fd/{name}")
    return found


def inherited_descriptors(meta: dict) -> list:
    """What a program the boefje executes inherits when it keeps descriptors (``close_fds=False``,
    as ``os.exec*`` and many scanners' own launchers do): every open descriptor and its target."""
    child = subprocess.run([sys.executable, "-c", _LIST_FDS], close_fds=False, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30, check=True)
    return [({"application/json"}, child.stdout)]


def leak_environment(meta: dict) -> list:
    """Try to leak this task's environment into the next task's run, and into the worker."""
    os.environ["LEAKED_BY_BOEFJE"] = os.environ.get("PLANTED", "<unset>")
    return [({"text/plain"}, b"planted")]


def raise_secret(meta: dict) -> list:
    """Raise (and log, and tag) with the organisation's secret in the message."""
    import logging

    token = os.environ["API_TOKEN"]
    logging.getLogger("abuse").warning("connecting with token %s", token)
    raise PermissionError(f"the scanner refused token {token!r} (token={token})")


def tag_secret(meta: dict) -> list:
    """Return a tag made of the secret: the runtime drops it with a warning that must not quote it."""
    return [({"text/plain", os.environ["API_TOKEN"]}, b"tagged")]


def registry() -> BoefjeRegistry:
    """The pool tests' boefjes and these."""
    return pool_boefjes.register(pool_boefjes.registry(), {
        "memory-bomb": memory_bomb,
        "stdout-flood": stdout_flood,
        "fork-and-leave": fork_and_leave,
        "ignore-sigterm": ignore_sigterm,
        "daemonize": daemonize,
        "run-scanner": run_scanner,
        "big-output": big_output,
        "dump-environment": dump_environment,
        "inherited-descriptors": inherited_descriptors,
        "own-descriptors": own_descriptors,
        "leak-environment": leak_environment,
        "raise-secret": raise_secret,
        "tag-secret": tag_secret,
    })
