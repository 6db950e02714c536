"""A fork server: a process forked from the supervisor before it starts any thread, that forks the
workers on request.

Why: the supervisor runs threads (the pops in flight, the health endpoint, an exporter). Forking a
process that has threads copies only the forking thread; a lock another thread held at that moment
(logging's, an HTTP pool's, ours) stays locked in the child forever, and Python 3.12+ warns
(DeprecationWarning) for that reason. The fork server is forked while the supervisor is still a
single thread and stays one, so every worker it forks starts clean.

What stays as it was with a direct fork:
- workers share the imported pages: the fork server is a fork of the supervisor (after a
  ``gc.freeze``), and the workers are forks of it, so the pages nobody writes stay shared by all;
- a worker dies with its supervisor: the fork server has ``PR_SET_PDEATHSIG`` on the supervisor
  (and leaves when its control socket closes), the worker on the fork server (``die_with_parent``);
- the supervisor sees each worker's exit code and has a sentinel to wait on: the fork server sees
  a worker end (``waitid`` with ``WNOWAIT``: not reaped yet) and writes its exit code to that
  worker's own status pipe, whose read end is the sentinel (the exit code follows
  ``multiprocessing``'s convention: ``-N`` for signal N);
- a worker's pid (and so its process group and session ids) stays reserved until the supervisor
  has read the exit code, as with a child of its own: only then does it ask the fork server to
  reap it. Until then killing what is left of its process group cannot hit a stranger.

The exchange is a Unix ``SOCK_SEQPACKET`` pair (one message per send): the supervisor sends
``b"S"`` with four file descriptors (the worker's end of its duplex pipe, the write end of its
status pipe, its progress page, progress.py, and the read end of its next-task pipe; ``SCM_RIGHTS``;
made close-on-exec as they arrive), answered by the pid (8 bytes, signed; ``-errno`` when the fork
failed); and ``b"R"`` + pid to have an ended worker reaped (no answer). Orphans of a worker are
re-parented to the supervisor, which is the child subreaper; the fork server is not one.

What a worker holds: the descriptors that were open before the pool made any of its own (passed as
``inherited``), its own (its pipe to the supervisor, its next-task pipe and, before Python 3.13, the
copy that its progress page's mapping keeps), and ``/dev/null`` over every other number the fork
gave it (parked, ``worker.park``): not the supervisor's selector or wake-up pipes.

A server that died is not replaced (:class:`ForkServerGone`): it could only be forked from the
supervisor as it is by then, with every task it holds in memory.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import traceback
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .. import libc, process_tree
from ..process_exit import exit_now
from .worker import close_inherited_sockets, logging_descriptors, open_descriptors, park

logger = logging.getLogger("boefje_runtime.pool")

_PID = struct.Struct("q")
_STATUS = struct.Struct("i")
#: Signals the fork server never acts on: a Ctrl-C or a SIGTERM is the supervisor's to handle (it
#: stops the workers, then closes us); held back around forks so no child runs a parent's handler.
_BLOCKED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
#: Longest the supervisor waits for the fork server to answer a spawn (a fork takes milliseconds).
SPAWN_TIMEOUT = 30.0

#: ``main(conn, spec, parent_pid, progress_fd, next_fd)``: the worker entry point (``worker.worker_main``).
WorkerMain = Callable[[Connection, Any, int, int, int], Any]


class ForkedProcess:
    """A worker forked by the fork server, as the supervisor sees it: the part of
    ``multiprocessing.Process`` the pool uses (``pid``, ``sentinel``, ``exitcode``, ``join``,
    ``is_alive``, ``kill``)."""

    def __init__(self, pid: int, status_fd: int, release: Callable[[int], None]) -> None:
        self.pid = pid
        #: Readable once the worker ended (or the fork server died).
        self.sentinel = status_fd
        self._release = release
        self._exitcode: int | None = None
        #: True once it is known to have ended because the fork server died (no exit code came).
        self.died_with_server = False
        self._closer = weakref.finalize(self, _close_fd, status_fd)
        # Built once: the reaper asks every worker on every step of the loop.
        self._status = select.poll()
        self._status.register(status_fd, select.POLLIN)

    def ended(self) -> bool:
        """True once the worker has ended, without reaping it: its pid stays reserved."""
        return self._exitcode is not None or (self._closer.alive and bool(self._status.poll(0)))

    @property
    def exitcode(self) -> int | None:
        """The exit code once it ended; reading it has the worker reaped (its pid is free after)."""
        if self._exitcode is None and self._closer.alive and _readable(self.sentinel, 0):
            self._read_status()
        return self._exitcode

    def _read_status(self) -> None:
        try:
            data = os.read(self.sentinel, _STATUS.size)
        except OSError:
            data = b""
        self._closer()
        if len(data) == _STATUS.size:
            self._exitcode = _STATUS.unpack(data)[0]
            self._release(self.pid)
        else:  # no status: the fork server died, and the kernel killed its workers with it
            self._exitcode = -signal.SIGKILL
            self.died_with_server = True

    def join(self, timeout: float | None = None) -> None:
        if self._exitcode is None and self._closer.alive and _readable(self.sentinel, timeout):
            self._read_status()

    def is_alive(self) -> bool:
        return self.exitcode is None

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        if self._exitcode is None:  # not reaped yet: the pid is still the worker's (or its zombie's)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def close(self) -> None:
        """Done with it: have it reaped if it ended, and close the sentinel."""
        if self._exitcode is None and self._closer.alive and _readable(self.sentinel, 0):
            self._read_status()
        self._closer()

    def __repr__(self) -> str:
        return f"<ForkedProcess pid={self.pid} exitcode={self._exitcode}>"


class ForkServerGone(RuntimeError):
    """The fork server died (it should not: it only forks and reaps; an OOM kill or a stray
    ``kill`` can end it). It is not replaced: a new one would be a fork of the supervisor as it is
    by then, with threads running and every task it holds in memory (their environments, another
    organisation's credentials among them), and each worker forked from it would have them too."""


class ForkServer:
    """Forks ``main(conn, spec, parent_pid, progress_fd, next_fd)`` workers from a clean, single-threaded process.

    :meth:`start` forks the server; call it before the supervisor starts any thread. If the server
    dies, :meth:`spawn` raises :class:`ForkServerGone` from then on (the pool stops with exit code 1,
    and the orchestrator starts a clean container).
    """

    def __init__(self, main: WorkerMain, spec: Any, *, inherited: dict[int, os.stat_result] | None = None) -> None:
        """``inherited``: the descriptors (``worker.open_descriptors()``) a server and its workers may
        keep; by default, those open when the first server starts. Every other one is parked in the
        server (``worker.park``): the pool passes what was open before it made any pipe of its own."""
        self.main = main
        self.spec = spec
        self.pid = 0
        self._control: socket.socket | None = None
        self._lock = threading.Lock()
        self._kept = None if inherited is None else _identities(inherited)
        #: Why the server is gone for good (None while it may run); see :class:`ForkServerGone`.
        self._gone: str | None = None

    @property
    def running(self) -> bool:
        return self._control is not None

    def start(self) -> ForkServer:
        if self._control is not None:
            return self
        if self._gone is not None:
            raise ForkServerGone(self._gone)
        # The fork server and every worker call prctl (die_with_parent): ctypes and the C library
        # loaded here are shared by all of them; the heap's free pages are released first, so no
        # child inherits (and copies on its first allocation there) pages nobody uses (libc.py).
        libc.preload()
        libc.trim_heap()
        # What is alive now is frozen: no worker's collector writes to those pages, so they stay
        # shared (PSS stays flat). No collection first, as the gc module's documentation advises:
        # it frees objects all over the shared pages, and the holes it leaves are where every
        # worker's first allocations land, each copying the page (measured: 2 MB more PSS for
        # supervisor + 2 workers; the garbage it would have freed is a one-off, frozen).
        gc.freeze()
        if self._kept is None:
            self._kept = _identities(open_descriptors())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        threads = threading.active_count()
        supervisor_pid = os.getpid()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        try:
            pid = os.fork()
            if pid == 0:  # the fork server; it never returns
                code = 1
                try:
                    ours.close()
                    code = _serve(theirs, self.main, self.spec, supervisor_pid, self._kept)
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)  # no flush: what its buffers hold is the supervisor's, not its own
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        theirs.close()
        ours.settimeout(SPAWN_TIMEOUT)
        self._control, self.pid = ours, pid
        if threads > 1:
            logger.info("The worker fork server was started while this process runs %d threads; workers "
                        "may inherit a lock held at that moment", threads)
        return self

    def spawn(self, progress_fd: int, next_fd: int) -> tuple[ForkedProcess, Connection]:
        """Fork a worker that writes its progress to ``progress_fd`` (a shared page, progress.py) and
        reads its next task from ``next_fd`` (process.py, ``WorkerHandle.next``; the caller keeps and
        closes its own descriptors); returns its handle and the supervisor's end of its duplex pipe."""
        with self._lock:
            try:
                return self._spawn(progress_fd, next_fd)
            except (OSError, EOFError) as exc:
                if isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.ENOMEM):
                    raise  # the fork failed for want of resources: the server lives on
                self._discard()
                self._gone = f"it no longer answers: {exc}"
                raise ForkServerGone(self._gone) from None

    def _spawn(self, progress_fd: int, next_fd: int) -> tuple[ForkedProcess, Connection]:
        if self._control is None:
            self.start()
        control = self._control
        assert control is not None
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        status_r, status_w = os.pipe()
        try:
            socket.send_fds(control, [b"S"], [child_end.fileno(), status_w, progress_fd, next_fd])
            answer = control.recv(_PID.size)
            if len(answer) != _PID.size:
                raise EOFError("the fork server closed its control socket")
        except BaseException:
            os.close(status_r)
            parent_end.close()
            raise
        finally:
            child_end.close()
            os.close(status_w)
        pid = _PID.unpack(answer)[0]
        if pid < 0:
            os.close(status_r)
            parent_end.close()
            raise OSError(-pid, f"the fork server could not fork a worker: {os.strerror(-pid)}")
        return ForkedProcess(pid, status_r, self._reap), Connection(parent_end.detach())

    def _reap(self, pid: int) -> None:
        """Have an ended worker reaped (its exit code was read): its pid is free from here on."""
        with self._lock:
            control = self._control
            if control is not None:
                with contextlib.suppress(OSError):
                    control.send(b"R" + _PID.pack(pid))

    def close(self) -> None:
        """Close the control socket: the server leaves (and takes any worker left with it)."""
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            control.close()
        if self.pid:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(self.pid, 0)  # it leaves as soon as it sees the socket close
            self.pid = 0


