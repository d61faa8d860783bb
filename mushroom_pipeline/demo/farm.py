"""A synthetic demo farm: the IoT source tables filled the way the farm's platform fills them,
with the rooms, metric names and device points of its catalog (../shared/CONTRACTS.md, "The
farm's catalog"; mushroom_pipeline/catalog/).

Rooms with 1-minute readings following day/night cycles, with noise, a sensor outage, invalid
values (NaN, NULL, out of range) and duplicates; every device point snapshotted every 5 minutes,
with read noise below the deadbands, dropped reads and repeated deliveries; and a story in the
week: operators change three setpoints and one room's batch is replaced. So every path of the
pipeline shows in the demo. Deterministic per (room, day) for the same demo days: seeding the
same days again writes the same rows.
"""

import datetime as dt
import io
import zlib
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mushroom_pipeline.objectstore import ObjectMissingError
from mushroom_pipeline.warehouse.frames import copy_frame

ROOMS = ["607", "608", "611", "612"]

SOURCE_DDL = """
CREATE SCHEMA IF NOT EXISTS iot;
CREATE TABLE IF NOT EXISTS iot.env_readings (
    room TEXT NOT NULL, metric TEXT NOT NULL, value DOUBLE PRECISION,
    measured_at TIMESTAMPTZ NOT NULL);
CREATE INDEX IF NOT EXISTS env_readings_measured_at ON iot.env_readings (measured_at);
"""
ENV_TYPES = {
    "room": "text",
    "metric": "text",
    "value": "double precision",
    "measured_at": "timestamptz",
}

# (mean, day/night amplitude, noise) of each metric in a fruiting room, under the platform's
# names (the metric catalog's aliases of temperature_c, humidity_pct, co2_ppm)
CLIMATE = {
    "temperature": (16.5, 1.2, 0.15),
    "humidity": (91.0, 3.0, 0.8),
    "co2": (1100.0, 250.0, 40.0),
}


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


def _local_day(day: dt.date, tz: ZoneInfo, freq: str) -> pd.DatetimeIndex:
    """The times of one local day (23 or 25 hours across DST: nothing spills into the next day)."""
    start, end = (pd.Timestamp(dt.datetime.combine(d, dt.time(), tzinfo=tz))
                  for d in (day, day + dt.timedelta(days=1)))
    return pd.date_range(start, end, freq=freq, inclusive="left")


# On the story day this sensor reports nothing for three hours: sensor_health names it silent.
SILENT_SENSOR = ("612", "humidity", dt.time(9), dt.time(12))


def env_readings_for_day(room: str, day: dt.date, tz: ZoneInfo, story: bool = False) -> pd.DataFrame:
    """One room's readings of one local day; `value` is an object column (None = NULL).
    `story`: the story day, when SILENT_SENSOR goes quiet."""
    rng = _rng("env", room, day)
    times = _local_day(day, tz, "1min")
    hours = (times - times[0]).total_seconds().to_numpy() / 3600
    if rng.random() < 0.3:  # a sensor outage of 30-90 minutes
        outage = int(rng.integers(0, len(times) - 90))
        keep = np.ones(len(times), bool)
        keep[outage : outage + int(rng.integers(30, 90))] = False
        times, hours = times[keep], hours[keep]
    frames = []
    for metric, (mean, amplitude, noise) in CLIMATE.items():
        cycle = -np.cos((hours - 3) / 24 * 2 * np.pi)  # coolest before dawn
        value = mean + amplitude * cycle + rng.normal(0, noise, len(times))
        frame = pd.DataFrame(
            {"room": room, "metric": metric, "value": value.astype(object), "measured_at": times}
        )
        bad = rng.choice(len(frame), size=6, replace=False)
        frame.loc[bad[:2], "value"] = float("nan")
        frame.loc[bad[2:4], "value"] = None
        frame.loc[bad[4:], "value"] = mean * 50  # a glitching sensor, out of range
        repeated = frame.iloc[rng.choice(len(frame), size=5, replace=False)].copy()
        repeated["value"] = [v + 0.1 if isinstance(v, float) else v for v in repeated["value"]]
        if story and (room, metric) == SILENT_SENSOR[:2]:
            local = frame["measured_at"].dt.time
            quiet = (local >= SILENT_SENSOR[2]) & (local < SILENT_SENSOR[3])
            frame, repeated = frame[~quiet], repeated[~repeated.index.isin(frame.index[quiet])]
        frames += [frame, repeated]
    return pd.concat(frames, ignore_index=True)


