"""Tracing (issue 15): spans of one-shot runs and the pool, traceparent on every request, and what
tracing off costs (nothing imported). Spans are read with the SDK's in-memory exporter in this
process; the pool's spans come from its forked workers over real OTLP/gRPC (tests/otlp_receiver.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from boefje_runtime.config import RuntimeConfig
from boefje_runtime.exit_codes import ExitCode
from boefje_runtime.oneshot import run_oneshot
from boefje_runtime.testing import make_task
from boefje_runtime.tracing import INSTALL_HINT, PopTrace, Tracing, available, traceparent

from . import helpers
from .helpers import running_task, write_plugin

if available():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

#: The tests that read spans need the extra (the test extra installs it); the others must run without.
needs_otel = pytest.mark.skipif(not available(), reason="needs boefje-runtime[tracing]")

HELLO = """
    def run(boefje_meta):
        return [({"text/plain"}, "hello " + boefje_meta["input_ooi"])]
"""
RAISER = """
    def run(boefje_meta):
        raise RuntimeError("the scan broke: " + boefje_meta["environment"]["TOKEN"])
"""
#: Reports which OpenTelemetry modules the process that runs it has imported.
OTEL_MODULES = """
    import json
    import sys

    def run(boefje_meta):
        return [({"application/json"}, json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))]
"""
#: Reports how many threads the process that forked it ran (its parent: one-shot's own process).
PARENT_THREADS = """
    import os

    def run(boefje_meta):
        return [({"text/plain"}, str(len(os.listdir(f"/proc/{os.getppid()}/task"))))]
"""
PARENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_SPAN = 0x00F067AA0BA902B7


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    root = tmp_path / "plugins"
    write_plugin(root / "hello", HELLO, id="hello", version="1.2", oci_image="test/hello:latest")
    write_plugin(root / "raiser", RAISER, id="raiser", oci_image="test/raiser:latest")
    write_plugin(root / "otel_modules", OTEL_MODULES, id="otel-modules", oci_image="test/otel:latest")
    write_plugin(root / "parent_threads", PARENT_THREADS, id="parent-threads", oci_image="test/threads:latest")
    return root


def by_name(spans) -> dict[str, object]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]
    return named


def trace_ids(records) -> set[int]:
    """Trace ids of the traceparent headers the test API received (every request must carry one)."""
    ids = set()
    for record in records:
        assert record.traceparent, f"{record.method} {record.path} carried no traceparent"
        version, trace_id, span_id, flags = record.traceparent.split("-")
        assert (version, len(trace_id), len(span_id)) == ("00", 32, 16), record.traceparent
        assert int(flags, 16) & 1, f"not sampled: {record.traceparent}"  # 0x02 (random id) may be set too
        ids.add(int(trace_id, 16))
    return ids


# -- one-shot ---------------------------------------------------------------------------------------


@needs_otel
def test_oneshot_continues_the_trace_handed_over_in_traceparent(api, plugins, monkeypatch):
    task_id = running_task(api, "hello", input_ooi="Hostname|internet|example.com", organisation="acme",
                           version="1.2")
    monkeypatch.setenv("TRACEPARENT", traceparent(PARENT_TRACE, PARENT_SPAN))
    exporter = InMemorySpanExporter()
    api.reset_counts()

    code = run_oneshot(f"{api.url}/api/v0/tasks/{task_id}", RuntimeConfig(plugin_dir=str(plugins)),
                       tracing=Tracing(exporter=exporter))

    assert code == ExitCode.OK
    spans = by_name(exporter.get_finished_spans())
    task = spans["boefje task"]
    # the run's span is a child of the span that started the container, in its trace
    assert task.context.trace_id == PARENT_TRACE
    assert task.parent.span_id == PARENT_SPAN and task.parent.is_remote
    assert task.kind == SpanKind.CONSUMER
    assert task.attributes["boefje.task.id"] == task_id
    assert task.attributes["boefje.id"] == "hello"
    assert task.attributes["boefje.version"] == "1.2"
    assert task.attributes["boefje.organisation"] == "acme"
    assert task.attributes["boefje.outcome"] == "completed"
    assert task.attributes["boefje.output.size"] == len(b"hello Hostname|internet|example.com")
    assert task.status.status_code != StatusCode.ERROR
    for phase in ("GET input", "run", "POST output"):
        assert spans[phase].parent.span_id == task.context.span_id, phase
        assert spans[phase].context.trace_id == PARENT_TRACE
    # both requests carried the trace, each as a child of its own phase's span
    records = api.request_log()
    assert [record.endpoint for record in records] == ["input", "output"]
    assert trace_ids(records) == {PARENT_TRACE}
    assert [record.traceparent.split("-")[2] for record in records] == [
        f"{spans['GET input'].context.span_id:016x}", f"{spans['POST output'].context.span_id:016x}"
    ]


@needs_otel
def test_oneshot_without_a_handed_over_context_starts_its_own_trace_and_marks_a_failure(api, plugins, monkeypatch):
    monkeypatch.delenv("TRACEPARENT", raising=False)
    task_id = running_task(api, "raiser", environment={"TOKEN": "s3cr3t-in-the-trace?"})
    exporter = InMemorySpanExporter()

    code = run_oneshot(f"{api.url}/api/v0/tasks/{task_id}", RuntimeConfig(plugin_dir=str(plugins)),
                       tracing=Tracing(exporter=exporter))

    assert code == ExitCode.OK  # the FAILED output was delivered
    spans = by_name(exporter.get_finished_spans())
    task = spans["boefje task"]
    assert task.parent is None
    assert task.context.trace_id != PARENT_TRACE
    assert task.status.status_code == StatusCode.ERROR
    assert task.attributes["boefje.outcome"] == "failed"
    assert "RuntimeError" in task.status.description
    # the task's secrets stay out of the trace, as they stay out of the logs
    assert not [span for span in exporter.get_finished_spans() if "s3cr3t" in json.dumps(span.to_json())]


# -- tracing unavailable or off -----------------------------------------------------------------------

#: Runs the CLI with OpenTelemetry made unimportable, as in an image built without the extra.
WITHOUT_OTEL = "import sys; sys.modules['opentelemetry'] = None; from boefje_runtime_cli.main import main; main()"


@pytest.mark.parametrize("mode", ["worker", "oneshot"])
def test_tracing_asked_for_without_the_extra_is_one_line_and_exit_2(mode):
    args = ["http://127.0.0.1:9/api/v0/tasks/x"] if mode == "oneshot" else []
    env = helpers.cli_env({"SPAN_EXPORT_GRPC_ENDPOINT": "http://127.0.0.1:4317", "BOEFJES_API": "http://127.0.0.1:9",
                           "OCI_IMAGE": "test/hello:latest"})
    result = subprocess.run([sys.executable, "-c", WITHOUT_OTEL, *args], capture_output=True, text=True, env=env,
                            timeout=60)

    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if INSTALL_HINT in line]
    assert "SPAN_EXPORT_GRPC_ENDPOINT" in line


#: Imports every module of the package, runs a burst pool and a one-shot run without tracing, and prints
#: the OpenTelemetry modules the process holds, and those the boefje saw in its worker process.
TRACING_OFF = """
import json, pkgutil, importlib, sys
import boefje_runtime, boefje_runtime_cli.main
for module in pkgutil.walk_packages(boefje_runtime.__path__, "boefje_runtime."):
    if ".examples." not in module.name and ".testing" not in module.name:
        importlib.import_module(module.name)
