"""daily_clip_inference: yesterday's images embedded every night."""

import dagster as dg

from mushroom_pipeline.defs.automation.jobs import vision_job
from mushroom_pipeline.defs.automation.schedule_requests import yesterday_request
from mushroom_pipeline.partitions import FARM_TIMEZONE


@dg.schedule(
    name="daily_clip_inference",
    cron_schedule="2 3 * * *",
    execution_timezone=FARM_TIMEZONE,
    job=vision_job,
    description="03:02 farm time: yesterday's images → CLIP embeddings (images already embedded "
    "by the new-images sensor are skipped).",
)
def daily_clip_inference(context: dg.ScheduleEvaluationContext):
    return yesterday_request("daily_clip_inference", context)
