"""The test Boefje API: a real HTTP server with OpenKAT's semantics, a task factory and a pytest fixture.

A first-class product, like dramatiq's ``StubBroker``: the test-suite, the benchmarks and users
(``python -m boefje_runtime.testing --port 8000 --seed-examples``) all run workers against it.
Runtime code never imports this package. Names are imported lazily so the ``pytest11`` plugin,
loaded into every pytest run where boefje-runtime is installed, costs nothing until used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "BoefjeAPIServer": "server",
    "Fault": "faults",
    "RequestRecord": "faults",
    "ENDPOINTS": "faults",
    "POP_MODES": "server",
    "make_task": "factory",
    "example_tasks": "factory",
    "EXAMPLE_BOEFJE_IDS": "factory",
    "EXAMPLE_OCI_IMAGE": "factory",
    "EXAMPLE_INPUT_OOI": "factory",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .factory import EXAMPLE_BOEFJE_IDS, EXAMPLE_INPUT_OOI, EXAMPLE_OCI_IMAGE, example_tasks, make_task  # noqa: F401
    from .faults import ENDPOINTS, Fault, RequestRecord  # noqa: F401
    from .server import POP_MODES, BoefjeAPIServer  # noqa: F401
