"""setpoint_snapshots → setpoint_change_events → switch_daily_stats, through Dagster, on the
real Postgres: exact change events across midnight and run boundaries, against pandas; the
farm's catalog (points.yaml) read point by point: kinds, deadbands, labels, the batch device."""

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from mushroom_pipeline import embedded
from mushroom_pipeline.catalog.points import PointTreatment, load_point_config
from mushroom_pipeline.definitions import database_resources
from mushroom_pipeline.demo.farm import SETPOINT_DDL
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.defs.setpoints.assets import (
    setpoint_change_events,
    setpoint_snapshots,
    switch_daily_stats,
)

from .helpers import insert_setpoints, query, range_tags, sensor_tick

ASSETS = [setpoint_snapshots, setpoint_change_events, switch_daily_stats]


def run(partition_key=None, start=None, end=None, selection=None, resources=None
        ) -> dg.ExecuteInProcessResult:
    """All three assets, or only `selection` (their upstream read from the warehouse)."""
    result = dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=partition_key,
        tags=range_tags(start, end) if start else None,
        resources=resources or database_resources(),
    )
    assert result.success
    return result


def events(warehouse) -> pd.DataFrame:
    frame = query(
        warehouse,
        "SELECT day, room, device, point, changed_at, old_value, new_value, change_kind "
        "FROM mushroom.setpoint_change_events ORDER BY room, device, point, changed_at",
    )
    frame["changed_at"] = pd.to_datetime(frame["changed_at"], utc=True)
    return frame


