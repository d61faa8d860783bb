"""hourly_setpoint_monitoring: today's setpoint changes every hour, yesterday's finalized after midnight.

Each tick is tagged to run "since the watermark" (defs/setpoints/incremental.py): it reads only
the source rows newer than the day's stored ones and appends what they give, so a day's 24
ticks read the day about once instead of about 12 times; a late row in an earlier hour makes
that tick re-read the whole day. The 00:05 finalization is such a tick too: it adds the last
hour's rows, and its day is as a full run would leave it (the same check, the same events).
Manual runs and backfills carry no tag: they re-read the whole day."""

import datetime as dt

import dagster as dg

from mushroom_pipeline.defs.automation.jobs import setpoints_job
from mushroom_pipeline.defs.setpoints.incremental import MODE_TAG, SINCE_WATERMARK
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
    description="Minute 5 of every hour: today's setpoint changes so far, reading only the "
    "source rows after the day's watermark (the whole day when a late row landed before it); "
    "the same events as a full run, never duplicates; at 00:05, yesterday's final run.",
)
def hourly_setpoint_monitoring(context: dg.ScheduleEvaluationContext):
    key = hourly_setpoint_partition(context.scheduled_execution_time)
    if key < daily_partitions.get_first_partition_key():
        return dg.SkipReason("the day precedes MUSHROOM_START_DATE")
    tick = context.scheduled_execution_time.astimezone(FARM_TZ)
    return dg.RunRequest(run_key=f"hourly_setpoint_monitoring:{tick:%Y-%m-%dT%H}", partition_key=key,
                         tags={MODE_TAG: SINCE_WATERMARK})
