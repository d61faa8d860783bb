"""daily_insights: compliance and change responses for the last two days, every night."""

import dagster as dg

from mushroom_pipeline.defs.automation.jobs import insights_job
from mushroom_pipeline.defs.automation.schedule_requests import yesterday_request
from mushroom_pipeline.partitions import FARM_TIMEZONE


@dg.schedule(
    name="daily_insights",
    cron_schedule="33 1 * * *",
    execution_timezone=FARM_TIMEZONE,
    job=insights_job,
    description="01:33 farm time, after daily_env_stats: one run over the day before yesterday "
    "and yesterday, so a change late on the day before gets its response windows completed by "
    "yesterday's readings.",
)
def daily_insights(context: dg.ScheduleEvaluationContext):
    return yesterday_request("daily_insights", context, days=2)
