"""What can be validated of the deployment without a Docker engine or a cluster: the compose
file against the Compose specification's schema, healthchecks and healthy-dependency waits, the
instance and workspace files Dagster loads, and the Helm values' shape."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml
from dagster._core.instance.config import dagster_instance_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_the_compose_file_follows_the_compose_specification():
    # deploy/compose-spec.json: the Compose specification's JSON schema (as shipped in
    # docker-compose 1.29.2), kept in the repository because CI has no network.
    schema = json.loads((REPO / "deploy" / "compose-spec.json").read_text())
    jsonschema.validate(compose(), schema)


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies():
    services = compose()["services"]
    assert {"postgres", "minio", "user_code", "webserver", "daemon"} <= set(services)
    for name, service in services.items():
        if name == "minio-bucket":  # a one-shot job: the others wait for it to complete
            continue
        assert "healthcheck" in service, name
        for dependency, condition in service.get("depends_on", {}).items():
            wanted = ("service_completed_successfully" if dependency == "minio-bucket"
                      else "service_healthy")
            assert condition == {"condition": wanted}, (name, dependency)
    assert services["postgres"]["image"].startswith("pgvector/")


def test_the_compose_environment_speaks_the_contract():
    environment = compose()["x-mushroom-env"]
    assert environment["MUSHROOM_DATABASE_URL"].startswith("postgresql+psycopg2://")
    assert environment["MUSHROOM_DAGSTER_STORAGE_URL"].startswith("postgresql+psycopg2://")
    for variable in ("MUSHROOM_MINIO_ENDPOINT", "MUSHROOM_IMAGE_BUCKET", "MUSHROOM_CLIP_MODEL",
                     "MUSHROOM_CLIP_PRETRAINED", "MUSHROOM_TIMEZONE", "MUSHROOM_ALERT_WEBHOOK_URL"):
        assert variable in environment


def test_dagster_yaml_loads_as_instance_config():
    config, _ = dagster_instance_config(str(REPO))
    assert config["storage"]["custom"]["class"] == "MushroomPostgresStorage"
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 2
    assert config["concurrency"]["pools"]["default_limit"] == 1


def test_both_workspaces_load():
    from dagster._core.workspace.config_schema import process_workspace_config

    for workspace in (REPO / "workspace.yaml", REPO / "deploy" / "workspace.docker.yaml"):
        result = process_workspace_config(yaml.safe_load(workspace.read_text()))
        assert result.success, (workspace, result.errors)
    # and the local one really loads the code location, as the webserver would
    completed = subprocess.run(
        [BIN / "dagster", "definitions", "validate", "-w", REPO / "workspace.yaml"],
        cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=180, check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]


def test_the_helm_values_configure_kubernetes_runs_and_the_code_location():
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "mushroom_pipeline.definitions"]
    assert {"name": "MUSHROOM_EXECUTOR", "value": "k8s"} in deployment["env"]
    from mushroom_pipeline.definitions import defs

    tags = defs.resolve_assets_def("image_embeddings").node_def.tags["dagster-k8s/config"]
    config = tags if isinstance(tags, dict) else json.loads(tags)
    assert config["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
