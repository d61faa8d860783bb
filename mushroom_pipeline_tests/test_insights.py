"""setpoint_compliance and change_responses through Dagster on the real Postgres, against
independent pandas implementations written from ../shared/CONTRACTS.md ("Insight tables"),
on a hand-built farm: a setpoint changed mid-day, a day without any setpoint snapshot, readings
before the first snapshot ever, a change at 23:50 (its response reads the next day), a change at
00:10 (its before_mean reads the previous day), a band rule (co2_off..co2_on) and a
tolerance_point rule (temp_set ± temp_diffset), and the WARN check."""

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from mushroom_pipeline.catalog.points import DEFAULT_POINTS
from mushroom_pipeline.definitions import database_resources
from mushroom_pipeline.defs.environment.assets import env_readings
from mushroom_pipeline.defs.insights.compliance import setpoint_compliance
from mushroom_pipeline.defs.insights.responses import change_responses
from mushroom_pipeline.defs.setpoints.assets import setpoint_change_events, setpoint_snapshots

from .helpers import failure_text, insert_readings, insert_setpoints, query, range_tags

ASSETS = [env_readings, setpoint_snapshots, setpoint_change_events, setpoint_compliance,
          change_responses]
DAYS = ["2026-01-12", "2026-01-13", "2026-01-14"]
# The 13th has no setpoint snapshot at all; setpoint_change_events fails on such a day
# (setpoints/changes.py: an empty treatments frame loses its columns, reported to the lead), so
# its runs leave the change events (none that day) and their responses out.
SILENT_DAY = [env_readings, setpoint_snapshots, setpoint_compliance]
EDGE = 1e-9  # a reading exactly on the tolerance's edge is in band, whatever the binary floats
ALIASES = {"temperature": "temperature_c", "co2": "co2_ppm", "humidity": "humidity_pct"}
# The shipped catalog's rules for the devices of this farm (points.yaml, compliance:)
TARGET_RULES = [  # (metric, device prefix, point, tolerance, tolerance_point)
    ("temperature_c", "air_cooler_", "temp_set", None, "temp_diffset"),
]
BAND_RULES = [  # (metric, device prefix, low_point, high_point)
    ("humidity_pct", "left_humidifier_", "on", "off"),
    ("humidity_pct", "right_humidifier_", "on", "off"),
    ("co2_ppm", "fresh_air_fan_", "co2_off", "co2_on"),
]


def at(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")  # the tests' farm runs in UTC


def run(partition_key=None, selection=None, start=None, end=None, run_config=None,
        success=True) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        ASSETS, selection=selection, partition_key=partition_key,
        tags=range_tags(start, end) if start else None,
        resources=database_resources(), run_config=run_config, raise_on_error=False,
    )
    assert result.success == success
    return result


# ---------------------------------------------------------------------------------------------
# The farm: room 607 (changes, a silent day, readings before the first snapshot) and room 608
# (readings exactly on the tolerance's edge)


