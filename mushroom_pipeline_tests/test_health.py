"""sensor_health and camera_health through Dagster on the real Postgres, against independent
pandas/NumPy readings of their definitions on hand-built data: a 3-hour gap, a 7-hour flat line,
a day with a single reading, a day boundary, today's open day; a frozen camera (the same bytes
under several keys), a varied one, and a camera whose second day looks different."""

import datetime as dt
import io
import itertools

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mushroom_pipeline.definitions import database_resources
from mushroom_pipeline.defs.environment.assets import env_readings
from mushroom_pipeline.defs.environment.health import (
    SILENT_AFTER_MIN,
    STUCK_AFTER_MIN,
    sensor_health,
)
from mushroom_pipeline.defs.vision import health as vision_health
from mushroom_pipeline.defs.vision.embeddings import image_embeddings
from mushroom_pipeline.defs.vision.health import camera_health
from mushroom_pipeline.defs.vision.manifest import image_manifest

from . import test_vision
from .helpers import insert_readings, query, range_tags
from .test_vision import direct_forward, photo, resources

tiny_clip = test_vision.tiny_clip  # the tiny CLIP fixture (module scope): configs and checkpoints

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
        gaps = [b - a for a, b in itertools.pairwise(edges)]
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


# --- camera_health -------------------------------------------------------------------------------

CAMERA_DAYS = ("2025-12-24", "2025-12-25")
HOURS = (8, 10, 12, 14, 16)
# Key names sort in another order than capture times: frames are taken in capture order.
PREFIXES = "acebd"


