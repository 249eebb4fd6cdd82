"""The compose topology and images, checked without a Docker engine."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
SERVICES = ("featurizer", "describer", "scorer", "generator", "gateway", "trainer")
HTTP_SERVICES = ("featurizer", "describer", "scorer", "gateway")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def test_every_service_is_built_from_its_own_extra(compose: dict[str, Any]) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for name in SERVICES:
        build = compose["services"][name]["build"]
        assert build["dockerfile"] == "deploy/Dockerfile"
        assert build["args"]["SERVICE"] == name
        assert name in extras
        assert (ROOT / "services" / name / "__main__.py").is_file()


def test_every_service_has_a_healthcheck_on_its_own_port(compose: dict[str, Any]) -> None:
    for name in HTTP_SERVICES:
        service = compose["services"][name]
        port = service["environment"][f"BOIG_{name.upper()}_PORT"]
        assert f":{port}/health" in " ".join(service["healthcheck"]["test"])
    # The Celery workers serve no API: their /metrics answers once they consume their queue.
    for name in ("generator", "trainer"):
        worker = compose["services"][name]
        port = worker["environment"][f"BOIG_{name.upper()}_METRICS_PORT"]
        assert f":{port}/metrics" in " ".join(worker["healthcheck"]["test"])
    assert compose["services"]["trainer"]["profiles"] == ["train"]


def test_producer_and_consumer_share_the_queue_the_records_and_the_images(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    gateway, worker = services["gateway"]["environment"], services["generator"]["environment"]
    for name in ("BOIG_QUEUE_BROKER_URL", "BOIG_QUEUE_RESULT_BACKEND"):
        assert gateway[name] == worker[name] and gateway[name].startswith("redis://redis:")
    assert gateway["BOIG_GATEWAY_DATABASE_URL"] == worker["BOIG_GENERATOR_DATABASE_URL"]
    assert gateway["BOIG_GATEWAY_ARTIFACT_ROOT"] == worker["BOIG_GENERATOR_ARTIFACT_ROOT"]
    assert worker["BOIG_GENERATOR_SCORER_URL"] == "http://scorer:8103"
    # Redis is the broker: it keeps its data across restarts.
    assert "--appendonly" in services["redis"]["command"]


def test_dependencies_wait_for_health_and_urls_point_at_them(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition == {"condition": "service_healthy"}
            assert "healthcheck" in services[dependency]
    scorer_env = services["scorer"]["environment"]
    assert scorer_env["BOIG_SCORER_FEATURIZER_URL"] == "http://featurizer:8101"
    assert scorer_env["BOIG_SCORER_DESCRIBER_URL"] == "http://describer:8102"
    assert services["gateway"]["environment"]["BOIG_GATEWAY_SCORER_URL"] == "http://scorer:8103"
    assert set(services["gateway"]["depends_on"]) >= {"scorer", "postgres", "redis"}


def test_only_the_gateway_is_published(compose: dict[str, Any]) -> None:
    published = {name for name, s in compose["services"].items() if s.get("ports")}
    assert published == {"gateway", "prometheus"}


def test_prometheus_scrapes_every_service() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert {target.split(":")[0] for target in targets} == set(SERVICES)
    [vllm] = [job for job in config["scrape_configs"] if job["job_name"] == "vllm"]
    assert vllm["static_configs"][0]["targets"] == ["vllm:8000"]


def test_the_describer_sends_its_model_calls_to_the_vllm_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    vllm, describer = services["vllm"], services["describer"]
    env = describer["environment"]
    assert env["BOIG_DESCRIBER_BACKEND"] == "vllm"
    assert env["BOIG_DESCRIBER_VLLM_URL"] == "http://vllm:8000"
    assert describer["depends_on"]["vllm"] == {"condition": "service_healthy"}
    command = " ".join(vllm["command"])
    assert f"--served-model-name={env['BOIG_DESCRIBER_VLLM_MODEL']}" in command
    # Adapters load at run time from the registry, which both containers see at one path.
    assert env["BOIG_DESCRIBER_VLLM_ADAPTERS"] == "lora" and "--enable-lora" in command
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"
    assert env["BOIG_DESCRIBER_CHECKPOINT_REGISTRY"].startswith("/var/lib/boig/")
    assert "models:/var/lib/boig:ro" in vllm["volumes"]
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_gateway_image_needs_no_torch() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not any(
        dep.startswith(("torch", "transformers", "ultralytics")) for dep in extras["gateway"]
    )


def test_models_are_read_only_to_the_services_and_absent_from_the_gateway(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, service in services.items():
        mounts = [m for m in service.get("volumes", []) if m.startswith("models:")]
        if name == "models":  # `docker compose run --rm models` prepares them
            assert mounts == ["models:/var/lib/boig"] and service["profiles"] == ["prepare"]
        elif name == "trainer":  # it publishes checkpoints to the registry in that volume
            assert mounts == ["models:/var/lib/boig"] and service["profiles"] == ["train"]
        elif name == "gateway":
            assert mounts == []
        else:
            assert all(mount.endswith(":ro") for mount in mounts), (name, mounts)
    assert services["featurizer"]["volumes"] == ["models:/var/lib/boig:ro"]  # via x-service


def test_only_the_worker_writes_generated_images(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        mounts = [m for m in service.get("volumes", []) if m.startswith("artifacts:")]
        assert all(m.endswith(":ro") for m in mounts) or name == "generator", (name, mounts)
    assert any(m.startswith("artifacts:") for m in compose["services"]["gateway"]["volumes"])


def test_database_credentials_come_from_the_environment_with_no_default() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    required = "${BOIG_POSTGRES_PASSWORD:?set BOIG_POSTGRES_PASSWORD}"
    assert "boig:boig@" not in text and "POSTGRES_PASSWORD: boig" not in text
    compose = yaml.safe_load(text)["services"]
    assert compose["postgres"]["environment"]["POSTGRES_PASSWORD"] == required
    for name, key in (("gateway", "GATEWAY"), ("generator", "GENERATOR")):
        url = compose[name]["environment"][f"BOIG_{key}_DATABASE_URL"]
        assert f"boig:{required}@postgres" in url