def setpoint_rows() -> list[tuple]:
    rows = []

    def hourly(device, point, values: dict[int, float], day: str, hours):
        for hour in hours:
            value = [v for h, v in sorted(values.items()) if h <= hour][-1]
            rows.append(("607", device, point, value, f"{day} {hour:02d}:00"))

    # 2026-01-12: first snapshots ever at 06:00 (co2_on: 07:00); temp_set 16.6 → 17.0 at 12:00, co2_on
    # 1200 → 1000 at 14:00 (both beyond their deadbands)
    hourly("air_cooler_607", "temp_set", {6: 16.6, 12: 17.0}, DAYS[0], range(6, 24))
    hourly("air_cooler_607", "temp_diffset", {6: 1.0}, DAYS[0], range(6, 24))
    # the band's high point first reports an hour after its low point
    hourly("fresh_air_fan_607", "co2_on", {7: 1200.0, 14: 1000.0}, DAYS[0], range(7, 24))
    hourly("fresh_air_fan_607", "co2_off", {6: 800.0}, DAYS[0], range(6, 24))
    hourly("left_humidifier_607", "on", {6: 88.0}, DAYS[0], range(6, 24))
    hourly("left_humidifier_607", "off", {6: 94.0, 18: 95.0}, DAYS[0], range(6, 24))
    rows.append(("607", "air_cooler_607", "temp_set", 17.0, f"{DAYS[0]} 09:30"))  # a repeat…
    rows.append(("607", "air_cooler_607", "temp_set", 16.6, f"{DAYS[0]} 09:30"))  # …conflicting
    # a change at 23:50: its response reads the next day's readings
    rows.append(("607", "air_cooler_607", "temp_set", 16.0, f"{DAYS[0]} 23:50"))
    # 2026-01-13: no snapshot at all (the values in force come from the 12th)
    # 2026-01-14: the differential narrows at 00:00 (no response: a tolerance, not a setpoint);
    # temp_set 16.0 → 16.5 at 00:10 (its before_mean reads the 13th)
    hourly("air_cooler_607", "temp_set", {0: 16.0}, DAYS[2], [0])
    rows.append(("607", "air_cooler_607", "temp_set", 16.5, f"{DAYS[2]} 00:10"))
    hourly("air_cooler_607", "temp_set", {0: 16.5}, DAYS[2], range(1, 24))
    hourly("air_cooler_607", "temp_diffset", {0: 0.5}, DAYS[2], range(0, 24))
    hourly("fresh_air_fan_607", "co2_on", {0: 1000.0}, DAYS[2], range(0, 24))
    hourly("fresh_air_fan_607", "co2_off", {0: 800.0}, DAYS[2], range(0, 24))
    # room 608: 16.6 ± 1.0 all day
    rows += [("608", "air_cooler_608", "temp_set", 16.6, f"{DAYS[0]} 00:00"),
             ("608", "air_cooler_608", "temp_diffset", 1.0, f"{DAYS[0]} 00:00")]
    return rows


def reading_rows() -> list[tuple]:
    rng = np.random.default_rng(607)
    times = pd.date_range(at(DAYS[0]), at(DAYS[-1]) + pd.Timedelta(hours=23, minutes=50),
                          freq="10min")
    rows = []
    for t in times:
        # the room follows its target (16.6 … 17.0 … 16.0 … 16.5) with a lag, and noise
        target = (16.6 if t < at(f"{DAYS[0]} 12:20") else 17.0 if t < at(f"{DAYS[0]} 23:59")
                  else 16.0 if t < at(f"{DAYS[2]} 00:40") else 16.5)
        rows.append(("607", "temperature", round(target + rng.uniform(-1.6, 1.6), 1),
                     t.isoformat()))
        rows.append(("607", "co2_ppm", round(float(rng.uniform(650, 1350))), t.isoformat()))
        rows.append(("607", "humidity", round(float(rng.uniform(85, 97)), 1), t.isoformat()))
    # one reading twice: one reading, their mean
    rows.append(("607", "temperature", 15.0, f"{DAYS[0]} 08:00"))
    # exactly on the edge of 16.6 ± 1.0 (17.6 − 16.6 = 1.0000000000000036 in binary floats)
    rows += [("608", "temperature_c", 17.6, f"{DAYS[0]} 10:00"),
             ("608", "temperature_c", 15.6, f"{DAYS[0]} 11:00"),
             ("608", "temperature_c", 16.6, f"{DAYS[0]} 12:00")]
    return rows


# ---------------------------------------------------------------------------------------------
# Independent implementations, from the contract's text


def reference_readings(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["room", "metric", "value", "measured_at"])
    frame["metric"] = frame["metric"].map(lambda m: ALIASES.get(m, m))
    frame["measured_at"] = pd.to_datetime(frame["measured_at"], utc=True, format="ISO8601")
    return frame.groupby(["room", "metric", "measured_at"], as_index=False)["value"].mean()


def reference_snapshots(rows) -> pd.DataFrame:
    """Valid snapshots: a time at which a point reports two values is none."""
    frame = pd.DataFrame(rows, columns=["room", "device", "point", "value", "recorded_at"])
    frame["recorded_at"] = pd.to_datetime(frame["recorded_at"], utc=True)
    folded = frame.groupby(["room", "device", "point", "recorded_at"])["value"].agg(["min", "max"])
    folded = folded[folded["min"] == folded["max"]].reset_index()
    return folded.rename(columns={"min": "value"}).drop(columns="max")


