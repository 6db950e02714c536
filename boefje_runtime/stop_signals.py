"""Stop signals for both modes: the handler only counts; the caller's wait does everything else.

Logging, HTTP and joins are not safe inside a signal handler, so the handler records the signal and
``signal.set_wakeup_fd`` writes to a pipe that the caller's wait includes (the pool's selector,
one-shot's ``select`` on its child). What a signal *means* stays with its reader: the pool drains
on the first and hurries on the second (pool/shutdown.py); one-shot kills its boefje on the first and
lets the second cut its closing POST short (:meth:`StopSignals.second_ends_wait`).

A top-level module, not in ``pool/``: one-shot imports it, and must not import the pool to get it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

#: What a container runtime (SIGTERM), a terminal (SIGINT) or a closed terminal or a supervisor's
#: "reload" (SIGHUP) sends to stop us: every mode stops on all three, never dies mid-task on one.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SecondSignal(BaseException):
    """A second stop signal arrived while :meth:`StopSignals.second_ends_wait` was in force.

    A BaseException, like KeyboardInterrupt: the HTTP client's and tenacity's handlers must let it
    through, so it ends the request or the retry wait it interrupts."""


class StopSignals:
    """Counts SIGTERM, SIGINT and SIGHUP while installed, and wakes the caller's wait.

    Installed only in the main thread (the only one Python delivers signals to); elsewhere
    :meth:`install` does nothing and returns False, and a library caller keeps its own handlers.
    """

    def __init__(self) -> None:
        #: How many stop signals arrived.
        self.count = 0
        #: The first one's number (None before any).
        self.received: int | None = None
        #: Readable after a signal (while installed): add it to the wait, then :meth:`drain_wakeups`.
        self.wakeup_fd: int | None = None
        self._write_fd: int | None = None
        self._urgent = False
        self._previous: dict[int, Any] = {}
        self._previous_wakeup = -1
        #: The stop signals that were blocked in this thread at :meth:`install` (blocked again at
        #: :meth:`uninstall`).
        self._were_blocked: set[int] = set()

    @property
    def name(self) -> str:
        """The first signal's name (``SIGTERM``), or "" before any."""
        return signal.Signals(self.received).name if self.received else ""

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.received is None:
            self.received = signum
        elif self._urgent:
            raise SecondSignal(signum)

    def install(self) -> bool:
        """Install the handlers and the wake-up pipe when this is the main thread; True when it is."""
        if threading.current_thread() is not threading.main_thread():
            return False
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self.wakeup_fd, self._write_fd = read_fd, write_fd
        self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        # A blocked signal mask survives exec: a parent that started us while it blocked SIGTERM
        # (a test runner or a process manager that forks carelessly) would leave our handler
        # unreachable, and the container runtime's SIGTERM pending until its SIGKILL. Unblocked
        # after the handlers are in place, so one that is pending already is counted, not fatal.
        if hasattr(signal, "pthread_sigmask"):
            self._were_blocked = set(STOP_SIGNALS) & signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return True

    def uninstall(self) -> None:
        """Put back the handlers and wake-up fd found at :meth:`install`; close the pipe."""
        if self._were_blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, self._were_blocked)
            self._were_blocked = set()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self.wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            for fd in (self.wakeup_fd, self._write_fd):
                if fd is not None:
                    os.close(fd)
            self.wakeup_fd = self._write_fd = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """:meth:`install` for the ``with`` block, :meth:`uninstall` after it."""
        installed = self.install()
        try:
            yield self
        finally:
            if installed:
                self.uninstall()

    def drain_wakeups(self) -> None:
        """Empty the wake-up pipe, so the next wait sleeps until the next signal."""
        if self.wakeup_fd is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.wakeup_fd, 512):
                pass

    @contextlib.contextmanager
    def second_ends_wait(self) -> Iterator[None]:
        """While in force, a second stop signal raises :class:`SecondSignal` (at once if one came
        already): for a closing POST after a stop, which an operator may want to cut short."""
        if self.count >= 2:
            raise SecondSignal(self.received or 0)
        self._urgent = True
        try:
            yield
        finally:
            self._urgent = False


__all__ = ["STOP_SIGNALS", "SecondSignal", "StopSignals"]
