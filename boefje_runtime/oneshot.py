"""One-shot mode: GET the task at an input URL, run its boefje, POST the output, return an exit code.

This is what OpenKAT's ``<image> INPUT_URL`` does. The exit code says what happened
(:class:`~boefje_runtime.exit_codes.ExitCode`): OK once the output is delivered, whatever the
boefje's own status, and a distinct code for each way it can go wrong, with exactly one error line
naming the URL and the reason (no traceback: an operator reads it in ``docker logs``).

Where the output may go: only to the input URL's ``scheme://host:port`` (default ports made
explicit), unless ``allow_foreign_output`` is set. The input is not ours to trust: a forged one
must not turn the worker into a request forwarder that posts scan results, with our API headers,
to any host it names. The check runs before the boefje does, so a forged input costs no scan.
API headers are only ever sent to the input URL's origin and to ``BOEFJES_API``'s.

The boefje runs in a forked child (:mod:`boefje_runtime.supervised`), so ``TASK_TIMEOUT``,
SIGTERM, SIGINT and SIGHUP end it for sure: its whole process tree is killed, a FAILED output naming the
cause is posted, and the exit code says which (TASK_TIMED_OUT, INTERRUPTED). A signal that arrives
after the boefje has finished does not throw its result away: the output is still delivered.

How hard an output POST tries depends on why it is sent (:class:`Delivery`): what the run came to
(a completed result, a failed boefje, a boefje this image lacks) gets the normal retry policy,
because in one-shot nobody else closes the task; closing it after ``TASK_TIMEOUT`` or a stop signal
gets the short :data:`CLOSE_POLICY` (about 8 s at worst). A second stop signal ends either at once
(exit 9).

No task left running (protocol.md): when the boefje is not in this image (or its plugin is
broken) we still post a FAILED output with an ``error/boefje`` file saying so, because the API
would otherwise keep the task ``running`` forever; the exit code is still BOEFJE_NOT_FOUND, so
the orchestrator sees the image was wrong. A *malformed* input gets no output: what it says
(``output_url``, the task id) is exactly what we could not validate, so there is nowhere we can
trust to post to.
"""

from __future__ import annotations

import enum
import logging
from contextlib import ExitStack
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from .client import BoefjeAPIClient
from .config import RuntimeConfig, scrub_secret_env
from .errors import (
    APIError,
    APIResponseError,
    APIResponseTooLarge,
    BoefjeNotFound,
    ConfigError,
    ParseError,
    PluginError,
)
from .execution import failure_output
from .exit_codes import ExitCode
from .logs import log_context, secret_values
from .models import BoefjeInput, BoefjeOutput, OutputStatus, Task
from .plugins import Boefje, BoefjeRegistry
from .retry import RetryPolicy
from .stop_signals import SecondSignal, StopSignals
from .supervised import ChildRun, Ending, run_in_child
from .tracing import (
    GET_INPUT,
    NO_TRACING,
    POST_OUTPUT,
    RUN,
    Export,
    NoTracing,
    Tracing,
    environment_context,
    tracing_for,
)

logger = logging.getLogger("boefje_runtime.oneshot")

_DEFAULT_PORTS = {"http": 80, "https": 443}

#: A closing POST (see :class:`Delivery`): tries stop after 4 s and each request times out after 2 s
#: (connect and read), about 8 s at worst instead of the normal policy's minute and more. Short
#: enough for a container runtime's 10 s grace after its SIGTERM (Docker's and Kubernetes' default).
CLOSE_POLICY = RetryPolicy(attempts=3, total_seconds=4.0, initial_wait=0.1, max_wait=1.0)
CLOSE_REQUEST_TIMEOUT = 2.0


class Delivery(enum.Enum):
    """How hard an output POST tries, by why it is sent (a second stop signal ends either)."""

    #: What the run came to: the boefje's result, completed or failed (it raised, its process died),
    #: or a task this image cannot run. The normal retry policy (``OUTGOING_REQUEST_TIMEOUT`` per
    #: request, about a minute in all): in one-shot nobody else closes the task, so an API that is
    #: down for a few seconds must not leave it ``running`` for good (a completed result's files
    #: would be lost besides).
    RESULT = "result"
    #: Closing the task after ``TASK_TIMEOUT`` or a stop signal: :data:`CLOSE_POLICY`, within a
    #: container runtime's grace after its SIGTERM (the time the operator allowed is up).
    CLOSE = "close"


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL, lower-cased, with the default port filled in and
    a trailing dot dropped, so ``HTTP://Boefje:80/`` and ``http://boefje/`` compare equal.

    Raises ``ValueError`` for anything that is not an absolute http(s) URL.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute http(s) URL")
    port = parts.port  # ValueError for a port that is not a number in range
    return scheme, parts.hostname.rstrip("."), port if port is not None else _DEFAULT_PORTS[scheme]


