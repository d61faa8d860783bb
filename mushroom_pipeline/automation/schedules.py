"""Schedules that replace the old cron jobs; they keep the old task names."""

import datetime as dt

import dagster as dg

from mushroom_pipeline.automation.jobs import (
    environment_job,
    insights_job,
    setpoints_job,
    vision_job,
)
from mushroom_pipeline.partitions import SETTINGS, daily_partitions


def previous_day_partition(scheduled_at: dt.datetime) -> str | None:
    """Yesterday in the farm's timezone, or None before the first partition."""
    day = scheduled_at.astimezone(SETTINGS.tz).date() - dt.timedelta(days=1)
    key = day.isoformat()
    return key if key >= daily_partitions.get_first_partition_key() else None


def yesterday_request(schedule: str, context: dg.ScheduleEvaluationContext, days: int = 1):
    """Yesterday's partition; with `days` > 1, one run over the `days` days ending yesterday."""
    key = previous_day_partition(context.scheduled_execution_time)
    if key is None:
        return dg.SkipReason("yesterday precedes MUSHROOM_START_DATE")
    if days == 1:
        return dg.RunRequest(run_key=f"{schedule}:{key}", partition_key=key)
    first = max((dt.date.fromisoformat(key) - dt.timedelta(days=days - 1)).isoformat(),
                daily_partitions.get_first_partition_key())
    return dg.RunRequest(run_key=f"{schedule}:{key}", tags={
        "dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": key})


@dg.schedule(
    name="daily_env_stats",
    cron_schedule="3 1 * * *",
    execution_timezone=SETTINGS.timezone,
    job=environment_job,
    description="01:03 farm time: yesterday's readings and daily stats.",
)
def daily_env_stats(context: dg.ScheduleEvaluationContext):
    return yesterday_request("daily_env_stats", context)


def hourly_setpoint_partition(scheduled_at: dt.datetime) -> str:
    """Today so far; the 00:05 tick finalizes yesterday instead."""
    local = scheduled_at.astimezone(SETTINGS.tz)
    day = local.date() - dt.timedelta(days=1) if local.hour == 0 else local.date()
    return day.isoformat()


@dg.schedule(
    name="hourly_setpoint_monitoring",
    cron_schedule="5 * * * *",
    execution_timezone=SETTINGS.timezone,
    job=setpoints_job,
    description="Minute 5 of every hour: today's setpoint changes so far (re-running the day "
    "replaces its rows: the same events, never duplicates); at 00:05, yesterday's final run.",
)
def hourly_setpoint_monitoring(context: dg.ScheduleEvaluationContext):
    key = hourly_setpoint_partition(context.scheduled_execution_time)
    if key < daily_partitions.get_first_partition_key():
        return dg.SkipReason("the day precedes MUSHROOM_START_DATE")
    tick = context.scheduled_execution_time.astimezone(SETTINGS.tz)
    return dg.RunRequest(run_key=f"hourly_setpoint_monitoring:{tick:%Y-%m-%dT%H}", partition_key=key)


@dg.schedule(
    name="daily_clip_inference",
    cron_schedule="2 3 * * *",
    execution_timezone=SETTINGS.timezone,
    job=vision_job,
    description="03:02 farm time: yesterday's images → CLIP embeddings (images already embedded "
    "by the new-images sensor are skipped).",
)
def daily_clip_inference(context: dg.ScheduleEvaluationContext):
    return yesterday_request("daily_clip_inference", context)


@dg.schedule(
    name="daily_insights",
    cron_schedule="33 1 * * *",
    execution_timezone=SETTINGS.timezone,
    job=insights_job,
    description="01:33 farm time, after daily_env_stats: one run over the day before yesterday "
    "and yesterday, so a change late on the day before gets its response windows completed by "
    "yesterday's readings.",
)
def daily_insights(context: dg.ScheduleEvaluationContext):
    return yesterday_request("daily_insights", context, days=2)
