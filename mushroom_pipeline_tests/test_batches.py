"""setpoint_snapshots → room_batches, through Dagster on the real Postgres: the batch in each
room per day from its mushroom_info device, growth days reported or derived, problem rows, and
the view mushroom.env_daily_stats_by_batch."""

import dagster as dg
import pandas as pd

from mushroom_pipeline.defs.batches.assets import room_batches
from mushroom_pipeline.definitions import database_resources
from mushroom_pipeline.defs.environment.assets import env_daily_stats, env_readings
from mushroom_pipeline.defs.setpoints.assets import setpoint_snapshots

from .helpers import insert_readings, insert_setpoints, query, range_tags

INFO = ("in_year", "in_month", "in_day", "in_num", "in_day_num")


def info(room: str, at: str, year, month, day, bags, growth_day=None) -> list[tuple]:
    """One snapshot of mushroom_info_<room>'s points (a None value: the point is not sent)."""
    values = dict(zip(INFO, (year, month, day, bags, growth_day)))
    return [(room, f"mushroom_info_{room}", point, float(value), at)
            for point, value in values.items() if value is not None]


def run(assets=(setpoint_snapshots, room_batches), partition_key=None, start=None, end=None
        ) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        list(assets),
        partition_key=partition_key,
        tags=range_tags(start, end) if start else None,
        resources=database_resources(),
    )
    assert result.success
    return result


def batches(warehouse) -> pd.DataFrame:
    frame = query(warehouse, "SELECT * FROM mushroom.room_batches ORDER BY day, room, device")
    for column in ("day", "entry_date", "previous_entry_date"):
        frame[column] = frame[column].map(lambda d: None if pd.isna(d) else str(d))
    return frame


def metadata(result) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node("room_batches")[0].metadata.items()}


def check(result) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations()
                     if e.check_name == "growth_day_agrees"]
    return evaluation


def test_a_new_batch_is_seen_once_whether_the_days_run_as_a_range_or_one_by_one(warehouse):
    insert_setpoints(warehouse, [
        *info("607", "2026-01-11 20:00", 2026, 1, 1, 500, 10),  # the baseline of 2026-01-12
        *info("607", "2026-01-12 08:00", 2026, 1, 1, 500, 11),
        *info("607", "2026-01-12 20:00", 2026, 1, 1, 500, 11),
        *info("607", "2026-01-13 08:00", 2026, 1, 1, 500, 12),
        *info("607", "2026-01-13 10:00", 2026, 1, 13, 480, 0),  # the room is refilled
        *info("607", "2026-01-14 08:00", 2026, 1, 13, 480, 1),
        ("607", "air_cooler_607", "temp_set", 16.5, "2026-01-13 09:00"),  # not a batch device
    ])
    ranged = run(start="2026-01-12", end="2026-01-14")
    as_range = batches(warehouse)
    assert as_range[["day", "room", "device", "batch", "entry_date", "bags", "growth_day",
                     "growth_day_source", "derived_growth_day", "new_batch",
                     "previous_entry_date", "problem"]].values.tolist() == [
        ["2026-01-12", "607", "mushroom_info_607", "607/2026-01-01", "2026-01-01", 500, 11,
         "reported", 11, False, "2026-01-01", None],
        ["2026-01-13", "607", "mushroom_info_607", "607/2026-01-13", "2026-01-13", 480, 0,
         "reported", 0, True, "2026-01-01", None],
        ["2026-01-14", "607", "mushroom_info_607", "607/2026-01-13", "2026-01-13", 480, 1,
         "reported", 1, False, "2026-01-13", None],
    ]
    assert as_range["last_reported_at"].tolist() == [
        pd.Timestamp(t, tz="UTC") for t in ("2026-01-12 20:00", "2026-01-13 10:00", "2026-01-14 08:00")
    ]
    meta = metadata(ranged)
    assert (meta["rooms"], meta["batches"], meta["new_batches"]) == (1, 2, ["607/2026-01-13"])
    assert meta["batch_devices"] == ["mushroom_info_607"] and meta["growth_day_disagreements"] == 0
    assert check(ranged).passed
    # The view exists after the first run, before env_daily_stats ever ran.
    assert query(warehouse, "SELECT * FROM mushroom.env_daily_stats_by_batch").empty

    with warehouse.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA mushroom CASCADE")
    for day in ("2026-01-14", "2026-01-12", "2026-01-13"):  # any order: each day stands alone
        run(partition_key=day)
    pd.testing.assert_frame_equal(batches(warehouse), as_range)


