"""One daily partition per local calendar day of the farm.

The farm's timezone and first day (MUSHROOM_TIMEZONE, MUSHROOM_START_DATE) give every partitioned
asset, schedule and sensor its shape, which Dagster needs when their modules are imported: they are
the only variables read at import. Everything else is read when the code location loads or a run,
sensor or command resolves its resources.
"""

from zoneinfo import ZoneInfo

import dagster as dg

from mushroom_pipeline.settings import farm_calendar

_timezone, _start_date = farm_calendar()

# end_offset=1: today's partition exists, so the hourly setpoint run can fill today so far.
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=_start_date, timezone=_timezone, end_offset=1
)
FARM_TIMEZONE: str = daily_partitions.timezone
FARM_TZ = ZoneInfo(FARM_TIMEZONE)
