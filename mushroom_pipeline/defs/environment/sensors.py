"""late_env_readings_sensor: days whose readings grew after their run are materialized again."""

import datetime as dt

import dagster as dg

from mushroom_pipeline.defs.automation.alerts import AlertWebhookResource
from mushroom_pipeline.defs.automation.jobs import environment_job
from mushroom_pipeline.defs.automation.requests import (
    LOOKBACK_DAYS,
    late_data_requests,
    materialization_ids,
    stale_partitions,
)
from mushroom_pipeline.defs.environment.assets import ENV_READINGS_LEDGER
from mushroom_pipeline.defs.sources import IOT_ENV_READINGS, observation
from mushroom_pipeline.resources import PostgresResource


@dg.sensor(
    name="late_env_readings_sensor",
    job=environment_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"Re-runs already materialized days (last {LOOKBACK_DAYS}) that received source "
    "rows since: late or repeated readings. A failed run is retried with backoff, then alerted. "
    "Days whose source rows were purged are kept as stored.",
)
def late_env_readings_sensor(
    context: dg.SensorEvaluationContext,
    source_database: PostgresResource,
    warehouse: PostgresResource,
    alert_webhook: AlertWebhookResource,
):
    materialized = materialization_ids(context, "env_readings")
    stale = stale_partitions(ENV_READINGS_LEDGER, source_database, warehouse, set(materialized),
                             dt.datetime.now(dt.UTC))
    observed = observation(context, IOT_ENV_READINGS, rows_by_day=stale.source_rows,
                           latest_measured_at=ENV_READINGS_LEDGER.latest(source_database))
    return late_data_requests(context, stale, "late_env_readings", materialized, alert_webhook,
                              observed)
