"""``RuntimeConfig`` and :data:`SETTINGS`, the one table of every setting.

Each row says a setting's field name, env var, flags, parser, default and help text. The CLI
generates its click options from the table and :meth:`RuntimeConfig.from_env` reads the same
env vars, so a setting cannot be spelled, parsed or defaulted differently in two places.
Defaults are OpenKAT's (its users already rely on them), except ``DEDUPLICATE``: see protocol.md.

Parsers take the raw text of a flag or env var *or* an already typed value, and raise
``ValueError`` with the reason; :meth:`Setting.parse` turns that into a :class:`ConfigError`
naming the env var and flag. ``RuntimeConfig`` runs every field through its parser too, so
``RuntimeConfig(pool_size=0)`` fails just like ``POOL_SIZE=0``.

This module must stay cheap to import (``boefje-worker --help`` loads it): no click, no requests.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_OFF = frozenset({"", "0", "off", "none"})

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOGGING_FORMATS = ("text", "json")
MIB = 1024 * 1024


# -- parsers: raw text or a typed value in, typed value out, ValueError with the reason -----------


def parse_bool(value: Any) -> bool:
    """``true/false/1/0/yes/no/on/off`` in any case. Anything else is an error, unlike OpenKAT,
    which reads every non-empty value (even "false") as true."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"{value!r} is not a boolean; use true/false, 1/0, yes/no or on/off")


#: The most worker processes a pool may have. Each is a forked process with its own memory for
#: what its boefjes allocate; more than this is a typo (``--pool-size 100000`` once forked 3,000
#: workers and exhausted 24 GiB before it could be stopped), not a deployment. Checked here, so the
#: CLI says so in one line (exit 2), and again by ``PoolSettings`` for pools built in code.
MAX_POOL_SIZE = 256


