"""The code location: what `workspace.yaml` and `dagster ... -m mushroom_pipeline.definitions` load."""

import os

import dagster as dg

from mushroom_pipeline.automation.jobs import environment_job, farm_daily_job, setpoints_job
from mushroom_pipeline.automation.schedules import daily_env_stats, hourly_setpoint_monitoring
from mushroom_pipeline.automation.sensors import late_env_readings_sensor
from mushroom_pipeline.environment.assets import env_daily_stats, env_readings
from mushroom_pipeline.io.postgres import PostgresPandasIOManager
from mushroom_pipeline.objectstore import ObjectStoreResource
from mushroom_pipeline.partitions import SETTINGS
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.settings import ConfigurationError
from mushroom_pipeline.setpoints.assets import (
    setpoint_change_events,
    setpoint_snapshots,
    switch_daily_stats,
)
from mushroom_pipeline.vision.manifest import image_manifest


def _env_var(variable: str) -> dg.EnvVar | None:
    # An EnvVar shows the variable's name in the UI, never the URL and its password.
    return dg.EnvVar(variable) if os.environ.get(variable, "").strip() else None


def object_store_resource() -> ObjectStoreResource:
    secure = os.environ.get("MUSHROOM_MINIO_SECURE", "false").strip().lower()
    if secure not in ("true", "false"):
        raise ConfigurationError(f"MUSHROOM_MINIO_SECURE={secure!r}: use true or false")
    return ObjectStoreResource(
        endpoint=_env_var("MUSHROOM_MINIO_ENDPOINT"),
        access_key=_env_var("MUSHROOM_MINIO_ACCESS_KEY"),
        secret_key=_env_var("MUSHROOM_MINIO_SECRET_KEY"),
        secure=secure == "true",
        bucket=os.environ.get("MUSHROOM_IMAGE_BUCKET", "").strip() or "mushroom-images",
        home=str(SETTINGS.home),
    )


def database_resources() -> dict[str, object]:
    common = {"home": str(SETTINGS.home), "timezone": SETTINGS.timezone}
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
    }


def all_resources() -> dict[str, object]:
    return {**database_resources(), "object_store": object_store_resource()}


defs = dg.Definitions(
    assets=[
        env_readings,
        env_daily_stats,
        setpoint_snapshots,
        setpoint_change_events,
        switch_daily_stats,
        image_manifest,
    ],
    jobs=[environment_job, setpoints_job, farm_daily_job],
    schedules=[daily_env_stats, hourly_setpoint_monitoring],
    sensors=[late_env_readings_sensor],
    resources=all_resources(),
)