def test_the_growth_day_is_derived_when_not_reported_and_a_disagreement_warns(warehouse):
    insert_setpoints(warehouse, [
        *info("611", "2026-01-12 09:00", 2026, 1, 2, 300),  # no in_day_num
        *info("612", "2026-01-12 09:00", 2026, 1, 2, 300, 9),  # 10 days since the entry
    ])
    result = run(partition_key="2026-01-12")
    rows = batches(warehouse).set_index("room")
    assert rows.loc["611", ["growth_day", "growth_day_source", "derived_growth_day"]].tolist() == [
        10, "derived", 10]
    assert pd.isna(rows.loc["611", "reported_growth_day"])
    assert rows.loc["612", ["growth_day", "growth_day_source", "reported_growth_day",
                            "derived_growth_day"]].tolist() == [9, "reported", 9, 10]
    assert metadata(result)["growth_day_disagreements"] == 1
    assert "612/2026-01-02" in metadata(result)["growth_day_disagreement_rows"]
    evaluation = check(result)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["growth_day_disagreements"].value == 1


def test_an_impossible_entry_date_is_a_problem_row_not_a_crash(warehouse):
    insert_setpoints(warehouse, [
        *info("607", "2026-01-12 09:00", 2026, 13, 1, 500, 5),
        *info("608", "2026-01-12 09:00", 2026, 1, 1.5, 400),
        *info("611", "2026-01-12 09:00", None, None, None, 250.5, 7),
        *info("612", "2026-01-12 09:00", 2026, 1, 20, 100),  # entered after the day
    ])
    result = run(partition_key="2026-01-12")
    rows = batches(warehouse).set_index("room")
    assert rows["problem"].to_dict() == {
        "607": "invalid_entry_date: 2026-13-01",
        "608": "invalid_entry_date: 2026-01-1.5",
        "611": "no_entry_date; invalid_bags: 250.5",
        "612": "entry_date_after_day: 2026-01-20",
    }
    assert rows.loc[["607", "608", "611"], ["batch", "entry_date"]].isna().all().all()
    assert rows.loc["607", ["growth_day", "growth_day_source", "bags"]].tolist() == [5, "reported", 500]
    assert rows.loc["611", "growth_day"] == 7 and pd.isna(rows.loc["611", "bags"])
    assert pd.isna(rows.loc["608", "growth_day"]) and pd.isna(rows.loc["608", "growth_day_source"])
    assert rows.loc["612", "batch"] == "612/2026-01-20" and pd.isna(rows.loc["612", "growth_day"])
    assert not rows["new_batch"][["607", "608", "611"]].any() and rows.loc["612", "new_batch"]
    assert metadata(result)["problems"] == 4 and check(result).passed


def test_the_view_gives_the_daily_environment_statistics_their_growth_day(warehouse):
    insert_setpoints(warehouse, info("607", "2026-01-13 06:00", 2026, 1, 1, 500, 12))
    insert_readings(warehouse, [
        ("607", "temperature_c", 16.0, "2026-01-13 10:00+00"),
        ("607", "temperature_c", 17.0, "2026-01-13 11:00+00"),
        ("607", "humidity_pct", 90.0, "2026-01-13 10:00+00"),
        ("608", "co2_ppm", 1100.0, "2026-01-13 10:00+00"),  # a room without a batch device
    ])
    run(partition_key="2026-01-13")
    run([env_readings, env_daily_stats], partition_key="2026-01-13")
    rows = query(warehouse, "SELECT day::text, room, metric, n, mean, batch, entry_date::text, "
                            "growth_day FROM mushroom.env_daily_stats_by_batch ORDER BY room, metric")
    assert rows.astype(object).where(rows.notna(), None).values.tolist() == [
        ["2026-01-13", "607", "humidity_pct", 1, 90.0, "607/2026-01-01", "2026-01-01", 12],
        ["2026-01-13", "607", "temperature_c", 2, 16.5, "607/2026-01-01", "2026-01-01", 12],
        ["2026-01-13", "608", "co2_ppm", 1, 1100.0, None, None, None],
    ]
    stats = query(warehouse, "SELECT count(*) AS n FROM mushroom.env_daily_stats")["n"][0]
    assert stats == len(rows)

    # A column env_daily_stats gains later reaches the view on room_batches' next run.
    with warehouse.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE mushroom.env_daily_stats ADD COLUMN note text")
    run(partition_key="2026-01-13")
    columns = query(warehouse, "SELECT * FROM mushroom.env_daily_stats_by_batch").columns
    assert list(columns[-4:]) == ["note", "batch", "entry_date", "growth_day"]


def test_a_day_without_a_snapshot_of_the_batch_device_has_no_row(warehouse):
    insert_setpoints(warehouse, [
        *info("607", "2026-01-12 09:00", 2026, 1, 1, 500, 11),
        ("607", "air_cooler_607", "temp_set", 16.5, "2026-01-13 09:00"),
    ])
    run(start="2026-01-12", end="2026-01-13")
    assert batches(warehouse)["day"].tolist() == ["2026-01-12"]
    empty = run(partition_key="2026-01-14")  # no snapshot at all: no rows, no failure
    assert (metadata(empty)["rooms"], metadata(empty)["batches"]) == (0, 0) and check(empty).passed
    assert batches(warehouse)["day"].tolist() == ["2026-01-12"]
