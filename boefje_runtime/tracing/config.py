"""Whether a process traces: the one place that turns ``SPAN_EXPORT_GRPC_ENDPOINT`` into
:data:`NO_TRACING` or a :class:`Tracing`, and fails at start (not silently) when tracing is asked
for without the ``tracing`` extra installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

from ..errors import ConfigError
from .off import NO_TRACING, NoTracing
from .provider import Export, Tracing

#: What to install when tracing is asked for without OpenTelemetry (the one line users see).
INSTALL_HINT = "install boefje-runtime[tracing]"

#: The OpenTelemetry distributions of the ``tracing`` extra, as importable modules.
REQUIRED_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter")


def available() -> bool:
    """Whether the ``tracing`` extra is installed; finds the modules without importing them."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in REQUIRED_MODULES)
    except (ImportError, ValueError):  # a parent package missing, or blocked in sys.modules
        return False


def tracing_for(endpoint: str | None, *, resource: Mapping[str, str] | None = None,
                export: Export = Export.BATCHED) -> Tracing | NoTracing:
    """The tracing a process should use: :data:`NO_TRACING` without an endpoint; ``export`` says
    when its spans leave (:class:`Export`).

    Raises :class:`ConfigError` (one line, exit 2 in the CLI) when an endpoint is set but the
    extra is not installed, so a misconfigured image fails at start instead of tracing nothing.
    """
    if not endpoint:
        return NO_TRACING
    if not available():
        raise ConfigError(
            f"SPAN_EXPORT_GRPC_ENDPOINT (--span-export-grpc-endpoint) is set but OpenTelemetry is not "
            f"installed: {INSTALL_HINT}"
        )
    return Tracing(endpoint=endpoint, resource=resource, export=export)
