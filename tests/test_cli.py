"""The real ``boefje-worker`` command, run as a subprocess: help, usage errors, import cost."""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from boefje_runtime.config import SETTINGS
from boefje_runtime.exit_codes import ExitCode
from boefje_runtime.testing import BoefjeAPIServer, make_task

from .helpers import CLI, cli_env, error_text, refused_port, run_cli, unused_port, wait_until, write_plugin

IMAGE = "test/cli:latest"
HELLO = """
    def run(boefje_meta):
        return [({"text/plain"}, "hello")]
"""


@pytest.fixture(scope="module")
def help_text() -> str:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    # click wraps long lines; join them so "[env var: X]" is never split over two lines.
    return " ".join(result.stdout.split())


# -- help ---------------------------------------------------------------------------------------


def test_help_has_the_usage_line(help_text):
    assert help_text.startswith("Usage: boefje-worker [OPTIONS] [INPUT_URL]")


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_help_lists_every_setting_with_its_env_var(help_text, setting):
    for flag in setting.flags:
        assert flag in help_text
    assert f"env var: {setting.env}" in help_text


def test_help_shows_the_seed_options(help_text):
    assert "-p, --plugins" in help_text
    assert "-l, --log-level [DEBUG|INFO|WARNING|ERROR]" in help_text
    assert "--deduplicate / --no-deduplicate" in help_text
    assert "default: 30" in help_text  # OUTGOING_REQUEST_TIMEOUT


def test_the_console_script_runs_this_command(capsys):
    from importlib.metadata import entry_points

    from boefje_runtime_cli.main import cli, main

    (script,) = [entry for entry in entry_points(group="console_scripts") if entry.name == "boefje-worker"]
    assert script.load() is main
    assert cli.name == "boefje-worker"
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("boefje-worker, version ")


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_help_says_which_mode_each_setting_applies_to(help_text, setting):
    assert f"{' '.join(setting.help.split())} [{setting.mode.label}]" in help_text


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("boefje-worker, version ")


# -- usage errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ([], {"DEDUPLICATE": "maybe"}, "--deduplicate"),
        ([], {"POOL_SIZE": "0"}, "--pool-size"),
        ([], {"POOL_SIZE": "100000"}, "must be at most 256"),  # it once forked until memory ran out
        (["--pool-size", "many"], {}, "--pool-size"),
        (["--poll-interval", "-1"], {}, "--poll-interval"),
        (["--log-level", "TRACE"], {}, "--log-level"),
        ([], {"LOGGING_FORMAT": "xml"}, "--logging-format"),
        ([], {"BOEFJES_API": "boefje:8000"}, "--boefjes-api"),
        ([], {"BURST": "sometimes"}, "--burst"),
        ([], {"HEALTH_PORT": "99999"}, "--health-port"),
        (["ftp://boefje/api/v0/tasks/1"], {}, "INPUT_URL"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(args, env, named):
    result = run_cli(*args, env=env)
    assert result.returncode == ExitCode.USAGE == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_header_is_a_usage_error_without_the_value():
    result = run_cli(env={"BOEFJES_API_HEADERS": "s3cr3t-token-without-name"})
    assert result.returncode == 2
    assert "--api-header" in result.stderr
    assert "s3cr3t" not in result.stderr


@pytest.mark.parametrize(
    ("env", "missing", "present"),
    [
        ({}, ["BOEFJES_API", "OCI_IMAGE"], []),
        ({"OCI_IMAGE": "img"}, ["BOEFJES_API"], ["OCI_IMAGE"]),
        ({"BOEFJES_API": "http://127.0.0.1:9"}, ["OCI_IMAGE"], ["BOEFJES_API"]),
    ],
)
def test_worker_mode_without_api_or_image_is_a_usage_error(env, missing, present):
    result = run_cli(env=env)
    assert result.returncode == 2
    for name in missing:
        assert name in result.stderr
    for name in present:
        assert name not in result.stderr


def test_boefje_api_instead_of_boefjes_api_gets_a_hint():
    result = run_cli(env={"BOEFJE_API": "http://127.0.0.1:9", "OCI_IMAGE": "img"})
    assert result.returncode == 2
    assert "BOEFJE_API is set: did you mean BOEFJES_API?" in result.stderr
    plain = run_cli(env={"OCI_IMAGE": "img"})
    assert plain.returncode == 2 and "did you mean" not in plain.stderr


def test_flag_wins_over_env_var_for_the_worker_mode_check():
    # The env var is invalid, but the flag replaces it: the only complaint left is OCI_IMAGE.
    result = run_cli("--boefjes-api", "http://127.0.0.1:9", env={"BOEFJES_API": "not a url"})
    assert result.returncode == 2
    assert "OCI_IMAGE" in result.stderr
    assert "not a url" not in result.stderr


# -- worker mode --------------------------------------------------------------------------------


def test_worker_mode_logs_the_seed_start_up_lines_and_flags_win(tmp_path):
    write_plugin(tmp_path / "nmap_udp", HELLO, id="nmap-udp")
    with BoefjeAPIServer() as api:
        result = run_cli(
            "--burst", "-p", "nmap-udp", "-p", "nmap-tcp,dns", "--plugin-dir", str(tmp_path),
            env={"BOEFJES_API": api.url, "OCI_IMAGE": "ghcr.io/minvws/openkat/nmap:latest", "PLUGINS": "ignored",
                 "POLL_INTERVAL": "0.1", "SHUTDOWN_TIMEOUT": "5"},
        )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert re.match(r"^\S+ \[info\] Starting runtime$", lines[0])
    assert lines[1].endswith(
        f"[info] Configured BoefjeAPI [base_url={api.url}, outgoing_request_timeout=30, "
        "images=['ghcr.io/minvws/openkat/nmap:latest'], plugins=['nmap-udp', 'nmap-tcp', 'dns']]"
    )


def worker_env(api_url: str, **extra: str) -> dict[str, str]:
    return {"BOEFJES_API": api_url, "OCI_IMAGE": IMAGE, "POLL_INTERVAL": "0.1", "SHUTDOWN_TIMEOUT": "5", **extra}


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if "[error]" in line]


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    root = tmp_path / "plugins"
    write_plugin(root / "hello", HELLO, id="hello", oci_image=IMAGE)
    write_plugin(root / "big", """
        def run(boefje_meta):
            return [({"text/plain"}, b"x" * 2048)]
    """, id="big", oci_image=IMAGE)
    write_plugin(root / "slow", """
        import time

        def run(boefje_meta):
            time.sleep(0.5)
            return [({"text/plain"}, "slept")]
    """, id="slow", oci_image=IMAGE)
    return root


