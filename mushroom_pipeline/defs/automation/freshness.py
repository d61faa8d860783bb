"""Freshness: yesterday's partition of every daily asset is expected by a deadline, farm time.
A late day fails the asset's `yesterday_by_deadline` check (WARN), which the hourly
`freshness_checks` schedule evaluates from the deadline on; failed_check_alert sends it to the
webhook like any failed check.

Dagster's build_time_partition_freshness_checks expects the *last* partition by the deadline;
our partitions run to today (end_offset=1), so it would ask for today's open day: hence a check
of our own, which asks for yesterday."""

import datetime as dt
import os

import dagster as dg

from mushroom_pipeline.defs.batches.assets import room_batches
from mushroom_pipeline.defs.environment.assets import env_daily_stats, env_readings
from mushroom_pipeline.defs.environment.health import sensor_health
from mushroom_pipeline.defs.insights.charts import room_daily_charts
from mushroom_pipeline.defs.insights.compliance import setpoint_compliance
from mushroom_pipeline.defs.insights.responses import change_responses
from mushroom_pipeline.defs.setpoints.assets import (
    setpoint_change_events,
    setpoint_snapshots,
    switch_daily_stats,
)
from mushroom_pipeline.defs.vision.embeddings import image_embeddings
from mushroom_pipeline.defs.vision.health import camera_health
from mushroom_pipeline.defs.vision.manifest import image_manifest
from mushroom_pipeline.partitions import FARM_TIMEZONE, FARM_TZ
from mushroom_pipeline.settings import ConfigurationError

DEADLINE_VARIABLE = "MUSHROOM_FRESH_BY_HOUR"
CHECK_NAME = "yesterday_by_deadline"


def deadline_hour() -> int:
    """The farm-time hour by which yesterday must be materialized: after the 01:03 and 03:02
    schedules, with room for their retries."""
    value = os.environ.get(DEADLINE_VARIABLE, "").strip() or "6"
    if not value.isdigit() or not 0 <= int(value) <= 23:
        raise ConfigurationError(f"{DEADLINE_VARIABLE}={value!r}: use an hour from 0 to 23")
    return int(value)


def expected_day(now: dt.datetime, hour: int) -> dt.date:
    """The newest day that must be materialized at `now`: yesterday once the deadline passed."""
    local = now.astimezone(FARM_TZ)
    return local.date() - dt.timedelta(days=1 if local.hour >= hour else 2)


def freshness_check(asset: dg.AssetsDefinition, hour: int) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset, name=CHECK_NAME,
        description=f"Yesterday's partition exists by {hour:02d}:00 farm time "
        f"({DEADLINE_VARIABLE}).",
    )
    def check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        day = expected_day(dt.datetime.now(dt.UTC), hour).isoformat()
        materialized = context.instance.get_latest_storage_id_by_partition(
            asset.key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions={day}
        )
        return dg.AssetCheckResult(
            passed=day in materialized,
            severity=dg.AssetCheckSeverity.WARN,
            description=None if day in materialized else f"{day} is not materialized yet",
            metadata={"expected_partition": day, "deadline": f"{hour:02d}:00 {FARM_TIMEZONE}"},
        )

    return check


def freshness_checks(assets: list[dg.AssetsDefinition]) -> list[dg.AssetChecksDefinition]:
    hour = deadline_hour()
    return [freshness_check(asset, hour) for asset in assets]


def freshness_schedule(checks: list[dg.AssetChecksDefinition]) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="freshness_checks",
        job=dg.define_asset_job("freshness_job", selection=dg.AssetSelection.checks(*checks)),
        cron_schedule=f"10 {deadline_hour()}-23 * * *",
        execution_timezone=FARM_TIMEZONE,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every daily asset's yesterday, checked hourly from the deadline on.",
    )


DAILY_ASSETS = [
    env_readings,
    env_daily_stats,
    setpoint_snapshots,
    setpoint_change_events,
    switch_daily_stats,
    room_batches,
    image_manifest,
    image_embeddings,
    setpoint_compliance,
    change_responses,
    sensor_health,
    camera_health,
    room_daily_charts,
]


@dg.definitions
def freshness_defs() -> dg.Definitions:
    """Built when the code location loads, not at import: the deadline hour is configuration."""
    checks = freshness_checks(DAILY_ASSETS)
    return dg.Definitions(asset_checks=checks, schedules=[freshness_schedule(checks)])
