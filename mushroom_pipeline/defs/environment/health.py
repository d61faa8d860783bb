"""sensor_health: per (day, room, metric), how the sensor reported — its longest silence and its
longest flat line (the same value again and again) — computed inside Postgres, and a check that
names the silent and the stuck sensors.

Definitions (the session runs in the farm's timezone, so a day is the farm's local day, 23 or 25
hours across DST):
- A gap runs between two consecutive readings of the day; the day's first reading also closes a
  gap opened at the day's start, and its last reading opens one that runs to the day's end — or
  to now, for a day not over yet. `longest_gap_min` is the longest of them (the earliest, on a
  tie), so a single reading at 06:00 gives max(6 h, 18 h) = 18 h from 06:00.
- A flat line is a run of consecutive readings (in time order, within the day) with exactly the
  same value; it lasts from its first reading to its last. `longest_flatline_min` is the longest
  run's length (the earliest, on a tie): 0 when no two consecutive readings are equal.

A (room, metric) without any reading that day has no row: env_daily_stats/sensors_reporting
names it.
"""

import dagster as dg
import pandas as pd

from mushroom_pipeline.defs.environment import OWNERS, TAGS
from mushroom_pipeline.defs.environment.assets import METRIC_DESCRIPTION
from mushroom_pipeline.partitions import daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import TRANSIENT_RETRY
from mushroom_pipeline.warehouse.frames import read_frame
from mushroom_pipeline.warehouse.sql import PostgresRelation
from mushroom_pipeline.warehouse.tables import (
    column_schema,
    column_types,
    markdown_preview,
)

SILENT_AFTER_MIN = 180  # a gap this long (3 h) or longer: silent (as sensors_reporting's 3 h)
STUCK_AFTER_MIN = 360  # the same value this long (6 h) or longer: stuck

SENSOR_HEALTH_SCHEMA = column_schema(
    ("day", "date", "the farm's local day"),
    ("room", "text"),
    ("metric", "text", METRIC_DESCRIPTION),
    ("readings", "bigint", "valid readings of the day (env_readings)"),
    ("first_at", "timestamptz", "the day's first reading"),
    ("last_at", "timestamptz", "the day's last reading"),
    ("longest_gap_min", "double precision",
     ("longest time without a reading, in minutes: between consecutive readings, from the "
      "day's start to the first, from the last to the day's end (or now, while the day is not "
      "over)")),
    ("longest_gap_start", "timestamptz",
     "when that gap began: the reading before it, or the day's start"),
    ("longest_flatline_min", "double precision",
     ("longest run of consecutive readings with exactly the same value, first to last "
      "reading, in minutes; 0 when no two consecutive readings are equal")),
    ("flatline_value", "double precision", "the value of that run"),
    ("flatline_start", "timestamptz", "the run's first reading"),
)

SENSOR_HEALTH_SQL = """
WITH r AS (
    SELECT room, metric, measured_at, value, measured_at::date AS day FROM ({readings}) s
), marked AS (
    SELECT *, lag(measured_at) OVER w AS previous_at,
           CASE WHEN value = lag(value) OVER w THEN 0 ELSE 1 END AS changed
    FROM r WINDOW w AS (PARTITION BY day, room, metric ORDER BY measured_at)
), groups AS (
    SELECT day, room, metric, count(*) AS readings,
           min(measured_at) AS first_at, max(measured_at) AS last_at,
           day::timestamptz AS day_start,
           -- the day's end, or now while it lasts (never before the last reading)
           greatest(least((day + 1)::timestamptz, now()), max(measured_at)) AS day_end
    FROM r GROUP BY day, room, metric
), gaps AS (
    SELECT day, room, metric, coalesce(previous_at, day_start) AS gap_start,
           measured_at AS gap_end
    FROM marked JOIN groups USING (day, room, metric)
    UNION ALL
    SELECT day, room, metric, last_at, day_end FROM groups
), longest_gap AS (
    SELECT DISTINCT ON (day, room, metric) day, room, metric, gap_start,
           gap_end - gap_start AS gap
    FROM gaps ORDER BY day, room, metric, gap_end - gap_start DESC, gap_start
), runs AS (
    -- gaps and islands: a new run starts at every change of value
    SELECT *, sum(changed) OVER (PARTITION BY day, room, metric ORDER BY measured_at) AS run
    FROM marked
), flat AS (
    SELECT day, room, metric, min(value) AS value, min(measured_at) AS start_at,
           max(measured_at) - min(measured_at) AS length
    FROM runs GROUP BY day, room, metric, run
), longest_flat AS (
    SELECT DISTINCT ON (day, room, metric) day, room, metric, value, start_at, length
    FROM flat ORDER BY day, room, metric, length DESC, start_at
)
SELECT g.day, g.room, g.metric, g.readings, g.first_at, g.last_at,
       extract(epoch FROM lg.gap)::double precision / 60 AS longest_gap_min,
       lg.gap_start AS longest_gap_start,
       extract(epoch FROM lf.length)::double precision / 60 AS longest_flatline_min,
       lf.value AS flatline_value, lf.start_at AS flatline_start
FROM groups g JOIN longest_gap lg USING (day, room, metric)
JOIN longest_flat lf USING (day, room, metric)
ORDER BY 1, 2, 3
"""

