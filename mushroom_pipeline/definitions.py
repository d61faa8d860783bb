"""The code location: what `workspace.yaml` and `dagster ... -m mushroom_pipeline.definitions` load."""

import os

import dagster as dg

from mushroom_pipeline.automation.jobs import environment_job, farm_daily_job, setpoints_job
from mushroom_pipeline.automation.schedules import daily_env_stats, hourly_setpoint_monitoring
from mushroom_pipeline.automation.sensors import late_env_readings_sensor
from mushroom_pipeline.environment.assets import env_daily_stats, env_readings
from mushroom_pipeline.io.postgres import PostgresPandasIOManager
from mushroom_pipeline.partitions import SETTINGS
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.setpoints.assets import (
    setpoint_change_events,
    setpoint_snapshots,
    switch_daily_stats,
)


def _url(variable: str) -> dg.EnvVar | None:
    # An EnvVar shows the variable's name in the UI, never the URL and its password.
    return dg.EnvVar(variable) if os.environ.get(variable, "").strip() else None


def database_resources() -> dict[str, object]:
    common = {"home": str(SETTINGS.home), "timezone": SETTINGS.timezone}
    warehouse = PostgresResource(url=_url("MUSHROOM_DATABASE_URL"), **common)
    if _url("MUSHROOM_SOURCE_DATABASE_URL"):
        source = PostgresResource(
            url=_url("MUSHROOM_SOURCE_DATABASE_URL"),
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


defs = dg.Definitions(
    assets=[
        env_readings,
        env_daily_stats,
        setpoint_snapshots,
        setpoint_change_events,
        switch_daily_stats,
    ],
    jobs=[environment_job, setpoints_job, farm_daily_job],
    schedules=[daily_env_stats, hourly_setpoint_monitoring],
    sensors=[late_env_readings_sensor],
    resources=database_resources(),
)