def days_ending(last: dt.date, count: int) -> list[dt.date]:
    return [last - dt.timedelta(days=i) for i in reversed(range(count))]


def _replace_demo_rows(
    engine: sa.Engine, ddl: str, table: str, time_column: str, frame: pd.DataFrame,
    types: dict[str, str], days: list[dt.date], tz: ZoneInfo,
) -> int:
    """Replaces the demo rooms' rows of `days` in a source table; returns rows written."""
    start = dt.datetime.combine(min(days), dt.time(), tzinfo=tz)
    end = dt.datetime.combine(max(days) + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    with engine.begin() as conn:
        conn.exec_driver_sql(ddl)
        conn.exec_driver_sql(
            f"DELETE FROM {table} WHERE room = ANY(%s) "
            f"AND {time_column} >= %s AND {time_column} < %s",
            (ROOMS, start, end),
        )
        copy_frame(conn, table, frame, types)
    return len(frame)


def seed_env_readings(engine: sa.Engine, days: list[dt.date], tz: ZoneInfo) -> int:
    story = demo_week(days).story
    frame = pd.concat(
        [env_readings_for_day(room, day, tz, day == story) for day in days for room in ROOMS],
        ignore_index=True,
    )
    return _replace_demo_rows(
        engine, SOURCE_DDL, "iot.env_readings", "measured_at", frame, ENV_TYPES, days, tz
    )


SETPOINT_DDL = """
CREATE SCHEMA IF NOT EXISTS iot;
CREATE TABLE IF NOT EXISTS iot.device_setpoints (
    room TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL, value DOUBLE PRECISION,
    recorded_at TIMESTAMPTZ NOT NULL);
CREATE INDEX IF NOT EXISTS device_setpoints_recorded_at ON iot.device_setpoints (recorded_at);
"""
SETPOINT_TYPES = {
    "room": "text",
    "device": "text",
    "point": "text",
    "value": "double precision",
    "recorded_at": "timestamptz",
}


SNAPSHOT_EVERY = "5min"  # the platform reports more often; 5 minutes keep the demo fast


@dataclass(frozen=True)
class Week:
    """The demo's days as its story needs them: batches are dated back from the first day;
    operators change setpoints and a batch is replaced on the middle day (the last day of a
    2-day demo), so every demo of 2 days or more shows the story."""

    first: dt.date
    story: dt.date


def demo_week(days: list[dt.date]) -> Week:
    return Week(days[0], days[len(days) // 2])


# From this local time of the story day on, (room, device type, point) holds the new value.
OPERATOR_CHANGES = {
    ("607", "air_cooler", "temp_set"): (dt.time(11, 20), 17.0),  # a warmer target
    ("611", "fresh_air_fan", "control"): (dt.time(10, 40), 0.0),  # CO2 control → timer
    ("612", "fresh_air_fan", "co2_on"): (dt.time(14, 15), 1100.0),  # beyond the 50 ppm deadband
}
# Read noise (± spread, rounded to step) on analog points: always below the point's deadband,
# so it must never show as a change.
READ_NOISE = {
    ("fresh_air_fan", "co2_on"): (20, 1),
    ("fresh_air_fan", "co2_off"): (20, 1),
    ("left_humidifier", "on"): (0.3, 0.1),
    ("left_humidifier", "off"): (0.3, 0.1),
    ("right_humidifier", "on"): (0.3, 0.1),
    ("right_humidifier", "off"): (0.3, 0.1),
}
# Grow-light channels: (on, off) in hours of the local clock, colour (choose: 0 white, 1 blue).
LIGHT_CHANNELS = {1: (6.0, 18.0, 0), 2: (6.5, 17.5, 0), 3: (8.0, 16.0, 1), 4: (10.0, 14.0, 1)}

# Each room's batch entered on a 35-day grid of its own, at least this many days before the
# demo's first day: the grid keeps entry dates put when the demo is seeded again days later,
# so the earlier days it leaves in place report the same batches.
BATCH_CYCLE_DAYS = 35
BATCH_MIN_AGE = {"607": 6, "608": 20, "611": 0, "612": 13}
TURNOVER_ROOM = "608"  # its batch leaves; a new one enters at the story day's local midnight


def batch_in(room: str, day: dt.date, week: Week) -> tuple[dt.date, int]:
    """(entry date, bags) of the batch in `room` on `day`."""
    if room == TURNOVER_ROOM and day >= week.story:
        entry = week.story
    else:
        latest = week.first - dt.timedelta(days=BATCH_MIN_AGE[room])
        phase = zlib.crc32(room.encode()) % BATCH_CYCLE_DAYS
        entry = latest - dt.timedelta(days=(latest.toordinal() - phase) % BATCH_CYCLE_DAYS)
    return entry, 2400 + 50 * int(_rng("bags", room, entry).integers(0, 25))


def _cycle(rng: np.random.Generator, slots: int, on: tuple[int, int], off: tuple[int, int]) -> np.ndarray:
    """A switch cycling ON for `on` and OFF for `off` snapshots (random within the ranges)."""
    state = np.zeros(slots)
    t, value = int(rng.integers(0, off[1])), 1
    while t < slots:
        length = int(rng.integers(*(on if value else off)))
        state[t : t + length] = value
        t, value = t + length, 1 - value
    return state


def setpoints_for_day(room: str, day: dt.date, tz: ZoneInfo, week: Week) -> pd.DataFrame:
    """Every device point of one room (the catalog's devices `<type>_<room>`), snapshotted every
    5 minutes of one local day; a dropped read is a NULL value (NaN in the float column)."""
    rng = _rng("setpoints", room, day)
    times = _local_day(day, tz, SNAPSHOT_EVERY)
    n = len(times)
    clock = np.asarray(times.hour + times.minute / 60)  # lights follow the local clock

    def steady(value: float) -> np.ndarray:
        return np.full(n, float(value))

    entry, bags = batch_in(room, day, week)
    points = {
        ("air_cooler", "on_off"): _cycle(rng, n, (3, 8), (2, 7)),  # 15-35 min on, 10-30 off
        ("air_cooler", "temp_set"): steady(16.5),
        ("air_cooler", "temp_diffset"): steady(1.0),
        ("air_cooler", "cyc_on_time"): steady(20),
        ("air_cooler", "cyc_off_time"): steady(10),
        ("air_cooler", "air_on_off"): steady(1),
        ("air_cooler", "hum_on_off"): steady(1),
        ("air_cooler", "cyc_on_off"): steady(1),
        ("fresh_air_fan", "mode"): steady(1),  # auto
        ("fresh_air_fan", "control"): steady(1),  # CO2 control
        ("fresh_air_fan", "co2_on"): steady(1200),
        ("fresh_air_fan", "co2_off"): steady(900),
        ("fresh_air_fan", "on"): steady(10),
        ("fresh_air_fan", "off"): steady(20),
        **{(side, point): steady(value)
           for side in ("left_humidifier", "right_humidifier")
           for point, value in (("mode", 1), ("on", 88), ("off", 94))},
        ("grow_light", "model"): steady(1),  # auto
        ("grow_light", "on_mset"): steady(45),
        ("grow_light", "off_mset"): steady(15),
        **{("grow_light", f"on_off{c}"): ((clock >= on) & (clock < off)).astype(float)
           for c, (on, off, _) in LIGHT_CHANNELS.items()},
        **{("grow_light", f"choose{c}"): steady(colour)
           for c, (_, _, colour) in LIGHT_CHANNELS.items()},
        # the batch: its entry date and bags, its growth day ticking at local midnight
        ("mushroom_info", "in_year"): steady(entry.year),
        ("mushroom_info", "in_month"): steady(entry.month),
        ("mushroom_info", "in_day"): steady(entry.day),
        ("mushroom_info", "in_num"): steady(bags),
        ("mushroom_info", "in_day_num"): steady((day - entry).days),
    }
    for (changed_room, device, point), (at, value) in OPERATOR_CHANGES.items():
        if changed_room == room:
            points[device, point][times >= dt.datetime.combine(week.story, at, tzinfo=tz)] = value
    for key, (spread, step) in READ_NOISE.items():
        noise = np.round(rng.uniform(-spread, spread, n) / step) * step
        points[key] = np.round(points[key] + noise, 1)

    keys = list(points)
    frame = pd.DataFrame({
        "room": room,
        "device": np.repeat([f"{device}_{room}" for device, _ in keys], n),
        "point": np.repeat([point for _, point in keys], n),
        "value": np.concatenate([points[key] for key in keys]),
        "recorded_at": times[np.tile(np.arange(n), len(keys))],
    })
    frame.loc[rng.choice(len(frame), 3, replace=False), "value"] = np.nan  # dropped reads
    repeated = frame.iloc[rng.choice(len(frame), 20, replace=False)]  # delivered twice
    return pd.concat([frame, repeated], ignore_index=True)


def seed_setpoints(engine: sa.Engine, days: list[dt.date], tz: ZoneInfo) -> int:
    week = demo_week(days)
    frame = pd.concat(
        [setpoints_for_day(room, day, tz, week) for day in days for room in ROOMS], ignore_index=True
    )
    return _replace_demo_rows(
        engine, SETPOINT_DDL, "iot.device_setpoints", "recorded_at", frame, SETPOINT_TYPES, days, tz
    )


IMAGE_HOURS = (8, 14, 20)  # three camera shots per room per day


def demo_image(room: str, day: dt.date, hour: int) -> bytes:
    """A synthetic shot of a shelf: mushroom caps that grow through the days of the cycle."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = _rng("image", room, day, hour)
    image = Image.new("RGB", (320, 240), (62 + int(rng.integers(0, 20)), 48, 36))
    draw = ImageDraw.Draw(image)
    growth = 4 + (day.toordinal() % 14) * 1.5 + hour / 12
    for _ in range(int(rng.integers(6, 14))):
        x, y = int(rng.integers(20, 300)), int(rng.integers(90, 220))
        radius = growth * float(rng.uniform(0.7, 1.3))
        draw.rectangle([x - radius / 5, y, x + radius / 5, y + radius], fill=(225, 215, 195))
        shade = int(rng.integers(170, 235))
        draw.ellipse([x - radius, y - radius / 1.6, x + radius, y + radius / 3],
                     fill=(shade, shade - 25, shade - 60))
    buffer = io.BytesIO()
    image.filter(ImageFilter.SMOOTH).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def put_unless_same(store, key: str, data: bytes) -> None:
    """Writes the object unless it already holds these bytes: a re-seeded demo keeps its etags
    (the local store's etag is a size+mtime marker), so nothing is embedded twice."""
    try:
        if store.get(key) == data:
            return
    except ObjectMissingError:
        pass
    store.put(key, data)


FROZEN_CAMERA_ROOM = "611"  # on the story day its camera sends its first frame all day


def seed_images(store, days: list[dt.date]) -> tuple[int, int]:
    """Camera images per the contract's key layout; the last day also gets one corrupt upload
    (a camera that lost power mid-write), so the failure path shows; on the story day one camera
    is frozen (camera_health flags it). Returns (images, corrupt)."""
    count, story = 0, demo_week(days).story
    for day in days:
        for room in ROOMS:
            for hour in IMAGE_HOURS:
                stamp = f"{day:%Y%m%d}{hour:02d}0000"
                frozen = day == story and room == FROZEN_CAMERA_ROOM
                put_unless_same(store, f"{room}/{day:%Y%m%d}/{room}_cam1_{stamp}.jpg",
                                demo_image(room, day, IMAGE_HOURS[0] if frozen else hour))
                count += 1
    last = days[-1]
    whole = demo_image(ROOMS[0], last, 23)
    put_unless_same(store, f"{ROOMS[0]}/{last:%Y%m%d}/{ROOMS[0]}_cam1_{last:%Y%m%d}230000.jpg",
                    whole[: len(whole) // 3])
    return count, 1
