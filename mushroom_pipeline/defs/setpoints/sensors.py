"""The late-setpoints sensor: snapshots that arrive after their day ran, as for readings."""

import datetime as dt

import dagster as dg

from mushroom_pipeline.defs.automation.alerts import AlertWebhookResource
from mushroom_pipeline.defs.automation.jobs import setpoints_job
from mushroom_pipeline.defs.automation.requests import (
    LOOKBACK_DAYS,
    late_data_requests,
    materialization_ids,
    stale_partitions,
)
from mushroom_pipeline.defs.setpoints.assets import SETPOINTS_LEDGER
from mushroom_pipeline.defs.sources import IOT_DEVICE_SETPOINTS, observation
from mushroom_pipeline.resources import PostgresResource


@dg.sensor(
    name="late_setpoints_sensor",
    job=setpoints_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"Re-runs already materialized days (last {LOOKBACK_DAYS}) that received setpoint "
    "snapshots since: late or repeated rows, with the next day when it was materialized (a late "
    "snapshot can change its baseline). A failed run is retried with backoff, then alerted. "
    "Days whose source rows were purged are kept as stored.",
)
def late_setpoints_sensor(
    context: dg.SensorEvaluationContext,
    source_database: PostgresResource,
    warehouse: PostgresResource,
    alert_webhook: AlertWebhookResource,
):
    now = dt.datetime.now(dt.UTC)
    materialized = materialization_ids(context, "setpoint_snapshots")
    stale = stale_partitions(SETPOINTS_LEDGER, source_database, warehouse, set(materialized), now)

    def with_next_day(day: str) -> tuple[str, str]:
        # not a next day whose source was purged: its run would refuse to shrink it
        following = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
        return day, following if following in materialized and following not in stale.shrunk else day

    observed = observation(context, IOT_DEVICE_SETPOINTS, rows_by_day=stale.source_rows,
                           latest_recorded_at=SETPOINTS_LEDGER.latest(source_database))
    return late_data_requests(context, stale, "late_setpoints", materialized, alert_webhook,
                              observed, with_next_day)
