"""Named exit codes of the CLI, so scripts and orchestrators can tell outcomes apart."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of ``boefje-worker``. One-shot exits OK once the output is delivered,
    whatever the boefje's own status."""

    OK = 0
    #: An unexpected internal error (a bug): the message says what to report.
    INTERNAL_ERROR = 1
    #: Invalid flags, environment variables or settings (click's own code for usage errors).
    USAGE = 2
    #: One-shot: the input URL could not be fetched (unreachable, 403, 404, 5xx after retries).
    INPUT_UNAVAILABLE = 3
    #: One-shot: the input was fetched but is not a valid task.
    INPUT_MALFORMED = 4
    #: One-shot: no boefje in this image matches the task.
    BOEFJE_NOT_FOUND = 5
    #: One-shot: the output could not be delivered (or would go to another origin).
    OUTPUT_UNDELIVERABLE = 6
    #: ``run``: the boefje ran and failed (an exception, a bad result, too much output).
    BOEFJE_FAILED = 7
    #: One-shot: the boefje ran longer than TASK_TIMEOUT; its process tree was killed and a FAILED
    #: output saying so was posted (when the API took it).
    TASK_TIMED_OUT = 8
    #: One-shot: SIGTERM or SIGINT arrived while the boefje ran; its process tree was killed and a
    #: FAILED output naming the signal was posted (when the API took it).
    INTERRUPTED = 9
