"""The late-setpoints sensor: snapshots that arrive after their day ran, as for readings."""

import datetime as dt

import dagster as dg

from mushroom_pipeline.automation.jobs import setpoints_job
from mushroom_pipeline.automation.sensors import (
    LOOKBACK_DAYS,
    late_data_requests,
    stale_partitions,
)
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.setpoints.assets import SETPOINTS_LEDGER


@dg.sensor(
    name="late_setpoints_sensor",
    job=setpoints_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"Re-runs already materialized days (last {LOOKBACK_DAYS}) that received setpoint "
    "snapshots since: late or repeated rows. Days whose source rows were purged are kept as stored.",
)
def late_setpoints_sensor(
    context: dg.SensorEvaluationContext,
    source_database: PostgresResource,
    warehouse: PostgresResource,
):
    materialized = context.instance.get_materialized_partitions(dg.AssetKey("setpoint_snapshots"))
    stale = stale_partitions(SETPOINTS_LEDGER, source_database, warehouse, set(materialized),
                             dt.datetime.now(dt.UTC))
    return late_data_requests(context, stale, "late_setpoints")
