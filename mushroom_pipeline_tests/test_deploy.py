"""What can be validated of the deployment without a Docker engine or a cluster: the compose
file against the Compose specification's schema, healthchecks and healthy-dependency waits, the
one-shot storage migration the Dagster services wait for (compose and Helm), the instance and
workspace files Dagster loads, and the Helm values' shape."""

import json
import os
import re
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


ONE_SHOT = {"minio-bucket", "migrate"}  # jobs that run once: the others wait for them to complete


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies():
    services = compose()["services"]
    assert {"postgres", "minio", "user_code", "webserver", "daemon"} <= set(services)
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
        else:
            assert "healthcheck" in service, name
        for dependency, condition in service.get("depends_on", {}).items():
            wanted = ("service_completed_successfully" if dependency in ONE_SHOT
                      else "service_healthy")
            assert condition == {"condition": wanted}, (name, dependency)
    assert services["postgres"]["image"].startswith("pgvector/")


def _repair_storage_is_a_command():
    completed = subprocess.run([BIN / "mushroom-pipeline", "db", "--help"], capture_output=True,
                               text=True, timeout=60, check=True)
    assert "repair-storage" in completed.stdout


STORAGE_MIGRATION = ["mushroom-pipeline", "db", "repair-storage"]


def test_compose_migrates_dagster_storage_once_before_the_dagster_services():
    """Issue 15: webserver, daemon and code server started together on a new database corrupt
    Dagster's storage; the one-shot `migrate` service initializes it first, and they wait."""
    document = compose()
    services = document["services"]
    migrate = services["migrate"]
    assert migrate["command"] == STORAGE_MIGRATION
    assert migrate["image"] == services["user_code"]["image"]
    assert migrate["environment"] == document["x-mushroom-env"]  # the same storage URL
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("user_code", "webserver", "daemon"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"}, name
    # nothing else of Dagster's starts without waiting for it
    dagster_services = {name for name, service in services.items()
                        if service.get("image") == migrate["image"] and name != "migrate"}
    assert dagster_services == {"user_code", "webserver", "daemon"}
    _repair_storage_is_a_command()


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


def test_dagster_retries_dead_runs_and_purges_old_ticks():
    config, _ = dagster_instance_config(str(REPO))  # validated against Dagster's schema
    assert config["run_retries"] == {"enabled": True, "max_retries": 2,
                                     "retry_on_asset_or_op_failure": False}
    sensor_ticks = config["retention"]["sensor"]["purge_after_days"]
    assert 0 < sensor_ticks["skipped"] <= 7 and all(days > 0 for days in sensor_ticks.values())
    assert config["retention"]["schedule"]["purge_after_days"] > 0


def test_compose_publishes_on_localhost_and_has_no_working_default_password():
    text = (REPO / "docker-compose.yml").read_text()
    # ${VAR:-default} for a secret would start a stack anybody can log into
    assert not re.findall(r"\$\{[A-Z_]*(?:PASSWORD|SECRET)[A-Z_]*:-", text)
    for variable in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert f"${{{variable}:?" in text
        assert re.search(rf"^{variable}=$", (REPO / "deploy" / "env.example").read_text(), re.M)
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${MUSHROOM_BIND_ADDRESS:-127.0.0.1}:"), (name, port)


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


HELM = REPO / "deploy" / "helm"


def helm_values() -> dict:
    return yaml.safe_load((HELM / "values.yaml").read_text())


def render(template: Path, values: dict, release: str = "mushroom") -> dict:
    """Helm's rendering of a template whose expressions are all plain `{{ .Values.a.b }}` or
    `{{ .Release.Name }}` (the hook is written so): enough to read the manifest Helm applies."""
    def resolve(match: re.Match) -> str:
        path = match.group(1).strip()
        if path == ".Release.Name":
            return release
        assert path.startswith(".Values."), path
        value = values
        for key in path.removeprefix(".Values.").split("."):
            value = value[key]  # a KeyError here is a value the template needs and lacks
        return str(value)

    return yaml.safe_load(re.sub(r"{{(.*?)}}", resolve, template.read_text()))


def test_the_helm_values_configure_kubernetes_runs_and_the_code_location():
    values = helm_values()["dagster"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "mushroom_pipeline.definitions"]
    assert {"name": "MUSHROOM_EXECUTOR", "value": "k8s"} in deployment["env"]
    from mushroom_pipeline.definitions import defs

    tags = defs().resolve_assets_def("image_embeddings").node_def.tags["dagster-k8s/config"]
    config = tags if isinstance(tags, dict) else json.loads(tags)
    assert config["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_helm_migrates_dagster_storage_in_a_hook_before_the_release_starts():
    """The chart's webserver and daemon take no init containers of ours, so the migration is a
    pre-install/pre-upgrade hook Job of the release: Helm runs it to completion before it creates
    or updates anything else, and stops if it fails."""
    import dagster as dg

    chart = yaml.safe_load((HELM / "Chart.yaml").read_text())
    [dependency] = chart["dependencies"]
    assert (dependency["name"], dependency["version"]) == ("dagster", dg.__version__)
    assert dependency["repository"] == "https://dagster-io.github.io/helm"

    values = helm_values()
    templates = sorted(path.name for path in (HELM / "templates").iterdir())
    assert templates == ["storage-migration-job.yaml"]
    job = render(HELM / "templates" / "storage-migration-job.yaml", values)
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["command"] == STORAGE_MIGRATION
    # the code location's image and MUSHROOM_* secret: the same code and the same storage
    deployment = values["dagster"]["dagster-user-deployments"]["deployments"][0]
    image = deployment["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    [secret] = container["envFrom"]
    assert secret["secretRef"] in deployment["envSecrets"]
    assert secret["secretRef"] in values["dagster"]["runLauncher"]["config"]["k8sRunLauncher"][
        "envSecrets"]
    # the storage it migrates is the chart's: database `dagster`; the chart's own migrate Job
    # (which nothing waits for) stays off
    assert values["dagster"]["postgresql"]["postgresqlDatabase"] == "dagster"
    assert values["dagster"]["migrate"] == {"enabled": False}
    _repair_storage_is_a_command()
