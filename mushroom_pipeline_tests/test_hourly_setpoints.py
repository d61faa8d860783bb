"""The hourly schedule's incremental runs ("since the watermark", defs/setpoints/incremental.py):
a day's ticks over data arriving hour by hour, a late row in an earlier hour, the 00:05
finalization, a failed tick, a purge; every stored table of the day compared with what one full
run of the day writes on a fresh warehouse."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from mushroom_pipeline.definitions import database_resources
from mushroom_pipeline.defs.setpoints import assets as setpoint_assets
from mushroom_pipeline.defs.setpoints.assets import (
    setpoint_change_events,
    setpoint_snapshots,
    switch_daily_stats,
)
from mushroom_pipeline.defs.setpoints.incremental import MODE_TAG, SINCE_WATERMARK
from mushroom_pipeline.warehouse.sql import PostgresRelation

from .helpers import failure_text, insert_setpoints, query

ASSETS = [setpoint_snapshots, setpoint_change_events, switch_daily_stats]
DAY, BEFORE = "2026-01-13", "2026-01-12"
TABLES = {  # the day's rows of every table the setpoint assets write, in a total order
    "setpoint_snapshots": ("day", "room, device, point, recorded_at, is_baseline"),
    "setpoint_snapshots_quarantine": ("recorded_at", "room, device, point, recorded_at, value, reason"),
    "setpoint_change_events": ("day", "room, device, point, changed_at"),
    "setpoint_deadband_references": ("day", "room, device, point"),
    "switch_daily_stats": ("day", "room, device, point"),
}


def at(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    config = tmp_path / "points.yaml"
    config.write_text(yaml.safe_dump({"rules": [
        {"point": "temp_set", "kind": "analog", "deadband": 0.1},
        {"point": "co2_on", "kind": "analog", "deadband": 50},
        {"point": "mode", "kind": "enum", "labels": {0: "off", 1: "auto", 2: "manual"}},
    ]}))
    monkeypatch.setenv("MUSHROOM_SETPOINT_CONFIG", str(config))


def source_rows() -> pd.DataFrame:
    """Three rooms' switch, deadband and enum points every 5 minutes from the evening before,
    a point reporting every 3 hours, one silent for days that comes back mid-morning, and
    invalid rows: a NULL, a switch holding 0.5, two values at one time."""
    rng = np.random.default_rng(7)
    times = pd.date_range(at(f"{BEFORE} 20:00"), at(f"{DAY} 00:00") + pd.Timedelta(days=1),
                          freq="5min", inclusive="left")
    rows = []
    for room in ("601", "602", "603"):
        series = {
            "on_off": np.cumsum(rng.random(len(times)) < 0.1) % 2,
            "temp_set": 16 + np.round(np.cumsum(rng.choice([-0.05, 0, 0.05], len(times))), 2),
            "mode": np.cumsum(rng.random(len(times)) < 0.03) % 3,
        }
        for point, values in series.items():
            rows += [(room, f"air_cooler_{room}", point, float(v), t) for v, t in zip(values, times)]
    # between the ticks: its seed is older than the hour before a tick's watermark
    rows += [("601", "air_cooler_601", "hum_on_off", float(h % 2), at(f"{DAY} 00:30") + pd.Timedelta(hours=h))
             for h in range(0, 24, 3)]
    rows += [("602", "fan_602", "co2_on", 800.0, at(f"{BEFORE} 02:00") - pd.Timedelta(days=2))]
    # back after days, 100 from its baseline: a change against a seed that is the baseline
    rows += [("602", "fan_602", "co2_on", 900.0 + 30 * (m // 30), at(f"{DAY} 07:20") + pd.Timedelta(minutes=m))
             for m in range(0, 600, 10)]
    rows += [
        ("603", "air_cooler_603", "temp_set", None, at(f"{DAY} 04:30:30")),
        ("603", "air_cooler_603", "on_off", 0.5, at(f"{DAY} 10:02")),
        ("603", "air_cooler_603", "mode", 5.0, at(f"{DAY} 14:00")),  # beside the grid's 14:00
    ]
    return pd.DataFrame(rows, columns=["room", "device", "point", "value", "recorded_at"])


def insert(warehouse, frame: pd.DataFrame) -> None:
    insert_setpoints(warehouse, frame.astype(object).where(frame.notna(), None).itertuples(index=False))


def tick(instance, day=DAY, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, partition_key=day, instance=instance,
                          tags={MODE_TAG: SINCE_WATERMARK}, resources=database_resources(), **kwargs)


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    materialization = result.asset_materializations_for_node(asset)[0]
    return {name: value.value for name, value in materialization.metadata.items()}


def stored(warehouse) -> dict[str, pd.DataFrame]:
    tables = {}
    for table, (column, order) in TABLES.items():
        bound = f"'{DAY}'::date" if column == "day" else f"'{DAY}'::timestamptz"
        tables[table] = query(warehouse, f"SELECT * FROM mushroom.{table} WHERE {column} >= {bound} "
                                         f"AND {column} < {bound} + interval '1 day' ORDER BY {order}")
    return tables


def full_day(warehouse) -> dict[str, pd.DataFrame]:
    """One full run of the day before and one of the day, on an emptied warehouse."""
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS mushroom CASCADE")
    for day in (BEFORE, DAY):
        result = dg.materialize(ASSETS, partition_key=day, resources=database_resources())
        assert result.success and metadata(result, "setpoint_snapshots")["mode"] == "full"
    return stored(warehouse)


def assert_same_tables(incremental: dict, full: dict) -> None:
    for table in TABLES:
        assert len(full[table]), table  # something to compare
        pd.testing.assert_frame_equal(incremental[table], full[table], obj=table)


def test_a_days_ticks_leave_exactly_what_one_full_run_writes(warehouse, catalog):
    rows = source_rows()
    late = pd.DataFrame([("601", "air_cooler_601", "temp_set", 30.0, at(f"{DAY} 03:10"))],
                        columns=rows.columns)  # recorded at 03:10, arrives after the 05:05 tick
    instance = dg.DagsterInstance.ephemeral()
    # 8 of the day's hourly ticks, then 00:05, the day's final run
    ticks = [at(f"{DAY} {h:02d}:05") for h in (1, 3, 5, 6, 9, 12, 18, 23)] + [at(f"{DAY} 00:05") + pd.Timedelta(days=1)]
    day_start, day_end = at(DAY), at(DAY) + pd.Timedelta(days=1)
    # the evening before, finalized as the 00:05 tick would have
    insert(warehouse, rows[rows["recorded_at"] < day_start])
    assert tick(instance, BEFORE).success
    arrived, modes, read = day_start, [], []
    for number, now in enumerate(ticks):
        arriving = rows[(rows["recorded_at"] >= arrived) & (rows["recorded_at"] < now)]
        insert(warehouse, arriving)
        if number == 3:
            insert(warehouse, late)
            arriving = pd.concat([arriving, late])
        arrived = now
        result = tick(instance)
        snapshots = metadata(result, "setpoint_snapshots")
        assert metadata(result, "setpoint_change_events")["mode"] == snapshots["mode"]
        modes.append(snapshots["mode"])
        read.append(snapshots["source_rows_read"])
        so_far = rows[(rows["recorded_at"] >= day_start) & (rows["recorded_at"] < min(now, day_end))]
        # the ledger: every source row of the day so far
        assert snapshots["source_rows"] == len(so_far) + (number >= 3)
        if snapshots["mode"] == "since watermark":
            assert snapshots["source_rows_read"] == len(arriving)  # only what arrived since
        else:
            assert snapshots["source_rows_read"] == snapshots["source_rows"]  # the whole day
    # the first tick has no ledger; the one after the late row re-reads the day; the rest append
    assert modes == ["full", "since watermark", "since watermark", "full"] + ["since watermark"] * 5
    # each row read once, the first 6 hours twice (the late row's tick)
    assert sum(read) == snapshots["source_rows"] + read[0] + read[1] + read[2]
    incremental = stored(warehouse)
    late_events = incremental["setpoint_change_events"]
    assert (late_events["changed_at"] == at(f"{DAY} 03:10")).any()  # the late row's change is in
    assert_same_tables(incremental, full_day(warehouse))


def test_a_failed_tick_keeps_the_stored_rows_and_the_next_one_catches_up(
    warehouse, catalog, monkeypatch
):
    rows = source_rows()
    instance = dg.DagsterInstance.ephemeral()
    insert(warehouse, rows[rows["recorded_at"] < at(f"{DAY} 06:00")])
    assert tick(instance, BEFORE).success
    assert metadata(tick(instance), "setpoint_snapshots")["mode"] == "full"
    before = stored(warehouse)
    insert(warehouse, rows[(rows["recorded_at"] >= at(f"{DAY} 06:00")) & (rows["recorded_at"] < at(f"{DAY} 09:00"))])
    original = setpoint_assets.snapshots_relation

    def broken(*args, **kwargs):
        relation = original(*args, **kwargs)
        return PostgresRelation(relation.sql + "\nUNION ALL SELECT NULL, NULL, NULL, 1/0, NULL, NULL, 0, false")

    monkeypatch.setattr(setpoint_assets, "snapshots_relation", broken)
    result = tick(instance, raise_on_error=False)
    assert not result.success and "division by zero" in failure_text(result)
    after = stored(warehouse)
    for table in TABLES:  # not a row appended, not a row lost
        pd.testing.assert_frame_equal(after[table], before[table], obj=table)
    monkeypatch.setattr(setpoint_assets, "snapshots_relation", original)
    result = tick(instance)
    assert metadata(result, "setpoint_snapshots")["mode"] == "since watermark"
    insert(warehouse, rows[rows["recorded_at"] >= at(f"{DAY} 09:00")])
    assert metadata(tick(instance), "setpoint_change_events")["mode"] == "since watermark"
    assert_same_tables(stored(warehouse), full_day(warehouse))


def test_a_purge_before_the_watermark_is_refused_as_in_a_full_run(warehouse, catalog):
    rows = source_rows()
    instance = dg.DagsterInstance.ephemeral()
    insert(warehouse, rows[rows["recorded_at"] < at(f"{DAY} 06:00")])
    assert tick(instance).success
    before = stored(warehouse)
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DELETE FROM iot.device_setpoints WHERE recorded_at = %s",
                             (f"{DAY} 03:00+00",))
    # an hour with no new row: the day re-read in full holds fewer rows than stored
    result = tick(instance, raise_on_error=False)
    assert not result.success and "fewer rows" in failure_text(result)
    after = stored(warehouse)
    for table in TABLES:
        pd.testing.assert_frame_equal(after[table], before[table], obj=table)


def test_untagged_runs_and_ranges_read_the_whole_day(warehouse, catalog):
    rows = source_rows()
    instance = dg.DagsterInstance.ephemeral()
    insert(warehouse, rows[rows["recorded_at"] < at(f"{DAY} 06:00")])
    assert tick(instance).success
    result = dg.materialize(ASSETS, partition_key=DAY, instance=instance, resources=database_resources())
    assert metadata(result, "setpoint_snapshots")["mode"] == "full"
    assert metadata(result, "setpoint_snapshots")["source_rows_read"] == metadata(result, "setpoint_snapshots")["source_rows"]


def test_the_schedule_tags_every_tick_since_watermark_the_finalization_included():
    import datetime as dt

    from mushroom_pipeline.definitions import defs
    from mushroom_pipeline.defs.setpoints.schedules import hourly_setpoint_monitoring

    for when in (dt.datetime(2026, 1, 13, 14, 5, tzinfo=dt.UTC), dt.datetime(2026, 1, 14, 0, 5, tzinfo=dt.UTC)):
        context = dg.build_schedule_context(scheduled_execution_time=when,
                                            repository_def=defs().get_repository_def())
        request, = hourly_setpoint_monitoring.evaluate_tick(context).run_requests
        assert request.tags[MODE_TAG] == SINCE_WATERMARK
