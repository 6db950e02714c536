"""The deployment examples stay true to the runtime: every env var they set is a setting, the
grace periods cover SHUTDOWN_TIMEOUT, the probes hit the health endpoint, the Dockerfile's
entrypoint is the installed console script. Also: the packaged example boefjes, and that
setup.cfg ships every file they need."""

from __future__ import annotations

import configparser
import json
import re
import sys
from importlib.metadata import distribution
from typing import Any

import pytest
import yaml

from boefje_runtime.config import SETTINGS, SETTINGS_BY_NAME
from boefje_runtime.examples import BOEFJES_DIR
from boefje_runtime.plugins import BoefjeRegistry
from boefje_runtime.testing import EXAMPLE_BOEFJE_IDS, EXAMPLE_OCI_IMAGE, make_task

from .helpers import ROOT

EXAMPLES = ROOT / "examples"
DOCKERFILE = EXAMPLES / "docker" / "Dockerfile"
COMPOSE = EXAMPLES / "docker" / "docker-compose.yml"
KUBERNETES = EXAMPLES / "kubernetes"

SETTING_ENVS = {setting.env for setting in SETTINGS}
#: Variables for Python itself, not for the runtime; nothing else may be set.
PYTHON_ENVS = {"PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
DEFAULT_SHUTDOWN_TIMEOUT = SETTINGS_BY_NAME["shutdown_timeout"].default
#: ip-facts' image id: the Dockerfile, compose file and manifests must all build and filter on it.
IP_FACTS_IMAGE = json.loads((EXAMPLES / "boefjes" / "kat_ip_facts" / "boefje.json").read_text())["oci_image"]


def seconds(value: Any) -> float:
    """A compose duration (``40s``, ``1m30s``) or a plain number, in seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?", value.strip())
    assert parts and any(parts.groups()), f"not a duration: {value!r}"
    hours, minutes, secs = (float(part or 0) for part in parts.groups())
    return hours * 3600 + minutes * 60 + secs


def mebibytes(quantity: str) -> float:
    """A Kubernetes or compose memory quantity (``768Mi``, ``1g``, ``1Gi``) in MiB."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", str(quantity)).groups()
    factor = {"": 1 / 2**20, "ki": 1 / 1024, "k": 1 / 1024, "mi": 1, "m": 1, "gi": 1024, "g": 1024}[unit.lower()]
    return float(number) * factor


def has_positional(args: list[str]) -> bool:
    """Whether a command line holds an INPUT_URL (every flag in the examples takes one value)."""
    words = iter(args)
    for word in words:
        if not word.startswith("-"):
            return True
        if "=" not in word:
            next(words, None)
    return False


# -- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, rest in final_stage():
        if keyword == "ENV":
            for match in re.finditer(r"(\w+)=(\S+)", rest):
                env[match.group(1)] = match.group(2)
    return env


def test_the_dockerfile_entrypoint_is_a_console_script_of_the_package():
    [entrypoint] = [json.loads(rest) for keyword, rest in final_stage() if keyword == "ENTRYPOINT"]
    scripts = {ep.name: ep.value for ep in distribution("boefje-runtime").entry_points if ep.group == "console_scripts"}

    # exec form, so the runtime is PID 1 and gets SIGTERM itself; no fixed args, so both
    # `docker run IMAGE INPUT_URL` and `docker run IMAGE -p ID` work
    assert entrypoint == ["boefje-worker"]
    assert scripts["boefje-worker"] == "boefje_runtime_cli.main:main"
    assert not [rest for keyword, rest in final_stage() if keyword == "CMD"]


def test_the_dockerfile_sets_only_known_settings_and_openkats_layout():
    env = dockerfile_env()

    assert set(env) - PYTHON_ENVS <= SETTING_ENVS, set(env) - PYTHON_ENVS - SETTING_ENVS
    assert env["OCI_IMAGE"] == "${OCI_IMAGE}"  # from the build arg
    assert env["PYTHONPATH"] == "/app/boefje:/app"
    stage = final_stage()
    assert ("ARG", f"OCI_IMAGE={IP_FACTS_IMAGE}") in stage
    assert ("WORKDIR", "/app/boefje") in stage
    assert ("COPY", "examples/boefjes/ /app/boefje/") in stage


def test_the_dockerfile_runs_as_a_numeric_non_root_user():
    [user] = [rest for keyword, rest in final_stage() if keyword == "USER"]

    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so Kubernetes' runAsNonRoot can check it


def test_every_path_the_dockerfile_copies_exists():
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source


# -- docker compose ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_several_workers_on_openkats_boefje_network(compose):
    [service] = compose["services"].values()

    assert service["deploy"]["replicas"] >= 2
    assert "container_name" not in service  # a fixed name would allow one replica only
    assert service["networks"] == ["boefjes"]
    assert compose["networks"]["boefjes"] == {"name": "nl-kat-coordination_boefjes", "external": True}
    assert service["environment"]["BOEFJES_API"] == "http://boefje:8000"
    assert not has_positional(service["command"]), "an INPUT_URL would make it one-shot"


