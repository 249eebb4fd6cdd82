"""The compose topology and images, checked without a Docker engine."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from services.tooling import env_example

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


def test_only_the_gateway_prometheus_and_grafana_publish_ports(compose: dict[str, Any]) -> None:
    published = {name for name, s in compose["services"].items() if s.get("ports")}
    assert published == {"gateway", "prometheus", "grafana"}
    assert all("expose" not in s for s in compose["services"].values())


def test_prometheus_scrapes_every_service_on_the_port_it_serves() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert {target.split(":")[0] for target in targets} == {*SERVICES, "vllm"}
    for target in targets:
        name, port = target.split(":")
        if name == "vllm":
            assert "--port=8000" in services["vllm"]["command"]
            continue
        environment = services[name]["environment"]
        key = "PORT" if name in HTTP_SERVICES else "METRICS_PORT"
        assert environment[f"BOIG_{name.upper()}_{key}"] == port, target
    assert all(
        job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"]
    )


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


def test_only_the_worker_and_the_gateway_write_artifacts(compose: dict[str, Any]) -> None:
    # The worker writes generated images, the gateway the images of KPI feedback records.
    writers = {"generator", "gateway"}
    for name, service in compose["services"].items():
        mounts = [m for m in service.get("volumes", []) if m.startswith("artifacts:")]
        assert all(m.endswith(":ro") for m in mounts) or name in writers, (name, mounts)
    assert "artifacts:/var/lib/boig-artifacts" in compose["services"]["gateway"]["volumes"]


def test_database_credentials_come_from_the_environment_with_no_default() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    required = "${BOIG_POSTGRES_PASSWORD:?set BOIG_POSTGRES_PASSWORD}"
    assert "boig:boig@" not in text and "POSTGRES_PASSWORD: boig" not in text
    compose = yaml.safe_load(text)["services"]
    assert compose["postgres"]["environment"]["POSTGRES_PASSWORD"] == required
    for name, key in (("gateway", "GATEWAY"), ("generator", "GENERATOR")):
        url = compose[name]["environment"][f"BOIG_{key}_DATABASE_URL"]
        assert f"boig:{required}@postgres" in url


# --- the stack the issue asks for ------------------------------------------------------------

ISSUE_SERVICES = {
    "redis",
    "postgres",
    "vllm",
    "gateway",
    "describer",
    "featurizer",
    "scorer",
    "generator",
    "trainer",
    "prometheus",
    "grafana",
}
ONE_SHOT = {"models"}  # `docker compose run --rm models`: it exits, so it has no health
GPU_SERVICES = {"vllm", "featurizer", "generator", "trainer"}


def test_compose_runs_every_service_of_the_stack(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == ISSUE_SERVICES | ONE_SHOT
    assert compose["services"]["models"]["restart"] == "no"
    for name in GPU_SERVICES:
        [device] = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["count"] == 1, name


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    # What depends on one waits for service_healthy: test_dependencies_wait_for_health_...
    services = compose["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    # Prometheus waits for nobody: it is what shows why a service does not come up.
    assert "depends_on" not in services["prometheus"]
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def test_redis_keeps_and_never_evicts_the_queue(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def _settings_classes() -> list[type[BaseSettings]]:
    """The documented settings classes: those .env.example is generated from."""
    return [
        getattr(importlib.import_module(module), name)
        for module, name, _ in env_example.SETTINGS_CLASSES
    ]


def unknown_variables(services: dict[str, Any]) -> list[str]:
    """Each BOIG_* variable a compose service sets that no documented setting reads."""
    prefixes = {str(cls.model_config.get("env_prefix", "")): cls for cls in _settings_classes()}
    problems = []
    for name, service in services.items():
        for variable in service.get("environment", {}):
            if not variable.startswith("BOIG_") or variable == "BOIG_HOME":
                continue  # BOIG_HOME is read by boig_home(), the root of every default path
            prefix = max((p for p in prefixes if variable.startswith(p)), key=len, default=None)
            field = variable.removeprefix(prefix or "").lower()
            if prefix is None or field not in prefixes[prefix].model_fields:
                problems.append(f"{name}: {variable}")
    return problems


def test_every_boig_variable_compose_sets_is_a_documented_setting(
    compose: dict[str, Any],
) -> None:
    assert unknown_variables(compose["services"]) == []
    misspelt = {"environment": {"BOIG_SCORER_FEATURIZER_URLS": "x", "BOIG_SCORE_PORT": "1"}}
    assert unknown_variables({"scorer": misspelt}) == [
        "scorer: BOIG_SCORER_FEATURIZER_URLS",
        "scorer: BOIG_SCORE_PORT",
    ]


def test_every_build_names_a_dockerfile_argument_and_stage_that_exist(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name
            continue
        dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text()
        arguments = set(re.findall(r"^ARG\s+(\w+)", dockerfile, re.MULTILINE))
        stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.MULTILINE | re.I))
        assert set(build.get("args", {})) <= arguments, name
        if "target" in build:
            assert build["target"] in stages, name


def test_every_healthcheck_probes_a_path_the_service_serves(compose: dict[str, Any]) -> None:
    settings_of = {
        "gateway": ("services.gateway.settings", "GatewaySettings"),
        "scorer": ("services.scorer.settings", "ScorerSettings"),
        "describer": ("services.describer.settings", "DescriberSettings"),
        "featurizer": ("services.featurizer.settings", "FeaturizerSettings"),
    }
    for name, (module, class_name) in settings_of.items():
        settings = getattr(importlib.import_module(module), class_name)()
        app = importlib.import_module(f"services.{name}.app").create_app(settings)
        routes = {getattr(route, "path", None) for route in app.routes}
        probe = compose["services"][name]["healthcheck"]["test"][-1]
        assert urlsplit(probe).path in routes, (name, probe)
    # Workers serve prometheus_client's exposition on their metrics port, nothing else.
    for name in ("generator", "trainer"):
        probe = compose["services"][name]["healthcheck"]["test"][-1]
        assert urlsplit(probe).path == "/metrics", name
    probes = {
        n: " ".join(compose["services"][n]["healthcheck"]["test"])
        for n in compose["services"]
        if n not in ONE_SHOT
    }
    assert "127.0.0.1:8000/health" in probes["vllm"]  # vLLM's OpenAI server
    assert "127.0.0.1:9090/-/ready" in probes["prometheus"]
    assert "127.0.0.1:3000/api/health" in probes["grafana"]
    assert "pg_isready" in probes["postgres"] and "redis-cli ping" in probes["redis"]


def test_grafana_is_provisioned_from_files_in_the_repository(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(
        m.removesuffix(":ro").split(":", 1) for m in grafana["volumes"] if m.startswith("./")
    )
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = ROOT / "deploy/grafana/provisioning"
    [datasource] = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]
    [provider] = yaml.safe_load((provisioning / "dashboards/boig.yml").read_text())["providers"]
    dashboards = provider["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"] == dashboards
    assert sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards + "/")
    assert (ROOT / "deploy/grafana/dashboards" / home.removeprefix(dashboards + "/")).is_file()


def test_every_file_compose_mounts_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)


def test_secrets_come_from_the_environment(compose: dict[str, Any]) -> None:
    secret = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY")
    required = re.compile(r"\$\{(\w+):\?[^}]+\}")
    for name, service in compose["services"].items():
        for variable, value in service.get("environment", {}).items():
            if secret.search(variable):
                assert required.fullmatch(str(value)), f"{name}: {variable} has a default"
    admin = compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert admin == "${BOIG_GRAFANA_ADMIN_PASSWORD:?set BOIG_GRAFANA_ADMIN_PASSWORD}"


def test_vllm_serves_the_weights_the_describer_tokenizes_for(compose: dict[str, Any]) -> None:
    from services.common.settings import SMOLLM2_NAME
    from services.trainer.finetune.config import PRESETS, FinetuneConfig

    services = compose["services"]
    command = {
        flag: value
        for flag, _, value in (arg.partition("=") for arg in services["vllm"]["command"])
    }
    # The describer sends token ids from its own tokenizer (model_path, by default under
    # BOIG_HOME): vLLM must serve the same model.
    home = services["describer"]["environment"]["BOIG_HOME"]
    assert "BOIG_DESCRIBER_MODEL_PATH" not in services["describer"]["environment"]
    assert command["--model"] == f"{home}/models/{SMOLLM2_NAME}"
    # Every BoigLLM adapter a preset trains fits the server's LoRA slots.
    ranks = [preset(Path("base")).lora_r for preset in PRESETS.values()]
    ranks.append(FinetuneConfig.model_fields["lora_r"].default)
    assert int(command["--max-lora-rank"]) >= max(ranks)
    # The checkpoints the trainer publishes are the ones the describer and the generator load.
    registry = services["trainer"]["environment"]["BOIG_TRAINER_REGISTRY"]
    assert services["describer"]["environment"]["BOIG_DESCRIBER_CHECKPOINT_REGISTRY"] == registry
    assert services["generator"]["environment"]["BOIG_GENERATOR_CHECKPOINT_REGISTRY"] == registry
