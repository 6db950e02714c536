"""``BoefjeAPIClient``: the worker's side of the Boefje API, over one keep-alive session.

Every call has a timeout, is logged once at INFO in the seed's form
(``HTTP Request: POST <url> "HTTP/1.1 200 OK"``) and fails with an :class:`~boefje_runtime.errors.APIError`
subclass carrying the method, URL and status. Which calls are retried, and why, is in
:mod:`boefje_runtime.retry`. Header values (e.g. an ``Authorization`` token) are never logged.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
from requests.cookies import extract_cookies_to_jar
from requests.structures import CaseInsensitiveDict

from .errors import APIConnectionError, APIError, APIResponseError, APIResponseTooLarge, APIStatusError
from .filters import TaskFilter
from .models import BoefjeInput, BoefjeOutput, Task, TaskStatus, parse_task_list
from .retry import NOT_PROCESSED, CallKind, RetryPolicy

if TYPE_CHECKING:
    from .config import RuntimeConfig

logger = logging.getLogger("boefje_runtime.http")

#: Answers larger than this are refused instead of read into memory (a spoofed or broken API).
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024

_JSON_HEADERS = {"Content-Type": "application/json"}


class BoefjeAPIClient:
    """A client for one Boefje API. Not shared between processes: each worker makes its own."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
        retry: RetryPolicy | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        # Normalised once (IDNA, escaping), so URLs built from it below need no per-request parsing.
        self.base_url = requests.Request("GET", base_url.rstrip("/")).prepare().url.rstrip("/")
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.retry_policy = retry or RetryPolicy()
        self._retrying = {kind: self.retry_policy.retrying(kind) for kind in CallKind}
        self._headers = dict(headers or {})
        self._verify = verify
        #: The HTTP status of the last answer this client received (for a task's last log line).
        self.last_status_code: int | None = None
        self.session = _make_session(self.base_url, verify, self._headers)
        self._send_options = {
            "timeout": timeout,
            "stream": True,
            "verify": self.session.verify,
            "proxies": self.session.proxies,
            "cert": None,
        }
        #: Called per request for headers that change per request (tracing's ``traceparent``);
        #: None (the default) costs one check per request. Not copied by :meth:`clone`.
        self.header_hook: Callable[[], Mapping[str, str]] | None = None

    def clone(self, *, retry: RetryPolicy | None = None) -> BoefjeAPIClient:
        """A new client with the same settings and its own session (e.g. for a forked worker)."""
        return type(self)(
            self.base_url,
            timeout=self.timeout,
            headers=self._headers,
            verify=self._verify,
            retry=retry or self.retry_policy,
            max_response_bytes=self.max_response_bytes,
        )

    @classmethod
    def from_config(cls, config: RuntimeConfig, base_url: str | None = None) -> BoefjeAPIClient:
        """A client for ``config.boefjes_api`` (or ``base_url``) with the configured timeout and headers."""
        url = base_url or config.boefjes_api
        if not url:
            raise ValueError("no Boefje API URL configured (BOEFJES_API)")
        return cls(url, timeout=config.outgoing_request_timeout, headers=dict(config.api_headers or {}))

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> BoefjeAPIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the scheduler's queue ------------------------------------------------------------------

    def pop_raw(self, queue: str = "boefje", task_filter: TaskFilter | None = None, limit: int = 1) -> list[Any]:
        """Pop up to ``limit`` tasks, unparsed: a malformed task must not hide its well-formed siblings.

        Accepts a JSON list and ``{"results": [...]}``. Retried only when unsent (see retry.py).
        """
        body = (task_filter or TaskFilter()).to_request()
        url = f"{self.base_url}/api/v0/scheduler/{quote(queue, safe='')}/pop?limit={int(limit)}"
        answer = self._call(CallKind.UNSENT_ONLY, "POST", url, body)
        return parse_task_list(answer)

    def pop(self, queue: str = "boefje", task_filter: TaskFilter | None = None, limit: int = 1) -> list[Task]:
        """Pop and parse; raises :class:`ParseError` if any task is malformed."""
        return [Task.from_dict(item, f"pop[{i}]") for i, item in enumerate(self.pop_raw(queue, task_filter, limit))]

    def push(self, task: Task | Mapping[str, Any], queue: str = "boefje") -> None:
        """Put a task back on the queue, exactly as it was received when we have the raw payload."""
        if isinstance(task, Task):
            body = task.raw if task.raw is not None else task.to_dict()
        else:
            body = dict(task)
        self._call(CallKind.SAFE, "POST", f"{self.base_url}/api/v0/scheduler/{quote(queue, safe='')}/push", body)

    def patch_status(self, task_id: str, status: TaskStatus | str) -> bool:
        """Set a task's status. The scheduler does not guard transitions: callers must.

        Returns True when the PATCH needed a repeat after a try that may still land later (its
        answer was lost or timed out, or a 5xx): such a late PATCH can undo a status set after it,
        so a caller that goes on to close the task should check it again later.
        """
        value = status.value if isinstance(status, TaskStatus) else str(status)
        may_land_late = False
        for attempt in self._retrying[CallKind.SAFE].copy():
            with attempt:
                try:
                    self._request("PATCH", self._task_url(task_id), {"status": value})
                except APIError as exc:
                    may_land_late = may_land_late or _may_have_landed(exc)
                    raise
                return may_land_late
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def get_task(self, task_id: str) -> Task:
        url = self._task_url(task_id)
        answer = self._call(CallKind.SAFE, "GET", url)
        return Task.from_dict(answer)

    # -- the boefje runner's endpoints -----------------------------------------------------------

    def input_url(self, task_id: str) -> str:
        return f"{self.base_url}/api/v0/tasks/{quote(task_id, safe='')}"

    def fetch_input(self, url: str) -> BoefjeInput:
        """GET a one-shot input (403 unless the task is running)."""
        answer = self._call(CallKind.SAFE, "GET", url)
        return BoefjeInput.from_dict(answer)

    def get_input(self, task_id: str) -> BoefjeInput:
        return self.fetch_input(self.input_url(task_id))

    def deliver_output(self, url: str, output: BoefjeOutput | Mapping[str, Any]) -> dict[str, Any]:
        """POST a task's output; the API then closes the task itself.

        The API accepts one output per task, so a 403 on a repeated try, after a try that may have
        landed (answer lost, timed out, 500/502/504), means that earlier try was accepted: that counts
        as delivered (logged), and ``{}`` is returned. After only unsent or "not now" (429/503) tries,
        a 403 is a real refusal and is raised.
        """
        body = output.to_dict() if isinstance(output, BoefjeOutput) else dict(output)
        may_have_landed = False
        for attempt in self._retrying[CallKind.SAFE].copy():
            with attempt:
                try:
                    answer = self._request("POST", url, body)
                except APIStatusError as exc:
                    if exc.status_code == 403 and may_have_landed:
                        logger.warning("Output to %s refused on a retry: an earlier try was accepted", url)
                        return {}
                    may_have_landed = may_have_landed or _may_have_landed(exc)
                    raise
                except APIResponseError as exc:
                    if exc.status_code is not None and 200 <= exc.status_code < 300:
                        # 2xx: the API stored the output; only its answer is odd. Not a failed delivery.
                        logger.warning("Output to %s accepted, with an unexpected answer: %s", url, exc)
                        return {}
                    raise
                except APIConnectionError as exc:
                    may_have_landed = may_have_landed or _may_have_landed(exc)
                    raise
                return answer if isinstance(answer, dict) else {}
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def post_output(self, task_id: str, output: BoefjeOutput | Mapping[str, Any]) -> dict[str, Any]:
        return self.deliver_output(self.input_url(task_id), output)

    def health(self) -> bool:
        """True when ``/healthz`` answers 200. Never raises for an unreachable API."""
        try:
            self._request("GET", f"{self.base_url}/healthz")
        except (APIConnectionError, APIStatusError, APIResponseError):
            return False
        return True

    # -- plumbing --------------------------------------------------------------------------------

    def _task_url(self, task_id: str) -> str:
        return f"{self.base_url}/api/v0/scheduler/tasks/{quote(task_id, safe='')}"

    def _call(self, kind: CallKind, method: str, url: str, body: Any = None) -> Any:
        return self._retrying[kind].copy()(self._request, method, url, body)

    def _request(self, method: str, url: str, body: Any = None) -> Any:
        """One HTTP exchange: send, log, check the status, decode JSON within the size cap."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            response = self._send(self._prepare(method, url, data))
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise APIConnectionError(
                f"{method} {url} failed: {_reason(exc)}", method=method, url=url, sent=not _never_sent(exc)
            ) from None
        except requests.RequestException as exc:
            raise APIConnectionError(f"{method} {url} failed: {_reason(exc)}", method=method, url=url) from None
        with response:
            self.last_status_code = response.status_code
            line = ('HTTP Request: %s %s "HTTP/1.1 %d %s"', method, url, response.status_code, response.reason)
            try:
                content = self._read(response, method, url)
            except APIError:
                logger.info(*line)
                raise
            # An empty pop is DEBUG: an idle worker would otherwise fill the INFO log with them.
            logger.log(logging.DEBUG if _empty_pop(url, response.status_code, content) else logging.INFO, *line)
        if response.status_code >= 300:  # redirects are not followed: the API has none, a spoof might
            raise _status_error(method, url, response, content)
        if not content:
            return None
        try:
            return json.loads(content)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the decoder's limit
            raise APIResponseError(
                f"{method} {url} answered {response.status_code} with a body that is not JSON",
                method=method,
                url=url,
                status_code=response.status_code,
            ) from None

    def _send(self, prepared: requests.PreparedRequest) -> requests.Response:
        """``Session.send`` without what this client never uses, its cookie handling kept.

        Per call, ``Session.send`` times the call, runs the response hooks (ours are never set),
        walks every header of the answer for cookies (``email.message`` lower-cases each name) and
        builds a redirect generator that parses the URL again, though redirects are not followed:
        2 to 6 % of a call's CPU (paired in one process). Here the session's adapter sends, and the
        cookies of an answer that sets one are stored exactly as requests stores them (a load
        balancer's affinity cookie keeps working).
        """
        session = self.session
        response = session.get_adapter(prepared.url).send(prepared, **self._send_options)
        if "Set-Cookie" in response.headers or "Set-Cookie2" in response.headers:
            extract_cookies_to_jar(session.cookies, prepared, response.raw)
        return response

    def _prepare(self, method: str, url: str, data: bytes | None) -> requests.PreparedRequest:
        """Build the request directly: ``Session.request`` re-merges every session setting on each
        call, about a third of requests' CPU per call. URLs under ``base_url`` are already normalised;
        others (a one-shot input's ``output_url``) go through requests' own URL preparation."""
        prepared = requests.PreparedRequest()
        prepared.method = method
        if url.startswith(self.base_url + "/"):
            prepared.url = url
        else:
            prepared.prepare_url(url, None)
        prepared.headers = CaseInsensitiveDict(self.session.headers)
        prepared.prepare_cookies(self.session.cookies)
        if self.header_hook is not None:
            prepared.headers.update(self.header_hook())
        if data is not None:
            prepared.headers.update(_JSON_HEADERS)
            prepared.headers["Content-Length"] = str(len(data))
        prepared.body = data
        return prepared

    def _read(self, response: requests.Response, method: str, url: str) -> bytes:
        """Read the body, refusing to hold more than ``max_response_bytes`` of it, counted decoded.

        The cap is on what ends up in memory. ``Content-Length`` is the size on the wire: with a
        ``Content-Encoding`` (gzip, deflate, br) the decoded body can be a thousand times larger (a
        "gzip bomb": 20 KB on the wire, 20 MiB decoded), and with ``Transfer-Encoding: chunked`` it
        is ignored altogether. Only an answer that is neither is read in one go (the hot path: no
        per-chunk work, and urllib3 reads exactly the declared length); every other is streamed
        and its decoded bytes counted, stopping at the cap.
        """
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_response_bytes:
            # Refused on the declared size, before reading a byte of a body we would throw away.
            raise self._too_large(response, method, url, f"of {declared} bytes,")
        try:
            if _length_is_bounded(response, self.max_response_bytes):
                return response.content
            chunks, size = [], 0
            for chunk in response.iter_content(_STREAM_CHUNK):
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise self._too_large(response, method, url, "")
                chunks.append(chunk)
            return b"".join(chunks)
        except requests.RequestException as exc:
            raise APIConnectionError(
                f"{method} {url} failed while reading the answer: {_reason(exc)}", method=method, url=url
            ) from None

    def _too_large(self, response: requests.Response, method: str, url: str, size: str) -> APIResponseTooLarge:
        encoding = response.headers.get("Content-Encoding")
        decoded = f" once decoded (Content-Encoding: {encoding[:40]})" if encoding else ""
        return APIResponseTooLarge(
            f"{method} {url} answered {response.status_code} with a body {size + ' ' if size else ''}larger than "
            f"the cap of {self.max_response_bytes} bytes{decoded}; refused",
            method=method,
            url=url,
            status_code=response.status_code,
        )


#: Decoded bytes per read of a streamed answer. urllib3 2.6+ decodes at most this much per read;
#: older versions decode one read of this many *wire* bytes at once, so a bomb can overshoot the
#: cap by up to ~1000 times this (16 MiB) before the count sees it. Small enough for that, large
#: enough that a big legitimate answer is read in few steps.
_STREAM_CHUNK = 16 * 1024


def _length_is_bounded(response: requests.Response, cap: int) -> bool:
    """True when reading the whole body cannot put more than ``cap`` bytes in memory: no content
    coding (bar identity) and a length urllib3 will hold the body to (not chunked, declared)."""
    encoding = response.headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        return False
    remaining = getattr(response.raw, "length_remaining", None)  # None when chunked or undeclared
    return isinstance(remaining, int) and remaining <= cap


_EMPTY_POP_ANSWERS = frozenset({b"", b"[]", b"null", b'{"results":[]}'})


def _empty_pop(url: str, status: int, content: bytes) -> bool:
    """A 200 answer to a pop with no task in it (a list, or the scheduler's ``{"results": [...]}``)."""
    if status != 200 or "/pop?" not in url or len(content) > 64:
        return False
    return b"".join(content.split()) in _EMPTY_POP_ANSWERS


def _may_have_landed(exc: APIError) -> bool:
    """Could the server have acted on a request that failed this way?"""
    if isinstance(exc, APIConnectionError):
        return exc.sent
    return exc.status_code is not None and exc.status_code >= 500 and exc.status_code not in NOT_PROCESSED


def _make_session(base_url: str, verify: bool | str, headers: Mapping[str, str]) -> requests.Session:
    """A session that reads the environment once, here, instead of on every request.

    With ``trust_env`` on, requests scans every environment variable for proxy settings on each
    call (0.2 to 0.4 ms a request with a typical container environment: more than the rest of our
    per-task work). We resolve the same settings once: proxies (``HTTP(S)_PROXY``/``NO_PROXY``)
    for this API's URL, and ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` when verification is on.
    """
    session = requests.Session()
    session.trust_env = False
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    if verify is True:
        verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    session.verify = verify
    session.headers.update(headers)
    return session


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached the server: refused or a connect timeout."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    text = repr(exc)
    return "NewConnectionError" in text or "Connection refused" in text or "NameResolutionError" in text


def _reason(exc: BaseException) -> str:
    """A short cause for one log line (requests nests the useful part deep inside)."""
    inner = exc
    while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    reason = getattr(inner, "reason", None)
    text = str(reason if reason is not None else inner)
    return text if len(text) <= 300 else text[:297] + "..."


def _status_error(method: str, url: str, response: requests.Response, content: bytes) -> APIStatusError:
    detail = content[:200].decode("utf-8", "replace").strip()
    error = APIStatusError(
        f"{method} {url} answered {response.status_code} {response.reason}" + (f": {detail}" if detail else ""),
        method=method,
        url=url,
        status_code=response.status_code,
    )
    retry_after = response.headers.get("Retry-After")
    if retry_after is not None:
        try:
            seconds = float(retry_after)
        except ValueError:
            seconds = None  # an HTTP date: fall back to our own back-off
        # nan, inf or negative: not a usable hint (and time.sleep would refuse nan)
        error.retry_after = seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None
    return error
