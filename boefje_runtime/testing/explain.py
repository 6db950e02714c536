"""Why did my task not complete? Assertions whose failure message answers it.

``boefje_api.assert_completed(task_id)`` fails with everything a boefje author needs in pytest's
report: the task's status history, every output file (for a failed task, the ``error/boefje``
file: the boefje's traceback) and the runtime's log lines about that task.

The log lines come from forked worker processes, whose records never reach pytest's own
capture (it lives in the parent's memory). :class:`TaskLogCapture` is a logging handler on the
root logger that writes each record as one JSON line, with one ``write`` on a file opened
``O_APPEND``: a forked child inherits the handler and the descriptor, so its lines land in the
same file, whole, and the fixture reads them back by task id. It captures what the loggers let
through (by default WARNING and up, which is where failures are logged), and only processes
forked after it was installed; a worker started as a separate program (the CLI) logs to its own
stderr instead. The error file is there in every case.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from typing import TYPE_CHECKING, Any

from ..logs import ContextFilter, TextFormatter
from .report import report_lines

if TYPE_CHECKING:
    from .server import BoefjeAPIServer

#: What a status tells a test author about where to look (for statuses other than the one expected).
_HINTS = {
    "queued": "no worker took it: a worker pops only the tasks of its OCI_IMAGE (and, with -p, of its "
              "plugin ids); compare them with the task's boefje id and image below",
    "dispatched": "a worker popped it but never set it running (did the worker stop or crash?)",
    "running": "a worker started it but no output arrived (still running, killed, or the output was refused)",
    "failed": "its error/boefje file below says why",
    "completed": "the boefje completed",
}


class TaskLogCapture(logging.Handler):
    """Collects log lines, tagged with the task they are about, from this process and its forked children.

    Install with :meth:`install` before the workers are forked; :meth:`lines_for` reads them back.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        if path is None:
            fd, path = tempfile.mkstemp(prefix="boefje-api-logs-", suffix=".jsonl")
            os.close(fd)
        self.path = path
        self._owner = os.getpid()
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._formatter = TextFormatter()  # masks the secrets a worker registered for its task
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        if self._fd is None:
            return
        try:
            task_id = (getattr(record, "context", None) or {}).get("task_id")
            line = json.dumps({"task_id": task_id, "line": self._formatter.format(record)}) + "\n"
            os.write(self._fd, line.encode("utf-8", "backslashreplace"))  # one write: lines never interleave
        except Exception:
            self.handleError(record)

    def install(self) -> TaskLogCapture:
        logging.getLogger().addHandler(self)
        return self

    def lines_for(self, task_id: str) -> list[str]:
        """Lines logged in a task's context, or naming its id (the supervisor's lines about it)."""
        lines = []
        try:
            with open(self.path, encoding="utf-8", errors="replace") as captured:
                for raw in captured:
                    try:
                        entry = json.loads(raw)
                    except ValueError:
                        continue  # a child killed half-way through a write
                    if entry.get("task_id") == task_id or task_id in entry.get("line", ""):
                        lines.append(entry["line"])
        except OSError:
            return []
        return lines

    def close(self) -> None:
        """Uninstall, close and delete the file: in the process that created it only (a forked
        child's ``logging.shutdown`` at exit must not delete the file under the test's feet)."""
        if os.getpid() != self._owner:
            return
        logging.getLogger().removeHandler(self)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        super().close()


class TaskAssertions:
    """The assertion helpers of :class:`~boefje_runtime.testing.BoefjeAPIServer` (a mixin)."""

    #: Set by the ``boefje_api`` fixture: the workers' log lines to quote in a failure message.
    task_logs: TaskLogCapture | None = None

    def explain(self: BoefjeAPIServer, task_id: str) -> str:
        """Everything known about a task, as text: status history, output files, captured log lines."""
        logs = self.task_logs.lines_for(task_id) if self.task_logs is not None else None
        return "\n".join(report_lines(self.report(task_id), logs))

    def assert_completed(self: BoefjeAPIServer, task_id: str, *, timeout: float = 0.0) -> dict[str, Any]:
        """Assert the task is ``completed`` (waiting up to ``timeout`` s for it to be closed);
        on failure the message holds :meth:`explain`. Returns the task's report."""
        __tracebackhide__ = True  # pytest shows the test's line, not ours
        return _assert_status(self, task_id, "completed", timeout)

    def assert_failed(self: BoefjeAPIServer, task_id: str, *, timeout: float = 0.0) -> dict[str, Any]:
        """Assert the task is ``failed``, e.g. for a boefje that must refuse an input; see :meth:`assert_completed`."""
        __tracebackhide__ = True
        return _assert_status(self, task_id, "failed", timeout)


def _assert_status(api: BoefjeAPIServer, task_id: str, expected: str, timeout: float) -> dict[str, Any]:
    __tracebackhide__ = True
    try:
        status = api.status(task_id)
    except KeyError:
        raise AssertionError(f"task {task_id} is not known to this test Boefje API") from None
    if timeout > 0 and status != expected:
        with contextlib.suppress(TimeoutError):  # the message below says where it got stuck
            api.wait_for_status(task_id, timeout=timeout)
        status = api.status(task_id)
    if status != expected:
        hint = _HINTS.get(status, "")
        raise AssertionError(f"task {task_id} is {status}, expected {expected}"
                             f"{': ' + hint if hint else ''}\n{api.explain(task_id)}")
    return api.report(task_id)
