"""daily_env_stats: yesterday's readings and statistics, every night."""

import dagster as dg

from mushroom_pipeline.defs.automation.jobs import environment_job
from mushroom_pipeline.defs.automation.schedule_requests import yesterday_request
from mushroom_pipeline.partitions import FARM_TIMEZONE


@dg.schedule(
    name="daily_env_stats",
    cron_schedule="3 1 * * *",
    execution_timezone=FARM_TIMEZONE,
    job=environment_job,
    description="01:03 farm time: yesterday's readings and daily stats.",
)
def daily_env_stats(context: dg.ScheduleEvaluationContext):
    return yesterday_request("daily_env_stats", context)
