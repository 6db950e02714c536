"""The exceptions boefje-runtime raises.

Every error a caller can meet derives from :class:`BoefjeRuntimeError`, so one ``except`` is enough
to keep a supervisor alive; the subclasses carry what a log line or an exit code needs.
"""

from __future__ import annotations


class BoefjeRuntimeError(Exception):
    """Base class of every error raised by boefje-runtime."""


class ParseError(BoefjeRuntimeError, ValueError):
    """A JSON payload does not have the shape the protocol promises.

    ``path`` names the field (``task.data.boefje.id``) so the message says where, not just what.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class ConfigError(BoefjeRuntimeError, ValueError):
    """A setting is missing or has a value we cannot use."""


class PluginError(BoefjeRuntimeError):
    """A boefje package is broken (bad ``boefje.json``, import error, no usable ``run``)."""


class BoefjeNotFound(BoefjeRuntimeError, LookupError):
    """No boefje in this image matches the task's boefje id or OCI image."""


class OutputTooLarge(BoefjeRuntimeError):
    """A boefje returned more output than the configured maximum."""


class APIError(BoefjeRuntimeError):
    """A call to the Boefje API failed. Carries the method, URL and (when one came) status code."""

    def __init__(self, message: str, *, method: str, url: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.status_code = status_code

    def __reduce__(self):  # keep the keyword-only fields when pickled between processes
        return (_rebuild_api_error, (type(self), str(self), self.method, self.url, self.status_code))


def _rebuild_api_error(cls, message, method, url, status_code):
    return cls(message, method=method, url=url, status_code=status_code)


class APIConnectionError(APIError):
    """No usable answer came: connection refused or dropped, or a timeout."""

    def __init__(
        self, message: str, *, method: str, url: str, status_code: int | None = None, sent: bool = True
    ) -> None:
        super().__init__(message, method=method, url=url, status_code=status_code)
        #: False only when the request can not have reached the server (refused, connect timeout).
        self.sent = sent

    def __reduce__(self):
        return (_rebuild_connection_error, (str(self), self.method, self.url, self.sent))


def _rebuild_connection_error(message, method, url, sent):
    return APIConnectionError(message, method=method, url=url, sent=sent)


class APIStatusError(APIError):
    """The API answered with a non-2xx status. ``retry_after`` is the server's hint, in seconds."""

    retry_after: float | None = None


class APIResponseError(APIError):
    """The API answered 2xx with a body that is not what the protocol promises."""


class APIResponseTooLarge(APIResponseError):
    """An answer was larger than the client's cap (``max_response_bytes``), counted as decoded bytes.

    Its own class because the answer was not read, not because it was wrong: one-shot reports an
    input refused this way as "could not be fetched", not as "not a valid task".
    """