def _number(
    kind: type, *, minimum: float | None = None, maximum: float | None = None, positive: bool = False,
    off: bool = False,
) -> Callable:
    """A parser for an int or float setting; with ``off``, empty/0/"off"/"none" mean None (no limit)."""
    noun = "an integer" if kind is int else "a number"

    def parse(value: Any) -> Any:
        if value is None and off:
            return None
        if isinstance(value, str):
            text = value.strip()
            if off and text.lower() in _OFF:
                return None
            try:
                number = kind(text)
            except ValueError:
                raise ValueError(f"{value!r} is not {noun}") from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and isinstance(value, float) and not value.is_integer()
        ):
            raise ValueError(f"{value!r} is not {noun}")
        else:
            number = kind(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a finite number")
        if off and number == 0:
            return None
        if positive and number <= 0:
            raise ValueError(f"{value!r} must be greater than 0" + (" (or 0/off for no limit)" if off else ""))
        if minimum is not None and number < minimum:
            raise ValueError(f"{value!r} must be at least {minimum:g}")
        if maximum is not None and number > maximum:
            raise ValueError(f"{value!r} must be at most {maximum:g}")
        return number

    return parse


def _choice(choices: tuple[str, ...], *, upper: bool) -> Callable:
    def parse(value: Any) -> str:
        text = value.strip() if isinstance(value, str) else value
        if isinstance(text, str):
            text = text.upper() if upper else text.lower()
            if text in choices:
                return text
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")

    return parse


def _text(*, optional: bool) -> Callable:
    def parse(value: Any) -> str | None:
        if value is None and optional:
            return None
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string")
        text = value.strip()
        if not text and optional:
            return None
        if not text:
            raise ValueError("must not be empty")
        return text

    return parse


def parse_url(value: Any) -> str | None:
    """An http(s) base URL, without a trailing slash; empty means not set."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a URL")
    text = value.strip().rstrip("/")
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL like http://boefje:8000")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return text


def parse_port(value: Any) -> int | None:
    """A TCP port; empty/0/off mean "no health endpoint"."""
    port = _number(int, off=True)(value)
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{value!r} is not a port (1-65535, or 0/off)")
    return port


def _items(value: Any, split: Callable[[str], list[str]]) -> list[str]:
    """Flatten a str, or an iterable of str (a repeated flag), splitting each with ``split``."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise ValueError(f"{value!r} is not a list of strings")
    result: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not a string")
        result.extend(part.strip() for part in split(item) if part.strip())
    return result


def parse_images(value: Any) -> str | None:
    """OCI images, comma-separated, from one string or several (``--oci-image a --oci-image b,c``),
    kept as one comma-joined string (order kept, no repeats; an OCI reference holds no comma);
    None when empty. A worker takes tasks of each, e.g. an image's old and new name during an upgrade."""
    images = tuple(dict.fromkeys(_items(value, lambda text: text.split(","))))
    return ",".join(images) or None


def parse_plugins(value: Any) -> tuple[str, ...]:
    """Plugin ids: comma-separated, from one string or several (``-p a -p b,c``); order kept, no repeats."""
    return tuple(dict.fromkeys(_items(value, lambda text: text.split(","))))


# RFC 9110 token: what a header name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Split a one-line list on commas only where the next part starts a new "Name:", so a value that
# itself holds a comma (``Authorization: Bearer a,b``) stays whole.
_NEXT_HEADER = re.compile(r",(?=\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*:)")


def _split_headers(text: str) -> list[str]:
    lines = text.splitlines()
    return lines if len(lines) > 1 else _NEXT_HEADER.split(text)


def parse_headers(value: Any) -> dict[str, str]:
    """``"Name: value"`` pairs, from a repeated flag or a newline- or comma-separated env var.

    A mapping is accepted as is (after checking). Error messages never quote a value: header
    values are credentials.
    """
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        try:
            entries = _items(value, _split_headers)
        except ValueError:
            raise ValueError("expected 'Name: value' strings (value not shown)") from None
        pairs = []
        for number, entry in enumerate(entries, start=1):
            name, sep, header_value = entry.partition(":")
            if not sep:
                raise ValueError(f"header {number} is not 'Name: value' (value not shown)")
            pairs.append((name.strip(), header_value.strip()))
    headers: dict[str, str] = {}
    for name, header_value in pairs:
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if not isinstance(header_value, str) or any(char in header_value for char in "\r\n\0"):
            raise ValueError(f"the value of header {name!r} is not a single line of text (value not shown)")
        headers[name] = header_value
    return headers


# -- the table ----------------------------------------------------------------------------------


class Mode(enum.Enum):
    """Which way of running a setting applies to (the README's "mode" column, shown by ``--help``)."""

    ONE_SHOT = "one-shot"
    WORKER = "worker"
    BOTH = "both"

    @property
    def label(self) -> str:
        """As ``--help`` shows it after the setting's help text."""
        return {"one-shot": "one-shot only", "worker": "worker mode only", "both": "both modes"}[self.value]

    def applies_to(self, mode: Mode) -> bool:
        return self is Mode.BOTH or self is mode



@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    #: The :class:`RuntimeConfig` field.
    name: str
    #: The environment variable (OpenKAT's name where it has one).
    env: str
    #: The CLI flags, e.g. ``("-p", "--plugins")``; the long one is the env var's name, kebab-cased.
    flags: tuple[str, ...]
    #: Raw text or typed value in, typed value out; raises ``ValueError`` with the reason.
    parser: Callable[[Any], Any]
    default: Any
    help: str
    #: The flag may be repeated; each occurrence may hold several comma-separated values.
    multiple: bool = False
    #: A boolean: the CLI offers ``--x/--no-x`` (the env var takes true/false/1/0/...).
    boolean: bool = False
    #: Values are credentials: never shown in errors, help, logs or :meth:`RuntimeConfig.describe`.
    secret: bool = False
    #: Shown in ``--help`` instead of the type name (e.g. ``[DEBUG|INFO|WARNING|ERROR]``).
    metavar: str | None = None
    #: One-shot, worker mode or both: every row must say (no default, so a new row cannot forget).
    mode: Mode = field(kw_only=True)

    @property
    def flag(self) -> str:
        """The long flag, for messages."""
        return next((f for f in self.flags if f.startswith("--")), self.flags[0])

    @property
    def label(self) -> str:
        return f"{self.env} ({self.flag})"

    @property
    def default_text(self) -> str | None:
        """The default as text a user could type (``10``, ``off``), for ``--help``; None when there
        is nothing worth showing (no default, or an empty list)."""
        default = self.default
        if default is None:
            try:
                return "off" if self.parser("off") is None else None
            except ValueError:
                return None
        if isinstance(default, bool):
            return "true" if default else "false"
        if isinstance(default, (tuple, list, dict)):
            return None if not default else ",".join(map(str, default))
        return f"{default:g}" if isinstance(default, float) else str(default)

    def parse(self, value: Any) -> Any:
        """Parse ``value`` (text from a flag/env var, or a typed value); raises :class:`ConfigError`
        naming the env var and flag and, unless secret, the bad value (the parser's reason quotes it)."""
        try:
            return self.parser(value)
        except ValueError as exc:
            raise ConfigError(f"invalid {self.label}: {exc}") from None


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "boefjes_api", "BOEFJES_API", ("--boefjes-api",), parse_url, None,
        "Boefje API base URL, e.g. http://boefje:8000. Required in worker mode.",
        metavar="URL",
        mode=Mode.BOTH,
    ),
    Setting(
        "oci_image", "OCI_IMAGE", ("--oci-image",), parse_images, None,
        "This image's OCI id; worker mode only takes tasks for it. Several (an old and a new name): repeat "
        "the flag or separate with commas. Required in worker mode.",
        multiple=True, metavar="IMAGE",
        mode=Mode.WORKER,
    ),
    Setting(
        "plugins", "PLUGINS", ("-p", "--plugins"), parse_plugins, (),
        "Plugin ids to accept; repeat the flag or separate with commas. Default: all.",
        multiple=True, metavar="IDS",
        mode=Mode.WORKER,
    ),
    Setting(
        "log_level", "LOG_LEVEL", ("-l", "--log-level"), _choice(LOG_LEVELS, upper=True), "INFO",
        "Log level.", metavar="[" + "|".join(LOG_LEVELS) + "]",
        mode=Mode.BOTH,
    ),
    Setting(
        "logging_format", "LOGGING_FORMAT", ("--logging-format",), _choice(LOGGING_FORMATS, upper=False), "text",
        "Log lines as text or as JSON objects.", metavar="[" + "|".join(LOGGING_FORMATS) + "]",
        mode=Mode.BOTH,
    ),
    Setting(
        "pool_size", "POOL_SIZE", ("--pool-size",), _number(int, minimum=1, maximum=MAX_POOL_SIZE), 2,
        "Worker processes, each running one task at a time; at most 256.", metavar="N",
        mode=Mode.WORKER,
    ),
    Setting(
        "poll_interval", "POLL_INTERVAL", ("--poll-interval",), _number(float, positive=True), 10.0,
        "Longest wait between polls while the queue is empty (seconds).", metavar="SECONDS",
        mode=Mode.WORKER,
    ),
    Setting(
        "first_poll_wait", "FIRST_POLL_WAIT", ("--first-poll-wait",), _number(float, positive=True), 0.25,
        "Wait after an empty poll, for a second after the last task (then it grows to POLL_INTERVAL): how "
        "soon a task that trickles in is picked up, against how often an idle container polls (seconds).",
        metavar="SECONDS",
        mode=Mode.WORKER,
    ),
    Setting(
        "worker_heartbeat", "WORKER_HEARTBEAT", ("--worker-heartbeat",), _number(float, positive=True), 1.0,
        "Longest the supervisor waits while every worker is busy (seconds).", metavar="SECONDS",
        mode=Mode.WORKER,
    ),
    Setting(
        "deduplicate", "DEDUPLICATE", ("--deduplicate",), parse_bool, True,
        "Run duplicate tasks of one pop once and post the output to each.", boolean=True,
        mode=Mode.WORKER,
    ),
    Setting(
        "dedup_group_limit", "DEDUP_GROUP_LIMIT", ("--dedup-group-limit",), _number(int, minimum=1), 32,
        "With DEDUPLICATE: the pop limit, so a group of duplicates (one task per organisation) arrives whole; "
        "unrelated surplus is pushed back at once.", metavar="N",
        mode=Mode.WORKER,
    ),
    Setting(
        "outgoing_request_timeout", "OUTGOING_REQUEST_TIMEOUT", ("--outgoing-request-timeout",),
        _number(float, positive=True), 30.0,
        "Timeout of each Boefje API request (seconds).", metavar="SECONDS",
        mode=Mode.BOTH,
    ),
    Setting(
        "task_timeout", "TASK_TIMEOUT", ("--task-timeout",), _number(float, positive=True, off=True), None,
        "Kill a task that runs longer than this (seconds); 0 or off: no limit.", metavar="SECONDS",
        mode=Mode.BOTH,
    ),
    Setting(
        "max_tasks_per_child", "MAX_TASKS_PER_CHILD", ("--max-tasks-per-child",),
        _number(int, positive=True, off=True), None,
        "Replace a worker process after this many tasks; 0 or off: never.", metavar="N",
        mode=Mode.WORKER,
    ),
    Setting(
        "max_memory_per_child", "MAX_MEMORY_PER_CHILD", ("--max-memory-per-child",),
        _number(float, positive=True, off=True), None,
        "Replace a worker process once it uses more than this many MiB; 0 or off: never.", metavar="MIB",
        mode=Mode.WORKER,
    ),
    Setting(
        "shutdown_timeout", "SHUTDOWN_TIMEOUT", ("--shutdown-timeout",), _number(float, minimum=0), 25.0,
        "On SIGTERM/SIGINT, how long running tasks may finish before they are killed (seconds).",
        metavar="SECONDS",
        mode=Mode.WORKER,
    ),
    Setting(
        "prefetch", "PREFETCH", ("--prefetch",), _number(int, minimum=0), 0,
        "Tasks to pop beyond the idle workers (kept small so other workers are not starved).", metavar="N",
        mode=Mode.WORKER,
    ),
    Setting(
        "pop_ahead", "POP_AHEAD", ("--pop-ahead",), parse_bool, True,
        "Pop a worker's next task before it is free: while it posts its output, or when its boefje "
        "usually ends within four pop round trips; with boefjes shorter than a few pop round trips, also "
        "the task after (two tasks wait per such worker at most).",
        boolean=True,
        mode=Mode.WORKER,
    ),
    Setting(
        "burst", "BURST", ("--burst",), parse_bool, False,
        "Exit once the queue has nothing for this worker.", boolean=True,
        mode=Mode.WORKER,
    ),
    Setting(
        "burst_unreachable_timeout", "BURST_UNREACHABLE_TIMEOUT", ("--burst-unreachable-timeout",),
        _number(float, positive=True, off=True), 60.0,
        "With --burst: exit 1 once every pop has failed for this long, e.g. an unreachable or misspelled "
        "BOEFJES_API (seconds); 0 or off: keep trying.", metavar="SECONDS",
        mode=Mode.WORKER,
    ),
    Setting(
        "max_tasks", "MAX_TASKS", ("--max-tasks",), _number(int, positive=True, off=True), None,
        "Exit after this many tasks in total; 0 or off: no limit.", metavar="N",
        mode=Mode.WORKER,
    ),
    Setting(
        "health_port", "HEALTH_PORT", ("--health-port",), parse_port, None,
        "Serve health and metrics on this TCP port; 0 or off: no endpoint.", metavar="PORT",
        mode=Mode.WORKER,
    ),
    Setting(
        "health_host", "HEALTH_HOST", ("--health-host",), _text(optional=False), "127.0.0.1",
        "Address the health endpoint listens on.", metavar="HOST",
        mode=Mode.WORKER,
    ),
    Setting(
        "plugin_dir", "PLUGIN_DIR", ("--plugin-dir",), _text(optional=False), ".",
        "Folder searched (recursively) for boefje packages (boefje.json + main.py); default: the working "
        "directory.", metavar="DIR",
        mode=Mode.BOTH,
    ),
    Setting(
        "max_output_size", "MAX_OUTPUT_SIZE", ("--max-output-size",), _number(float, positive=True), 64.0,
        "Largest boefje output accepted (MiB); more fails the task instead of exhausting memory.",
        metavar="MIB",
        mode=Mode.BOTH,
    ),
    Setting(
        "allow_foreign_output", "ALLOW_FOREIGN_OUTPUT", ("--allow-foreign-output",), parse_bool, False,
        "One-shot: allow posting the output to another scheme://host:port than the input URL's.",
        boolean=True,
        mode=Mode.ONE_SHOT,
    ),
    Setting(
        "api_headers", "BOEFJES_API_HEADERS", ("--api-header",), parse_headers, {},
        "Extra 'Name: value' header for every Boefje API request; repeat the flag, or separate with newlines "
        "or commas in the env var. Values are never logged.",
        multiple=True, secret=True, metavar="'NAME: VALUE'",
        mode=Mode.BOTH,
    ),
    Setting(
        "queue", "QUEUE", ("--queue",), _text(optional=False), "boefje",
        "Scheduler queue to pop tasks from.", metavar="NAME",
        mode=Mode.WORKER,
    ),
    Setting(
        "span_export_grpc_endpoint", "SPAN_EXPORT_GRPC_ENDPOINT", ("--span-export-grpc-endpoint",), parse_url, None,
        "Export OpenTelemetry traces over OTLP/gRPC to this URL, e.g. http://jaeger:4317 (needs "
        "boefje-runtime[tracing]). Default: off.",
        metavar="URL",
        mode=Mode.BOTH,
    ),
)

