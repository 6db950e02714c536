"""Security properties (see SECURITY.md for the threat model and what is *not* promised).

- One-shot posts the output only to the input URL's origin unless explicitly allowed, checked on
  the URL exactly as it will be sent (a forged ``output_url`` must not make us a request forwarder).
- A task's environment is visible to its own run only: not to the next task in that process, not
  to the supervisor, and never in a log line or error file the runtime writes (real CLI, text and
  JSON logs).
- The worker's own credentials (API headers) are not in a boefje's environment.
- TLS is verified by default; a private CA is trusted through ``REQUESTS_CA_BUNDLE`` or ``verify=``.
- No shell ever sees task data.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

import boefje_runtime
import boefje_runtime_cli
from boefje_runtime import BoefjeAPIClient, RetryPolicy
from boefje_runtime.config import RuntimeConfig
from boefje_runtime.errors import APIConnectionError
from boefje_runtime.exit_codes import ExitCode
from boefje_runtime.oneshot import run_oneshot
from boefje_runtime.plugins import BoefjeRegistry
from boefje_runtime.retry import NO_RETRY
from boefje_runtime.testing import BoefjeAPIServer, make_task

from . import abuse_boefjes
from .helpers import IMAGE, error_text, hold_task, run_cli, running_task, wait_until, write_plugin

pytestmark = pytest.mark.timeout(120)

#: Planted organisation secrets: a plain one, and one with characters JSON and repr() escape.
SECRET = "planted-s3cr3t-7c1e"
ODD_SECRET = 'odd"s3cr3t\\with\tescapes-é'
API_TOKEN = "s3cr3t-token"


@pytest.fixture
def pool_options():
    """One worker polling fast, with the misbehaving boefjes."""
    return {"registry": abuse_boefjes.registry(), "pool_size": 1, "poll_interval": 0.1,
            "retry": RetryPolicy(attempts=4, total_seconds=10)}


# -- one-shot: where the output may go ---------------------------------------------------------------


def hello_registry() -> BoefjeRegistry:
    registry = BoefjeRegistry()
    registry.register("hello", lambda meta: [({"text/plain"}, "hello")])
    return registry


# {api} is the test API's port, {foreign} another server's on the same address.
FORGED_OUTPUT_URLS = [
    "http://127.0.0.1:{foreign}/collect",
    "//127.0.0.1:{foreign}/collect",
    "https://127.0.0.1:{api}/api/v0/tasks/x",
    "http://127.0.0.1:{api}@127.0.0.1:{foreign}/collect",
    "http://127.0.0.1:{foreign}\\@127.0.0.1:{api}/collect",
    "http://127.0.0.1:{foreign}/\\@127.0.0.1:{api}/collect",
    "http://127.0.0.1:{foreign}#@127.0.0.1:{api}/",
    "http://127.0.0.1:{foreign}?@127.0.0.1:{api}/",
    "http://127.0.0.1:{api}\t@127.0.0.1:{foreign}/collect",
    "http://127.0.0.1:{api}\n@127.0.0.1:{foreign}/collect",
    "http://127.0.0.1:{api}:{foreign}/collect",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{foreign}/_POST",
]


@pytest.mark.parametrize("template", FORGED_OUTPUT_URLS)
def test_a_forged_output_url_gets_neither_the_output_nor_the_api_headers(boefje_api, foreign_host, template, caplog):
    # Given an input whose output_url points elsewhere, spelled to fool a URL parser
    foreign_port, received = foreign_host
    task_id = running_task(boefje_api, "hello")
    forged = template.format(api=boefje_api.port, foreign=foreign_port)
    boefje_api.inject("input", body=json.dumps({"task": boefje_api.task(task_id), "output_url": forged}))
    config = RuntimeConfig(api_headers={"Authorization": f"Bearer {API_TOKEN}"})

    # When the one-shot runs it
    code = run_oneshot(f"{boefje_api.url}/api/v0/tasks/{task_id}", config, registry=hello_registry())

    # Then nothing reached the other origin, and the run says the output could not be delivered
    assert received == []
    assert code == ExitCode.OUTPUT_UNDELIVERABLE, caplog.text
    assert boefje_api.outputs(task_id) == []
    assert API_TOKEN not in caplog.text


def test_a_forged_output_url_is_refused_by_the_cli(boefje_api, foreign_host, tmp_path):
    foreign_port, received = foreign_host
    plugins = write_plugins(tmp_path / "plugins")
    task_id = running_task(boefje_api, "hello")
    forged = f"http://127.0.0.1:{foreign_port}\\@127.0.0.1:{boefje_api.port}/collect"
    boefje_api.inject("input", body=json.dumps({"task": boefje_api.task(task_id), "output_url": forged}))

    result = run_cli("--plugin-dir", str(plugins), "--api-header", f"Authorization: Bearer {API_TOKEN}",
                     f"{boefje_api.url}/api/v0/tasks/{task_id}")

    assert result.returncode == ExitCode.OUTPUT_UNDELIVERABLE, result.stderr
    assert received == []
    errors = [line for line in result.stderr.splitlines() if "[error]" in line]
    assert len(errors) == 1 and "ALLOW_FOREIGN_OUTPUT" in errors[0]


def test_foreign_output_when_allowed_goes_without_the_api_headers(boefje_api, foreign_host):
    foreign_port, received = foreign_host
    task_id = running_task(boefje_api, "hello")
    forged = f"http://127.0.0.1:{foreign_port}\\@127.0.0.1:{boefje_api.port}/collect"
    boefje_api.inject("input", body=json.dumps({"task": boefje_api.task(task_id), "output_url": forged}))
    config = RuntimeConfig(api_headers={"Authorization": f"Bearer {API_TOKEN}"}, allow_foreign_output=True)

    code = run_oneshot(f"{boefje_api.url}/api/v0/tasks/{task_id}", config, registry=hello_registry())

    assert code == ExitCode.OK
    [request] = received
    assert "Authorization" not in request["headers"]


# -- a task's environment ----------------------------------------------------------------------------


def test_a_tasks_environment_is_gone_for_the_next_task_and_never_reaches_the_supervisor(boefje_api, make_pool):
    # Given one worker, and a task whose environment holds a secret and whose boefje tries to leak it
    assert "PLANTED" not in os.environ
    pool = make_pool(pool_size=1).start()
    first = boefje_api.enqueue(make_task("env-echo", oci_image=IMAGE, environment={"PLANTED": SECRET}))
    leaker = boefje_api.enqueue(make_task("leak-environment", oci_image=IMAGE, environment={"PLANTED": SECRET}))
    boefje_api.wait_for_status([first, leaker], "completed")

    # When the same process runs the next tasks
    echo = boefje_api.enqueue(make_task("env-echo", oci_image=IMAGE))
    dump = boefje_api.enqueue(make_task("dump-environment", oci_image=IMAGE))
    boefje_api.wait_for_status([echo, dump], "completed")

    # Then the secret was there for its own run only
    assert boefje_api.files(first)[0]["content"] == SECRET.encode()
    assert boefje_api.files(echo)[0]["content"] == b"<unset>"
    environment = json.loads(boefje_api.files(dump)[0]["content"])
    assert "PLANTED" not in environment and "LEAKED_BY_BOEFJE" not in environment
    assert SECRET not in json.dumps(environment)
    assert len({worker.pid for worker in pool.workers}) == 1
    # and the supervisor (this process) never had it
    assert "PLANTED" not in os.environ and "LEAKED_BY_BOEFJE" not in os.environ
    assert all(SECRET not in value for value in os.environ.values())


def test_a_program_a_boefje_executes_inherits_no_descriptor_of_the_pool(boefje_api, make_pool):
    # Given a worker (its pipes to the supervisor came over the fork server's socket), and a boefje
    # that executes a program keeping every inheritable descriptor (close_fds=False)
    make_pool(pool_size=1).start()
    task_id = boefje_api.enqueue(make_task("inherited-descriptors", oci_image=IMAGE))

    # When it runs
    boefje_api.wait_for_status(task_id, "completed")

    # Then the program got its standard streams and what this test process itself inherited from
    # whoever started it, nothing of the pool: no pipe to the supervisor it could forge messages on,
    # no progress page, no next-task pipe, no API socket
    descriptors = json.loads(boefje_api.files(task_id)[0]["content"])
    of_the_pool = {fd: target for fd, target in descriptors.items()
                   if fd not in ("0", "1", "2") and _inherited_by_this_process().get(fd) != target}
    assert of_the_pool == {}, json.dumps(descriptors)


def test_a_worker_holds_none_of_the_supervisors_own_descriptors(boefje_api, make_pool):
    # Given a pool (its supervisor has a wake-up pipe for its pops, a selector, each worker's pipes)
    pool = make_pool(pool_size=2).start()

    # When a boefje lists what its worker holds
    held = held_descriptors(boefje_api)

    # Then the supervisor's wake-up pipe is not among it (parked by the fork server), and no
    # progress page but its own worker's
    wake_up_pipe = os.readlink(f"/proc/self/fd/{pool._poller.pops.wakeup_fd}")
    assert wake_up_pipe not in held.values(), held
    assert kinds(held)["/memfd"] <= 1, held


def test_a_pool_whose_fork_server_died_stops_with_exit_code_1_instead_of_forking_another(boefje_api, make_pool,
                                                                                         tmp_path, caplog):
    # Given a pool running a task
    caplog.set_level(logging.ERROR, logger="boefje_runtime")
    held, pid_file, _release = hold_task(tmp_path, "held")
    pool = make_pool(pool_size=1).start()
    held_id = boefje_api.enqueue(held)
    wait_until(pid_file.exists, 15, "the boefje to start")

    # When the fork server dies (the kernel ends its workers with it)
    fork_server = pool._forks.pid
    os.kill(fork_server, signal.SIGKILL)

    # Then the pool does not fork a new one from the supervisor (it holds other tasks' data in its
    # memory): it stops with exit code 1, saying why, and leaves no task open
    wait_until(lambda: pool.phase == "stopped", 30, "the pool to stop")
    assert pool.exit_code == 1
    assert pool._forks.pid == 0
    assert any("fork server died" in record.getMessage() for record in caplog.records)
    boefje_api.wait_for_status(held_id, "failed")
    assert "killed with the worker fork server" in error_text(boefje_api, held_id)


def held_descriptors(boefje_api) -> dict[str, str]:
    task_id = boefje_api.enqueue(make_task("own-descriptors", oci_image=IMAGE))
    boefje_api.wait_for_status(task_id, "completed")
    return json.loads(boefje_api.files(task_id)[0]["content"])


def kinds(descriptors: dict[str, str]) -> Counter:
    """How many descriptors point at pipes, memfds, sockets, ...: not which (they differ per worker),
    and not the parked ones (``/dev/null`` duplicated over a number that is not the worker's)."""
    return Counter(target.split(":", 1)[0] for target in descriptors.values() if target != os.devnull)


def _inherited_by_this_process() -> dict[str, str]:
    """This process's inheritable descriptors and their targets (an IDE or CI runner may leave some)."""
    inherited = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.get_inheritable(int(name)):
                inherited[name] = os.readlink(f"/proc/self/fd/{name}")
    return inherited


PLUGINS = {
    "hello": """
        def run(boefje_meta):
            return [({"text/plain"}, "hello " + str(boefje_meta["input_ooi"]))]
    """,
    "dump-environment": """
        import json
        import os

        def run(boefje_meta):
            return [({"application/json"}, json.dumps(dict(os.environ)))]
    """,
    "raise-secret": """
        import logging
        import os

        def run(boefje_meta):
            token, odd = os.environ["API_TOKEN"], os.environ["ODD_TOKEN"]
            logging.getLogger("scanner").warning("connecting with %s and %r", token, odd)
            logging.getLogger("scanner").info("settings: %s", dict(os.environ))
            raise PermissionError(f"the scanner refused {token!r} and {odd!r} (raw: {token} {odd})")
    """,
    "tag-secret": """
        import os

        def run(boefje_meta):
            return [({"text/plain", os.environ["API_TOKEN"], os.environ["ODD_TOKEN"]}, "tagged")]
    """,
    "exit-hard": """
        import os

        def run(boefje_meta):
            os._exit(9)
    """,
}


def write_plugins(root: Path) -> Path:
    for boefje_id, code in PLUGINS.items():
        write_plugin(root / boefje_id.replace("-", "_"), code, id=boefje_id, oci_image=IMAGE)
    return root


def run_worker_cli(api: BoefjeAPIServer, plugins: Path, *args: str, env: dict[str, str] | None = None,
                   fmt: str = "text") -> subprocess.CompletedProcess:
    """The real CLI in worker mode, burst: it drains the queue and exits."""
    environ = {"BOEFJES_API": api.url, "OCI_IMAGE": IMAGE, "PLUGIN_DIR": str(plugins), "POLL_INTERVAL": "0.1",
               "SHUTDOWN_TIMEOUT": "5", "POOL_SIZE": "1", **(env or {})}
    return run_cli("--burst", "--log-level", "DEBUG", "--logging-format", fmt, *args, env=environ, timeout=90)


def secret_forms(value: str) -> list[str]:
    """The ways a log line or file could spell ``value``: as is, repr-escaped, JSON-escaped."""
    return sorted({value, repr(value)[1:-1], json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]})


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_never_reach_a_log_line_or_an_error_file_of_a_cli_worker(boefje_api, tmp_path, fmt):
    # Given tasks whose environment holds secrets, for boefjes that log, raise, tag with or die holding them
    plugins = write_plugins(tmp_path / "plugins")
    environment = {"API_TOKEN": SECRET, "ODD_TOKEN": ODD_SECRET}
    ids = {boefje_id: boefje_api.enqueue(make_task(boefje_id, oci_image=IMAGE, environment=environment))
           for boefje_id in ("raise-secret", "tag-secret", "exit-hard", "hello", "not-in-this-image")}

    # When a real worker drains them, logging at DEBUG
    result = run_worker_cli(boefje_api, plugins, "--api-header", f"Authorization: Bearer {API_TOKEN}", fmt=fmt)

    # Then every task closed, and no secret appears anywhere in the logs
    assert result.returncode == 0, result.stderr[-3000:]
    logs = result.stdout + result.stderr
    assert "Boefje failed" in logs and "PermissionError" in logs  # the lines that could have leaked are there
    for secret in (SECRET, ODD_SECRET, API_TOKEN):
        for form in secret_forms(secret):
            assert form not in logs, f"{form!r} in the {fmt} logs"
    if fmt == "json":
        assert all(json.loads(line) for line in result.stderr.splitlines())
    # nor in an error file the runtime wrote, which still says what happened
    for boefje_id in ("raise-secret", "exit-hard", "not-in-this-image"):
        assert boefje_api.status(ids[boefje_id]) == "failed"
        [error] = boefje_api.files(ids[boefje_id])
        assert "error/boefje" in error["tags"]
        text = error["content"].decode()
        for secret in (SECRET, ODD_SECRET):
            assert all(form not in text for form in secret_forms(secret)), text
    assert "PermissionError: the scanner refused '***' and '***'" in boefje_api.files(ids["raise-secret"])[0][
        "content"].decode()
    assert boefje_api.status(ids["tag-secret"]) == "completed"
    assert all(SECRET not in tag for tag in boefje_api.files(ids["tag-secret"])[0]["tags"])