silent_or_stuck_spec = dg.AssetCheckSpec(
    "no_silent_or_stuck_sensors",
    asset="sensor_health",
    description=f"No (day, room, metric) went {SILENT_AFTER_MIN // 60} h or more without a "
    f"reading (silent: any gap of the day, its start and end included) nor reported the very same "
    f"value for {STUCK_AFTER_MIN // 60} h or more (stuck: a flat-lined sensor). Names each.",
)


def _hours(minutes: float) -> str:
    return f"{minutes / 60:.1f} h"


def check_silent_or_stuck(health: pd.DataFrame) -> dg.AssetCheckResult:
    """Names every (room, metric) silent or stuck on some day of `health` (sensor_health rows)."""
    silent = health[health["longest_gap_min"] >= SILENT_AFTER_MIN]
    stuck = health[health["longest_flatline_min"] >= STUCK_AFTER_MIN]
    silent_list = [
        {"day": str(row.day), "room": row.room, "metric": row.metric,
         "longest_gap": _hours(row.longest_gap_min), "from": row.longest_gap_start.isoformat()}
        for row in silent.itertuples()
    ]
    stuck_list = [
        {"day": str(row.day), "room": row.room, "metric": row.metric, "value": row.flatline_value,
         "for": _hours(row.longest_flatline_min), "from": row.flatline_start.isoformat()}
        for row in stuck.itertuples()
    ]
    parts = []
    for label, frame in ((f"silent ≥ {SILENT_AFTER_MIN // 60} h", silent),
                         (f"stuck ≥ {STUCK_AFTER_MIN // 60} h", stuck)):
        if len(frame):
            names = sorted({f"{r} {m}" for r, m in zip(frame["room"], frame["metric"])})
            parts.append(f"{label}: {', '.join(names)}")
    return dg.AssetCheckResult(
        check_name=silent_or_stuck_spec.name,
        passed=silent.empty and stuck.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(parts) or None,
        metadata={
            "silent_sensors": len(silent_list),
            "stuck_sensors": len(stuck_list),
            "silent": dg.MetadataValue.json(silent_list),
            "stuck": dg.MetadataValue.json(stuck_list),
        },
    )


@dg.asset(
    description="How each sensor reported, per day, room and canonical metric, computed inside "
    "Postgres from env_readings: readings, first and last reading, the longest gap without a "
    "reading (the day's start and end included; until now for today) and the longest flat line "
    "(consecutive readings of exactly the same value) with its value. Its check names the silent "
    f"(gap ≥ {SILENT_AFTER_MIN // 60} h) and stuck (flat ≥ {STUCK_AFTER_MIN // 60} h) sensors.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "dagster/column_schema": SENSOR_HEALTH_SCHEMA},
    check_specs=[silent_or_stuck_spec],
    group_name="environment",
    owners=OWNERS,
    tags={**TAGS, "layer": "derived"},
    kinds={"postgres"},
)
def sensor_health(
    context: dg.AssetExecutionContext,
    warehouse: PostgresResource,
    env_readings: PostgresRelation,
):
    with warehouse.begin() as conn:
        health = read_frame(conn, SENSOR_HEALTH_SQL.format(readings=env_readings.sql),
                            column_types(SENSOR_HEALTH_SCHEMA))
    context.log.info(f"{len(health)} sensor health rows for {health['day'].nunique()} day(s)")
    yield dg.Output(
        health,
        metadata={
            "days": health["day"].nunique(),
            "sensors": len(health[["room", "metric"]].drop_duplicates()),
            "longest_gap_min": float(health["longest_gap_min"].max()) if len(health) else 0.0,
            "longest_flatline_min":
                float(health["longest_flatline_min"].max()) if len(health) else 0.0,
            "worst_gaps": markdown_preview(
                health.sort_values("longest_gap_min", ascending=False)[
                    ["day", "room", "metric", "readings", "longest_gap_min", "longest_gap_start"]]),
        },
    )
    yield check_silent_or_stuck(health)