def in_force(snapshots: pd.DataFrame, room, device, point, t) -> float | None:
    """The point's last snapshot with recorded_at <= t, from any earlier day too."""
    s = snapshots[(snapshots["room"] == room) & (snapshots["device"] == device)
                  & (snapshots["point"] == point) & (snapshots["recorded_at"] <= t)]
    return None if s.empty else float(s.sort_values("recorded_at")["value"].iloc[-1])


def first_snapshot(snapshots, room, device, points) -> pd.Timestamp | None:
    """When every one of `points` has reported (a row needs its points known)."""
    firsts = []
    for point in points:
        s = snapshots[(snapshots["room"] == room) & (snapshots["device"] == device)
                      & (snapshots["point"] == point)]
        if s.empty:
            return None
        firsts.append(s["recorded_at"].min())
    return max(firsts)


def judge_target(value, target, tolerance):
    error = value - target
    return error, abs(error) <= tolerance + EDGE, error > tolerance + EDGE, error < -tolerance - EDGE


def judge_band(value, low, high):
    error = value - high if value > high else value - low if value < low else 0.0
    return error, low <= value <= high, value > high, value < low


def reference_compliance(readings, snapshots, days) -> pd.DataFrame:
    rows = []
    devices = snapshots[["room", "device"]].drop_duplicates().itertuples(index=False)
    mapped = []
    for room, device in devices:
        for metric, prefix, point, tolerance, tolerance_point in TARGET_RULES:
            if device.startswith(prefix):
                mapped.append((room, device, metric, point, "target", point, tolerance,
                               tolerance_point, None, None))
        for metric, prefix, low, high in BAND_RULES:
            if device.startswith(prefix):
                mapped.append((room, device, metric, f"{low}..{high}", "band", None, None, None,
                               low, high))
    for day in days:
        start, end = at(day), at(day) + pd.Timedelta(days=1)
        for room, device, metric, label, kind, point, tolerance, tolerance_point, low, high in mapped:
            first = first_snapshot(snapshots, room, device, [p for p in (point, low, high) if p])
            if first is None or first >= end:
                continue  # the device had not reported yet
            today = readings[(readings["room"] == room) & (readings["metric"] == metric)
                             & (readings["measured_at"] >= start) & (readings["measured_at"] < end)]
            judged, without, last_tolerance = [], 0, None
            for value, t in zip(today["value"], today["measured_at"]):
                if kind == "target":
                    target = in_force(snapshots, room, device, point, t)
                    tol = tolerance if tolerance is not None else in_force(
                        snapshots, room, device, tolerance_point, t)
                    if target is None or tol is None:
                        without += 1
                        continue
                    judged.append(judge_target(value, target, tol))
                    last_tolerance = tol
                else:
                    lo, hi = (in_force(snapshots, room, device, p, t) for p in (low, high))
                    if lo is None or hi is None:
                        without += 1
                        continue
                    judged.append(judge_band(value, lo, hi))
            n = len(judged)
            errors = np.array([j[0] for j in judged])
            rows.append({
                "day": dt.date.fromisoformat(day), "room": room, "metric": metric,
                "device": device, "point": label,
                "tolerance": None if kind == "band" else (
                    tolerance if tolerance is not None else last_tolerance),
                "n": n, "in_band": sum(j[1] for j in judged),
                "share_in_band": sum(j[1] for j in judged) / n if n else None,
                "mean_error": errors.mean() if n else None,
                "mean_abs_error": np.abs(errors).mean() if n else None,
                "max_abs_error": np.abs(errors).max() if n else None,
                "readings_above": sum(j[2] for j in judged),
                "readings_below": sum(j[3] for j in judged),
                "readings_without_setpoint": without,
            })
    return sorted_frame(pd.DataFrame(rows), ["day", "room", "metric", "device", "point"])


