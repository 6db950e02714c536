"""The ``boefje_api`` pytest fixture, registered through the ``pytest11`` entry point.

Imports of the server happen inside the fixture, so merely having boefje-runtime installed costs
other projects' test runs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .server import BoefjeAPIServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "boefje_api(**kwargs): keyword arguments for the boefje_api fixture's BoefjeAPIServer "
        "(e.g. pop_mode='dedup', results_envelope=True)",
    )


@pytest.fixture
def boefje_api(request: pytest.FixtureRequest) -> Iterator[BoefjeAPIServer]:
    """A started test Boefje API on 127.0.0.1 (ephemeral port), stopped after the test.

    ``boefje_api.assert_completed(task_id)`` fails with the task's history, its files (the
    boefje's traceback) and the log lines workers forked during the test wrote about it.
    Configure it with ``@pytest.mark.boefje_api(pop_mode="dedup", results_envelope=True)``.
    """
    from .explain import TaskLogCapture
    from .server import BoefjeAPIServer

    marker = request.node.get_closest_marker("boefje_api")
    server = BoefjeAPIServer(**(marker.kwargs if marker else {}))
    server.task_logs = TaskLogCapture().install()  # before the test forks any worker
    try:
        yield server.start()
    finally:
        server.stop()
        server.task_logs.close()
