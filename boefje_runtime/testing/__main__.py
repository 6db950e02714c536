"""``python -m boefje_runtime.testing``: run the test Boefje API until SIGINT or SIGTERM.

argparse, not click: the runtime and its test API must not need the CLI package. The first line
on stdout is the base URL (and nothing else), so scripts can read it when ``--port 0`` is used.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from .factory import EXAMPLE_BOEFJE_IDS, EXAMPLE_OCI_IMAGE, example_tasks
from .server import POP_MODES, BoefjeAPIServer

__all__ = ["EXAMPLE_BOEFJE_IDS", "EXAMPLE_OCI_IMAGE", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m boefje_runtime.testing", description="Run the test Boefje API (OpenKAT's semantics)."
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
    parser.add_argument("--pop-mode", choices=POP_MODES, default="limit", help="what a pop with limit > 1 answers")
    parser.add_argument(
        "--results-envelope", action="store_true", help='answer pops as {"results": [...]} like the scheduler'
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.seed_examples < 0:
        _parser().error("--seed-examples must not be negative")
    server = BoefjeAPIServer(args.host, args.port, pop_mode=args.pop_mode, results_envelope=args.results_envelope)
    if args.seed_examples:
        server.enqueue(example_tasks(args.seed_examples))
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
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