def at(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def use_config(monkeypatch, tmp_path, rules: list[dict]) -> None:
    config = tmp_path / "points.yaml"
    config.write_text(yaml.safe_dump({"rules": rules}))
    monkeypatch.setenv("MUSHROOM_SETPOINT_CONFIG", str(config))


def reset_warehouse(warehouse) -> None:
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS mushroom CASCADE")


def switch_stats(warehouse) -> pd.DataFrame:
    return query(warehouse, "SELECT * FROM mushroom.switch_daily_stats ORDER BY day, room, device, point")


def event_metadata(result: dg.ExecuteInProcessResult) -> dict:
    metadata = result.asset_materializations_for_node("setpoint_change_events")[0].metadata
    return {name: value.value for name, value in metadata.items()}


def test_a_change_at_midnight_is_reported_once_whatever_the_runs(warehouse):
    insert_setpoints(warehouse, [
        ("601", "air_cooler", "temperature_setpoint", 16.5, "2026-01-12 23:58"),
        ("601", "air_cooler", "temperature_setpoint", 16.5, "2026-01-12 23:59"),
        ("601", "air_cooler", "temperature_setpoint", 17.0, "2026-01-13 00:00"),
        ("601", "air_cooler", "temperature_setpoint", 17.0, "2026-01-13 00:01"),
    ])
    run("2026-01-12")
    run("2026-01-13")
    per_day = events(warehouse)
    assert per_day[["changed_at", "old_value", "new_value", "change_kind"]].values.tolist() == [
        [at("2026-01-13 00:00"), 16.5, 17.0, "changed"]
    ]
    assert str(per_day["day"][0]) == "2026-01-13"
    run(start="2026-01-12", end="2026-01-13")  # one run over both days: the same event
    pd.testing.assert_frame_equal(events(warehouse), per_day)


def test_hourly_reruns_see_a_change_between_them_once_and_never_duplicate(warehouse):
    def minutes(start, count, value):
        base = at(start)
        return [("602", "humidifier", "humidity_setpoint", value, base + pd.Timedelta(minutes=m))
                for m in range(count)]

    insert_setpoints(warehouse, minutes("2026-01-13 10:00", 60, 90.0))
    run("2026-01-13")  # the 11:05 tick
    assert events(warehouse).empty
    insert_setpoints(warehouse, minutes("2026-01-13 11:00", 30, 90.0) + minutes("2026-01-13 11:30", 30, 92.0))
    run("2026-01-13")  # the 12:05 tick
    first = events(warehouse)
    run("2026-01-13")  # the same tick again
    second = events(warehouse)
    assert first[["changed_at", "old_value", "new_value"]].values.tolist() == [
        [at("2026-01-13 11:30"), 90.0, 92.0]
    ]
    pd.testing.assert_frame_equal(first, second)


def test_repeats_out_of_order_nulls_conflicts_and_first_snapshots(warehouse):
    rows = [
        ("611", "air_cooler", "mode", 1.0, "2026-01-13 08:00"),  # first-ever: no change
        ("611", "air_cooler", "mode", 1.0, "2026-01-13 08:01"),
        ("611", "air_cooler", "mode", 1.0, "2026-01-13 08:01"),  # the same snapshot twice
        ("611", "air_cooler", "mode", None, "2026-01-13 08:02"),  # a dropped read
        ("611", "air_cooler", "mode", 1.0, "2026-01-13 08:03"),
        ("611", "air_cooler", "mode", 2.0, "2026-01-13 08:05"),
        ("611", "air_cooler", "mode", 3.0, "2026-01-13 08:04"),  # arrived after 08:05
        ("611", "air_cooler", "mode", 4.0, "2026-01-13 08:06"),  # two values at one time:
        ("611", "air_cooler", "mode", 5.0, "2026-01-13 08:06"),  # neither can be trusted
        ("611", "air_cooler", "on_off", 0.5, "2026-01-13 08:00"),  # not a switch value
        ("611", "air_cooler", "mode", float("nan"), "2026-01-13 08:07"),
        ("611", "", "mode", 1.0, "2026-01-13 08:07"),
    ]
    insert_setpoints(warehouse, reversed(rows))
    result = run("2026-01-13")
    assert events(warehouse)[["changed_at", "old_value", "new_value"]].values.tolist() == [
        [at("2026-01-13 08:04"), 1.0, 3.0],
        [at("2026-01-13 08:05"), 3.0, 2.0],
    ]
    quarantine = query(warehouse, "SELECT reason FROM mushroom.setpoint_snapshots_quarantine")
    assert sorted(quarantine["reason"]) == sorted([
        "null_value", "conflicting_duplicate", "conflicting_duplicate", "not_a_switch_value",
        "nan_value", "blank_key",
    ])
    folded = query(warehouse, "SELECT source_rows FROM mushroom.setpoint_snapshots "
                              "WHERE recorded_at = '2026-01-13 08:01+00'")
    assert folded["source_rows"].tolist() == [2]
    snapshots = result.asset_materializations_for_node("setpoint_snapshots")[0].metadata
    assert snapshots["source_rows"].value == len(rows)
    assert snapshots["invalid_rows"].value == 6


def test_a_switch_flipping_every_minute_and_its_statistics(warehouse):
    flips = [("612", "fresh_air_fan", "fan_on_off", float(m % 2), at("2026-01-13 12:00") + pd.Timedelta(minutes=m))
             for m in range(60)]
    insert_setpoints(warehouse, flips)
    run("2026-01-13")
    table = events(warehouse)
    assert len(table) == 59
    assert (table["change_kind"] == np.where(table["new_value"] == 1, "switched_on", "switched_off")).all()
    assert table["change_kind"].value_counts().to_dict() == {"switched_on": 30, "switched_off": 29}
    stats = query(warehouse, "SELECT * FROM mushroom.switch_daily_stats").iloc[0]
    assert (stats["switch_ons"], stats["switch_offs"]) == (30, 29)
    assert stats["minutes_unknown"] == pytest.approx(12 * 60)  # before the first snapshot
    # 30 one-minute OFF states; 29 one-minute ON states, and the last ON (12:59) holds to midnight
    assert stats["minutes_off"] == pytest.approx(30)
    assert stats["minutes_on"] == pytest.approx(29 + 11 * 60 + 1)


def test_a_deadband_compares_with_the_last_reported_value(warehouse, tmp_path, monkeypatch):
    use_config(monkeypatch, tmp_path, [{"point": "temperature_setpoint", "kind": "analog", "deadband": 0.5}])
    values = [16.0, 16.2, 16.4, 16.6, 16.3, 16.0, 16.5]
    insert_setpoints(warehouse, [
        ("601", "air_cooler", "temperature_setpoint", v, at("2026-01-13 09:00") + pd.Timedelta(minutes=i))
        for i, v in enumerate(values)
    ])
    run("2026-01-13")
    assert events(warehouse)[["old_value", "new_value"]].values.tolist() == [
        [16.0, 16.6],  # a slow drift adds up past the deadband
        [16.6, 16.0],
        [16.0, 16.5],  # a step of exactly the deadband
    ]


def test_a_step_of_exactly_the_deadband_is_a_change_and_one_just_under_is_not(
    warehouse, tmp_path, monkeypatch
):
    use_config(monkeypatch, tmp_path, [{"point": "temperature_setpoint", "kind": "analog", "deadband": 0.5}])
    values = [16.0, 16.49, 16.5, 16.01, 16.0]
    insert_setpoints(warehouse, [
        ("601", "air_cooler", "temperature_setpoint", v, at("2026-01-13 09:00") + pd.Timedelta(minutes=i))
        for i, v in enumerate(values)
    ])
    run("2026-01-13")
    assert events(warehouse)[["changed_at", "old_value", "new_value"]].values.tolist() == [
        [at("2026-01-13 09:02"), 16.0, 16.5],  # 0.5 from the reported 16.0; 16.49 was not
        [at("2026-01-13 09:04"), 16.5, 16.0],  # 0.5 from 16.5; 16.01 (0.49) was not
    ]


def test_excluded_points_make_no_events_and_are_counted(warehouse, tmp_path, monkeypatch):
    use_config(monkeypatch, tmp_path, [{"point": "*_running", "exclude": True}])
    insert_setpoints(warehouse, [
        ("601", "air_cooler", "compressor_running", float(m % 2), at("2026-01-13 09:00") + pd.Timedelta(minutes=m))
        for m in range(10)
    ])
    result = run("2026-01-13")
    assert events(warehouse).empty
    metadata = result.asset_materializations_for_node("setpoint_change_events")[0].metadata
    assert metadata["points_excluded"].value == 1
    assert metadata["excluded_points"].value == ["compressor_running"]


def pandas_events(snapshots: pd.DataFrame) -> pd.DataFrame:
    """The contract's semantics, independently: per point, each snapshot vs the previous."""
    ordered = snapshots.sort_values(["room", "device", "point", "recorded_at"])
    previous = ordered.groupby(["room", "device", "point"])["value"].shift()
    changed = ordered[previous.notna() & (ordered["value"] != previous)].copy()
    changed["old_value"] = previous[changed.index]
    switch = changed["point"].str.match(r"^(.*_)?on_off$")
    changed["change_kind"] = np.where(
        switch, np.where(changed["value"] == 1, "switched_on", "switched_off"), "changed"
    )
    return changed.rename(columns={"recorded_at": "changed_at", "value": "new_value"})[
        ["room", "device", "point", "changed_at", "old_value", "new_value", "change_kind"]
    ].reset_index(drop=True)


def test_events_match_an_independent_pandas_implementation(warehouse, monkeypatch, tmp_path):
    use_config(monkeypatch, tmp_path, [])  # the contract's default: every point, every change
    rng = np.random.default_rng(42)
    times = pd.date_range("2026-01-12", "2026-01-15", freq="5min", inclusive="left", tz="UTC")
    frames = []
    for room in ["601", "602", "611", "612"]:
        for number in range(10):
            point = f"p{number}_on_off" if number < 4 else f"p{number}_setpoint"
            flips = rng.random(len(times)) < 0.03
            if point.endswith("on_off"):
                values = np.cumsum(flips) % 2
            else:
                values = 16 + np.cumsum(flips * rng.choice([-0.5, 0.5], len(times)))
            frames.append(pd.DataFrame({"room": room, "device": f"d{number % 3}", "point": point,
                                        "value": values.astype(float), "recorded_at": times}))
    snapshots = pd.concat(frames, ignore_index=True)
    insert_setpoints(warehouse, snapshots.sample(frac=1, random_state=1).itertuples(index=False))
    expected = pandas_events(snapshots)
    assert len(expected) > 100

    run(start="2026-01-12", end="2026-01-14")
    ranged = events(warehouse).drop(columns="day")
    pd.testing.assert_frame_equal(ranged, expected, check_dtype=False)
    for day in ["2026-01-12", "2026-01-13", "2026-01-14"]:
        run(day)
    pd.testing.assert_frame_equal(events(warehouse).drop(columns="day"), expected, check_dtype=False)


def test_the_hourly_schedule_runs_today_and_finalizes_yesterday_at_0005():
    from mushroom_pipeline.defs.setpoints.schedules import hourly_setpoint_monitoring
    from mushroom_pipeline.definitions import defs

    def keys(when):
        context = dg.build_schedule_context(
            scheduled_execution_time=when, repository_def=defs().get_repository_def()
        )
        return [r.partition_key for r in hourly_setpoint_monitoring.evaluate_tick(context).run_requests]

    utc = dt.timezone.utc
    assert hourly_setpoint_monitoring.cron_schedule == "5 * * * *"
    assert keys(dt.datetime(2026, 1, 13, 14, 5, tzinfo=utc)) == ["2026-01-13"]
    assert keys(dt.datetime(2026, 1, 14, 0, 5, tzinfo=utc)) == ["2026-01-13"]


def test_a_missing_source_table_is_a_clear_failure(warehouse):
    from .helpers import failure_text

    with warehouse.begin() as conn:
        conn.exec_driver_sql("DROP TABLE iot.device_setpoints")
    result = dg.materialize(ASSETS, partition_key="2026-01-13", resources=database_resources(),
                            raise_on_error=False)
    assert not result.success
    assert "no table iot.device_setpoints" in failure_text(result)


def test_names_with_percent_signs_quotes_backslashes_and_non_ascii_are_data(
    warehouse, tmp_path, monkeypatch
):
    room, device = '"北" 6\'01', "风机_%_2"
    exact, banded, switch = "temp_set%%", "o'clock\\x", "fan_%s_on_off"
    use_config(monkeypatch, tmp_path, [{"point": banded, "kind": "analog", "deadband": 0.5}])
    insert_setpoints(warehouse, [
        (room, device, exact, 16.0, "2026-01-12 10:00"),
        (room, device, exact, 16.5, "2026-01-12 23:59"),
        (room, device, exact, 17.0, "2026-01-13 00:00"),
        (room, device, banded, 10.0, "2026-01-12 10:00"),
        (room, device, banded, 10.3, "2026-01-12 20:00"),  # within the deadband of 10.0
        (room, device, banded, 10.6, "2026-01-13 00:00"),  # 0.6 from the reported 10.0
        (room, device, switch, 0.0, "2026-01-12 12:00"),
        (room, device, switch, 1.0, "2026-01-13 00:00"),
        (room, device, switch, 0.0, "2026-01-13 06:00"),
    ])
    expected = [
        ["2026-01-13", switch, at("2026-01-13 00:00"), 0.0, 1.0, "switched_on"],
        ["2026-01-13", switch, at("2026-01-13 06:00"), 1.0, 0.0, "switched_off"],
        ["2026-01-13", banded, at("2026-01-13 00:00"), 10.0, 10.6, "changed"],
        ["2026-01-12", exact, at("2026-01-12 23:59"), 16.0, 16.5, "changed"],
        ["2026-01-13", exact, at("2026-01-13 00:00"), 16.5, 17.0, "changed"],
    ]
    run("2026-01-12")
    run("2026-01-13")  # the baselines come from the source, looked up by these names
    per_day = events(warehouse)
    assert set(per_day["room"]) == {room} and set(per_day["device"]) == {device}
    table = per_day.assign(day=per_day["day"].astype(str))
    columns = ["day", "point", "changed_at", "old_value", "new_value", "change_kind"]
    assert table[columns].values.tolist() == expected
    stats = switch_stats(warehouse)
    columns = ["point", "switch_ons", "switch_offs", "minutes_on", "minutes_off", "minutes_unknown"]
    assert stats[columns].values.tolist() == [
        [switch, 0, 0, 0.0, 12 * 60.0, 12 * 60.0],
        [switch, 1, 1, 6 * 60.0, 18 * 60.0, 0.0],
    ]
    run(start="2026-01-12", end="2026-01-13")
    pd.testing.assert_frame_equal(events(warehouse), per_day)
    pd.testing.assert_frame_equal(switch_stats(warehouse), stats)
    staged = query(warehouse, "SELECT tablename FROM pg_tables WHERE schemaname = 'mushroom_staging'")
    assert staged.empty  # the baselines' staging table is gone with its run


def test_per_day_runs_a_range_and_any_day_re_run_alone_give_the_same_events(
    warehouse, tmp_path, monkeypatch
):
    use_config(monkeypatch, tmp_path, [])
    insert_setpoints(warehouse, [
        ("601", "air_cooler", "temp_set", 16.0, "2026-01-12 08:00"),
        ("601", "air_cooler", "temp_set", 16.0, "2026-01-12 23:59"),
        ("601", "air_cooler", "temp_set", 17.0, "2026-01-13 00:00"),
        ("601", "air_cooler", "temp_set", 17.0, "2026-01-13 23:59"),
        ("601", "air_cooler", "temp_set", 18.0, "2026-01-14 00:00"),
        ("601", "air_cooler", "on_off", 0.0, "2026-01-12 00:00"),
        ("601", "air_cooler", "on_off", 1.0, "2026-01-13 00:00"),
        ("601", "air_cooler", "on_off", 1.0, "2026-01-13 12:00"),
        ("601", "air_cooler", "on_off", 0.0, "2026-01-14 00:00"),
        ("602", "fan", "mode", 1.0, "2026-01-12 10:00"),  # silent on the 13th
        ("602", "fan", "mode", 2.0, "2026-01-14 00:00"),
        ("602", "fan", "co2_on", 800.0, "2026-01-13 00:00"),  # first-ever: no change
        ("602", "fan", "co2_on", 900.0, "2026-01-14 00:00"),
    ])
    days = ["2026-01-12", "2026-01-13", "2026-01-14"]
    run(start=days[0], end=days[-1])
    ranged, ranged_stats = events(warehouse), switch_stats(warehouse)
    columns = ["room", "point", "changed_at", "old_value", "new_value", "change_kind"]
    assert ranged[columns].values.tolist() == [
        ["601", "on_off", at("2026-01-13 00:00"), 0.0, 1.0, "switched_on"],
        ["601", "on_off", at("2026-01-14 00:00"), 1.0, 0.0, "switched_off"],
        ["601", "temp_set", at("2026-01-13 00:00"), 16.0, 17.0, "changed"],
        ["601", "temp_set", at("2026-01-14 00:00"), 17.0, 18.0, "changed"],
        ["602", "co2_on", at("2026-01-14 00:00"), 800.0, 900.0, "changed"],
        ["602", "mode", at("2026-01-14 00:00"), 1.0, 2.0, "changed"],
    ]
    for day in days:
        for selection in ([setpoint_change_events], [setpoint_snapshots], [setpoint_change_events],
                          [switch_daily_stats]):
            run(day, selection=selection)
            pd.testing.assert_frame_equal(events(warehouse), ranged)
    pd.testing.assert_frame_equal(switch_stats(warehouse), ranged_stats)
    reset_warehouse(warehouse)
    for day in reversed(days):  # a day after the next one ran: it holds that day's baselines
        run(day)
    pd.testing.assert_frame_equal(events(warehouse), ranged)
    pd.testing.assert_frame_equal(switch_stats(warehouse), ranged_stats)


def test_a_slow_drift_adds_up_across_midnight_whatever_the_runs(warehouse, tmp_path, monkeypatch):
    use_config(monkeypatch, tmp_path, [{"point": "temp_set", "kind": "analog", "deadband": 0.1}])
    insert_setpoints(warehouse, [
        ("601", "air_cooler", "temp_set", 16.0 + 0.04 * h / 24, at("2026-01-10") + pd.Timedelta(hours=h))
        for h in range(4 * 24)  # 0.04 per day, a snapshot an hour
    ])
    days = ["2026-01-10", "2026-01-11", "2026-01-12", "2026-01-13"]

    def fallbacks(result) -> int:
        metadata = result.asset_materializations_for_node("setpoint_change_events")[0].metadata
        return metadata["deadband_references_from_baseline"].value

    results = [run(day) for day in days]
    per_day = events(warehouse)
    # the drift reaches 0.1 from the first value at hour 60, on the third day, and never again
    assert per_day[["changed_at", "old_value", "new_value"]].values.tolist() == [
        [at("2026-01-12 12:00"), 16.0, 16.0 + 0.04 * 60 / 24]
    ]
    assert str(per_day["day"][0]) == "2026-01-12"
    assert [fallbacks(result) for result in results] == [0, 0, 0, 0]
    reset_warehouse(warehouse)
    assert fallbacks(run(start=days[0], end=days[-1])) == 0
    pd.testing.assert_frame_equal(events(warehouse), per_day)
    for day in days:
        assert fallbacks(run(day, selection=[setpoint_change_events])) == 0
        pd.testing.assert_frame_equal(events(warehouse), per_day)
    # without the reference of the 10th, the 11th starts from its baseline snapshot, and says so
    reset_warehouse(warehouse)
    assert fallbacks(run(start=days[1], end=days[-1])) == 1


def test_the_late_setpoints_sensor_requests_the_changed_day_and_its_next_and_nothing_else(warehouse):
    from mushroom_pipeline.definitions import defs
    from mushroom_pipeline.defs.setpoints.sensors import late_setpoints_sensor

    assert defs().resolve_sensor_def("late_setpoints_sensor").job_name == "setpoints_job"
    assert late_setpoints_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert late_setpoints_sensor.minimum_interval_seconds == 300
    today = dt.datetime.now(dt.timezone.utc).date()
    days = [today - dt.timedelta(days=n) for n in (4, 3, 2, 1)]
    insert_setpoints(warehouse, [
        row for d in days for row in [
            ("601", "air_cooler", "temp_set", 16.0, f"{d} 10:00"),
            ("601", "air_cooler", "temp_set", 16.0, f"{d} 10:00"),  # folded: source_rows 2
            ("601", "air_cooler", "temp_set", None, f"{d} 11:00"),  # quarantined
            ("601", "air_cooler", "temp_set", 17.0, f"{d} 12:00"),  # the next day's baseline
        ]
    ])
    instance = dg.DagsterInstance.ephemeral()
    for day in days[1:]:  # the first day never ran: it holds only the next day's baseline
        assert dg.materialize(ASSETS, partition_key=day.isoformat(), resources=database_resources(),
                              instance=instance).success

    def tick(cursor=None):
        return sensor_tick(late_setpoints_sensor, instance, cursor)

    assert not tick().run_requests  # nothing arrived late yet

    insert_setpoints(warehouse, [
        ("601", "air_cooler", "temp_set", 18.0, f"{days[1]} 13:00"),  # late, for a materialized day
        ("601", "air_cooler", "temp_set", 18.0, f"{today} 00:30"),  # today: the day is still open
        ("601", "air_cooler", "temp_set", 18.0, f"{days[0]} 13:00"),  # a day never run
    ])
    with warehouse.begin() as conn:  # a purge: that day keeps what was stored
        conn.exec_driver_sql("DELETE FROM iot.device_setpoints WHERE recorded_at = %s",
                             (f"{days[3]} 11:00+00",))
    first = tick()
    # with the next day, materialized, whose baseline the late snapshot changed
    covered = range_tags(days[1].isoformat(), days[2].isoformat())
    assert [(r.partition_key, {k: r.tags.get(k) for k in covered}) for r in first.run_requests] == [
        (None, covered)
    ]
    assert not tick(first.cursor).run_requests  # already requested: not again


# CONTRACTS.md, "The farm's catalog": device type → point → (kind, deadband, labels).
OFF_ON = {0.0: "off", 1.0: "on"}
MODES = {0.0: "off", 1.0: "auto", 2.0: "manual"}
HUMIDIFIER = {"mode": ("enum", 0.0, MODES), "on": ("analog", 1.0, {}), "off": ("analog", 1.0, {})}
FARM_CATALOG = {
    "air_cooler": {
        "on_off": ("switch", 0.0, OFF_ON),
        "temp_set": ("analog", 0.1, {}),
        "temp_diffset": ("analog", 0.1, {}),
        "cyc_on_time": ("analog", 1.0, {}),
        "cyc_off_time": ("analog", 1.0, {}),
        "air_on_off": ("switch", 0.0, OFF_ON),
        "hum_on_off": ("switch", 0.0, OFF_ON),
        "cyc_on_off": ("switch", 0.0, OFF_ON),
    },
    "fresh_air_fan": {
        "mode": ("enum", 0.0, MODES),
        "control": ("enum", 0.0, {0.0: "timer", 1.0: "CO2 control"}),
        "co2_on": ("analog", 50.0, {}),
        "co2_off": ("analog", 50.0, {}),
        "on": ("analog", 1.0, {}),
        "off": ("analog", 1.0, {}),
    },
    "left_humidifier": HUMIDIFIER,
    "right_humidifier": HUMIDIFIER,
    "grow_light": {
        "model": ("enum", 0.0, MODES),
        "on_mset": ("analog", 1.0, {}),
        "off_mset": ("analog", 1.0, {}),
        **{f"on_off{n}": ("switch", 0.0, {0.0: "off", 1.0: "auto"}) for n in range(1, 5)},
        **{f"choose{n}": ("enum", 0.0, {0.0: "white", 1.0: "blue light"}) for n in range(1, 5)},
    },
    "mushroom_info": {
        point: ("batch", 0.0, {}) for point in ("in_year", "in_month", "in_day", "in_num", "in_day_num")
    },
}
FARM_ROOMS = ("607", "608", "611", "612")


def test_the_shipped_catalog_reads_every_point_of_the_farm_as_the_contract_says():
    config = load_point_config()
    for room in FARM_ROOMS:
        for kind_of_device, points in FARM_CATALOG.items():
            device = f"{kind_of_device}_{room}"
            for point, (kind, deadband, labels) in points.items():
                expected = PointTreatment(kind, deadband, kind == "batch", True, labels)
                assert config.treatment(room, device, point) == expected, (device, point)
    # The batch section names the batch device's points.
    batches = config.batches
    assert {batches.entry_year, batches.entry_month, batches.entry_day, batches.bags,
            batches.growth_day} == set(FARM_CATALOG["mushroom_info"])
    # No dead rule: each is the first match (the one that wins) of some point of the farm.
    winners = {
        next(n for n, rule in enumerate(config.rules) if rule.matches(room, f"{kind}_{room}", point))
        for room in FARM_ROOMS for kind, points in FARM_CATALOG.items() if kind != "mushroom_info"
        for point in points
    }
    assert winners == set(range(len(config.rules)))


def test_a_catalog_edited_in_place_is_read_again_and_an_unchanged_one_parsed_once(tmp_path):
    """Each load reads the file: an edit between two runs of one process (a sensor, the
    daemon) is seen by the next, though the treatments are remembered per catalog."""
    path = tmp_path / "points.yaml"
    path.write_text(yaml.safe_dump({"rules": [{"point": "temp_set", "kind": "analog", "deadband": 0.5}]}))
    first = load_point_config(path)
    assert first.treatment("601", "air_cooler_601", "temp_set").deadband == 0.5
    assert load_point_config(path) is first  # the same text: parsed once, its treatments kept
    path.write_text(yaml.safe_dump({"rules": [{"point": "temp_set", "kind": "enum"}]}))
    edited = load_point_config(path)
    assert edited.treatment("601", "air_cooler_601", "temp_set") == PointTreatment("enum", 0.0, False, True, {})
    assert first.treatment("601", "air_cooler_601", "temp_set").deadband == 0.5


def labelled_events(warehouse) -> list[list]:
    frame = query(
        warehouse,
        "SELECT device, point, old_value, new_value, change_kind, old_label, new_label "
        "FROM mushroom.setpoint_change_events ORDER BY device, point, changed_at",
    )
    return frame.astype(object).where(frame.notna(), None).values.tolist()  # NULL as None


def test_events_carry_the_catalogs_labels_and_its_switches_get_statistics(warehouse):
    def changing(device, point, before, after):
        return [("607", device, point, before, "2026-01-13 08:00"),
                ("607", device, point, after, "2026-01-13 09:00")]

    insert_setpoints(warehouse, [
        *changing("fresh_air_fan_607", "control", 1.0, 0.0),
        *changing("left_humidifier_607", "mode", 1.0, 2.0),
        *changing("grow_light_607", "on_off2", 0.0, 1.0),
        *changing("grow_light_607", "choose1", 0.0, 3.0),  # a colour the catalog does not name
        *changing("air_cooler_607", "temp_set", 16.0, 17.0),
    ])
    result = run("2026-01-13")
    assert labelled_events(warehouse) == [
        ["air_cooler_607", "temp_set", 16.0, 17.0, "changed", None, None],
        ["fresh_air_fan_607", "control", 1.0, 0.0, "changed", "CO2 control", "timer"],
        ["grow_light_607", "choose1", 0.0, 3.0, "changed", "white", None],
        ["grow_light_607", "on_off2", 0.0, 1.0, "switched_on", "off", "auto"],
        ["left_humidifier_607", "mode", 1.0, 2.0, "changed", "auto", "manual"],
    ]
    metadata = event_metadata(result)
    assert metadata["values_without_label"] == 1
    assert (metadata["points_tracked"], metadata["points_uncovered"]) == (5, 0)
    assert "CO2 control" in metadata["latest_events"]
    stats = switch_stats(warehouse)
    assert stats[["device", "point", "switch_ons", "switch_offs", "minutes_on"]].values.tolist() == [
        ["grow_light_607", "on_off2", 1, 0, 15 * 60.0]
    ]


def test_jitter_under_the_catalogs_deadband_is_no_event(warehouse):
    def snapshots(values, hour):
        return [("607", device, point, value, at(f"2026-01-13 {hour:02d}:00") + pd.Timedelta(minutes=m))
                for (device, point), series in values.items() for m, value in enumerate(series)]

    insert_setpoints(warehouse, snapshots({
        ("fresh_air_fan_607", "co2_on"): [1000.0, 1030.0, 980.0, 1020.0],  # deadband 50
        ("air_cooler_607", "temp_set"): [16.5, 16.55, 16.5],  # deadband 0.1
    }, 8))
    run("2026-01-13")
    assert events(warehouse).empty
    insert_setpoints(warehouse, snapshots({
        ("fresh_air_fan_607", "co2_on"): [1050.0],  # 50 from the reported 1000
        ("air_cooler_607", "temp_set"): [16.6],  # one step of the 0.1 °C resolution
    }, 9))
    run("2026-01-13")
    assert events(warehouse)[["point", "changed_at", "old_value", "new_value"]].values.tolist() == [
        ["temp_set", at("2026-01-13 09:00"), 16.5, 16.6],
        ["co2_on", at("2026-01-13 09:00"), 1000.0, 1050.0],
    ]


def test_the_batch_device_makes_no_events_nor_switch_statistics(warehouse):
    hours = [at("2026-01-13 00:00") + pd.Timedelta(hours=h) for h in range(24)]
    batch = {"in_year": lambda h: 2026.0, "in_month": lambda h: 1.0, "in_day": lambda h: 2.0,
             "in_num": lambda h: 500.0 - h,  # a count of bags, changing every hour
             "in_day_num": lambda h: 11.0 if h < 12 else 12.0}  # the growth day turns at noon
    insert_setpoints(warehouse, [
        ("607", "mushroom_info_607", point, value(h), t)
        for point, value in batch.items() for h, t in enumerate(hours)
    ] + [("607", "air_cooler_607", "on_off", float(h >= 6), t) for h, t in enumerate(hours)])
    result = run("2026-01-13")
    assert labelled_events(warehouse) == [
        ["air_cooler_607", "on_off", 0.0, 1.0, "switched_on", "off", "on"]
    ]
    metadata = event_metadata(result)
    assert metadata["batch_points"] == 5
    assert (metadata["points_tracked"], metadata["points_excluded"]) == (1, 0)
    assert metadata["excluded_points"] == []
    assert query(warehouse, "SELECT * FROM mushroom.setpoint_snapshots_quarantine").empty
    assert switch_stats(warehouse)[["device", "point"]].values.tolist() == [["air_cooler_607", "on_off"]]


def test_a_switch_value_other_than_0_or_1_is_a_change_not_a_switch_off(
    warehouse, tmp_path, monkeypatch
):
    # Snapshots taken while the catalog read `relay` as analog, events made after it became a
    # switch: 2 passed validation, and is neither on nor off.
    insert_setpoints(warehouse, [
        ("601", "panel", "relay", value, at("2026-01-13 09:00") + pd.Timedelta(minutes=m))
        for m, value in enumerate([0.0, 2.0, 0.0, 1.0])
    ])
    use_config(monkeypatch, tmp_path, [])
    run("2026-01-13", selection=[setpoint_snapshots])
    use_config(monkeypatch, tmp_path, [{"point": "relay", "kind": "switch"}])
    run("2026-01-13", selection=[setpoint_change_events])
    assert labelled_events(warehouse) == [
        ["panel", "relay", 0.0, 2.0, "changed", "off", None],
        ["panel", "relay", 2.0, 0.0, "switched_off", None, "off"],
        ["panel", "relay", 0.0, 1.0, "switched_on", "off", "on"],
    ]


@pytest.fixture(params=["same database", "separate database"])
def source_and_resources(request, warehouse) -> tuple[PostgresResource, dict[str, object]]:
    """(source, resources): the source tables in the warehouse database, or in a database of
    their own (the window's rows then staged into the warehouse)."""
    resources = database_resources()
    if request.param == "same database":
        return warehouse, resources
    admin = sa.create_engine(embedded.server_url(warehouse.home, "postgres"),
                             isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        embedded.create_database(conn, "setpoint_source")
    admin.dispose()
    source = PostgresResource(url=embedded.server_url(warehouse.home, "setpoint_source"),
                              home=warehouse.home, url_variable="MUSHROOM_SOURCE_DATABASE_URL")
    with source.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS iot CASCADE")
        conn.exec_driver_sql(SETPOINT_DDL)
    return source, {**resources, "source_database": source}


def test_a_catalog_switch_holding_another_value_is_quarantined_and_never_a_baseline(
    warehouse, source_and_resources
):
    source, resources = source_and_resources
    light = ("607", "grow_light_607", "on_off1")  # a switch by the catalog, not by its name
    insert_setpoints(source, [
        (*light, 1.0, "2026-01-12 22:00"),
        (*light, 2.0, "2026-01-12 23:00"),  # invalid: the baseline is 22:00's
        (*light, 1.0, "2026-01-13 01:00"),  # the same as the baseline: no change
        (*light, 2.0, "2026-01-13 02:00"),
        (*light, 0.0, "2026-01-13 03:00"),
        ("607", "cabinet_607", "on_off1", 2.0, "2026-01-13 02:00"),  # no rule: an analog point
    ])
    result = run("2026-01-13", resources=resources)
    quarantine = query(warehouse, "SELECT device, point, value, reason "
                                  "FROM mushroom.setpoint_snapshots_quarantine")
    assert quarantine.values.tolist() == [["grow_light_607", "on_off1", 2.0, "not_a_switch_value"]]
    assert labelled_events(warehouse) == [
        ["grow_light_607", "on_off1", 1.0, 0.0, "switched_off", "auto", "off"]
    ]
    snapshots = result.asset_materializations_for_node("setpoint_snapshots")[0].metadata
    assert snapshots["switch_points"].value == 1
    assert snapshots["baselines_before_window"].value == 1
    staged = query(warehouse, "SELECT tablename FROM pg_tables WHERE schemaname = 'mushroom_staging'")
    assert staged.empty  # the switches', baselines' and source rows' staging tables are gone


def test_a_day_without_any_snapshot_gives_no_events_and_no_error(warehouse):
    insert_setpoints(warehouse, [("607", "air_cooler_607", "temp_set", 16.0, "2026-01-12 10:00")])
    result = run("2026-01-13")  # nothing recorded that day
    assert events(warehouse).empty
    assert result.asset_materializations_for_node("setpoint_change_events")[0].metadata[
        "points_tracked"].value == 0