def tinted(seed: int, top=(255, 255, 60), size=(48, 40)) -> bytes:
    """Noise in a yellow cast: another scene, for the tiny model."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * np.array(top)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def camera_key(room: str, day: str, index: int) -> str:
    stamp = f"{day.replace('-', '')}{HOURS[index]:02d}0000"
    return f"{room}/{day.replace('-', '')}/{PREFIXES[index]}_{room}_{stamp}.jpg"


def camera_images() -> dict[tuple[str, str], list[bytes]]:
    """{(day, room): frames in capture order}."""
    first, second = CAMERA_DAYS
    frozen = photo(50)
    return {
        (first, "601"): [photo(s) for s in range(1, 5)],
        (second, "601"): [photo(s) for s in range(11, 16)],  # the same scene, other shots
        (first, "602"): [photo(s) for s in range(21, 25)],
        # one frame sent three times in a row: 2 of 4 pairs near duplicates (in key order: none)
        (second, "602"): [frozen, frozen, frozen, photo(51), photo(52)],
        (first, "603"): [photo(s) for s in range(31, 35)],
        (second, "603"): [tinted(s) for s in range(200, 205)],  # another scene: moved
    }


def independent_camera_health(images: dict, checkpoint) -> pd.DataFrame:
    """The definitions with NumPy on open_clip's own forward pass and PIL's pixels."""
    vectors = {group: direct_forward(checkpoint, [Image.open(io.BytesIO(b)).convert("RGB")
                                                  for b in frames]).astype(np.float64)
               for group, frames in images.items()}
    rows = []
    for (day, room), frames in images.items():
        v = vectors[(day, room)]
        cos = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in itertools.pairwise(v)]
        previous = vectors.get((str(dt.date.fromisoformat(day) - dt.timedelta(days=1)), room))
        shift = (np.nan if previous is None else 1 - (v.mean(0) @ previous.mean(0)) / np.linalg.norm(
            v.mean(0)) / np.linalg.norm(previous.mean(0)))
        luma = [(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float64)
                 * [0.299, 0.587, 0.114]).sum(axis=2).mean() for b in frames]
        rows.append({"day": dt.date.fromisoformat(day), "room": room, "images": len(frames),
                     "mean_luminance": np.mean(luma),
                     # the same bytes sent again: identical pictures
                     "identical_frame_pairs": sum(a == b for a, b in itertools.pairwise(frames)),
                     "near_duplicate_pairs": int(sum(c >= 0.995 for c in cos)),
                     "near_duplicate_share": np.mean([c >= 0.995 for c in cos]),
                     "mean_shift_from_previous_day": shift})
    return pd.DataFrame(rows).sort_values(["day", "room"]).reset_index(drop=True)


def stored_camera_health(warehouse) -> pd.DataFrame:
    return query(warehouse, "SELECT * FROM mushroom.camera_health ORDER BY day, room")


def camera_check(result) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations()
                     if e.check_name == "no_frozen_or_moved_cameras"]
    return evaluation


VISION = [image_manifest, image_embeddings, camera_health]


def test_camera_health_matches_numpy_and_its_check_names_frozen_and_moved_cameras(
        warehouse, tmp_path, tiny_clip, monkeypatch):
    # The tiny random model compresses distances: the same scene shifts ~0.007, another ~0.04
    # (a pretrained CLIP: hundredths against tenths, hence 0.15 in production).
    monkeypatch.setattr(vision_health, "MOVED_AFTER_DISTANCE", 0.02)
    config, (checkpoint, _) = tiny_clip
    res = resources(tmp_path, config, checkpoint)
    store = res["object_store"]
    images = camera_images()
    for (day, room), frames in images.items():
        for index, data in enumerate(frames):
            store.put(camera_key(room, day, index), data)

    first = dg.materialize(VISION, partition_key=CAMERA_DAYS[0], resources=res)
    assert camera_check(first).passed  # no previous day: no shift; no frozen camera
    second = dg.materialize(VISION, partition_key=CAMERA_DAYS[1], resources=res)
    actual = stored_camera_health(warehouse)
    expected = independent_camera_health(images, checkpoint)

    counts = ["day", "room", "images", "identical_frame_pairs", "near_duplicate_pairs"]
    assert actual[counts].values.tolist() == expected[counts].values.tolist()
    np.testing.assert_allclose(actual["near_duplicate_share"], expected["near_duplicate_share"])
    np.testing.assert_allclose(actual["mean_shift_from_previous_day"],
                               expected["mean_shift_from_previous_day"], atol=1e-5)
    np.testing.assert_allclose(actual["mean_luminance"], expected["mean_luminance"], atol=1e-9)
    assert (actual["luminance_images"] == actual["images"]).all()
    assert (actual["luminance_skipped"] == 0).all()
    assert actual["model"].str.match(r"^mushroom-tiny/file:tiny-1\.pt@").all()
    row = actual.set_index(["day", "room"])
    day2 = dt.date.fromisoformat(CAMERA_DAYS[1])
    assert row.loc[(day2, "602"), "near_duplicate_share"] == 0.5  # capture order, not key order
    assert row.loc[(day2, "602"), "identical_frame_share"] == 0.5
    assert row.loc[(day2, "601"), "identical_frame_share"] == 0.0
    assert row.loc[(day2, "601"), "mean_shift_from_previous_day"] < 0.02
    assert row.loc[(day2, "603"), "mean_shift_from_previous_day"] > 0.02
    assert row.loc[(day2, "601"), "first_captured_at"] == pd.Timestamp(f"{CAMERA_DAYS[1]} 08:00", tz="UTC")
    assert row.loc[(day2, "601"), "last_captured_at"] == pd.Timestamp(f"{CAMERA_DAYS[1]} 16:00", tz="UTC")

    evaluation = camera_check(second)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.description == "frozen: 602; moved or blocked: 603"
    assert [(f["day"], f["room"]) for f in evaluation.metadata["frozen"].value] == [
        (CAMERA_DAYS[1], "602")]
    assert [(m["day"], m["room"]) for m in evaluation.metadata["moved"].value] == [
        (CAMERA_DAYS[1], "603")]

    # Both days as one range run (the previous day's means from the run itself): the same rows.
    dg.materialize([camera_health], resources=res, tags=range_tags(*CAMERA_DAYS))
    pd.testing.assert_frame_equal(stored_camera_health(warehouse), actual)

    # An image overwritten with bytes that are no image: skipped and counted, its vector kept.
    store.put(camera_key("601", CAMERA_DAYS[1], 0), b"not an image any more")
    dg.materialize([camera_health], partition_key=CAMERA_DAYS[1], resources=res)
    again = stored_camera_health(warehouse).set_index(["day", "room"]).loc[(day2, "601")]
    assert (again["images"], again["luminance_images"], again["luminance_skipped"]) == (5, 4, 1)
    by_group = expected.set_index(["day", "room"])
    frames = images[(CAMERA_DAYS[1], "601")][1:]
    np.testing.assert_allclose(again["mean_luminance"], np.mean([
        (np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float64)
         * [0.299, 0.587, 0.114]).sum(axis=2).mean() for b in frames]), atol=1e-9)
    assert again["mean_shift_from_previous_day"] == pytest.approx(
        by_group.loc[(day2, "601"), "mean_shift_from_previous_day"], abs=1e-5)


def test_the_camera_check_thresholds_for_a_pretrained_clip():
    day = dt.date(2025, 12, 25)
    health = pd.DataFrame({
        "day": [day] * 5, "room": ["a", "b", "c", "d", "e"], "images": [3, 3, 1, 3, 3],
        "identical_frame_share": [0.0, 0.0, np.nan, 0.0, 0.0],
        "near_duplicate_share": [0.5, 0.49, np.nan, 0.0, 0.0],
        "mean_shift_from_previous_day": [0.0, 0.0, np.nan, 0.15, 0.149],
    })
    evaluation = vision_health.check_cameras(health)
    assert evaluation.description == "frozen: a; moved or blocked: d"
    assert evaluation.metadata["moved_after_distance"].value == 0.15
    assert vision_health.check_cameras(health.iloc[[1, 2, 4]]).passed
    # untrained (random) weights: every vector alike, so neither vector rule judges; the same
    # picture sent again still does
    untrained = health.assign(identical_frame_share=[0.0, 0.0, np.nan, 0.0, 0.5])
    evaluation = vision_health.check_cameras(untrained, vectors_meaningful=False)
    assert evaluation.description == "frozen: e" and evaluation.metadata["vectors_judged"].value is False


def test_days_without_readings_or_images_materialize_empty_and_pass(warehouse, tmp_path, tiny_clip):
    config, (checkpoint, _) = tiny_clip
    sensors = dg.materialize([env_readings, sensor_health], partition_key=DAY1,
                             resources=database_resources())
    # no image ever: not even mushroom.image_embeddings exists
    cameras = dg.materialize([camera_health], partition_key=CAMERA_DAYS[0],
                             resources=resources(tmp_path, config, checkpoint))
    assert health_check(sensors).passed and camera_check(cameras).passed
    assert query(warehouse, "SELECT count(*) AS n FROM mushroom.sensor_health")["n"][0] == 0
    assert query(warehouse, "SELECT count(*) AS n FROM mushroom.camera_health")["n"][0] == 0
