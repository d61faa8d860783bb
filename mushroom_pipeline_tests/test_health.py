"""sensor_health and camera_health through Dagster on the real Postgres, against independent
pandas/NumPy readings of their definitions on hand-built data: a 3-hour gap, a 7-hour flat line,
a day with a single reading, a day boundary, today's open day; a frozen camera (the same bytes
under several keys), a varied one, and a camera whose second day looks different."""

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd

from mushroom_pipeline.definitions import database_resources
from mushroom_pipeline.defs.environment.assets import env_readings
from mushroom_pipeline.defs.environment.health import (
    SILENT_AFTER_MIN,
    STUCK_AFTER_MIN,
    sensor_health,
)

from .helpers import insert_readings, query, range_tags

DAY1, DAY2 = "2026-03-02", "2026-03-03"


def _at(day: str, minute: int) -> str:
    return (pd.Timestamp(day) + pd.Timedelta(minutes=minute)).strftime("%Y-%m-%d %H:%M")


def sensor_series() -> list[tuple]:
    """(room, metric, value, measured_at), farm time = UTC in the tests."""
    rows = []
    # 607 temperature: every 10 min, nothing strictly between 10:00 and 13:00 (a 3-hour gap),
    # values that change at every reading; the next day starts at 00:25 (a day boundary).
    for minute in range(0, 24 * 60, 10):
        if not 600 < minute < 780:
            rows.append(("607", "temperature_c", 16 + 0.1 * ((minute // 10) % 7), _at(DAY1, minute)))
    for minute in range(25, 24 * 60, 10):
        rows.append(("607", "temperature_c", 17 + 0.1 * ((minute // 10) % 7), _at(DAY2, minute)))
    # 607 humidity: 95.0 from 02:00 to 09:00 (a 7-hour flat line), 88.0 from 15:00 to 16:00
    for minute in range(0, 24 * 60, 10):
        value = (95.0 if 120 <= minute <= 540 else 88.0 if 900 <= minute <= 960
                 else 90 + 0.5 * ((minute // 10) % 5))
        rows.append(("607", "humidity_pct", value, _at(DAY1, minute)))
    # 608 CO2: one reading all day
    rows.append(("608", "co2_ppm", 1200.0, _at(DAY1, 360)))
    # 608 temperature on the second day only: healthy, with short repeats
    for minute in range(0, 24 * 60, 10):
        rows.append(("608", "temperature_c", 18 + 0.1 * ((minute // 30) % 4), _at(DAY2, minute)))
    return rows


def independent_health(rows: list[tuple], now: pd.Timestamp) -> pd.DataFrame:
    """sensor_health's definitions read with pandas, group by group."""
    frame = pd.DataFrame(rows, columns=["room", "metric", "value", "measured_at"])
    frame["measured_at"] = pd.to_datetime(frame["measured_at"], utc=True)
    frame["day"] = frame["measured_at"].dt.date
    out = []
    for (day, room, metric), group in frame.groupby(["day", "room", "metric"]):
        group = group.sort_values("measured_at")
        times = list(group["measured_at"])
        start = pd.Timestamp(day, tz="UTC")
        end = max(min(start + pd.Timedelta(days=1), now), times[-1])
        edges = [start, *times, end]
        gaps = [b - a for a, b in zip(edges, edges[1:])]
        longest = int(np.argmax(gaps))  # the first of the longest
        runs = (group["value"] != group["value"].shift()).cumsum()
        spans = group.groupby(runs).agg(first=("measured_at", "min"), last=("measured_at", "max"),
                                        value=("value", "first"))
        spans["length"] = spans["last"] - spans["first"]
        flat = spans.loc[spans["length"].idxmax()]  # the first of the longest
        out.append({
            "day": day, "room": room, "metric": metric, "readings": len(group),
            "first_at": times[0], "last_at": times[-1],
            "longest_gap_min": gaps[longest].total_seconds() / 60,
            "longest_gap_start": edges[longest],
            "longest_flatline_min": flat["length"].total_seconds() / 60,
            "flatline_value": flat["value"], "flatline_start": flat["first"],
        })
    return pd.DataFrame(out)


def stored_health(warehouse) -> pd.DataFrame:
    frame = query(warehouse, "SELECT * FROM mushroom.sensor_health ORDER BY day, room, metric")
    for column in ("first_at", "last_at", "longest_gap_start", "flatline_start"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def compare(actual: pd.DataFrame, expected: pd.DataFrame, tolerance_min: float = 1e-9) -> None:
    key = ["day", "room", "metric"]
    assert actual[key].values.tolist() == expected.sort_values(key)[key].values.tolist()
    merged = expected.merge(actual, on=key, suffixes=("_expected", ""))
    assert merged["readings"].tolist() == merged["readings_expected"].tolist()
    for column in ("first_at", "last_at", "longest_gap_start", "flatline_start"):
        assert merged[column].tolist() == merged[f"{column}_expected"].tolist(), column
    for column in ("longest_gap_min", "longest_flatline_min", "flatline_value"):
        np.testing.assert_allclose(merged[column], merged[f"{column}_expected"].astype(float),
                                   atol=tolerance_min, err_msg=column)


def health_check(result) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations()
                     if e.check_name == "no_silent_or_stuck_sensors"]
    return evaluation


def test_sensor_health_matches_an_independent_reading_of_gaps_and_flat_lines(warehouse):
    rows = sensor_series()
    insert_readings(warehouse, rows)
    result = dg.materialize([env_readings, sensor_health], resources=database_resources(),
                            tags=range_tags(DAY1, DAY2))
    assert result.success
    assert len(result.get_step_success_events()) == 2  # two days, one step per asset

    actual = stored_health(warehouse)
    expected = independent_health(rows, pd.Timestamp.now(tz="UTC"))
    compare(actual, expected)
    by_group = actual.set_index(["day", "room", "metric"])
    day1, day2 = dt.date.fromisoformat(DAY1), dt.date.fromisoformat(DAY2)
    # the values the series was built for, stated outright
    assert by_group.loc[(day1, "607", "temperature_c"), "longest_gap_min"] == 180
    assert by_group.loc[(day1, "607", "temperature_c"), "longest_gap_start"] == pd.Timestamp(
        f"{DAY1} 10:00", tz="UTC")
    assert by_group.loc[(day1, "607", "temperature_c"), "longest_flatline_min"] == 0
    assert by_group.loc[(day2, "607", "temperature_c"), "longest_gap_min"] == 25  # from midnight
    assert by_group.loc[(day1, "607", "temperature_c"), "last_at"] == pd.Timestamp(
        f"{DAY1} 23:50", tz="UTC")
    assert by_group.loc[(day1, "607", "humidity_pct"), "longest_flatline_min"] == 420
    assert by_group.loc[(day1, "607", "humidity_pct"), "flatline_value"] == 95.0
    single = by_group.loc[(day1, "608", "co2_ppm")]
    assert (single["readings"], single["longest_gap_min"], single["longest_flatline_min"]) == (
        1, 18 * 60, 0)
    assert single["longest_gap_start"] == pd.Timestamp(f"{DAY1} 06:00", tz="UTC")
    assert by_group.loc[(day2, "608", "temperature_c"), "longest_flatline_min"] == 20

    evaluation = health_check(result)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.description == (
        f"silent ≥ {SILENT_AFTER_MIN // 60} h: 607 temperature_c, 608 co2_ppm; "
        f"stuck ≥ {STUCK_AFTER_MIN // 60} h: 607 humidity_pct")
    silent = evaluation.metadata["silent"].value
    stuck = evaluation.metadata["stuck"].value
    assert sorted((s["day"], s["room"], s["metric"]) for s in silent) == [
        (DAY1, "607", "temperature_c"), (DAY1, "608", "co2_ppm")]
    assert [(s["day"], s["room"], s["metric"], s["value"]) for s in stuck] == [
        (DAY1, "607", "humidity_pct", 95.0)]


def test_sensor_health_of_a_healthy_day_passes_and_a_rerun_changes_nothing(warehouse):
    rows = [r for r in sensor_series() if r[3].startswith(DAY2)]
    insert_readings(warehouse, rows)
    first = dg.materialize([env_readings, sensor_health], partition_key=DAY2,
                           resources=database_resources())
    assert health_check(first).passed
    before = stored_health(warehouse)
    dg.materialize([env_readings, sensor_health], partition_key=DAY2, resources=database_resources())
    pd.testing.assert_frame_equal(stored_health(warehouse), before)
    assert len(before) == 2


def test_todays_last_gap_runs_until_now(warehouse):
    now = pd.Timestamp.now(tz="UTC")
    today = now.normalize()
    rows = [("609", "temperature_c", 15.0, today.strftime("%Y-%m-%d %H:%M"))]  # at midnight
    insert_readings(warehouse, rows)
    result = dg.materialize([env_readings, sensor_health], partition_key=today.strftime("%Y-%m-%d"),
                            resources=database_resources())
    assert result.success
    actual = stored_health(warehouse)
    after = pd.Timestamp.now(tz="UTC")
    # the open day's end is the run's now: between the two clocks read here
    gap = actual.loc[0, "longest_gap_min"]
    assert (now - today).total_seconds() / 60 <= gap <= (after - today).total_seconds() / 60
    assert actual.loc[0, "longest_gap_start"] == today
