"""``python -m boefje_runtime.testing``: run the test Boefje API until SIGINT or SIGTERM; ``show`` a task.

Two commands, told apart by the first word (like ``boefje-worker run``):

- serve (the default): ``--enqueue BOEFJE_ID`` queues tasks for your own boefje (``--running``
  puts them where OpenKAT's Boefje API puts a task before it starts a container: ``running``, so
  its one-shot INPUT_URL answers). At start it prints the base URL, then one line per task, then
  the INPUT_URL of each running task, ready to copy.
- ``show TASK_ID --url URL``: a task's status history and output files, read through the
  read-only ``GET /test-api/tasks/{id}`` endpoint of a running server.

argparse, not click: the runtime and its test API must not need the CLI package. The first line
on stdout is the base URL (and nothing else), so scripts can read it when ``--port 0`` is used.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from .factory import EXAMPLE_BOEFJE_IDS, EXAMPLE_INPUT_OOI, EXAMPLE_OCI_IMAGE, example_tasks, make_task
from .report import REPORT_PREFIX, report_lines
from .server import POP_MODES, BoefjeAPIServer

__all__ = ["EXAMPLE_BOEFJE_IDS", "EXAMPLE_OCI_IMAGE", "main"]

PROG = "python -m boefje_runtime.testing"
DEFAULT_URL = "http://127.0.0.1:8000"


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run the test Boefje API (OpenKAT's semantics) on this machine.",
        epilog=f"To see a task of a running server: {PROG} show TASK_ID --url URL",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    parser.add_argument(
        "--seed-examples",
        type=int,
        nargs="?",
        const=1,
        default=0,
        metavar="N",
        help=f"enqueue N tasks (default 1) for each of {', '.join(EXAMPLE_BOEFJE_IDS)} on {EXAMPLE_OCI_IMAGE}",
    )
    tasks = parser.add_argument_group("your own tasks", "queue tasks for your boefje at start-up")
    tasks.add_argument("--enqueue", action="append", default=[], metavar="BOEFJE_ID",
                       help="queue a task for this boefje id (repeatable)")
    tasks.add_argument("-n", type=int, default=1, metavar="N", help="tasks per --enqueue (default: 1)")
    tasks.add_argument("--input-ooi", default=EXAMPLE_INPUT_OOI,
                       help=f"the tasks' input object (default: {EXAMPLE_INPUT_OOI!r})")
    tasks.add_argument("--oci-image", default=None,
                       help="the tasks' data.boefje.oci_image; a worker (OCI_IMAGE) only pops tasks of its image "
                            "(default: none, fine for one-shot)")
    tasks.add_argument("--running", action="store_true",
                       help="set the tasks running, as OpenKAT does before a one-shot container starts, and "
                            "print each one's INPUT_URL")
    tasks.add_argument("--organisation", default="org", help="the tasks' organisation (default: org)")
    tasks.add_argument("--env", dest="environment", action="append", type=_env_pair, default=[],
                       metavar="NAME=VALUE", help="the tasks' environment (the organisation's settings; repeatable)")
    tasks.add_argument("--arguments", type=_json_object, default=None, metavar="JSON",
                       help="the tasks' arguments, a JSON object")
    parser.add_argument(
        "--pop-mode", choices=POP_MODES, default=POP_MODES[0], help="what a pop answers (default: mula, as OpenKAT)"
    )
    parser.add_argument(
        "--results-envelope", action="store_true", help='answer pops as {"results": [...]} like the scheduler'
    )
    return parser


def _show_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG} show", description="Show a task of a running test Boefje API: "
                                     "its status history and output files.")
    parser.add_argument("task_id", metavar="TASK_ID")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the test API's base URL (default: {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="print the JSON the endpoint answers")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["show"]:
        return show(_show_parser().parse_args(args[1:]))
    return serve(args)


def _your_tasks(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [
        make_task(boefje_id, oci_image=args.oci_image, input_ooi=args.input_ooi, organisation=args.organisation,
                  environment=dict(args.environment) or None, arguments=args.arguments)
        for boefje_id in args.enqueue
        for _ in range(args.n)
    ]


def serve(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.seed_examples < 0:
        parser.error("--seed-examples must not be negative")
    if args.n < 1:
        parser.error("-n must be at least 1")
    if args.running and not args.enqueue:
        parser.error("--running sets the --enqueue tasks running: name a boefje with --enqueue BOEFJE_ID")
    server = BoefjeAPIServer(args.host, args.port, pop_mode=args.pop_mode, results_envelope=args.results_envelope)
    if args.seed_examples:
        server.enqueue(example_tasks(args.seed_examples))
    own = _your_tasks(args)
    own_ids = server.enqueue(own) if own else []
    if args.running:
        for task_id in own_ids:
            server.set_status(task_id, "running")
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:  # only sets a flag: no I/O in a handler
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        server.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(server.url, flush=True)
    _print_tasks(server, own_ids)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


def _print_tasks(server: BoefjeAPIServer, task_ids: list[str]) -> None:
    """One line per task; for a running task, its INPUT_URL on the next line, ready to copy."""
    statuses = set()
    for task_id in task_ids:
        task = server.task(task_id)
        data = task["data"]
        image = f" (image {data['boefje']['oci_image']})" if data["boefje"]["oci_image"] else ""
        statuses.add(task["status"])
        print(f"{task['status']:<8} {task_id}  {data['boefje']['id']} on {data['input_ooi']}{image}")
        if task["status"] == "running":
            print(f"         INPUT_URL {server.url}/api/v0/tasks/{task_id}")
    if "running" in statuses:
        print("Run a running task one-shot:  boefje-worker <its INPUT_URL>")
    if "queued" in statuses:
        print(f"Run queued tasks in a pool:   BOEFJES_API={server.url} OCI_IMAGE=<image> boefje-worker --burst")
    if task_ids:
        print(f"See a task:                   {PROG} show TASK_ID --url {server.url}", flush=True)


def show(args: argparse.Namespace) -> int:
    url = f"{args.url.rstrip('/')}{REPORT_PREFIX}/{args.task_id}"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            report = json.load(answer)
    except urllib.error.HTTPError as exc:
        reason = "no such task" if exc.code == 404 else f"HTTP {exc.code}"
        print(f"{PROG} show: {url}: {reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"{PROG} show: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else "\n".join(report_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
