"""hourly_setpoint_monitoring: today's setpoint changes every hour, yesterday's finalized after midnight."""

import datetime as dt

import dagster as dg

from mushroom_pipeline.defs.automation.jobs import setpoints_job
from mushroom_pipeline.partitions import FARM_TIMEZONE, FARM_TZ, daily_partitions


def hourly_setpoint_partition(scheduled_at: dt.datetime) -> str:
    """Today so far; the 00:05 tick finalizes yesterday instead."""
    local = scheduled_at.astimezone(FARM_TZ)
    day = local.date() - dt.timedelta(days=1) if local.hour == 0 else local.date()
    return day.isoformat()


@dg.schedule(
    name="hourly_setpoint_monitoring",
    cron_schedule="5 * * * *",
    execution_timezone=FARM_TIMEZONE,
    job=setpoints_job,
    description="Minute 5 of every hour: today's setpoint changes so far (re-running the day "
    "replaces its rows: the same events, never duplicates); at 00:05, yesterday's final run.",
)
def hourly_setpoint_monitoring(context: dg.ScheduleEvaluationContext):
    key = hourly_setpoint_partition(context.scheduled_execution_time)
    if key < daily_partitions.get_first_partition_key():
        return dg.SkipReason("the day precedes MUSHROOM_START_DATE")
    tick = context.scheduled_execution_time.astimezone(FARM_TZ)
    return dg.RunRequest(run_key=f"hourly_setpoint_monitoring:{tick:%Y-%m-%dT%H}", partition_key=key)