# -- inside the fork server ------------------------------------------------------------------------


def _identities(descriptors: dict[int, os.stat_result]) -> dict[int, tuple[int, int]]:
    return {fd: (status.st_dev, status.st_ino) for fd, status in descriptors.items()}


def _serve(control: socket.socket, main: WorkerMain, spec: Any, supervisor_pid: int,
           inherited: dict[int, tuple[int, int]]) -> int:
    """The fork server's loop: fork a worker per request, report each exit code; 0 once the
    supervisor closes the control socket."""
    signal.set_wakeup_fd(-1)  # the supervisor's wake-up pipe is not ours
    for signum in _BLOCKED:
        signal.signal(signum, signal.SIG_IGN)
    if not process_tree.die_with_parent(supervisor_pid):
        return 0
    kept = {control.fileno()} | logging_descriptors()
    park(fd for fd, identity in _identities(open_descriptors()).items()
         if fd not in kept and inherited.get(fd) != identity)
    # A listening socket of the embedding program (or the supervisor's HTTP connections) held here
    # would keep its port taken after its owner closed it; the workers do the same for themselves.
    close_inherited_sockets(control.fileno())
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the selector
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, "control")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    #: pid -> the write end of that worker's status pipe, for workers still running
    statuses: dict[int, int] = {}
    #: workers that ended and were reported, not reaped yet (their pids stay reserved)
    ended: set[int] = set()
    own_fds = {control.fileno(), wake_r, wake_w}
    while True:
        for key, _ in selector.select():
            if key.data == "wake":
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    os.read(wake_r, 512)
                _report_ended(statuses, ended)
                continue
            try:
                message, fds, _, _ = socket.recv_fds(control, 1 + _PID.size, 4)
            except InterruptedError:
                continue
            except OSError:
                message, fds = b"", []
            if not message:
                return 0  # the supervisor closed the socket (or died): the kernel kills our workers
            if message[:1] == b"R":
                pid = _PID.unpack(message[1:])[0] if len(message) == 1 + _PID.size else 0
                if pid in ended:
                    ended.discard(pid)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
                continue
            if message != b"S" or len(fds) != 4:
                for fd in fds:
                    os.close(fd)
                control.send(_PID.pack(-errno.EINVAL))
                continue
            for fd in fds:  # passed over a socket, they came inheritable: a program that a boefje
                os.set_inheritable(fd, False)  # executes must not hold its worker's pipes
            conn_fd, status_w, progress_fd, next_fd = fds
            pid = _fork_worker(main, spec, conn_fd, progress_fd, next_fd, own_fds | set(statuses.values()) | {status_w},
                               selector, control)
            os.close(conn_fd)
            os.close(progress_fd)
            os.close(next_fd)
            if pid < 0:
                os.close(status_w)
            else:
                statuses[pid] = status_w
            control.send(_PID.pack(pid))
            _report_ended(statuses, ended)  # a SIGCHLD that came while we forked