from boefje_runtime import BoefjeAPIClient, TaskFilter, WorkerPool
from boefje_runtime.config import RuntimeConfig
from boefje_runtime.oneshot import run_oneshot
from boefje_runtime.pool import PoolSettings
from boefje_runtime.plugins import BoefjeRegistry
api_url, plugin_dir, oneshot_url = sys.argv[1:]
pool = WorkerPool(BoefjeAPIClient(api_url), TaskFilter(["test/otel:latest"]),
                  registry=BoefjeRegistry.discover(plugin_dir), settings=PoolSettings(pool_size=1, burst=True))
assert pool.run() == 0
assert run_oneshot(oneshot_url, RuntimeConfig(plugin_dir=plugin_dir)) == 0
print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))
"""


def test_tracing_off_imports_no_opentelemetry_module(api, plugins):
    pooled = api.enqueue(make_task("otel-modules", oci_image="test/otel:latest"))
    oneshot = running_task(api, "otel-modules", oci_image="test/other:latest")

    result = subprocess.run(
        [sys.executable, "-c", TRACING_OFF, api.url, str(plugins), f"{api.url}/api/v0/tasks/{oneshot}"],
        capture_output=True, text=True, env=helpers.cli_env(drop=["TRACEPARENT"]), timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []  # the supervisor's process, after all of it
    assert api.status(pooled) == "completed" and api.status(oneshot) == "completed"
    assert json.loads(api.files(pooled)[0]["content"]) == []  # the worker process that ran the task
    assert json.loads(api.files(oneshot)[0]["content"]) == []
    assert all(record.traceparent is None for record in api.request_log())


# -- the pieces ---------------------------------------------------------------------------------------


@needs_otel
def test_a_pop_trace_is_continued_by_its_first_task_and_linked_from_the_others():
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter)
    pop = PopTrace(trace_id=PARENT_TRACE, span_id=PARENT_SPAN, start_ns=1_000, end_ns=2_000, tasks=2)

    for each in (pop, pop.for_next_task()):
        trace = tracing.start_task(each)
        trace.describe("task", "hello", None, "acme")
        trace.finish("completed")
    tracing.close()

    first_pop, first, second_pop, second = exporter.get_finished_spans()  # in the order they ended
    assert (first.context.trace_id, first_pop.context.span_id) == (PARENT_TRACE, PARENT_SPAN)
    assert first_pop.parent.span_id == first.context.span_id
    assert (first.start_time, first_pop.start_time, first_pop.end_time) == (1_000, 1_000, 2_000)
    assert second.context.trace_id != PARENT_TRACE
    assert second_pop.parent.span_id == second.context.span_id
    assert [(link.context.trace_id, link.context.span_id) for link in second_pop.links] == [(PARENT_TRACE, PARENT_SPAN)]



@needs_otel
def test_the_oneshot_cli_exports_its_spans_over_otlp_and_continues_traceparent(api, plugins):
    """The real path: the CLI, the setting, the gRPC exporter, and the boefje run in a forked child."""
    from .otlp_receiver import OtlpReceiver

    task_id = running_task(api, "hello", input_ooi="Host|cli")
    with OtlpReceiver() as receiver:
        result = helpers.run_cli(
            "--plugin-dir", str(plugins), f"{api.url}/api/v0/tasks/{task_id}",
            env={"SPAN_EXPORT_GRPC_ENDPOINT": receiver.endpoint, "TRACEPARENT": traceparent(PARENT_TRACE, PARENT_SPAN)},
            timeout=60,
        )
        assert result.returncode == ExitCode.OK, result.stderr
        spans = receiver.received()  # flushed before the process exited

    assert sorted(span.name for span in spans) == ["GET input", "POST output", "boefje task", "run"]
    assert {span.trace_id for span in spans} == {PARENT_TRACE}
    [task] = [span for span in spans if span.name == "boefje task"]
    assert task.parent_span_id == PARENT_SPAN
    assert task.attributes["boefje.outcome"] == "completed"
    assert "grpc" not in result.stderr.lower()  # no complaint from gRPC about the fork


@needs_otel
def test_the_oneshot_cli_forks_its_boefje_with_no_other_thread_alive_while_tracing(api, plugins):
    """A fork while other threads run can leave the child blocked for good on a lock one of them
    held (Python 3.12 warns of it on every such fork); tracing's export thread and gRPC's threads
    must not exist yet when one-shot forks its boefje."""
    from .otlp_receiver import OtlpReceiver

    task_id = running_task(api, "parent-threads", oci_image="test/threads:latest")
    with OtlpReceiver() as receiver:
        result = helpers.run_cli(
            "--plugin-dir", str(plugins), f"{api.url}/api/v0/tasks/{task_id}",
            env={"SPAN_EXPORT_GRPC_ENDPOINT": receiver.endpoint, "PYTHONWARNINGS": "always::DeprecationWarning"},
            timeout=60,
        )
        assert result.returncode == ExitCode.OK, result.stderr
        spans = receiver.received()

    assert api.files(task_id)[0]["content"] == b"1"  # the one-shot process ran its main thread only
    assert "multi-threaded" not in result.stderr
    # and its spans still reach the collector, all of them, when the run ends
    assert sorted(span.name for span in spans) == ["GET input", "POST output", "boefje task", "run"]


# -- the pool: spans from forked workers, over real OTLP/gRPC ------------------------------------------


@needs_otel
def test_a_pool_run_traces_each_task_with_its_phases_and_every_request_carries_its_trace(api, plugins):
    from .otlp_receiver import OtlpReceiver

    image = "test/pool:latest"
    tasks = {
        api.enqueue(make_task("hello", oci_image=image, version="1.2", organisation="acme", input_ooi=f"Host|{n}"))
        : "completed" for n in range(2)
    }
    failing = api.enqueue(make_task("raiser", oci_image=image, organisation="acme",
                                    environment={"TOKEN": "s3cr3t-in-the-trace?"}))
    tasks[failing] = "failed"

    with OtlpReceiver() as receiver:
        result = helpers.run_cli(
            "--burst", "--pool-size", "2", "--plugin-dir", str(plugins), "--poll-interval", "0.2",
            env={"BOEFJES_API": api.url, "OCI_IMAGE": image, "SPAN_EXPORT_GRPC_ENDPOINT": receiver.endpoint},
            drop=["TRACEPARENT", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"], timeout=120,
        )
        assert result.returncode == 0, result.stderr
        # the workers flushed before they exited: everything is there once the pool has stopped
        spans = receiver.received()

    assert {task_id: api.status(task_id) for task_id in tasks} == tasks
    task_spans = {span.attributes["boefje.task.id"]: span for span in spans if span.name == "boefje task"}
    assert set(task_spans) == set(tasks)
    children: dict[int, dict[str, object]] = {}
    for span in spans:
        if span.parent_span_id is not None:
            children.setdefault(span.parent_span_id, {})[span.name] = span
    for task_id, outcome in tasks.items():
        span = task_spans[task_id]
        phases = children[span.span_id]
        assert set(phases) == {"pop", "PATCH running", "run", "POST output"}, task_id
        assert all(phase.trace_id == span.trace_id for phase in phases.values())
        assert span.attributes["boefje.outcome"] == outcome
        assert span.attributes["boefje.organisation"] == "acme"
        assert span.start_ns == phases["pop"].start_ns <= phases["PATCH running"].start_ns
        assert span.resource["service.name"] == "boefje-runtime"
        assert span.error == (outcome == "failed")
        assert phases["run"].error == (outcome == "failed")
    hello = task_spans[next(task_id for task_id, outcome in tasks.items() if outcome == "completed")]
    assert (hello.attributes["boefje.id"], hello.attributes["boefje.version"]) == ("hello", "1.2")
    assert hello.attributes["boefje.output.size"] == len(b"hello Host|0")
    assert "RuntimeError" in task_spans[failing].status_message
    assert not [span for span in spans if "s3cr3t" in repr(span)]

    # every request carried a traceparent: a task's requests that of its own phase's span ...
    records = api.request_log()
    trace_ids(records)
    phase_of = {"patch": "PATCH running", "output": "POST output"}
    for record in records:
        _, trace_id, parent_id, _ = record.traceparent.split("-")
        if record.endpoint == "pop":
            continue
        task_id = record.path.rsplit("/", 1)[1]
        span = task_spans[task_id]
        assert int(trace_id, 16) == span.trace_id, record
        assert int(parent_id, 16) == children[span.span_id][phase_of[record.endpoint]].span_id, record
    # ... and a pop that of the pop span of the task it brought first; its other tasks link to it
    pops = {(int(tp.split("-")[1], 16), int(tp.split("-")[2], 16)) for tp in
            (record.traceparent for record in records if record.endpoint == "pop")}
    for span in task_spans.values():
        pop = children[span.span_id]["pop"]
        if pop.links:
            assert pop.links[0] in pops and pop.links[0][0] != span.trace_id
        else:
            assert (span.trace_id, pop.span_id) in pops


HOLD = """
    import os
    import time
    from pathlib import Path

    def run(boefje_meta):
        arguments = boefje_meta["arguments"]
        Path(arguments["pid_file"] + ".tmp").write_text(str(os.getpid()))
        os.replace(arguments["pid_file"] + ".tmp", arguments["pid_file"])
        time.sleep(60)
        return []
