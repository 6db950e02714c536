"""Shutdown signals for the supervisor. Handlers only count; the loop does everything else.

Logging, HTTP and joins are not safe inside a signal handler, so the handler bumps a counter and
writes to a wake-up pipe (``signal.set_wakeup_fd``) that the loop's wait includes.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

#: SIGHUP too: a closed terminal or a supervisor's "reload" must drain, not end the pool mid-task.
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class ShutdownSignals:
    """Counts SIGTERM/SIGINT/SIGHUP. The first asks for a graceful drain, the second skips the wait."""

    def __init__(self) -> None:
        self.count = 0
        self.wakeup_fd: int | None = None
        self._write_fd: int | None = None
        self._previous: dict[int, Any] = {}
        self._previous_wakeup = -1

    def install(self) -> bool:
        """Install the handlers when we are the main thread (signals can only be handled there)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self.wakeup_fd, self._write_fd = read_fd, write_fd
        self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in SHUTDOWN_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1

    def drain_wakeups(self) -> None:
        if self.wakeup_fd is None:
            return
        try:
            while os.read(self.wakeup_fd, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self.wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            for fd in (self.wakeup_fd, self._write_fd):
                if fd is not None:
                    os.close(fd)
            self.wakeup_fd = self._write_fd = None
