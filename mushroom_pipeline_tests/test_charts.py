"""room_daily_charts through Dagster on the real Postgres and a local object store: the PNG of
each (day, room) against the data it was drawn from.

A hand-built farm day (2026-03-10, farm time UTC): room 607 with a temp_set change at 12:00 and
one at 23:50, its differential narrowed at 18:00 (a tolerance_point), a CO2 band change at
14:00, an air cooler switched on and off (no compliance rule: the strip of other changes); its
temp_set reports nothing before 02:00 (the band then comes from the day before's snapshot); ten
camera images, one corrupt. Room 608: readings, a steady setpoint, two images, one deleted after
the manifest listed it. Every expected number below is written from this data, not from the
code. And the demo farm's story day, rendered for its four rooms."""

import base64
import datetime as dt
import io
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.definitions import database_resources, defs
from mushroom_pipeline.defs.environment.assets import env_readings
from mushroom_pipeline.defs.insights.charts import (
    MAX_THUMBNAILS,
    PREVIEW_MAX_BYTES,
    band_segments,
    chart_path,
    charts_job,
    daily_room_charts,
    load_chart_data,
    pick_evenly,
    png_bytes,
    render_chart,
    room_daily_charts,
)
from mushroom_pipeline.defs.insights.compliance import known_points, map_points
from mushroom_pipeline.defs.setpoints.assets import (
    setpoint_change_events,
    setpoint_snapshots,
)
from mushroom_pipeline.defs.vision.manifest import image_manifest
from mushroom_pipeline.demo.farm import (
    IMAGE_HOURS,
    ROOMS,
    days_ending,
    seed_env_readings,
    seed_images,
    seed_setpoints,
)
from mushroom_pipeline.objectstore import LocalObjectStore
from mushroom_pipeline.partitions import FARM_TIMEZONE, FARM_TZ, daily_partitions

from .helpers import insert_readings, insert_setpoints, query, range_tags

UPSTREAM = [env_readings, setpoint_snapshots, setpoint_change_events, image_manifest]
BEFORE, DAY = "2026-03-09", "2026-03-10"
LABELS = ["temperature (°C)", "humidity (% RH)", "CO2 (ppm)"]  # the shipped metric catalog
UTC = dt.UTC
ONE_DAY = pd.Timedelta(days=1)


