"""The project's code location plus a schedule that ticks every minute, so a test can watch the
daemon run a schedule tick without waiting for 01:03. Loaded by the end-to-end UI test only."""

import dagster as dg

from mushroom_pipeline import definitions
from mushroom_pipeline.defs.automation.jobs import environment_job
from mushroom_pipeline.defs.environment.schedules import daily_env_stats


@dg.schedule(
    name="daily_env_stats_every_minute",
    cron_schedule="* * * * *",
    job=environment_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def every_minute(context: dg.ScheduleEvaluationContext):
    return daily_env_stats(context)  # the real schedule's decision, each minute


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(definitions.defs(), dg.Definitions(schedules=[every_minute]))