def _fork_worker(main: WorkerMain, spec: Any, conn_fd: int, progress_fd: int, next_fd: int, close_in_child: set[int],
                 selector: selectors.BaseSelector, control: socket.socket) -> int:
    """Fork one worker; its pid, or ``-errno``. The worker starts with the termination signals
    blocked (it unblocks them once its own handlers are in place, see ``worker.install_signals``)."""
    parent_pid = os.getpid()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    try:
        pid = os.fork()
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return -(exc.errno or errno.EAGAIN)
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return pid
    code = 1
    try:
        selector.close()
        control.detach()  # closed below with the rest; the object must not close a reused number later
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a boefje's subprocesses need the default
        for fd in close_in_child:
            with contextlib.suppress(OSError):
                os.close(fd)
        if process_tree.die_with_parent(parent_pid):  # whatever ``main`` does: no worker outlives this server
            code = _run_worker(main, spec, conn_fd, progress_fd, next_fd, parent_pid)
    finally:
        exit_now(code)


def _run_worker(main: WorkerMain, spec: Any, conn_fd: int, progress_fd: int, next_fd: int, parent_pid: int) -> int:
    """Run the worker's entry point; the exit code as ``multiprocessing`` would give it."""
    code = 0
    try:
        main(Connection(conn_fd), spec, parent_pid, progress_fd, next_fd)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            sys.stderr.write(f"{exc.code}\n")
            code = 1
    except BaseException:
        code = 1
        sys.stderr.write(f"Worker process {os.getpid()}:\n")
        traceback.print_exc()
    return code


def _report_ended(statuses: dict[int, int], ended: set[int]) -> None:
    """Write the exit code of every worker that ended to its status pipe, without reaping it."""
    for pid in list(statuses):
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
            code: int | None = -signal.SIGKILL  # cannot happen: only we reap our children
        else:
            code = None if info is None else _exit_code(info)
        if code is None:
            continue
        status_w = statuses.pop(pid)
        with contextlib.suppress(OSError):
            os.write(status_w, _STATUS.pack(code))
        os.close(status_w)
        if info is not None:
            ended.add(pid)


def _exit_code(info: os.waitid_result) -> int:
    """``multiprocessing``'s convention: the exit status, or ``-N`` for a death by signal N."""
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status


# -- small helpers ---------------------------------------------------------------------------------


def _readable(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` is readable within ``timeout`` seconds (None: wait); for the rare calls (an
    exit code, a join); the reaper's check every step has its own prebuilt poll (``ended``)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
    except InterruptedError:
        return False


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