def at(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")  # the tests' farm runs in UTC


# ---------------------------------------------------------------------------------------------
# The farm


def setpoint_rows() -> list[tuple]:
    rows = []

    def hourly(room, device, point, values: dict[int, float], hours):
        for hour in hours:
            value = [v for h, v in sorted(values.items()) if h <= hour][-1]
            rows.append((room, device, point, value, f"{DAY} {hour:02d}:00"))

    # the day before: one snapshot of each point at 20:00, the values in force at midnight
    for device, point, value in [("air_cooler_607", "temp_set", 16.6),
                                 ("air_cooler_607", "temp_diffset", 1.0),
                                 ("air_cooler_607", "on_off", 0.0),
                                 ("fresh_air_fan_607", "co2_on", 1200.0),
                                 ("fresh_air_fan_607", "co2_off", 800.0),
                                 ("left_humidifier_607", "on", 88.0),
                                 ("left_humidifier_607", "off", 94.0)]:
        rows.append(("607", device, point, value, f"{BEFORE} 20:00"))
    # the day: temp_set silent until 02:00, 16.6 → 17.0 at 12:00, → 16.0 at 23:50
    hourly("607", "air_cooler_607", "temp_set", {2: 16.6, 12: 17.0}, range(2, 24))
    rows.append(("607", "air_cooler_607", "temp_set", 16.0, f"{DAY} 23:50"))
    hourly("607", "air_cooler_607", "temp_diffset", {0: 1.0, 18: 0.5}, range(24))
    hourly("607", "air_cooler_607", "on_off", {0: 0.0, 8: 1.0, 9: 0.0}, range(24))
    hourly("607", "fresh_air_fan_607", "co2_on", {0: 1200.0, 14: 1000.0}, range(24))
    hourly("607", "fresh_air_fan_607", "co2_off", {0: 800.0}, range(24))
    hourly("607", "left_humidifier_607", "on", {0: 88.0}, range(24))
    hourly("607", "left_humidifier_607", "off", {0: 94.0}, range(24))
    rows += [("608", "air_cooler_608", "temp_set", 16.6, f"{DAY} 00:00"),
             ("608", "air_cooler_608", "temp_diffset", 1.0, f"{DAY} 00:00")]
    return rows


# room 607's change events of the day: (axis, marker kind, time, value drawn)
EXPECTED_607 = {
    "changes:temperature_c:level": [(at(f"{DAY} 12:00"), 17.0), (at(f"{DAY} 23:50"), 16.0)],
    "changes:temperature_c:tolerance": [(at(f"{DAY} 18:00"), 0.95)],  # top of the axis
    "changes:co2_ppm:level": [(at(f"{DAY} 14:00"), 1000.0)],
    "changes:other:switched_on": [(at(f"{DAY} 08:00"), 0)],  # the strip's row of air_cooler_607
    "changes:other:switched_off": [(at(f"{DAY} 09:00"), 0)],
}


def reading_rows() -> list[tuple]:
    rng = np.random.default_rng(610)
    rows = []
    for t in pd.date_range(at(BEFORE), at(DAY) + pd.Timedelta(hours=23, minutes=50), freq="10min"):
        for room in ("607", "608"):
            if room == "607" and at(f"{DAY} 03:00") <= t < at(f"{DAY} 04:00"):
                continue  # a silent sensor: the curves break
            rows += [(room, "temperature", round(16.8 + rng.uniform(-1, 1), 1), t.isoformat()),
                     (room, "humidity", round(91 + rng.uniform(-3, 3), 1), t.isoformat()),
                     (room, "co2", round(float(rng.uniform(700, 1300))), t.isoformat())]
    return rows


def readings_of(room: str, day: str) -> int:
    start = at(day)
    times = pd.date_range(start, start + pd.Timedelta(hours=23, minutes=50), freq="10min")
    silent = (room == "607") & (times >= at(f"{DAY} 03:00")) & (times < at(f"{DAY} 04:00"))
    return 3 * int((~silent).sum())


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def image_key(room: str, hour: int) -> str:
    return f"{room}/{DAY.replace('-', '')}/{room}_cam1_{DAY.replace('-', '')}{hour:02d}0000.jpg"


# 607: ten shots, 06:00 … 15:00; the 10:00 one is a half-written upload
HOURS_607 = list(range(6, 16))
CORRUPT_607 = 10


@pytest.fixture
def farm(warehouse, tmp_path):
    insert_setpoints(warehouse, setpoint_rows())
    insert_readings(warehouse, reading_rows())
    object_store = LocalObjectStore(home=str(tmp_path))
    store = object_store
    for hour in HOURS_607:
        data = jpeg((10 * hour, 120, 90))
        store.put(image_key("607", hour), data[:40] if hour == CORRUPT_607 else data)
    for hour in (8, 16):
        store.put(image_key("608", hour), jpeg((90, 90, 10 * hour)))
    resources = {**database_resources(), "object_store": object_store}
    upstream = dg.materialize(UPSTREAM, resources=resources, tags=range_tags(BEFORE, DAY),
                              raise_on_error=False)
    assert upstream.success
    # gone after the manifest listed it: skipped when the chart is drawn
    (tmp_path / "objects" / "mushroom-images" / image_key("608", 16)).unlink()
    return resources, tmp_path


def charts_run(resources, home, **kwargs) -> dg.ExecuteInProcessResult:
    """The charts of the run go under `home`/charts (run config), not the test server's home."""
    result = dg.materialize([room_daily_charts, *UPSTREAM], selection=[room_daily_charts],
                            resources=resources, raise_on_error=False,
                            run_config={"ops": {"room_daily_charts": {"config": {"home": str(home)}}}},
                            **kwargs)
    assert result.success
    return result


def chart_of(resources, room: str, key: str):
    """The data and Figure the asset draws for (room, day), drawn again by the same functions."""
    window = daily_partitions.time_window_for_partition_key(key)
    catalog: FarmCatalogResource = resources["farm_catalog"]
    metrics = catalog.metrics().metrics
    with resources["warehouse"].begin() as conn:
        pairs = map_points(catalog.points(), known_points(conn, window.end))
        data = load_chart_data(conn, resources["object_store"], pairs, metrics, room,
                               dt.date.fromisoformat(key), window.start, window.end, FARM_TZ)
    return data, render_chart(data, metrics, FARM_TZ)


def markers(figure) -> dict[str, list[tuple]]:
    """{gid: [(time, y)]} of every change-marker artist of the figure."""
    found = {}
    for ax in figure.axes:
        for line in ax.get_lines():
            gid = line.get_gid() or ""
            if gid.startswith("changes:"):
                found[gid] = [(pd.Timestamp(x).tz_convert("UTC"), float(y))
                              for x, y in zip(line.get_xdata(), line.get_ydata())]
    return found


def metric_axes(figure):
    return [ax for ax in figure.axes if (ax.get_gid() or "").startswith("metric:")]


def stored_charts(warehouse) -> pd.DataFrame:
    return query(warehouse, "SELECT day::text AS day, room, path, width_px, height_px, readings, "
                            "change_events, thumbnails, images FROM mushroom.room_daily_charts "
                            "ORDER BY day, room")


# ---------------------------------------------------------------------------------------------


def test_a_days_chart_per_room_matches_the_data(farm, warehouse):
    resources, home = farm
    result = charts_run(resources, home, partition_key=DAY)

    # the table lists one chart per room, with what each shows
    rows = stored_charts(warehouse)
    assert rows.drop(columns="path").values.tolist() == [
        [DAY, "607", 1600, 1100, readings_of("607", DAY), 6, 7, 10],
        [DAY, "608", 1600, 1100, readings_of("608", DAY), 0, 1, 2],
    ]
    events = query(warehouse, "SELECT room, count(*) AS n FROM mushroom.setpoint_change_events "
                              "WHERE day = %(day)s GROUP BY room", day=DAY)
    assert events.values.tolist() == [["607", 6]]  # what the table counts is what was detected

    for room in ("607", "608"):
        path = home / "charts" / room / "20260310.png"
        assert rows.loc[rows["room"] == room, "path"].item() == str(path)
        with Image.open(path) as png:
            assert (png.format, png.size) == ("PNG", (1600, 1100))
        # the Figure below is the one in the file: the same bytes
        data, figure = chart_of(resources, room, DAY)
        assert png_bytes(figure) == path.read_bytes()
        assert [ax.get_ylabel() for ax in metric_axes(figure)] == LABELS
        assert sum(len(points) for points in markers(figure).values()) == len(data.events)

    data, figure = chart_of(resources, "607", DAY)
    # one marker per change event, on the axis of the metric its point governs
    drawn = markers(figure)
    assert drawn == {gid: [(t, pytest.approx(y)) for t, y in points]
                     for gid, points in EXPECTED_607.items()}
    assert [t.get_text() for t in metric_axes(figure)[0].texts] == [
        "temp_set 16.6→17", "temp_set 17→16", "temp_diffset 1→0.5"]
    strip = next(ax for ax in figure.axes if ax.get_gid() == "other_changes")
    assert [t.get_text() for t in strip.get_yticklabels()] == ["air_cooler_607"]
    # x axis: the farm's day, 00:00 to 24:00
    low, high = strip.get_xlim()
    assert pd.Timestamp(dt.datetime.fromtimestamp(low * 86400, UTC)) == at(DAY)
    assert pd.Timestamp(dt.datetime.fromtimestamp(high * 86400, UTC)) == at(f"{DAY}") + ONE_DAY

    # the bands as in force over the day: 00:00-02:00 from the day before's snapshot
    bands = {key: group[["since", "until", "low", "high"]].values.tolist()
             for key, group in data.bands.groupby(["metric", "device"])}
    assert bands == {
        ("temperature_c", "air_cooler_607"): [
            [at(f"{DAY} 00:00"), at(f"{DAY} 12:00"), pytest.approx(15.6), pytest.approx(17.6)],
            [at(f"{DAY} 12:00"), at(f"{DAY} 18:00"), pytest.approx(16.0), pytest.approx(18.0)],
            [at(f"{DAY} 18:00"), at(f"{DAY} 23:50"), pytest.approx(16.5), pytest.approx(17.5)],
            [at(f"{DAY} 23:50"), at(f"{DAY} 00:00") + pd.Timedelta(days=1),
             pytest.approx(15.5), pytest.approx(16.5)]],
        ("humidity_pct", "left_humidifier_607"): [
            [at(f"{DAY} 00:00"), at(DAY) + pd.Timedelta(days=1), 88.0, 94.0]],
        ("co2_ppm", "fresh_air_fan_607"): [
            [at(f"{DAY} 00:00"), at(f"{DAY} 14:00"), 800.0, 1200.0],
            [at(f"{DAY} 14:00"), at(DAY) + pd.Timedelta(days=1), 800.0, 1000.0]],
    }
    shaded = {c.get_gid() for ax in metric_axes(figure) for c in ax.collections}
    assert shaded == {"band:air_cooler_607:temp_set", "band:left_humidifier_607:on..off",
                      "band:fresh_air_fan_607:co2_off..co2_on"}
    # the curve breaks where the sensor was silent (03:00-04:00): one NaN
    curve = next(line for line in metric_axes(figure)[0].get_lines()
                 if line.get_gid() == "readings:temperature_c")
    assert int(np.isnan(curve.get_ydata()).sum()) == 1

    # thumbnails: 8 of the 10 chosen evenly, the corrupt 10:00 one skipped
    thumbnails = [ax for ax in figure.axes if ax.get_gid() == "thumbnail"]
    chosen = [HOURS_607[i] for i in pick_evenly(len(HOURS_607), MAX_THUMBNAILS)]
    assert chosen == [6, 7, 9, 10, 11, 12, 14, 15]
    assert [ax.get_title() for ax in thumbnails] == [
        f"{h:02d}:00" for h in chosen if h != CORRUPT_607]
    assert data.skipped_images == [f"{image_key('607', CORRUPT_607)}: corrupt"]
    _, figure_608 = chart_of(resources, "608", DAY)
    assert len([ax for ax in figure_608.axes if ax.get_gid() == "thumbnail"]) == 1  # one gone

    # the UI shows each room's picture: a PNG in a data: URI, small enough for the event log
    metadata = result.asset_materializations_for_node("room_daily_charts")[0].metadata
    for room in ("607", "608"):
        text = metadata[f"chart_{room}"].value
        encoded = text.split("data:image/png;base64,")[1].split(")")[0]
        assert len(encoded) <= PREVIEW_MAX_BYTES
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as preview:
            assert preview.format == "PNG" and preview.width <= 960
        assert str(home / "charts" / room / "20260310.png") in text
    assert metadata["charts"].value == 2 and metadata["change_events"].value == 6


def test_a_range_run_writes_every_day_and_shows_no_picture(farm, warehouse):
    resources, home = farm
    stray = home / "charts" / "999" / "20260310.png"  # a room without data that day (any more)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"old chart")
    result = charts_run(resources, home, tags=range_tags(BEFORE, DAY))
    assert not stray.exists()  # the folder holds what the table lists
    rows = stored_charts(warehouse)
    assert rows[["day", "room", "change_events"]].values.tolist() == [
        [BEFORE, "607", 0], [BEFORE, "608", 0], [DAY, "607", 6], [DAY, "608", 0]]
    assert (home / "charts" / "607" / "20260309.png").is_file()
    for event in result.asset_materializations_for_node("room_daily_charts"):
        assert not [key for key in event.metadata if key.startswith("chart_")]
        assert "re-run one day" in event.metadata["pictures"].value
    # re-running one day replaces its rows only
    charts_run(resources, home, partition_key=DAY)
    assert len(stored_charts(warehouse)) == 4


def test_an_empty_day_has_no_chart(warehouse, tmp_path):
    resources = {**database_resources(), "object_store": LocalObjectStore(home=str(tmp_path))}
    charts_run(resources, tmp_path, partition_key="2026-03-01")
    assert stored_charts(warehouse).empty
    assert not (tmp_path / "charts").exists()


def test_the_schedule_asks_for_yesterday_at_0407_after_the_image_run():
    assert daily_room_charts.cron_schedule == "7 4 * * *"
    assert daily_room_charts.execution_timezone == FARM_TIMEZONE
    assert daily_room_charts.job_name == "charts_job" == charts_job.name
    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 1, 14, 4, 7, tzinfo=UTC),
        repository_def=defs().get_repository_def(),
    )
    request, = daily_room_charts.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-01-13"
    assert {k.to_user_string() for k in
            defs().resolve_job_def("charts_job").asset_layer.executable_asset_keys} == {
        "room_daily_charts"}
    clip = defs().resolve_schedule_def("daily_clip_inference").cron_schedule
    assert clip == "2 3 * * *"  # the images of yesterday are listed by then
    node = defs().resolve_asset_graph().get(dg.AssetKey("room_daily_charts"))
    assert {k.to_user_string() for k in node.parent_keys} == {
        "env_readings", "setpoint_snapshots", "setpoint_change_events", "image_manifest"}