def test_compose_sets_only_known_settings_and_builds_the_image_it_filters_on(compose):
    service = next(iter(compose["services"].values()))
    env = service["environment"]

    assert set(env) <= SETTING_ENVS, set(env) - SETTING_ENVS
    for name, value in env.items():
        setting = next(setting for setting in SETTINGS if setting.env == name)
        setting.parse(value)  # raises ConfigError for a value the runtime would refuse
    build = service["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert build["args"]["OCI_IMAGE"] == IP_FACTS_IMAGE == service["image"]


def test_compose_gives_running_tasks_their_grace_period(compose):
    service = next(iter(compose["services"].values()))
    shutdown_timeout = float(service["environment"].get("SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_TIMEOUT))

    assert seconds(service["stop_grace_period"]) > shutdown_timeout + 5


def test_compose_health_check_asks_the_health_port(compose):
    service = next(iter(compose["services"].values()))
    port = service["environment"]["HEALTH_PORT"]

    assert f"127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"])


# -- Kubernetes ----------------------------------------------------------------------------------


def kubernetes_objects() -> dict[str, dict]:
    objects = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                objects[document["kind"]] = document
    return objects


@pytest.fixture(scope="module")
def deployment() -> dict:
    return kubernetes_objects()["Deployment"]


def container_env(deployment: dict) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_the_deployment_sets_only_known_settings_with_valid_values(deployment):
    env = container_env(deployment)

    assert set(env) <= SETTING_ENVS, set(env) - SETTING_ENVS
    for name, value in env.items():
        if isinstance(value, str):
            next(setting for setting in SETTINGS if setting.env == name).parse(value)
    assert env["OCI_IMAGE"] == IP_FACTS_IMAGE
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert not has_positional(container.get("args", [])), "an INPUT_URL would make it one-shot"


def test_the_deployment_has_replicas_and_a_grace_period_above_the_shutdown_timeout(deployment):
    env = container_env(deployment)
    pod = deployment["spec"]["template"]["spec"]

    assert deployment["spec"]["replicas"] >= 2
    assert pod["terminationGracePeriodSeconds"] > float(env.get("SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_TIMEOUT)) + 5


def test_the_probes_ask_the_health_endpoint_on_every_address(deployment):
    env = container_env(deployment)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}

    assert env["HEALTH_HOST"] == "0.0.0.0"  # the kubelet probes from outside the pod
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == int(env["HEALTH_PORT"])


def test_the_deployment_bounds_resources_and_memory_recycling_fits_the_limit(deployment):
    env = container_env(deployment)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])
    workers = int(env.get("POOL_SIZE", SETTINGS_BY_NAME["pool_size"].default))
    # every worker recycled at MAX_MEMORY_PER_CHILD, plus room for the supervisor
    assert workers * float(env["MAX_MEMORY_PER_CHILD"]) + 128 <= mebibytes(resources["limits"]["memory"])
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_autoscaler_targets_the_deployment(deployment):
    hpa = kubernetes_objects()["HorizontalPodAutoscaler"]

    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


# -- the packaged example boefjes ----------------------------------------------------------------


@pytest.fixture(scope="module")
def packaged() -> BoefjeRegistry:
    return BoefjeRegistry.discover(BOEFJES_DIR)


def test_the_packaged_examples_are_the_example_tasks_boefjes(packaged):
    assert sorted(packaged.boefjes) == sorted(EXAMPLE_BOEFJE_IDS)
    assert not packaged.errors
    assert {boefje.oci_image for boefje in packaged} == {EXAMPLE_OCI_IMAGE}
    assert not packaged.load_all()


def test_hello_world_greets_with_the_organisations_greeting(packaged, monkeypatch):
    monkeypatch.setenv("GREETING", "Hoi")
    run = packaged.find("hello-world").load()

    meta = make_task("hello-world", input_ooi="Hostname|internet|a.example")["data"]
    (text_tags, text), (json_tags, details) = run(meta)

    assert text == "Hoi, Hostname|internet|a.example!\n" and text_tags == {"text/plain"}
    assert json.loads(details)["organization"] == "org" and json_tags == {"application/json"}


def test_dns_hosts_parses_a_hosts_file_like_the_c_library(packaged):
    run = packaged.find("dns-hosts").load()
    parse_hosts = sys.modules[run.__module__].parse_hosts

    table = parse_hosts(
        "# comment\n"
        "192.0.2.1  A.example. b.example  # trailing comment\n"
        "not-an-address  c.example\n"
        "fe80::1%eth0  a.example\n"
        "192.0.2.1  a.example\n"
        "lonely-field\n"
    )

    assert {name: [str(a) for a in addresses] for name, addresses in table.items()} == {
        "a.example": ["192.0.2.1", "fe80::1"],
        "b.example": ["192.0.2.1"],
    }


def test_dns_hosts_reads_the_file_named_by_the_organisation(packaged, tmp_path, monkeypatch):
    hosts = tmp_path / "hosts"
    hosts.write_text("2001:db8::1 intranet.example\n")
    monkeypatch.setenv("HOSTS_FILE", str(hosts))
    run = packaged.find("dns-hosts").load()

    [(_, content)] = run(make_task("dns-hosts", input_ooi="Hostname|internet|Intranet.Example.")["data"])

    assert json.loads(content) == {"hostname": "intranet.example", "source": str(hosts), "A": [],
                                   "AAAA": ["2001:db8::1"]}
    with pytest.raises(LookupError, match="not in the hosts file"):
        run(make_task("dns-hosts", input_ooi="Hostname|internet|example.com")["data"])


def test_setup_cfg_ships_every_file_of_the_packaged_examples():
    """Package data must list every non-Python file, or ``pip install`` (not -e) breaks the demo."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in config["options.package_data"]["boefje_runtime"].replace("\n", ",").split(",")]
    package = ROOT / "boefje_runtime"
    shipped = {path for pattern in patterns if pattern for path in package.glob(pattern)}
    data_files = {
        path for path in (package / "examples").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }

    assert data_files - shipped == set(), "add a package_data pattern for these"
