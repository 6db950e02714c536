"""The deployment examples are valid for the systems that read them, checked against their published
schemas with validators from PyPI: Kubernetes objects with kubernetes-validate (Kubernetes' own
OpenAPI schemas, strict: an unknown or misplaced field fails), the compose file with the Compose
Specification's schema as check-jsonschema ships it, and KEDA's ScaledObject with jsonschema
against tests/schemas/ (no package ships KEDA's schema). What the values must mean for the runtime
(settings, grace periods, probes) is tests/test_examples.py; the autoscaler's fit to the drain is here.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from .helpers import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

KUBERNETES = ROOT / "examples" / "kubernetes"
COMPOSE = ROOT / "examples" / "docker" / "docker-compose.yml"
SCHEMAS = Path(__file__).parent / "schemas"
#: Oldest Kubernetes minor version the manifests must be valid for (autoscaling/v2 behavior is GA there).
KUBERNETES_VERSION = "1.30.0"


def documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def manifests() -> list[tuple[str, dict]]:
    paths = sorted(KUBERNETES.glob("*.yaml"))
    return [(f"{path.name}:{doc['kind']}", doc) for path in paths for doc in documents(path)]


def keda_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "keda-scaledobject-v1alpha1.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def validate(document: dict) -> None:
    """Raise when ``document`` does not match the schema of its kind."""
    if document["apiVersion"].startswith("keda.sh/"):
        keda_validator().validate(document)
        # KEDA passes this block to the HPA it creates: it must be a valid HPA behavior.
        behavior = document["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is not None:
            validate(hpa_with(behavior))
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def hpa_with(behavior: dict) -> dict:
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                 "maxReplicas": 2, "behavior": behavior},
    }


def by_kind() -> dict[str, dict]:
    return {document["kind"]: document for _, document in manifests()}


@pytest.mark.parametrize(("name", "document"), manifests(), ids=[name for name, _ in manifests()])
def test_every_kubernetes_manifest_validates_against_its_schema(name, document):
    validate(document)


def test_the_compose_file_validates_against_the_compose_specification():
    schema_file = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())

    jsonschema.validators.validator_for(schema)(schema).validate(yaml.safe_load(COMPOSE.read_text()))


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["spec"]["triggers"][0]["metadata"].update(threshold=10),  # KEDA wants strings
        lambda d: d["spec"].update(minReplicas=1),  # the HPA's name, not KEDA's
        lambda d: d["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"].update(
            stabilizationWindow=600),
        lambda d: d["spec"].pop("triggers"),
    ],
    ids=["number-threshold", "hpa-field-name", "misspelt-behavior", "no-triggers"],
)
def test_the_schemas_refuse_a_broken_scaled_object(break_it):
    document = by_kind()["ScaledObject"]
    break_it(document)

    with pytest.raises(jsonschema.ValidationError):
        validate(document)


def test_a_broken_deployment_is_refused():
    document = by_kind()["Deployment"]
    document["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"] = "not an object"

    with pytest.raises(jsonschema.ValidationError):
        validate(document)


def test_the_scaled_object_scales_the_deployment_on_the_queue_and_outwaits_a_task():
    objects = by_kind()
    scaled, deployment = objects["ScaledObject"]["spec"], objects["Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}

    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 0 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    queries = [trigger["metadata"]["query"] for trigger in scaled["triggers"] if trigger["type"] == "prometheus"]
    assert any('scheduler_qsize{scheduler_id="boefje"}' in query for query in queries)
    # a replica is not removed (nor the last one stopped) while a typical task could still be running
    task_timeout = float(env["TASK_TIMEOUT"])
    assert scaled["cooldownPeriod"] > task_timeout
    scale_down = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= task_timeout
    # the busy-workers trigger reads metrics the pool really exports
    busy = next(query for query in queries if "workers_busy" in query)
    assert "boefje_runtime_workers_idle" in busy


def test_keda_and_the_cpu_autoscaler_are_alternatives_for_one_deployment():
    objects = by_kind()
    keda_file = (KUBERNETES / "keda-scaledobject.yaml").read_text()

    assert objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == (
        objects["ScaledObject"]["spec"]["scaleTargetRef"]["name"]
    )
    assert "OR hpa.yaml, never both" in keda_file  # two autoscalers on one Deployment fight