def test_a_room_name_cannot_leave_the_charts_folder(tmp_path):
    assert chart_path(tmp_path, "607", dt.date(2026, 3, 10)) == tmp_path / "charts/607/20260310.png"
    with pytest.raises(ValueError):
        chart_path(tmp_path, "../etc", dt.date(2026, 3, 10))
    assert pick_evenly(3, 8) == [0, 1, 2]
    assert pick_evenly(100, 8)[0] == 0 and pick_evenly(100, 8)[-1] == 99
    assert len(pick_evenly(100, 8)) == 8


def test_band_segments_without_a_value_in_force_leave_a_gap():
    pairs = pd.DataFrame([{
        "room": "607", "device": "fan", "metric": "co2_ppm", "point": "lo..hi", "kind": "band",
        "tolerance": np.nan, "tolerance_point": None, "target_point": None, "low_point": "lo",
        "high_point": "hi", "first_at": at(f"{DAY} 06:00")}])
    history = pd.DataFrame([("fan", "lo", 800.0, at(f"{DAY} 06:00")),
                            ("fan", "hi", 1200.0, at(f"{DAY} 07:00"))],
                           columns=["device", "point", "value", "recorded_at"])
    segments = band_segments(pairs, history, at(DAY), at(DAY) + pd.Timedelta(days=1))
    assert segments[["since", "low", "high"]].values.tolist()[1:] == [
        [at(f"{DAY} 07:00"), 800.0, 1200.0]]
    first = segments.iloc[0]
    assert first["since"] == at(DAY) and np.isnan(first["high"])  # 00:00-07:00: not shaded


