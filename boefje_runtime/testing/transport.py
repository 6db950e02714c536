"""HTTP for the test Boefje API: binding a port, routing, reading bodies, writing answers.

Standard library only, so the server starts in milliseconds and serves ~1000+ requests per second
on a keep-alive connection without the client's dependencies. The handler knows the protocol's
paths but none of its semantics: per request it asks the server for a fault
(``api._arrival``), has it answer (``api._dispatch``) and records the outcome (``api._record``).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from .._http_server import StoppableHTTPServer
from .faults import MALFORMED_BODY, Fault, gzip_bomb
from .parsing import _BAD_JSON, _NO_BODY, _Reply

if TYPE_CHECKING:
    from .server import BoefjeAPIServer

_ROUTES = (
    # (method, pattern, endpoint); the tasks routes first, so "tasks" is never read as a queue name.
    ("PATCH", re.compile(r"/api/v0/scheduler/tasks/(?P<id>[^/]+)"), "patch"),
    ("GET", re.compile(r"/api/v0/scheduler/tasks/(?P<id>[^/]+)"), "get"),
    ("POST", re.compile(r"/api/v0/scheduler/(?P<queue>[^/]+)/pop"), "pop"),
    ("POST", re.compile(r"/api/v0/scheduler/(?P<queue>[^/]+)/push"), "push"),
    ("GET", re.compile(r"/api/v0/tasks/(?P<id>[^/]+)"), "input"),
    ("POST", re.compile(r"/api/v0/tasks/(?P<id>[^/]+)"), "output"),
    ("GET", re.compile(r"/healthz"), "health"),
    # Not part of the protocol: the read-only view of a task for people (``show``), see report.py.
    ("GET", re.compile(r"/test-api/tasks/(?P<id>[^/]+)"), "report"),
)


def _route(method: str, path: str) -> tuple[str, dict[str, str], int | None]:
    """(endpoint, path parameters, error status): 404 for an unknown path, 405 for a wrong method."""
    path_known = False
    for route_method, pattern, endpoint in _ROUTES:
        match = pattern.fullmatch(path)
        if match:
            path_known = True
            if route_method == method:
                return endpoint, {k: unquote(v) for k, v in match.groupdict().items()}, None
    return "unknown", {}, 405 if path_known else 404


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bind(host: str, port: int) -> _HTTPServer:
    """Bind ``port``; for port 0 prefer a free port *below* the kernel's ephemeral range.

    A restarted server must get its port back, but while it is down, clients retrying against a
    port inside the ephemeral range can be handed that very port as their own source port and
    connect to themselves (TCP simultaneous open), holding it. Ports below the range are never
    handed out that way.
    """
    if port:
        return _HTTPServer((host, port), _Handler)
    floor = _ephemeral_floor()
    for candidate in random.sample(range(max(1024, floor - 12000), floor), 20):
        try:
            return _HTTPServer((host, candidate), _Handler)
        except OSError:
            continue
    return _HTTPServer((host, 0), _Handler)


class _Gone(Exception):
    """The API was stopped while this request was read: it goes unanswered, its connection closed."""


class _HTTPServer(StoppableHTTPServer):
    """Tracks open connections so ``stop()`` can cut them, like a real outage."""

    request_queue_size = 128
    api: BoefjeAPIServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer (or stop() cutting it) is normal in tests: stay quiet.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; buffered writes so headers and body leave in one segment."""

    protocol_version = "HTTP/1.1"
    server_version = "boefje-runtime-test-api"
    sys_version = ""
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # handle_one_request flushes after every request
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # no per-request stderr noise
        pass

    def handle_expect_100(self) -> bool:
        answer = super().handle_expect_100()
        self.wfile.flush()  # the buffered writer would otherwise hold "100 Continue" back
        return answer

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        super().send_error(code, message, explain)
        self.wfile.flush()

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        api = self.server.api
        parts = urlsplit(self.path)
        endpoint, params, route_error = _route(method, parts.path)
        fault = api._arrival(endpoint, routed=route_error is None)
        status, payload, raw, headers = self._answer(api, method, endpoint, params, parts.query, route_error, fault)
        if status is None:
            self.close_connection = True  # dropped: the client sees the connection close unanswered
        else:
            body = raw if raw is not None else json.dumps(payload, separators=(",", ":")).encode()
            if fault is not None and fault.gzip_bomb is not None:
                body, headers = gzip_bomb(body, fault.gzip_bomb), {**headers, "Content-Encoding": "gzip"}
            self._send(status, body, headers)
        api._record(method, parts.path, endpoint, status, self.headers.get("traceparent"))

    def _answer(self, api: BoefjeAPIServer, method: str, endpoint: str, params: dict[str, str], query: str,
                route_error: int | None, fault: Fault | None) -> tuple[int | None, Any, bytes | None, dict]:
        """(status, JSON payload, raw body, headers); status None means drop the connection."""
        try:
            body = self._read_body(api.max_body)
        except _Reply as reply:
            self.close_connection = True  # the unread body would be taken for the next request
            return reply.status, {"detail": reply.detail}, None, {}
        if route_error is not None:
            return route_error, {"detail": "Not Found" if route_error == 404 else "Method Not Allowed"}, None, {}
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop == "before":
                return None, None, None, {}
            if fault.answers:
                raw = fault.body if fault.body is not None else MALFORMED_BODY if fault.malformed else None
                payload = {"detail": f"injected fault ({fault.status})"}
                return fault.status or 200, payload, raw, fault.headers
        try:
            payload = api._dispatch(endpoint, params, parse_qs(query), body, self._base_url(api))
            status = 200
        except _Reply as reply:
            status, payload = reply.status, {"detail": reply.detail}
        except _Gone:
            return None, None, None, {}
        except Exception:  # a bug in this server: answer 500 and keep it for the test to see
            api.errors.append(traceback.format_exc())
            status, payload = 500, {"detail": "test API internal error (see BoefjeAPIServer.errors)"}
        if fault is not None and fault.drop == "after":
            return None, None, None, {}
        return status, payload, None, {}

    def _base_url(self, api: BoefjeAPIServer) -> str:
        # The Host the client used, so output_url is reachable the way the input was (e.g. in Docker).
        host = self.headers.get("Host")
        return f"http://{host}" if host else api.url

    def _read_body(self, max_body: int) -> Any:
        """The decoded JSON body, or the _NO_BODY / _BAD_JSON markers."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = self._read_chunked(max_body)
        else:
            length = self.headers.get("Content-Length")
            if length is None:
                return _NO_BODY
            if not length.isdigit():
                raise _Reply(400, "invalid Content-Length")
            if int(length) > max_body:
                raise _Reply(413, f"body larger than {max_body} bytes")
            data = self.rfile.read(int(length))
        if not data:
            return _NO_BODY
        try:
            return json.loads(data)
        except ValueError:
            return _BAD_JSON

    def _read_chunked(self, max_body: int) -> bytes:
        chunks, size = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                length = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _Reply(400, "invalid chunked encoding") from None
            if length == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            size += length
            if size > max_body:
                raise _Reply(413, f"body larger than {max_body} bytes")
            chunks.append(self.rfile.read(length))
            self.rfile.readline(1024)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        if self.close_connection and self.headers.get("Connection", "").lower() != "close":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
