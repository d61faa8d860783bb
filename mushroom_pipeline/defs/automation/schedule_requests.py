"""Which partitions a schedule tick asks for."""

import datetime as dt

import dagster as dg

from mushroom_pipeline.partitions import FARM_TZ, daily_partitions


def previous_day_partition(scheduled_at: dt.datetime) -> str | None:
    """Yesterday in the farm's timezone, or None before the first partition."""
    day = scheduled_at.astimezone(FARM_TZ).date() - dt.timedelta(days=1)
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