def reference_responses(events: pd.DataFrame, readings, snapshots) -> pd.DataFrame:
    rows = []
    mapped = {}
    for metric, prefix, point, tolerance, tolerance_point in TARGET_RULES:
        mapped[(prefix, point)] = (metric, "target", tolerance, tolerance_point)
    for metric, prefix, low, high in BAND_RULES:
        mapped[(prefix, low)] = (metric, "low", None, high)
        mapped[(prefix, high)] = (metric, "high", None, low)
    for event in events.itertuples(index=False):
        rule = next((rule for (prefix, point), rule in mapped.items()
                     if event.device.startswith(prefix) and event.point == point), None)
        if rule is None:
            continue
        metric, role, tolerance, other = rule
        c = event.changed_at
        r = readings[(readings["room"] == event.room) & (readings["metric"] == metric)]

        def mean(mask):
            return r.loc[mask, "value"].mean() if mask.any() else None

        half = pd.Timedelta(minutes=30)
        before = mean((r["measured_at"] >= c - half) & (r["measured_at"] < c))
        after_30 = mean((r["measured_at"] > c) & (r["measured_at"] <= c + half))
        after_60 = mean((r["measured_at"] > c + half) & (r["measured_at"] <= c + 2 * half))
        later = r[(r["measured_at"] >= c) & (r["measured_at"] <= c + pd.Timedelta(hours=12))]
        other_value = in_force(snapshots, event.room, event.device, other, c)
        reached = None
        for value, t in zip(later.sort_values("measured_at")["value"],
                            later.sort_values("measured_at")["measured_at"]):
            if role == "target":
                tol = tolerance if tolerance is not None else other_value
                inside = tol is not None and abs(value - event.new_value) <= tol + EDGE
            elif other_value is None:
                inside = False
            elif role == "low":
                inside = event.new_value <= value <= other_value
            else:
                inside = other_value <= value <= event.new_value
            if inside:
                reached = t
                break
        rows.append({
            "day": event.day, "room": event.room, "device": event.device, "point": event.point,
            "changed_at": c, "metric": metric, "old_value": event.old_value,
            "new_value": event.new_value, "before_mean": before, "after_30m_mean": after_30,
            "after_60m_mean": after_60, "reached_at": reached,
            "minutes_to_reach": None if reached is None else (reached - c).total_seconds() / 60,
        })
    return sorted_frame(pd.DataFrame(rows), ["changed_at", "room", "device", "point", "metric"])


# ---------------------------------------------------------------------------------------------


COMPLIANCE_COLUMNS = ["day", "room", "metric", "device", "point", "tolerance", "n", "in_band",
                      "share_in_band", "mean_error", "mean_abs_error", "max_abs_error",
                      "readings_above", "readings_below", "readings_without_setpoint"]
RESPONSE_COLUMNS = ["day", "room", "device", "point", "changed_at", "metric", "old_value",
                    "new_value", "before_mean", "after_30m_mean", "after_60m_mean", "reached_at",
                    "minutes_to_reach"]


KEY_COLUMNS = ("day", "room", "metric", "device", "point")