"""


@needs_otel
def test_a_killed_worker_loses_only_its_open_spans(api, plugins, tmp_path):
    from .otlp_receiver import OtlpReceiver

    write_plugin(plugins / "hold", HOLD, id="hold", oci_image="test/hold:latest")
    image = "test/pool:latest"
    done = api.enqueue(make_task("hello", oci_image=image, priority=1))
    pid_file = tmp_path / "pid"
    killed = api.enqueue(make_task("hold", oci_image=image, priority=2, arguments={"pid_file": str(pid_file)}))

    with OtlpReceiver() as receiver:
        pool = subprocess.Popen(
            [*helpers.CLI, "--burst", "--pool-size", "1", "--plugin-dir", str(plugins)],
            env=helpers.cli_env({"BOEFJES_API": api.url, "OCI_IMAGE": image,
                                 "SPAN_EXPORT_GRPC_ENDPOINT": receiver.endpoint}, drop=["TRACEPARENT"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            # the running task's ended phases leave while it runs (within the 1 s export delay) ...
            receiver.wait_for(lambda spans: sum(span.name == "PATCH running" for span in spans) == 2)
            helpers.wait_until(pid_file.exists, what="the held boefje to start")
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the boefje runs in the worker process
            assert pool.wait(60) == 0, pool.stderr.read()
        finally:
            if pool.poll() is None:
                pool.kill()
                pool.wait(10)
        spans = receiver.received()

    assert api.status(done) == "completed" and api.status(killed) == "failed"
    task_ids = [span.attributes.get("boefje.task.id") for span in spans if span.name == "boefje task"]
    assert task_ids == [done]  # the killed task's span was open: lost with its worker, nothing else
    assert sum(span.name == "PATCH running" for span in spans) == 2  # its ended phases were already out
    # the supervisor's clean-up of the killed task continues that task's trace, under its (lost) span
    cleanup = [span for span in spans if span.name.startswith("finalize ")]
    assert cleanup and {span.attributes["boefje.task.id"] for span in cleanup} == {killed}
    [parent] = {(span.trace_id, span.parent_span_id) for span in cleanup}
    assert parent in {(span.trace_id, span.parent_span_id) for span in spans if span.name == "PATCH running"}
