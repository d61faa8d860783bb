"""The code location: what `workspace.yaml` and `dagster ... -m mushroom_pipeline.definitions` load.

`defs` is built when the code location loads (in the webserver, the daemon and each run's worker),
not at import: the MUSHROOM_* variables are read then, by the functions below."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.defs.automation.alerts import (
    WEBHOOK_VARIABLE,
    AlertWebhookResource,
    check_webhook_url,
)
from mushroom_pipeline.images.describer import DescriberResource
from mushroom_pipeline.images.encoder import DEFAULT_BATCH_SIZE, ClipEncoderResource
from mushroom_pipeline.objectstore import LocalObjectStore, ObjectStore, S3ObjectStore
from mushroom_pipeline.partitions import FARM_TIMEZONE
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.settings import ConfigurationError, load_settings
from mushroom_pipeline.warehouse.io_manager import PostgresPandasIOManager


def _env_var(variable: str) -> dg.EnvVar | None:
    # An EnvVar shows the variable's name in the UI, never the URL and its password.
    return dg.EnvVar(variable) if os.environ.get(variable, "").strip() else None


def object_store_resource() -> ObjectStore:
    """S3 (MinIO or any S3 server) when MUSHROOM_MINIO_ENDPOINT is set, else the local folder
    under MUSHROOM_HOME: two implementations of one resource type."""
    secure = os.environ.get("MUSHROOM_MINIO_SECURE", "false").strip().lower()
    if secure not in ("true", "false"):
        raise ConfigurationError(f"MUSHROOM_MINIO_SECURE={secure!r}: use true or false")
    bucket = os.environ.get("MUSHROOM_IMAGE_BUCKET", "").strip() or "mushroom-images"
    endpoint = _env_var("MUSHROOM_MINIO_ENDPOINT")
    if endpoint is None:
        return LocalObjectStore(home=str(load_settings().home), bucket=bucket)
    return S3ObjectStore(
        endpoint=endpoint,
        access_key=_env_var("MUSHROOM_MINIO_ACCESS_KEY"),
        secret_key=_env_var("MUSHROOM_MINIO_SECRET_KEY"),
        secure=secure == "true",
        bucket=bucket,
    )


def farm_catalog_resource() -> FarmCatalogResource:
    """The catalog files named by the variables (else the shipped ones), checked now: a broken
    file stops the code location from loading with a message naming the file and variable."""
    catalog = FarmCatalogResource(
        metrics_path=_env_var("MUSHROOM_METRIC_CATALOG"),
        points_path=_env_var("MUSHROOM_SETPOINT_CONFIG"),
    )
    FarmCatalogResource(
        metrics_path=os.environ.get("MUSHROOM_METRIC_CATALOG", "").strip() or None,
        points_path=os.environ.get("MUSHROOM_SETPOINT_CONFIG", "").strip() or None,
    ).validate()
    return catalog


def database_resources() -> dict[str, object]:
    """What the Postgres assets need: both databases, the I/O manager and the farm's catalog."""
    common = {"home": str(load_settings().home), "timezone": FARM_TIMEZONE,
              "lock_timeout_s": _positive_int("MUSHROOM_LOCK_TIMEOUT_S", 300)}
    warehouse = PostgresResource(url=_env_var("MUSHROOM_DATABASE_URL"), **common)
    if _env_var("MUSHROOM_SOURCE_DATABASE_URL"):
        source = PostgresResource(
            url=_env_var("MUSHROOM_SOURCE_DATABASE_URL"),
            url_variable="MUSHROOM_SOURCE_DATABASE_URL",
            **common,
        )
    else:
        source = warehouse
    return {
        "warehouse": warehouse,
        "source_database": source,
        "io_manager": PostgresPandasIOManager(database=warehouse),
        "farm_catalog": farm_catalog_resource(),
    }


def _positive_int(variable: str, default: int) -> int:
    value = os.environ.get(variable, "").strip() or str(default)
    if not value.isdigit() or int(value) < 1:
        raise ConfigurationError(f"{variable}={value!r}: use a positive whole number")
    return int(value)


def model_resources() -> dict[str, object]:
    device = os.environ.get("MUSHROOM_CLIP_DEVICE", "").strip() or "auto"
    return {
        "clip_encoder": ClipEncoderResource(
            architecture=os.environ.get("MUSHROOM_CLIP_MODEL", "").strip() or "ViT-B-32",
            pretrained=os.environ.get("MUSHROOM_CLIP_PRETRAINED", "").strip() or "laion2b_s34b_b79k",
            device=device,
            batch_size=_positive_int("MUSHROOM_CLIP_BATCH_SIZE", DEFAULT_BATCH_SIZE),
            decode_threads=_positive_int("MUSHROOM_CLIP_DECODE_THREADS", 4),
            max_image_mb=_positive_int("MUSHROOM_MAX_IMAGE_MB", 50),
            prefetch_mb=_positive_int("MUSHROOM_PREFETCH_MB", 256),
        ),
        "describer": DescriberResource(
            model=os.environ.get("MUSHROOM_DESCRIBER_MODEL", "").strip() or None, device=device
        ),
    }


def alert_webhook_resource() -> AlertWebhookResource:
    """Checked when the code location loads: a bad URL is a configuration error then, not a
    failing sensor tick later."""
    url = os.environ.get(WEBHOOK_VARIABLE, "").strip()
    if url:
        check_webhook_url(url)
    return AlertWebhookResource(url=_env_var(WEBHOOK_VARIABLE))


def all_resources() -> dict[str, object]:
    return {
        **database_resources(),
        "object_store": object_store_resource(),
        **model_resources(),
        "alert_webhook": alert_webhook_resource(),
    }


def executor():
    """MUSHROOM_EXECUTOR=k8s (the Helm deployment): a pod per step; otherwise Dagster's default."""
    choice = os.environ.get("MUSHROOM_EXECUTOR", "").strip()
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor  # the image's `k8s` extra

        return k8s_job_executor
    if choice:
        raise ConfigurationError(f"MUSHROOM_EXECUTOR={choice!r}: use k8s, or leave it unset")
    return None


@dg.definitions
def defs() -> dg.Definitions:
    """Assets, checks, jobs, schedules and sensors: whatever the modules under defs/ define (one
    folder per domain); the resources and the executor: built from the MUSHROOM_* variables."""
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(resources=all_resources(), executor=executor()),
    )


@contextmanager
def resources_outside_a_run(*keys: str) -> Iterator[object]:
    """The code location's resources exactly as a run gets them (each `dg.EnvVar` resolved), for
    the code that runs outside one: the CLI and the demo. Attributes are the keys."""
    configured = defs().resources
    with dg.build_resources({key: configured[key] for key in keys}) as resources:
        yield resources