# ---------------------------------------------------------------------------------------------
# The demo farm


def test_the_demo_farms_story_day_charts(warehouse, tmp_path):
    days = days_ending(dt.date(2026, 2, 10), 2)  # the story on the second day
    story = days[-1]
    engine = warehouse.get_engine()
    seed_env_readings(engine, days, FARM_TZ)
    seed_setpoints(engine, days, FARM_TZ)
    object_store = LocalObjectStore(home=str(tmp_path))
    images, corrupt = seed_images(object_store, days)
    resources = {**database_resources(), "object_store": object_store}
    assert dg.materialize(UPSTREAM, resources=resources, tags=range_tags(
        days[0].isoformat(), story.isoformat())).success
    charts_run(resources, tmp_path, partition_key=story.isoformat())

    rows = stored_charts(warehouse).set_index("room")
    assert sorted(rows.index) == ROOMS
    events = query(warehouse, "SELECT room, count(*) AS n FROM mushroom.setpoint_change_events "
                              "WHERE day = %(day)s GROUP BY room", day=story).set_index("room")
    for room in ROOMS:
        row = rows.loc[room]
        with Image.open(row["path"]) as png:
            assert png.size == (row["width_px"], row["height_px"]) == (1600, 1100)
        _, figure = chart_of(resources, room, story.isoformat())
        assert png_bytes(figure) == Path(row["path"]).read_bytes()
        assert [ax.get_ylabel() for ax in metric_axes(figure)] == LABELS
        drawn = markers(figure)
        assert sum(len(p) for p in drawn.values()) == row["change_events"] == events.loc[room, "n"]
        # every camera shot of the day; room 607's half-written upload skipped
        assert row["images"] == len(IMAGE_HOURS) + (corrupt if room == ROOMS[0] else 0)
        assert row["thumbnails"] == len(IMAGE_HOURS)
    # the operators' story, where the grower looks for it
    _, figure = chart_of(resources, "607", story.isoformat())
    assert [(t.strftime("%H:%M"), y) for t, y in markers(figure)["changes:temperature_c:level"]] \
        == [("11:20", 17.0)]
    _, figure = chart_of(resources, "612", story.isoformat())
    (changed_at, value), = markers(figure)["changes:co2_ppm:level"]
    assert changed_at.strftime("%H:%M") == "14:15" and 1080 <= value <= 1120
    _, figure = chart_of(resources, "611", story.isoformat())
    assert len(markers(figure)["changes:other:changed"]) == 1  # CO2 control → timer
    assert images == 2 * 4 * len(IMAGE_HOURS)


def test_a_sensor_reporting_hourly_draws_a_curve_broken_only_where_it_fell_silent():
    from mushroom_pipeline.defs.insights.charts import _with_gaps

    hours = [0, 1, 2, 3, 7, 8]  # silent 03:00-07:00: four of its usual hourly intervals
    times = pd.Series([pd.Timestamp("2026-03-10", tz="UTC") + pd.Timedelta(hours=h) for h in hours])
    xs, ys = _with_gaps(times, pd.Series([16.0 + h / 10 for h in hours]))
    assert len(xs) == len(hours) + 1 and int(np.isnan(ys).sum()) == 1
    assert np.isnan(ys[4]) and xs[4] == pd.Timestamp("2026-03-10 05:00", tz="UTC").to_pydatetime()
    # every minute: a 15-minute hole breaks it (the default floor), a 2-minute one does not
    minutes = [0, 1, 2, 4, 5, 21, 22]
    times = pd.Series([pd.Timestamp("2026-03-10", tz="UTC") + pd.Timedelta(minutes=m) for m in minutes])
    _, ys = _with_gaps(times, pd.Series([1.0] * len(minutes)))
    assert int(np.isnan(ys).sum()) == 1
