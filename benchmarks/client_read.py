"""CPU per API call of ``BoefjeAPIClient``: ``python benchmarks/client_read.py [--calls N] [--repeats R]``.

Why: the client is on the worker's hot path (about 1.4 ms of CPU per task in all), so a change to
how it reads answers (e.g. counting decoded bytes against the size cap) must not make ordinary
calls dearer. This measures the client process's own CPU (``time.process_time``) for ``--calls``
GETs of a task and of a task's input against the test Boefje API, which runs in a process of its
own so its CPU is not counted. Each figure is the median of ``--repeats`` runs, in microseconds
per call; a gzip-encoded answer (which takes the streaming path) is measured too.

Run it on two checkouts to compare: ``PYTHONPATH=/path/to/other/checkout python benchmarks/client_read.py``.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import APIServerProcess

import boefje_runtime
from boefje_runtime.client import BoefjeAPIClient

_FORK = multiprocessing.get_context("fork")


def _per_call(calls: int, call) -> float:
    """CPU microseconds per call of ``call`` (after a short warm-up)."""
    for _ in range(50):
        call()
    start = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - start) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the request log line is the same before and after; leave it out
    print(f"boefje_runtime from {Path(boefje_runtime.__file__).parent}")
    with APIServerProcess() as api:
        (task_id,), _ = api.call("enqueue", 1, True)
        figures: dict[str, list[float]] = {"get task": [], "get input": [], "get input, gzip": []}
        with BoefjeAPIClient(api.url, timeout=10.0) as client:
            input_url = client.input_url(task_id)
            for _ in range(args.repeats):
                figures["get task"].append(_per_call(args.calls, lambda: client.get_task(task_id)))
                figures["get input"].append(_per_call(args.calls, lambda: client.fetch_input(input_url)))
        with BoefjeAPIClient(api.url, timeout=10.0) as client:
            # The same answer gzip-encoded, served by a stand-in that only compresses: the streaming path.
            body = gzip.compress(client.session.get(input_url).content)
            gzip_server = _GzipServer(body).start()
            try:
                url = f"{gzip_server.url}/api/v0/tasks/{task_id}"
                with BoefjeAPIClient(gzip_server.url, timeout=10.0) as gzip_client:
                    for _ in range(args.repeats):
                        figures["get input, gzip"].append(_per_call(args.calls, lambda: gzip_client.fetch_input(url)))
            finally:
                gzip_server.stop()
    for name, values in figures.items():
        print(f"{name:>16}: {statistics.median(values):7.1f} us CPU per call "
              f"(min {min(values):.1f}, max {max(values):.1f}; {args.repeats} x {args.calls} calls)")
    return 0


class _GzipServer:
    """A keep-alive HTTP server, in a process of its own (its CPU is not the client's), answering
    every GET with one fixed gzip-encoded JSON body."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.url = ""
        self._process: multiprocessing.Process | None = None

    def start(self) -> _GzipServer:
        parent, child = _FORK.Pipe()
        self._process = _FORK.Process(target=_serve_gzip, args=(self.body, child), daemon=True)
        self._process.start()
        if not parent.poll(30):
            raise RuntimeError("the gzip server did not start within 30 s")
        self.url = parent.recv()
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(10)


def _serve_gzip(body: bytes, conn) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    conn.send(f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