SETTINGS_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


def _default(setting: Setting) -> Any:
    default = setting.default
    if isinstance(default, (dict, list, set)):
        return field(default_factory=lambda: type(default)(default), repr=not setting.secret)
    return field(default=default, repr=not setting.secret)


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """Every setting of the runtime, one field per row of :data:`SETTINGS` (same names, same defaults).

    Frozen and picklable, so the pool can hand it to worker processes as it is. Build it from the
    environment with :meth:`from_env` (embedding images), or through the CLI (flags win over env vars).
    """

    #: Boefje API base URL (``BOEFJES_API``). Required in worker mode.
    boefjes_api: str | None = _default(SETTINGS_BY_NAME["boefjes_api"])
    #: This image's OCI id (``OCI_IMAGE``), several comma-joined; see :attr:`images`. Required in worker mode.
    oci_image: str | None = _default(SETTINGS_BY_NAME["oci_image"])
    #: Plugin ids to accept (``PLUGINS``); empty: all.
    plugins: tuple[str, ...] = _default(SETTINGS_BY_NAME["plugins"])
    #: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR`` (``LOG_LEVEL``).
    log_level: str = _default(SETTINGS_BY_NAME["log_level"])
    #: ``text`` or ``json`` (``LOGGING_FORMAT``).
    logging_format: str = _default(SETTINGS_BY_NAME["logging_format"])
    #: Worker processes (``POOL_SIZE``).
    pool_size: int = _default(SETTINGS_BY_NAME["pool_size"])
    #: Longest idle wait between polls, seconds (``POLL_INTERVAL``).
    poll_interval: float = _default(SETTINGS_BY_NAME["poll_interval"])
    #: First wait after an empty poll, seconds (``FIRST_POLL_WAIT``); see ``PoolSettings.first_poll_wait``.
    first_poll_wait: float = _default(SETTINGS_BY_NAME["first_poll_wait"])
    #: Longest supervisor wait while all workers are busy, seconds (``WORKER_HEARTBEAT``).
    worker_heartbeat: float = _default(SETTINGS_BY_NAME["worker_heartbeat"])
    #: Run duplicates of one pop once (``DEDUPLICATE``); parsed properly, default true.
    deduplicate: bool = _default(SETTINGS_BY_NAME["deduplicate"])
    #: Pop limit with deduplication on: the largest group taken whole (``DEDUP_GROUP_LIMIT``).
    dedup_group_limit: int = _default(SETTINGS_BY_NAME["dedup_group_limit"])
    #: Timeout per Boefje API request, seconds (``OUTGOING_REQUEST_TIMEOUT``).
    outgoing_request_timeout: float = _default(SETTINGS_BY_NAME["outgoing_request_timeout"])
    #: Per-task time limit, seconds; None: none (``TASK_TIMEOUT``).
    task_timeout: float | None = _default(SETTINGS_BY_NAME["task_timeout"])
    #: Recycle a worker after this many tasks; None: never (``MAX_TASKS_PER_CHILD``).
    max_tasks_per_child: int | None = _default(SETTINGS_BY_NAME["max_tasks_per_child"])
    #: Recycle a worker above this resident memory, MiB; None: never (``MAX_MEMORY_PER_CHILD``).
    max_memory_per_child: float | None = _default(SETTINGS_BY_NAME["max_memory_per_child"])
    #: Grace period for running tasks on shutdown, seconds (``SHUTDOWN_TIMEOUT``).
    shutdown_timeout: float = _default(SETTINGS_BY_NAME["shutdown_timeout"])
    #: Tasks popped beyond the idle workers (``PREFETCH``).
    prefetch: int = _default(SETTINGS_BY_NAME["prefetch"])
    #: Pop a worker's next task while it delivers its output (``POP_AHEAD``).
    pop_ahead: bool = _default(SETTINGS_BY_NAME["pop_ahead"])
    #: Exit once the queue is empty (``BURST``).
    burst: bool = _default(SETTINGS_BY_NAME["burst"])
    #: In burst mode, exit 1 once pops have failed this long, seconds; None: never (``BURST_UNREACHABLE_TIMEOUT``).
    burst_unreachable_timeout: float | None = _default(SETTINGS_BY_NAME["burst_unreachable_timeout"])
    #: Exit after this many tasks; None: no limit (``MAX_TASKS``).
    max_tasks: int | None = _default(SETTINGS_BY_NAME["max_tasks"])
    #: Health/metrics port; None: no endpoint (``HEALTH_PORT``).
    health_port: int | None = _default(SETTINGS_BY_NAME["health_port"])
    #: Health/metrics listen address (``HEALTH_HOST``).
    health_host: str = _default(SETTINGS_BY_NAME["health_host"])
    #: Where boefje packages are searched (``PLUGIN_DIR``).
    plugin_dir: str = _default(SETTINGS_BY_NAME["plugin_dir"])
    #: Largest accepted boefje output, MiB (``MAX_OUTPUT_SIZE``); see :attr:`max_output_bytes`.
    max_output_size: float = _default(SETTINGS_BY_NAME["max_output_size"])
    #: One-shot may post output to another origin than the input URL's (``ALLOW_FOREIGN_OUTPUT``).
    allow_foreign_output: bool = _default(SETTINGS_BY_NAME["allow_foreign_output"])
    #: Extra headers for every Boefje API request (``BOEFJES_API_HEADERS``). Secret: not in repr.
    api_headers: dict[str, str] = _default(SETTINGS_BY_NAME["api_headers"])  # noqa: RUF009 - a field()
    #: The scheduler queue (``QUEUE``).
    queue: str = _default(SETTINGS_BY_NAME["queue"])
    #: OTLP/gRPC collector for traces; None: tracing off (``SPAN_EXPORT_GRPC_ENDPOINT``).
    span_export_grpc_endpoint: str | None = _default(SETTINGS_BY_NAME["span_export_grpc_endpoint"])

    def __post_init__(self) -> None:
        # One parser per setting normalises typed values too ("false" -> False, "a,b" -> ("a", "b"))
        # and rejects out-of-range ones, whichever way the config was built.
        for setting in SETTINGS:
            object.__setattr__(self, setting.name, setting.parse(getattr(self, setting.name)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RuntimeConfig:
        """Read every setting from ``environ`` (default: ``os.environ``); ``overrides`` win.

        An empty env var counts as unset, as in click. Raises :class:`ConfigError` naming the env
        var and flag of a bad value, and ``TypeError`` for an override that is not a setting.
        """
        environ = os.environ if environ is None else environ
        unknown = set(overrides) - set(SETTINGS_BY_NAME)
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            if setting.name in overrides:
                values[setting.name] = overrides[setting.name]
            elif environ.get(setting.env):
                values[setting.name] = setting.parse(environ[setting.env])
        return cls(**values)

    def replace(self, **changes: Any) -> RuntimeConfig:
        """A copy with some settings changed (parsed and checked like any other)."""
        return dataclasses.replace(self, **changes)

    def missing_for_worker_mode(self) -> list[Setting]:
        """The settings worker mode needs that are not set (BOEFJES_API, OCI_IMAGE)."""
        return [SETTINGS_BY_NAME[name] for name in ("boefjes_api", "oci_image") if not getattr(self, name)]

    def check_worker_mode(self) -> None:
        """Raise :class:`ConfigError` naming each missing setting worker mode needs."""
        missing = self.missing_for_worker_mode()
        if missing:
            names = " and ".join(setting.label for setting in missing)
            raise ConfigError(f"worker mode needs {names}; set the env var or pass the flag{spelling_hint(missing)}")

    @property
    def images(self) -> tuple[str, ...]:
        """The OCI images this worker takes tasks for (the queue filter)."""
        return tuple(self.oci_image.split(",")) if self.oci_image else ()

    @property
    def max_output_bytes(self) -> int:
        return int(self.max_output_size * MIB)

    def describe(self) -> str:
        """The start-up line, in the seed's form. Header names are shown, their values never."""
        timeout = f"{self.outgoing_request_timeout:g}"
        line = (
            f"Configured BoefjeAPI [base_url={self.boefjes_api}, outgoing_request_timeout={timeout}, "
            f"images={list(self.images)!r}, plugins={list(self.plugins)!r}"
        )
        if self.api_headers:
            line += f", headers={sorted(self.api_headers)!r}"
        return line + "]"

    def summary(self) -> str:
        """Every setting as ``name=value`` for a debug line; secret values are masked."""
        parts = []
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            if setting.secret and isinstance(value, Mapping):
                value = {name: "***" for name in value}
            elif setting.secret and value:
                value = "***"
            parts.append(f"{setting.name}={value!r}")
        return " ".join(parts)


#: Other spellings of our env vars seen in the wild (some OpenKAT docs say ``BOEFJE_API``).
MISSPELLINGS = {"BOEFJE_API": "BOEFJES_API"}


def spelling_hint(missing: Iterable[Setting], environ: Mapping[str, str] | None = None) -> str:
    """``"; BOEFJE_API is set: did you mean BOEFJES_API?"`` when a missing setting's env var has a
    known misspelling that is set; else ``""``."""
    environ = os.environ if environ is None else environ
    wanted = {setting.env for setting in missing}
    hints = [f"{wrong} is set: did you mean {right}?" for wrong, right in MISSPELLINGS.items()
             if right in wanted and environ.get(wrong)]
    return "".join(f"; {hint}" for hint in hints)


def scrub_secret_env(environ: MutableMapping[str, str] | None = None) -> None:
    """Remove secret settings (the API's headers) from the environment once they are read.

    A boefje runs with this process's environment (and forked workers inherit it): the worker's
    own credentials must not be part of it.
    """
    environ = os.environ if environ is None else environ
    for setting in SETTINGS:
        if setting.secret:
            environ.pop(setting.env, None)


__all__ = [
    "LOGGING_FORMATS",
    "LOG_LEVELS",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "Mode",
    "RuntimeConfig",
    "Setting",
    "parse_bool",
    "parse_headers",
    "parse_images",
    "parse_plugins",
    "parse_port",
    "parse_url",
    "scrub_secret_env",
    "spelling_hint",
]