@pytest.mark.parametrize("case", ["missing", "a file", "empty", "only broken"])
def test_worker_mode_refuses_a_plugin_folder_without_usable_boefjes(tmp_path, api, case):
    folder = tmp_path / "plugins"
    if case == "a file":
        folder.write_text("not a folder")
    elif case == "empty":
        folder.mkdir()
    elif case == "only broken":
        write_plugin(folder / "bad", "raise ImportError('no such library')", id="bad")
    result = run_cli("--burst", "--plugin-dir", str(folder), env=worker_env(api.url))
    assert result.returncode == ExitCode.USAGE == 2, result.stderr
    (line,) = error_lines(result.stderr)
    assert str(folder) in line and "PLUGIN_DIR" in line
    assert "Created worker pool" not in result.stderr
    assert api.request_counts() == {}  # nothing popped: no task taken only to be failed


def test_broken_boefjes_are_reported_once_and_counted_with_import_errors(tree, api):
    folder = tree("broken")  # 13 folders: 3 usable boefjes, 5 broken on disk, 5 broken on import
    result = run_cli("--burst", "--pool-size", "2", "--plugin-dir", str(folder), env=worker_env(api.url))
    assert result.returncode == 0, result.stderr
    assert f"[info] Found 3 boefjes under {folder} (10 broken)" in result.stderr
    broken = re.findall(r"\[warning\] Broken boefje at (\S+):", result.stderr)
    assert len(broken) == 10 and len(set(broken)) == 10, broken  # each once, none repeated by a worker
    assert any(path.endswith("brk_import_error") for path in broken)


def test_a_boefje_that_ends_the_process_on_import_is_named_and_skipped(tmp_path, api):
    folder = tmp_path / "plugins"
    write_plugin(folder / "good", HELLO, id="good", oci_image=IMAGE)
    write_plugin(folder / "exits", "import os\nos._exit(3)\n", id="exits", oci_image=IMAGE)
    result = run_cli("--burst", "--plugin-dir", str(folder), env=worker_env(api.url))
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "Broken boefje at" in line]
    assert "exits" in line and "importing its main.py ended the process (exit code 3)" in line
    assert "(1 broken)" in result.stderr
    assert "during start-up" not in result.stderr  # no worker died importing it