def test_the_workers_api_header_is_not_in_a_boefjes_environment(boefje_api, tmp_path):
    plugins = write_plugins(tmp_path / "plugins")
    task_id = boefje_api.enqueue(make_task("dump-environment", oci_image=IMAGE))

    result = run_worker_cli(boefje_api, plugins, "--api-header", f"Authorization: Bearer {API_TOKEN}")

    assert result.returncode == 0, result.stderr[-3000:]
    environment = json.loads(boefje_api.files(task_id)[0]["content"])
    assert environment.get("BOEFJES_API") == boefje_api.url  # the dump is the worker's real environment
    assert API_TOKEN not in json.dumps(environment)


def test_api_headers_given_by_env_var_are_not_in_a_boefjes_environment(boefje_api, tmp_path):
    plugins = write_plugins(tmp_path / "plugins")
    task_id = boefje_api.enqueue(make_task("dump-environment", oci_image=IMAGE))

    result = run_worker_cli(boefje_api, plugins, env={"BOEFJES_API_HEADERS": f"Authorization: Bearer {API_TOKEN}"})

    assert result.returncode == 0, result.stderr[-3000:]
    assert API_TOKEN not in boefje_api.files(task_id)[0]["content"].decode()


# -- TLS ---------------------------------------------------------------------------------------------


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key: with the cryptography package if installed, else openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            why = "neither the cryptography package (in the test extra) nor the openssl command is available"
            if os.environ.get("CI"):
                pytest.fail(f"{why}: CI must run the TLS tests")  # a silent skip would hide them for good
            pytest.skip(why)
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60,
        )
        return cert, key
    import ipaddress

    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(private_key, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return cert, key


class _TLSHandler(BaseHTTPRequestHandler):
    """Just enough of the Boefje API for one task: get, input, output."""

    protocol_version = "HTTP/1.1"
    task: dict = {}
    outputs: list[dict] = []

    def _answer(self, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/api/v0/tasks/"):
            self._answer({"task": self.task, "output_url": self.path})
        elif self.path.startswith("/api/v0/scheduler/tasks/"):
            self._answer(self.task)
        else:
            self._answer("OK")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).outputs.append(json.loads(self.rfile.read(length)))
        self._answer({"0": "raw-file-id"})

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture(scope="module")
def tls_api(tmp_path_factory):
    """An HTTPS Boefje API on 127.0.0.1 with a self-signed certificate: yields (url, cert path, handler)."""
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    handler = type("TLSHandler", (_TLSHandler,), {"task": {**make_task("hello"), "status": "running"},
                                                  "outputs": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda request, address: None  # refused handshakes are the point here
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert, handler
    finally:
        server.shutdown()
        server.server_close()


def test_tls_is_verified_by_default(tls_api, no_ca_env):
    url, _cert, handler = tls_api
    with BoefjeAPIClient(url, retry=NO_RETRY, timeout=10) as client, pytest.raises(APIConnectionError) as caught:
        client.get_task(handler.task["id"])
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


@pytest.mark.parametrize("empty", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_an_empty_ca_bundle_variable_does_not_turn_verification_off(tls_api, no_ca_env, empty):
    url, _cert, handler = tls_api
    no_ca_env.setenv(empty, "")
    with BoefjeAPIClient(url, retry=NO_RETRY, timeout=10) as client, pytest.raises(APIConnectionError):
        client.get_task(handler.task["id"])


def test_tls_with_the_ca_given_by_verify(tls_api, no_ca_env):
    url, cert, handler = tls_api
    with BoefjeAPIClient(url, retry=NO_RETRY, timeout=10, verify=str(cert)) as client:
        assert client.get_task(handler.task["id"]).id == handler.task["id"]


def test_tls_with_the_ca_given_by_requests_ca_bundle(tls_api, no_ca_env):
    url, cert, handler = tls_api
    no_ca_env.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with BoefjeAPIClient(url, retry=NO_RETRY, timeout=10) as client:
        assert client.get_task(handler.task["id"]).id == handler.task["id"]
        assert client.clone().get_task(handler.task["id"]).id == handler.task["id"]  # what pool workers use


def test_the_oneshot_cli_refuses_an_unverified_https_input_and_accepts_a_trusted_one(tls_api, tmp_path):
    url, cert, handler = tls_api
    plugins = write_plugins(tmp_path / "plugins")
    input_url = f"{url}/api/v0/tasks/{handler.task['id']}"
    ca_variables = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

    refused = run_cli("--plugin-dir", str(plugins), input_url, drop=ca_variables, timeout=90)
    assert refused.returncode == ExitCode.INPUT_UNAVAILABLE, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if "[error]" in line]
    assert len(errors) == 1 and "CERTIFICATE_VERIFY_FAILED" in errors[0]

    accepted = run_cli("--plugin-dir", str(plugins), input_url, env={"REQUESTS_CA_BUNDLE": str(cert)},
                       drop=ca_variables, timeout=90)
    assert accepted.returncode == ExitCode.OK, accepted.stderr
    assert handler.outputs[-1]["status"] == "COMPLETED"


# -- no shell ----------------------------------------------------------------------------------------

PACKAGE_DIRS = [Path(boefje_runtime.__file__).parent, Path(boefje_runtime_cli.__file__).parent]
SHELL_PATTERN = re.compile(r"shell\s*=\s*True|os\.system\s*\(|os\.popen\s*\(|commands\.getoutput|pty\.spawn|"
                           r"\bsubprocess\b|create_subprocess_(exec|shell)")
#: os functions that start a program; builtins that run text as code.
OS_PROGRAM_CALLS = {"system", "popen", "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp",
                    "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
                    "spawnvpe", "posix_spawn", "posix_spawnp"}
CODE_FROM_TEXT = {"eval", "exec"}


def package_sources() -> list[Path]:
    return sorted(path for folder in PACKAGE_DIRS for path in folder.rglob("*.py"))


def forbidden_calls(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "os" \
                and func.attr in OS_PROGRAM_CALLS:
            found.append(f"{filename}:{node.lineno}: os.{func.attr}()")
        elif isinstance(func, ast.Name) and func.id in CODE_FROM_TEXT:
            found.append(f"{filename}:{node.lineno}: {func.id}()")
        found.extend(f"{filename}:{node.lineno}: shell=True" for keyword in node.keywords
                     if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant)
                                                        and keyword.value.value is False))
    return found


def test_the_package_source_never_starts_a_shell_or_a_process():
    sources = package_sources()
    assert len(sources) > 10
    for path in sources:
        text = path.read_text()
        match = SHELL_PATTERN.search(text)
        assert match is None, f"{path}: {match.group(0)}"
        assert forbidden_calls(text, str(path)) == []


def test_the_source_check_would_see_a_shell():
    """The check above is only worth something if it can fail."""
    source = "import os, subprocess\nos.system('x')\nsubprocess.run('x', shell=True)\neval('1')\n"
    assert len(forbidden_calls(source, "bad.py")) == 3
    assert SHELL_PATTERN.search(source)


ID_MARKER = "pwned-by-task-id"


def injection_payloads(marker: Path) -> list[str]:
    return [f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker}", f"| touch {marker}",
            f"&& touch {marker}", f"\ntouch {marker}\n", f"' ; touch {marker} ; '", f'" ; touch {marker} ; "']


def injected_task(marker: Path, boefje_id: str) -> dict:
    payloads = injection_payloads(marker)
    return make_task(
        boefje_id,
        oci_image=IMAGE,
        version=payloads[1],
        organisation=payloads[2],
        input_ooi=payloads[0],
        arguments={"input": {"name": payloads[3]}, payloads[4]: payloads[5]},
        environment={"INJECT": payloads[6], f"X{payloads[0]}".replace("=", ""): payloads[7]},
        # No "/" in the id: the test API builds output_url from the raw id (real ids are UUIDs).
        task_id=f"0d1f{os.urandom(4).hex()}-$(touch {ID_MARKER})`touch {ID_MARKER}`",
        hash=payloads[4],
        schedule_id=payloads[5],
    )


def test_task_fields_with_shell_syntax_are_never_run_by_a_worker_pool(boefje_api, make_pool, tmp_path):
    marker = tmp_path / "pwned"
    make_pool(pool_size=1).start()
    ids = boefje_api.enqueue([injected_task(marker, "dump-environment"), injected_task(marker, "no-such-boefje"),
                              injected_task(marker, "env-echo")])

    boefje_api.wait_for_status(ids, ("completed", "failed"))

    assert boefje_api.status(ids[0]) == "completed"
    assert not marker.exists()
    assert not (Path.cwd() / ID_MARKER).exists()


def test_task_fields_with_shell_syntax_are_never_run_by_the_oneshot_cli(boefje_api, tmp_path):
    marker = tmp_path / "pwned"
    plugins = write_plugins(tmp_path / "plugins")
    for boefje_id in ("hello", "no-such-boefje"):
        task_id = boefje_api.enqueue(injected_task(marker, boefje_id))
        boefje_api.set_status(task_id, "running")
        input_url = f"{boefje_api.url}/api/v0/tasks/{quote(task_id, safe='')}"
        result = run_cli("--plugin-dir", str(plugins), input_url, cwd=tmp_path)
        expected = ExitCode.OK if boefje_id == "hello" else ExitCode.BOEFJE_NOT_FOUND
        assert result.returncode == expected, result.stderr
        assert boefje_api.status(task_id) == ("completed" if boefje_id == "hello" else "failed")
    assert not marker.exists()
    assert not (tmp_path / ID_MARKER).exists()