def _origin_text(url: str) -> str:
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"


def _one_line(text: str) -> str:
    """Collapse whitespace: the error line must stay one line whatever a server answered."""
    return " ".join(str(text).split())


def _reason(exc: APIError) -> str:
    """The error's message without the ``METHOD URL`` prefix the client puts first (the line names the URL)."""
    text = str(exc)
    prefix = f"{exc.method} {exc.url} "
    if text.startswith(prefix):
        text = text[len(prefix):]
        if text.startswith("failed: "):
            text = text[len("failed: "):]
        elif text.startswith("answered "):
            text = "the server " + text
    return _one_line(text)


def _as_sent(url: str) -> str:
    """``url`` as requests will send it (normalised by its own parser, which picks the host it connects
    to). Raises ``ValueError`` (requests' ``InvalidURL`` is one) for a URL it would refuse."""
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    return prepared.url


class _Failure(Exception):
    """Ends the run with ``code``; ``line`` is the one error line to log, ``fields`` its extra fields
    (``outcome`` and ``duration_s`` when the line ends the task)."""

    def __init__(self, code: ExitCode, line: str, **fields: Any) -> None:
        super().__init__(line)
        self.code = code
        self.line = line
        self.fields = fields


def run_oneshot(
    input_url: str,
    config: RuntimeConfig,
    *,
    registry: BoefjeRegistry | None = None,
    tracing: Tracing | NoTracing | None = None,
) -> ExitCode:
    """Run the task at ``input_url`` and deliver its output; never raises (bar KeyboardInterrupt).

    ``registry`` defaults to the boefjes found under ``config.plugin_dir``. From the moment the
    task is known, every log line carries its id and masks its environment's values (the
    organisation's credentials), the final error line included. ``tracing`` defaults to what
    ``config.span_export_grpc_endpoint`` asks for, its spans sent when the run ends
    (``Export.AT_CLOSE``: the boefje's child is forked with no other thread alive); one passed in
    should be made with that too. The run's span continues the trace handed over in
    ``TRACEPARENT``, if any (see tracing.py).
    """
    scrub_secret_env()
    try:
        # (its spans leave when it ends: the boefje's child must be forked with no other thread alive)
        tracing = tracing if tracing is not None else tracing_for(config.span_export_grpc_endpoint,
                                                                  export=Export.AT_CLOSE)
    except ConfigError as exc:
        logger.error(str(exc))
        return ExitCode.USAGE
    signals = StopSignals()
    with signals.installed(), secret_values(config.api_headers.values()), \
            _OneShot(input_url, config, registry, tracing, signals) as run:
        try:
            code = run.run()
        except _Failure as failure:
            logger.error(_one_line(failure.line), extra=failure.fields)
            code = failure.code
        except Exception as exc:  # a bug of ours: still one line, and the task closed if we can
            logger.debug("Internal error", exc_info=True)
            line = f"Internal error running {input_url}: {type(exc).__name__}: {exc}"
            logger.error(_one_line(line + run.close_after_internal_error(line)))
            code = ExitCode.INTERNAL_ERROR
        run.end_trace(code)
        return code