def without_network() -> list[str]:
    """A command prefix that runs a program in a network namespace of its own, with no interface up:
    a host name lookup fails there as a DNS typo does, and no packet leaves the machine (tests use
    loopback only; the configured resolver is not on it)."""
    prefix = ["unshare", "--net"]
    try:
        usable = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        usable = False
    if not usable:
        pytest.skip("unshare --net is not available: a lookup would ask the network's resolver")
    return prefix


@pytest.mark.parametrize("where", ["refused", "unresolvable"])
def test_burst_gives_up_on_an_unreachable_api_within_the_bound(plugin_dir, where):
    # A name under .invalid never resolves (RFC 2606); looked up where there is no network at all.
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}" if where == "refused" else "http://boefje-api.invalid:8000"
        prefix = [] if where == "refused" else without_network()
        started = time.monotonic()
        result = subprocess.run(
            [*prefix, *CLI, "--burst", "--plugin-dir", str(plugin_dir), "--burst-unreachable-timeout", "2"],
            capture_output=True, text=True, env=cli_env(worker_env(url, OUTGOING_REQUEST_TIMEOUT="2")), timeout=60,
        )
        took = time.monotonic() - started
    assert result.returncode == ExitCode.INTERNAL_ERROR == 1, result.stderr
    (line,) = error_lines(result.stderr)
    assert url in line and "BURST_UNREACHABLE_TIMEOUT=2" in line
    # The bound, plus the heartbeat the check waits for, plus start-up and drain on a loaded machine.
    assert took < 2 + 1 + 15, took


def test_worker_flags_given_to_one_shot_are_named_in_one_warning(plugin_dir):
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}/api/v0/tasks/1"
        result = run_cli("--pool-size", "3", "--burst", "--task-timeout", "5", "--plugin-dir", str(plugin_dir), url,
                         env={"PREFETCH": "1", "OUTGOING_REQUEST_TIMEOUT": "1"})
    assert result.returncode == ExitCode.INPUT_UNAVAILABLE, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "[warning] Ignoring" in line]
    assert "--pool-size, --burst: only for worker mode" in warning
    assert "--task-timeout" not in warning and "--prefetch" not in warning  # both modes; an env var


def test_a_one_shot_flag_in_worker_mode_gets_a_warning(api, plugin_dir):
    result = run_cli("--burst", "--allow-foreign-output", "--plugin-dir", str(plugin_dir), env=worker_env(api.url))
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "[warning] Ignoring" in line]
    assert "--allow-foreign-output: only for one-shot mode" in warning


def test_a_taken_health_port_exits_2_with_one_line(api, plugin_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--burst", "--plugin-dir", str(plugin_dir), env=worker_env(api.url, HEALTH_PORT=str(port)))
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result.stderr)
    assert f"127.0.0.1:{port}" in line and "HEALTH_PORT" in line


def test_a_free_health_port_answers_readyz_and_is_announced_once(api, plugin_dir):
    port = unused_port()
    process = subprocess.Popen([*CLI, "--plugin-dir", str(plugin_dir)], env=cli_env(worker_env(api.url,
                               HEALTH_PORT=str(port))), stderr=subprocess.PIPE, text=True)
    try:
        def ready() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, timeout=30, what="/readyz to answer 200")
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert stderr.count("Serving /healthz, /readyz and /metrics") == 1


def test_max_output_size_from_the_environment_fails_a_larger_output(api, plugin_dir):
    task_id = api.enqueue(make_task("big", oci_image=IMAGE))
    result = run_cli("--burst", "--plugin-dir", str(plugin_dir), env=worker_env(api.url, MAX_OUTPUT_SIZE="0.001"))
    assert result.returncode == 0, result.stderr
    assert api.status(task_id) == "failed"
    assert "output too large" in error_text(api, task_id) and "1048 bytes" in error_text(api, task_id)


def test_task_timeout_0_means_no_limit(api, plugin_dir):
    task_id = api.enqueue(make_task("slow", oci_image=IMAGE))
    result = run_cli("--burst", "--plugin-dir", str(plugin_dir), env=worker_env(api.url, TASK_TIMEOUT="0"))
    assert result.returncode == 0, result.stderr
    assert api.status(task_id) == "completed"
    assert [file["content"] for file in api.files(task_id)] == [b"slept"]


