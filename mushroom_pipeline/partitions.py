"""One daily partition per local calendar day of the farm (MUSHROOM_TIMEZONE)."""

import dagster as dg

from mushroom_pipeline.settings import load_settings

SETTINGS = load_settings()

# end_offset=1: today's partition exists, so the hourly setpoint run can fill today so far.
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=SETTINGS.start_date, timezone=SETTINGS.timezone, end_offset=1
)
