"""A threaded stdlib HTTP server that stops at once, shared by the health endpoint and the test API."""

from __future__ import annotations

import contextlib
import selectors
import socket
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StoppableHTTPServer(ThreadingHTTPServer):
    """Not ``serve_forever``: that polls for shutdown, so every stop would cost a poll interval.
    A wake-up socket ends the accept loop immediately."""

    daemon_threads = True  # an open keep-alive connection never delays the process's exit
    allow_reuse_address = True  # a restarted server gets its port back straight away

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._stopping = False
        self._wake_reader, self._wake_writer = socket.socketpair()  # before binding: server_close() needs them
        super().__init__(address, handler)

    def serve(self) -> None:
        """Accept connections until :meth:`wake_and_stop`."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self._stopping:
                ready = selector.select()
                if not self._stopping and any(key.fileobj is self for key, _ in ready):
                    self._handle_request_noblock()

    def wake_and_stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on DNS: skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()