class _OneShot:
    """One one-shot run; a class only so the steps share the clients, the task and its log context."""

    def __init__(
        self, input_url: str, config: RuntimeConfig, registry: BoefjeRegistry | None,
        tracing: Tracing | NoTracing = NO_TRACING, signals: StopSignals | None = None,
    ) -> None:
        self.input_url = input_url
        self.signals = signals or StopSignals()
        self.config = config
        self.registry = registry
        self.tracing = tracing
        self.trace = tracing.start_task(parent=environment_context())
        self.output: BoefjeOutput | None = None
        self.task: Task | None = None
        self.output_url: str | None = None
        self.delivered = False
        self._clients: dict[tuple[tuple[str, str, int], Delivery], BoefjeAPIClient] = {}
        self._scope = ExitStack()  # the task's log context and secrets, until the run's last line

    def __enter__(self) -> _OneShot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._scope.close()
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self.tracing.close()

    # -- steps ----------------------------------------------------------------------------------

    def run(self) -> ExitCode:
        with self.trace.phase(GET_INPUT):
            boefje_input = self.fetch_input()
        task = self.task = boefje_input.task
        meta = task.data
        self.trace.describe(task.id, meta.boefje.id, meta.boefje.version, meta.organization)
        self._scope.enter_context(secret_values((meta.environment or {}).values()))
        self._scope.enter_context(
            log_context(task_id=task.id, boefje_id=meta.boefje.id, organisation=meta.organization)
        )

        self.output_url = self.check_output_url(boefje_input.output_url)
        boefje = self.find_boefje(task)
        raw = task.raw.get("data") if task.raw is not None else None
        with self.trace.phase(RUN):
            child = run_in_child(
                boefje, raw if isinstance(raw, dict) else meta.to_dict(),
                max_output_bytes=self.config.max_output_bytes, timeout=self.config.task_timeout, signals=self.signals,
            )
            output = self.output = self.outcome(child)
            self.trace.ran(output, self.error)
        try:
            with self.trace.phase(POST_OUTPUT):
                self.deliver(output)
        except APIError as exc:
            raise _Failure(
                ExitCode.OUTPUT_UNDELIVERABLE,
                f"Cannot deliver the output of task {task.id} to {self.output_url}: {_reason(exc)}",
                outcome="abandoned", exit="undeliverable", duration_s=round(child.duration, 3),
                status_code=exc.status_code,
            ) from None
        except SecondSignal:
            raise _Failure(
                ExitCode.INTERRUPTED,
                f"Task {task.id}: a second signal ended the attempt to deliver its output to {self.output_url}",
                outcome="abandoned", exit="interrupted", duration_s=round(child.duration, 3),
            ) from None
        outcome = "completed" if output.status is OutputStatus.COMPLETED else "failed"
        exit_kind = "worker_lost" if child.ending is Ending.DIED else outcome
        logger.info(
            "Task %s: output delivered (%s)", outcome, self.output_url,
            extra={"outcome": outcome, "exit": exit_kind, "duration_s": round(child.duration, 3),
                   "status_code": self.client(self.output_url).last_status_code},
        )
        return ExitCode.OK

    def outcome(self, child: ChildRun) -> BoefjeOutput:
        """The output to deliver; a timeout or a signal instead ends the run, closing the task as FAILED."""
        assert self.task is not None
        ref = self.task.data.boefje
        if child.ending is Ending.FINISHED and child.result is not None:
            result = child.result
            self.error = result.error
            if result.error:
                logger.warning("Boefje failed in %.3f s: %s", result.duration, result.error)
            else:
                logger.info("Boefje completed in %.3f s with %d files", result.duration, len(result.output.files))
            if child.killed:
                logger.warning("Killed %d processes that the boefje left behind", child.killed)
            return result.output
        if child.ending is Ending.DIED:
            reason = self.error = f"the boefje's process {child.detail} after {child.duration:.3f} s"
            logger.warning("Boefje failed in %.3f s: %s", child.duration, reason)
            return failure_output(ref.id, ref.version, f"boefje-runtime: {reason}")
        if child.ending is Ending.TIMED_OUT:
            why, code = f"it ran longer than TASK_TIMEOUT ({self.config.task_timeout:g} s)", ExitCode.TASK_TIMED_OUT
            line = f"Task {self.task.id} timed out after {self.config.task_timeout:g} s; killed the boefje's processes"
        else:
            why, code = f"the one-shot process received {child.detail}", ExitCode.INTERRUPTED
            line = f"Task {self.task.id} interrupted by {child.detail}; killed the boefje's processes"
        output = failure_output(ref.id, ref.version, f"boefje-runtime stopped this task: {why}")
        closing = self._try_close(output, Delivery.CLOSE)
        raise _Failure(code, line + closing, outcome="failed" if self.delivered else "abandoned",
                       exit="timed_out" if child.ending is Ending.TIMED_OUT else "interrupted",
                       duration_s=round(child.duration, 3))

    def fetch_input(self) -> BoefjeInput:
        url = self.input_url
        try:
            client = self.client(url)
        except ValueError as exc:
            raise _Failure(ExitCode.INPUT_UNAVAILABLE, f"Cannot fetch input from {url}: {exc}") from None
        try:
            return client.fetch_input(url)
        except ParseError as exc:
            raise _Failure(ExitCode.INPUT_MALFORMED, f"Input from {url} is not a valid task: {exc}") from None
        except APIResponseTooLarge as exc:  # refused unread (e.g. a gzip bomb): not fetched, not malformed
            raise _Failure(ExitCode.INPUT_UNAVAILABLE, f"Cannot fetch input from {url}: {_reason(exc)}") from None
        except APIResponseError as exc:
            raise _Failure(ExitCode.INPUT_MALFORMED, f"Input from {url} is not a valid task: {_reason(exc)}") from None
        except APIError as exc:
            raise _Failure(ExitCode.INPUT_UNAVAILABLE, f"Cannot fetch input from {url}: {_reason(exc)}") from None

    def check_output_url(self, output_url: str) -> str:
        """The absolute output URL, refused unless it is on the input URL's origin (or that is allowed)."""
        url = urljoin(self.input_url, output_url)  # a relative output_url stays on the input's origin
        try:
            # Check the URL exactly as it will be sent: urlsplit and requests' parser disagree on some
            # (``http://evil:1\\@boefje:8000/`` is boefje:8000 to urlsplit, evil:1 to requests).
            url = _as_sent(url)
            same = origin(url) == origin(self.input_url)
        except ValueError as exc:
            raise _Failure(ExitCode.OUTPUT_UNDELIVERABLE, f"Refusing output URL {url}: {exc}") from None
        if not same and not self.config.allow_foreign_output:
            raise _Failure(
                ExitCode.OUTPUT_UNDELIVERABLE,
                f"Refusing to post the output of task {self.task.id if self.task else '?'} to {url}: not the "
                f"origin of the input URL ({_origin_text(self.input_url)}); set ALLOW_FOREIGN_OUTPUT=true "
                "(--allow-foreign-output) to allow it",
            )
        return url

    def find_boefje(self, task: Task) -> Boefje:
        ref = task.data.boefje
        try:
            registry = self.registry if self.registry is not None else BoefjeRegistry.discover(self.config.plugin_dir)
            boefje = registry.find(ref.id, oci_image=ref.oci_image)
            # Import now: a plugin that cannot be imported is "not in this image" for the exit
            # code, rather than a boefje failure reported as exit 0.
            boefje.load()
            return boefje
        except (BoefjeNotFound, PluginError) as exc:
            reason = _one_line(str(exc))
            line = f"Cannot run task {task.id} from {self.input_url}: {reason}"
            output = failure_output(ref.id, ref.version, f"boefje-runtime could not run this task: {reason}")
            closing = self._try_close(output)
            raise _Failure(ExitCode.BOEFJE_NOT_FOUND, line + closing,
                           outcome="failed" if self.delivered else "abandoned", exit="not_found",
                           duration_s=0.0) from None

    def deliver(self, output: BoefjeOutput, delivery: Delivery = Delivery.RESULT) -> None:
        """POST ``output`` as ``delivery`` says. Raises :class:`SecondSignal` when a second
        stop signal arrives (or had arrived) meanwhile: an operator who asks twice wants out, result
        or not (a first one, after the boefje finished, lets the POST go on)."""
        assert self.output_url is not None
        with self.signals.second_ends_wait():
            self.client(self.output_url, delivery).deliver_output(self.output_url, output)
        self.delivered = True

    def end_trace(self, code: ExitCode) -> None:
        """End the run's span: the boefje's status once delivered, else what went wrong."""
        if code == ExitCode.OK and self.output is not None:
            self.trace.finish(self.output.status.value.lower())
        else:
            self.trace.finish(code.name.lower())

    # -- closing a task that cannot run ---------------------------------------------------------

    def _try_close(self, output: BoefjeOutput, delivery: Delivery = Delivery.RESULT) -> str:
        """Post a FAILED output so the task is not left running; returns what to add to the error line."""
        try:
            self.deliver(output, delivery)
        except APIError as exc:
            return f"; marking the task failed did not work either: {_reason(exc)}"
        except SecondSignal:
            return "; a second signal ended the attempt to mark the task failed"
        return "; the task was marked failed"

    def close_after_internal_error(self, line: str) -> str:
        if self.task is None or self.output_url is None or self.delivered:
            return ""
        ref = self.task.data.boefje
        return self._try_close(failure_output(ref.id, ref.version, line, secrets=self.task.data.environment))

    # -- clients --------------------------------------------------------------------------------

    def client(self, url: str, delivery: Delivery = Delivery.RESULT) -> BoefjeAPIClient:
        """A client for ``url``'s origin. API headers go to the input's and BOEFJES_API's origins only.
        ``Delivery.CLOSE``: one with :data:`CLOSE_POLICY` and :data:`CLOSE_REQUEST_TIMEOUT`."""
        key = origin(url)
        client = self._clients.get((key, delivery))
        if client is None:
            trusted = {origin(self.input_url)}
            if self.config.boefjes_api:
                trusted.add(origin(self.config.boefjes_api))
            scheme, host, port = key
            timeout = self.config.outgoing_request_timeout
            hurry = delivery is Delivery.CLOSE
            client = self._clients[(key, delivery)] = BoefjeAPIClient(
                f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}",
                timeout=min(timeout, CLOSE_REQUEST_TIMEOUT) if hurry else timeout,
                headers=self.config.api_headers if key in trusted else None,
                retry=CLOSE_POLICY if hurry else None,
            )
            client.header_hook = self.tracing.header_hook
        return client


__all__ = ["origin", "run_oneshot"]