def sorted_frame(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    frame = frame.sort_values(key, ignore_index=True)
    for column in frame.columns:
        if column.endswith("_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        elif frame[column].dtype == object and column not in KEY_COLUMNS:
            frame[column] = frame[column].astype("float64")
    return frame


def stored_compliance(warehouse) -> pd.DataFrame:
    frame = query(warehouse,
                  f"SELECT {', '.join(COMPLIANCE_COLUMNS)} FROM mushroom.setpoint_compliance")
    return sorted_frame(frame, ["day", "room", "metric", "device", "point"])


def stored_responses(warehouse) -> pd.DataFrame:
    frame = query(warehouse, "SELECT * FROM mushroom.change_responses")
    return sorted_frame(frame, ["changed_at", "room", "device", "point", "metric"])


def stored_events(warehouse) -> pd.DataFrame:
    frame = query(warehouse, "SELECT * FROM mushroom.setpoint_change_events ORDER BY changed_at")
    frame["changed_at"] = pd.to_datetime(frame["changed_at"], utc=True)
    return frame


def assert_same(actual: pd.DataFrame, expected: pd.DataFrame, columns: list[str]) -> None:
    pd.testing.assert_frame_equal(
        actual[columns].reset_index(drop=True), expected[columns].reset_index(drop=True),
        check_dtype=False, rtol=1e-9, atol=1e-9,
    )


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def materialization(result, asset: str) -> dict:
    events = result.asset_materializations_for_node(asset)
    return {name: value.value for name, value in events[0].metadata.items()}


@pytest.fixture
def farm(warehouse):
    insert_setpoints(warehouse, setpoint_rows())
    insert_readings(warehouse, reading_rows())
    return warehouse


def test_compliance_and_responses_match_pandas_day_by_day(farm):
    readings = reference_readings(reading_rows())
    snapshots = reference_snapshots(setpoint_rows())

    # the 12th alone: its 23:50 change cannot see the 13th's readings yet
    first = run(DAYS[0])
    early = stored_responses(farm)
    late = early[early["changed_at"] == at(f"{DAYS[0]} 23:50")]
    assert len(late) == 1 and not late["window_complete"].iloc[0]
    assert late["after_30m_mean"].isna().all() and late["after_60m_mean"].isna().all()
    assert late["before_mean"].notna().all()

    run(DAYS[1], selection=SILENT_DAY)  # no snapshot: every value in force is the 12th's
    run(DAYS[0])  # the automation re-runs a day once the next day's readings are in
    run(DAYS[2])

    compliance = stored_compliance(farm)
    assert_same(compliance, reference_compliance(readings, snapshots, DAYS), COMPLIANCE_COLUMNS)
    responses = stored_responses(farm)
    assert_same(responses, reference_responses(stored_events(farm), readings, snapshots),
                RESPONSE_COLUMNS)

    by_key = compliance.set_index(["day", "room", "metric"])
    day1, day2 = dt.date(2026, 1, 12), dt.date(2026, 1, 13)
    # readings before the first snapshot ever (00:00 … 05:50): without a setpoint
    assert by_key.loc[(day1, "607", "temperature_c"), "readings_without_setpoint"] == 36
    # a band needs both points in force: co2_on reports from 07:00
    assert by_key.loc[(day1, "607", "co2_ppm"), "readings_without_setpoint"] == 42
    # the 13th: no snapshot, yet every reading has its setpoint (16.0 ± 1.0 from the 12th)
    assert by_key.loc[(day2, "607", "temperature_c"), "readings_without_setpoint"] == 0
    assert by_key.loc[(day2, "607", "temperature_c"), "n"] == 144
    assert by_key.loc[(day2, "607", "temperature_c"), "tolerance"] == 1.0
    assert by_key.loc[(dt.date(2026, 1, 14), "607", "temperature_c"), "tolerance"] == 0.5
    assert by_key.loc[(day2, "607", "co2_ppm"), "point"] == "co2_off..co2_on"
    assert np.isnan(by_key.loc[(day2, "607", "co2_ppm"), "tolerance"])
    # on the edge of the tolerance, in band
    assert by_key.loc[(day1, "608", "temperature_c"), "share_in_band"] == 1.0
    assert by_key.loc[(day1, "608", "temperature_c"), "in_band"] == 3
    # one row per change of a mapped point: temp_set ×3 (12:00, 23:50, 00:10), co2_on and the
    # humidifier's "off"; the differential's change is none
    assert responses[["point", "changed_at"]].values.tolist() == [
        ["temp_set", at(f"{DAYS[0]} 12:00")], ["co2_on", at(f"{DAYS[0]} 14:00")],
        ["off", at(f"{DAYS[0]} 18:00")], ["temp_set", at(f"{DAYS[0]} 23:50")],
        ["temp_set", at(f"{DAYS[2]} 00:10")],
    ]
    assert "temp_diffset" in set(stored_events(farm)["point"])
    assert responses["window_complete"].all()
    late = responses[responses["changed_at"] == at(f"{DAYS[0]} 23:50")].iloc[0]
    assert late["day"] == day1 and late["after_60m_mean"] == pytest.approx(
        readings[(readings["room"] == "607") & (readings["metric"] == "temperature_c")
                 & (readings["measured_at"] > at(f"{DAYS[1]} 00:20"))
                 & (readings["measured_at"] <= at(f"{DAYS[1]} 00:50"))]["value"].mean())
    early = responses[responses["changed_at"] == at(f"{DAYS[2]} 00:10")].iloc[0]
    assert early["before_mean"] == pytest.approx(  # 23:40, 23:50 of the 13th and 00:00
        readings[(readings["room"] == "607") & (readings["metric"] == "temperature_c")
                 & (readings["measured_at"] >= at(f"{DAYS[1]} 23:40"))
                 & (readings["measured_at"] < at(f"{DAYS[2]} 00:10"))]["value"].mean())
    assert by_key.loc[(day2, "607", "humidity_pct"), "point"] == "on..off"
    assert by_key.loc[(day2, "607", "humidity_pct"), "n"] == 144
    band = responses[responses["point"] == "co2_on"].iloc[0]
    assert (band["new_low"], band["new_high"]) == (800.0, 1000.0)
    # the WARN check names the room whose temperature left its band
    evaluation = checks(first)["share_in_band_above_threshold"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["rooms_below"].value == ["607"]
    assert checks(first)["compliance_counts_add_up"].passed
    metadata = materialization(first, "setpoint_compliance")
    assert 0 < metadata["share_in_band_temperature_c"] < 0.8
    assert "| 607  " in metadata["per_room"]
    summary = materialization(first, "change_responses")["per_point"]
    assert "temp_set" in summary and "toward the new setpoint" in summary and "co2_on" in summary


def test_a_range_run_writes_the_same_rows(farm):
    for day in DAYS:
        run(day, selection=SILENT_DAY if day == DAYS[1] else None)
    run(DAYS[0])
    by_day = stored_compliance(farm), stored_responses(farm)
    run(start=DAYS[0], end=DAYS[-1])  # one run over the three days (a backfill)
    pd.testing.assert_frame_equal(stored_compliance(farm), by_day[0])
    pd.testing.assert_frame_equal(stored_responses(farm), by_day[1])


def test_a_day_before_any_snapshot_has_no_rows(warehouse):
    insert_readings(warehouse, [("607", "temperature", 16.0, "2026-01-11 10:00")])
    insert_setpoints(warehouse, [("607", "air_cooler_607", "temp_set", 16.5, "2026-01-12 10:00"),
                                 ("607", "air_cooler_607", "temp_diffset", 1.0, "2026-01-12 10:00")])
    run("2026-01-11", selection=SILENT_DAY)
    run("2026-01-12")
    assert query(warehouse, "SELECT count(*) AS n FROM mushroom.setpoint_compliance "
                            "WHERE day = '2026-01-11'")["n"][0] == 0
    row = query(warehouse, "SELECT * FROM mushroom.setpoint_compliance").iloc[0]
    assert (row["n"], row["readings_without_setpoint"]) == (0, 0)
    assert row["share_in_band"] is None or np.isnan(row["share_in_band"])


def test_the_threshold_comes_from_the_variable_or_the_run_config(farm, monkeypatch):
    run(DAYS[0])
    monkeypatch.setenv("MUSHROOM_COMPLIANCE_THRESHOLD", "0.2")
    result = run(DAYS[0], selection=[setpoint_compliance])
    assert checks(result)["share_in_band_above_threshold"].passed
    config = {"ops": {"setpoint_compliance": {"config": {"share_threshold": 0.99}}}}
    result = run(DAYS[0], selection=[setpoint_compliance], run_config=config)
    evaluation = checks(result)["share_in_band_above_threshold"]
    assert not evaluation.passed and evaluation.metadata["threshold"].value == 0.99
    monkeypatch.setenv("MUSHROOM_COMPLIANCE_THRESHOLD", "80%")
    failed = run(DAYS[0], selection=[setpoint_compliance], success=False)
    assert "MUSHROOM_COMPLIANCE_THRESHOLD" in failure_text(failed)


def test_a_fixed_tolerance_rule_and_excluded_points(warehouse, monkeypatch, tmp_path):
    """A catalog of its own: temp_set ± 0.5 (fixed), and a band whose high point is excluded
    (not tracked: no row)."""
    document = yaml.safe_load(DEFAULT_POINTS.read_text())
    document["rules"].insert(0, {"device": "fresh_air_fan_*", "point": "co2_on", "exclude": True})
    document["compliance"] = [
        {"metric": "temperature_c", "device": "air_cooler_*", "point": "temp_set", "tolerance": 0.5},
        {"metric": "co2_ppm", "device": "fresh_air_fan_*", "low_point": "co2_off",
         "high_point": "co2_on"},
    ]
    config = tmp_path / "points.yaml"
    config.write_text(yaml.safe_dump(document))
    monkeypatch.setenv("MUSHROOM_SETPOINT_CONFIG", str(config))
    insert_setpoints(warehouse, [
        ("607", "air_cooler_607", "temp_set", 16.0, "2026-01-12 00:00"),
        ("607", "air_cooler_607", "temp_set", 18.0, "2026-01-12 12:00"),
        ("607", "fresh_air_fan_607", "co2_on", 1000.0, "2026-01-12 00:00"),
        ("607", "fresh_air_fan_607", "co2_off", 800.0, "2026-01-12 00:00"),
    ])
    insert_readings(warehouse, [
        ("607", "temperature", 16.4, "2026-01-12 06:00"),   # in band (+0.4)
        ("607", "temperature", 15.0, "2026-01-12 07:00"),   # below (−1.0)
        ("607", "temperature", 17.0, "2026-01-12 12:00"),   # the new target at 12:00: below
        ("607", "temperature", 17.6, "2026-01-12 12:40"),   # in band (−0.4): reached
        ("607", "temperature", 19.0, "2026-01-12 13:00"),   # above (+1.0)
        ("607", "co2", 900.0, "2026-01-12 06:00"),
    ])
    run("2026-01-12")
    rows = query(warehouse, "SELECT * FROM mushroom.setpoint_compliance")
    assert rows[["metric", "point", "tolerance", "n", "in_band", "readings_above",
                 "readings_below"]].values.tolist() == [
        ["temperature_c", "temp_set", 0.5, 5, 2, 1, 2]]
    assert rows["mean_error"][0] == pytest.approx((0.4 - 1.0 - 1.0 - 0.4 + 1.0) / 5)
    assert rows["max_abs_error"][0] == pytest.approx(1.0)
    (response,) = query(warehouse, "SELECT * FROM mushroom.change_responses").itertuples()
    assert response.point == "temp_set" and response.minutes_to_reach == pytest.approx(40.0)
    assert (response.new_low, response.new_high) == (17.5, 18.5)
    assert response.before_mean is None or np.isnan(response.before_mean)
    # (12:00, 12:30]: no reading; (12:30, 13:00]: 17.6 and 19.0
    assert response.after_30m_mean is None or np.isnan(response.after_30m_mean)
    assert response.after_60m_mean == pytest.approx(18.3)
    assert response.window_complete  # reached, and the readings reach 13:00


def test_today_runs_though_tomorrow_is_no_partition_yet(warehouse):
    """The hourly runs fill today; change_responses maps env_readings to D−1..D+1, and D+1 does
    not exist yet: the mapping allows it (the rows stay incomplete until tomorrow's run)."""
    today = dt.datetime.now(dt.UTC).date()
    start = pd.Timestamp(today, tz="UTC")
    insert_setpoints(warehouse, [
        ("607", "air_cooler_607", "temp_set", 16.0, start.isoformat()),
        ("607", "air_cooler_607", "temp_diffset", 1.0, start.isoformat()),
        ("607", "air_cooler_607", "temp_set", 17.0, (start + pd.Timedelta(minutes=5)).isoformat()),
    ])
    insert_readings(warehouse, [
        ("607", "temperature", 16.2, (start + pd.Timedelta(minutes=m)).isoformat())
        for m in range(0, 60, 10)
    ])
    run(today.isoformat())
    (response,) = query(warehouse, "SELECT * FROM mushroom.change_responses").itertuples()
    assert response.before_mean == pytest.approx(16.2)  # the 00:00 reading
    assert response.reached_at is not None and response.minutes_to_reach == pytest.approx(5.0)
    assert not response.window_complete
    row = query(warehouse, "SELECT * FROM mushroom.setpoint_compliance").iloc[0]
    assert (row["n"], row["in_band"], row["readings_without_setpoint"]) == (6, 6, 0)