class _RecordingProxy(BaseHTTPRequestHandler):
    """Forwards every request to the test API unchanged (Host included, so the output URL the API
    hands out points back here) and records its method, path and headers."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int]
    seen: list[tuple[str, str, dict[str, str]]]

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append((self.command, self.path, dict(self.headers)))
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            connection.request(self.command, self.path, body or None, dict(self.headers))
            answer = connection.getresponse()
            data = answer.read()
        finally:
            connection.close()
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.getheader("Content-Type") or "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy(api):
    """A recording proxy in front of ``api``: yields its URL and the requests it forwarded."""
    handler = type("Proxy", (_RecordingProxy,), {"upstream": ("127.0.0.1", api.port), "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.seen
    finally:
        server.shutdown()
        server.server_close()


def sent_header(seen: list[tuple[str, str, dict[str, str]]], name: str) -> dict[str, list[str | None]]:
    """The header's value on each request, by kind of request."""
    kinds: dict[str, list[str | None]] = {}
    for method, path, headers in seen:
        kind = ("pop" if "/pop?" in path else "patch" if method == "PATCH" else
                "input" if method == "GET" and "/api/v0/tasks/" in path else
                "output" if method == "POST" and "/api/v0/tasks/" in path else f"{method} {path}")
        kinds.setdefault(kind, []).append({k.lower(): v for k, v in headers.items()}.get(name.lower()))
    return kinds


def test_api_headers_go_on_every_pop_patch_and_output_in_worker_mode(api, proxy, plugin_dir):
    proxy_url, seen = proxy
    task_ids = [api.enqueue(make_task("hello", oci_image=IMAGE, input_ooi=f"Hostname|internet|h{n}"))
                for n in range(3)]
    result = run_cli("--burst", "--plugin-dir", str(plugin_dir), "--api-header", "X-Api-Key: k-123",
                     env=worker_env(proxy_url, BOEFJES_API_HEADERS="Authorization: Bearer t-456"))
    assert result.returncode == 0, result.stderr
    assert all(api.status(task_id) == "completed" for task_id in task_ids)
    kinds = sent_header(seen, "X-Api-Key")
    assert {"pop", "patch", "output"} <= set(kinds), kinds
    assert all(value == "k-123" for values in kinds.values() for value in values), kinds
    assert len(kinds["patch"]) == len(kinds["output"]) == 3
    # The flag wins over the env var, as for every setting: one set of headers, never a merge.
    assert set(sent_header(seen, "Authorization")) and not any(
        value for values in sent_header(seen, "Authorization").values() for value in values)


def test_api_headers_go_on_the_input_and_output_of_one_shot(api, proxy, plugin_dir):
    proxy_url, seen = proxy
    task_id = api.enqueue(make_task("hello", oci_image=IMAGE))
    requests.patch(f"{api.url}/api/v0/scheduler/tasks/{task_id}", json={"status": "running"}, timeout=10)
    result = run_cli("--plugin-dir", str(plugin_dir), "--api-header", "X-Api-Key: k-123",
                     f"{proxy_url}/api/v0/tasks/{task_id}")
    assert result.returncode == 0, result.stderr
    assert api.status(task_id) == "completed"
    assert sent_header(seen, "X-Api-Key") == {"input": ["k-123"], "output": ["k-123"]}


# -- import cost --------------------------------------------------------------------------------


def imported_modules(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "boefje_runtime_cli", *args],
        capture_output=True, text=True, timeout=60,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {match.group(1).strip() for match in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(.+)$",
                                                            result.stderr, re.MULTILINE)}


def test_help_imports_neither_the_pool_nor_requests():
    modules = imported_modules("--help")
    assert "boefje_runtime_cli.main" in modules  # the parse is right: we do see our own module
    assert not any(name == "boefje_runtime.pool" or name.startswith("boefje_runtime.pool.") for name in modules)
    assert "requests" not in modules
    assert "pythonjsonlogger" not in modules
    assert "boefje_runtime.oneshot" not in modules


def test_a_boefje_whose_import_hangs_is_marked_broken_after_the_bound(tmp_path, monkeypatch):
    """In-process (the bound is a constant): the check gives up on a hanging import and goes on."""
    from boefje_runtime import worker_mode

    folder = tmp_path / "plugins"
    write_plugin(folder / "a_hangs", "import time\ntime.sleep(60)\n", id="hangs")
    write_plugin(folder / "b_good", HELLO, id="good")
    monkeypatch.setattr(worker_mode, "IMPORT_CHECK_TIMEOUT", 1.0)
    started = time.monotonic()
    registry = worker_mode.load_plugins(str(folder))
    assert time.monotonic() - started < 10
    assert [boefje.id for boefje in registry.usable()] == ["good"]
    (problem,) = registry.errors
    assert "importing its main.py took longer than 1 s" in problem.message and "a_hangs" in str(problem.path)
