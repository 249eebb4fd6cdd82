"""The Kubernetes manifests (deploy/k8s), checked without a cluster: every file parses, every
variable they set is a settings field, probes ask real routes on the right ports, images are
the Dockerfile's, and KEDA watches the list the generator's Celery queue lives in. Where
kustomize (or kubectl's built-in copy) is installed, base and overlays are also rendered."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from services.common.app import create_service_app
from services.common.queue import GPU_QUEUE, TRAIN_QUEUE
from tests.unit.tooling.test_deploy import unknown_variables

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "boig"
HTTP_SERVICES = ("gateway", "describer", "featurizer", "scorer")
WORKERS = {"generator": GPU_QUEUE, "trainer": TRAIN_QUEUE}
GPU_WORKERS = ("generator", "trainer")
# Set in BOIG pods but read by something other than our settings, each for a stated reason.
OTHER_VARIABLES = {
    # the official postgres image's; in BOIG pods only expanded into the DATABASE_URL values
    "POSTGRES_PASSWORD",
    "POSTGRES_USER",
    "POSTGRES_DB",
    "PGDATA",
    # boto3's credential chain (the S3 artifact store); never settings fields (secrets)
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}
WORKLOADS = ("Deployment", "StatefulSet")

Document = dict[str, Any]


def load(path: Path) -> list[Document]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def manifests() -> list[tuple[Path, Document]]:
    """Every resource and patch document (not the kustomization files themselves)."""
    return [
        (path, doc)
        for path in sorted(K8S.rglob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load(path)
    ]


def containers(doc: Document) -> Iterator[Document]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    yield from pod.get("containers", [])


def boig_service(container: Document) -> str | None:
    image = str(container.get("image", ""))
    return image.removeprefix("boig/") if image.startswith("boig/") else None


def generated_literals(kustomization: Document) -> dict[str, dict[str, str]]:
    """configMapGenerator name -> its literals."""
    return {
        generator["name"]: dict(literal.split("=", 1) for literal in generator.get("literals", []))
        for generator in kustomization.get("configMapGenerator", [])
    }


@pytest.fixture(scope="module")
def resources() -> list[Document]:
    """The base's full resources (patches, being partial, are checked where they apply)."""
    return [doc for path, doc in manifests() if path.parent == K8S / "base"]


@pytest.fixture(scope="module")
def config() -> dict[str, dict[str, str]]:
    return generated_literals(load(K8S / "base" / "kustomization.yaml")[0])


def test_every_file_parses_and_every_kustomization_names_files_that_exist() -> None:
    assert kustomizations(), "no kustomization under deploy/k8s"
    for path, doc in manifests():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), path
    for path in kustomizations():
        [kustomization] = load(path)
        assert kustomization["kind"] == "Kustomization", path
        listed = kustomization.get("resources", []) + [
            patch["path"] for patch in kustomization.get("patches", [])
        ]
        for name in listed:
            assert (path.parent / name).exists(), f"{path}: {name} does not exist"
        # Every file beside it is used: a manifest left out of the list is never applied.
        beside = {p.name for p in path.parent.glob("*.yaml")} - {"kustomization.yaml"}
        assert beside <= set(listed), f"{path}: not listed: {beside - set(listed)}"


def test_every_variable_is_a_settings_field(config: dict[str, dict[str, str]]) -> None:
    # In the shape the compose check reads: one "service" per container or generated map.
    environments: dict[str, Any] = {
        f"configMapGenerator {name}": {"environment": literals} for name, literals in config.items()
    }
    for path, doc in manifests():
        for container in containers(doc):
            environment: dict[str, str] = {}
            for variable in container.get("env", []):
                # $(VAR) expands only variables defined earlier in the same list.
                for used in re.findall(r"\$\((\w+)\)", str(variable.get("value", ""))):
                    assert used in environment, f"{path.name}: $({used}) before it is defined"
                environment[variable["name"]] = str(variable.get("value", ""))
            environments[f"{path.name} {container['name']}"] = {"environment": environment}
    assert unknown_variables(environments) == []
    others = {
        f"{where}: {variable}"
        for where, service in environments.items()
        for variable in service["environment"]
        if not variable.startswith("BOIG_") and variable not in OTHER_VARIABLES
    }
    assert others == set(), "variables no settings class, image or library reads"


def test_every_config_map_a_pod_reads_is_generated(
    resources: list[Document], config: dict[str, dict[str, str]]
) -> None:
    for doc in resources:
        for container in containers(doc):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config, doc["metadata"]["name"]


def test_probes_ask_real_routes_on_the_served_port(resources: list[Document]) -> None:
    app = create_service_app(service="probe", version="0", max_body_bytes=1024)
    served = {getattr(route, "path", None) for route in app.routes}
    assert {"/health", "/metrics"} <= served  # what every HTTP service's factory adds
    seen = set()
    for doc in resources:
        for container in containers(doc):
            service = boig_service(container)
            if service is None:
                continue
            seen.add(service)
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            ports = {port["name"]: port["containerPort"] for port in container["ports"]}
            probes = {kind: container[kind] for kind in ("readinessProbe", "livenessProbe")}
            probes |= {"startupProbe": container["startupProbe"]}
            if service in HTTP_SERVICES:
                openapi = json.loads((ROOT / "proto/openapi" / f"{service}.json").read_text())
                assert "/health" in openapi["paths"], service
                prefix = f"BOIG_{service.upper()}_"
                assert env[f"{prefix}HOST"] == "0.0.0.0"
                assert ports == {"http": int(env[f"{prefix}PORT"])}
                # Ready means /health's 200 (models loaded, upstreams answering); liveness
                # never reads /health, or an upstream outage would restart every pod.
                assert probes["readinessProbe"]["httpGet"]["path"] == "/health"
                assert probes["livenessProbe"]["httpGet"]["path"] == "/metrics"
            else:
                # Celery workers: prometheus_client's server answers /metrics on its own port.
                assert service in WORKERS, service
                prefix = f"BOIG_{service.upper()}_"
                assert env[f"{prefix}METRICS_HOST"] == "0.0.0.0"
                assert ports == {"metrics": int(env[f"{prefix}METRICS_PORT"])}
                assert all(p["httpGet"]["path"] == "/metrics" for p in probes.values())
            for kind, probe in probes.items():
                assert probe["httpGet"]["path"] in served, (service, kind)
                assert probe["httpGet"]["port"] in ports, (service, kind)
    assert seen == set(HTTP_SERVICES) | set(WORKERS)


def test_images_are_built_from_the_dockerfile(resources: list[Document]) -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    # One recipe: --build-arg SERVICE picks the extra it installs and the module it runs.
    assert "ARG SERVICE" in dockerfile and '".[${SERVICE}]"' in dockerfile
    assert "python -m services.${SERVICE}" in dockerfile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for doc in resources:
        for container in containers(doc):
            service = boig_service(container)
            if service is None:  # third-party images are pinned to a major version at least
                assert re.fullmatch(r"[a-z0-9/.-]+:\d+(\.\d+)*", container["image"]), container
                continue
            assert service in extras, f"no install extra for image boig/{service}"
            assert (ROOT / "services" / service / "__main__.py").is_file(), service
            assert container["name"] == service == doc["metadata"]["name"]


def test_services_select_a_workload_and_name_its_port(resources: list[Document]) -> None:
    workloads = [doc for doc in resources if doc["kind"] in WORKLOADS]
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (doc for doc in resources if doc["kind"] == "Service"):
        [target] = [
            w
            for w in workloads
            if service["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        names = {p["name"] for c in containers(target) for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, service["metadata"]["name"]
    # Probes of the HTTP services are reached through their Services: one for each.
    services = {doc["metadata"]["name"] for doc in resources if doc["kind"] == "Service"}
    assert services >= set(HTTP_SERVICES) | {"redis", "postgres"}


def test_the_scaler_watches_the_generator_queue_list(
    resources: list[Document], config: dict[str, dict[str, str]]
) -> None:
    [scaled] = [doc for _, doc in manifests() if doc["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "generator"
    [generator] = [
        doc
        for doc in resources
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "generator"
    ]
    assert [c["image"] for c in containers(generator)] == ["boig/generator"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    # Celery's Redis transport keeps a queue as a list named after it, in the broker's db.
    assert metadata["listName"] == GPU_QUEUE
    broker = urlsplit(config["boig-config"]["BOIG_QUEUE_BROKER_URL"])
    assert metadata["databaseIndex"] == broker.path.lstrip("/")
    host, port = metadata["address"].rsplit(":", 1)
    # KEDA runs in its own namespace: the broker's Service by its full name.
    assert host == f"{broker.hostname}.{NAMESPACE}.svc.cluster.local"
    assert int(port) == broker.port
    [redis] = [
        doc
        for doc in resources
        if doc["kind"] == "Service" and doc["metadata"]["name"] == broker.hostname
    ]
    assert [p["port"] for p in redis["spec"]["ports"]] == [broker.port]
    assert int(metadata["listLength"]) >= 1 and scaled["spec"]["minReplicaCount"] >= 1


def test_the_gpu_overlay_gives_each_gpu_worker_one_gpu() -> None:
    overlay = K8S / "overlays" / "gpu"
    patched = {}
    for path in overlay.glob("*.yaml"):
        for doc in load(path):
            if doc["kind"] == "Deployment":
                patched[doc["metadata"]["name"]] = doc
    assert set(patched) == set(GPU_WORKERS)
    for name, doc in patched.items():
        pod = doc["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        [container] = pod["containers"]
        assert container["name"] == name
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def _renderer() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("target", ["base", "overlays/gpu"])
def test_kustomize_renders_every_target(target: str) -> None:
    renderer = _renderer()
    if renderer is None:
        pytest.skip("neither kustomize nor kubectl is installed (no recent one in Debian)")
    rendered = subprocess.run(
        [*renderer, str(K8S / target)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap"} <= kinds
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]
    maps = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "ConfigMap"}
    gpus = {}
    for doc in docs:
        for container in containers(doc):
            for source in container.get("envFrom", []):
                # The generator's hashed name replaced the reference: it rolls pods on a change.
                assert source["configMapRef"]["name"] in maps
            limit = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            if limit:
                gpus[doc["metadata"]["name"]] = limit
    if target == "overlays/gpu":
        assert gpus == dict.fromkeys(GPU_WORKERS, 1)
        assert "ScaledObject" in kinds
    else:
        assert gpus == {} and "ScaledObject" not in kinds
