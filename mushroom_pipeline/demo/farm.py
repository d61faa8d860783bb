"""A synthetic demo farm: the IoT source tables filled the way the real farm fills them.

Rooms with 1-minute readings following day/night cycles, with noise, a sensor outage, invalid
values (NaN, NULL, out of range) and duplicates, so every path of the pipeline shows in the demo.
Deterministic per (room, day): seeding the same days again writes the same rows.
"""

import datetime as dt
import io
import zlib
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mushroom_pipeline.io.postgres import copy_frame

ROOMS = ["601", "602", "611", "612"]

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

# (mean, day/night amplitude, noise) of each metric in a fruiting room
CLIMATE = {
    "temperature_c": (16.5, 1.2, 0.15),
    "humidity_pct": (91.0, 3.0, 0.8),
    "co2_ppm": (1100.0, 250.0, 40.0),
}


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


def env_readings_for_day(room: str, day: dt.date, tz: ZoneInfo) -> pd.DataFrame:
    """One room's readings of one local day; `value` is an object column (None = NULL)."""
    rng = _rng("env", room, day)
    start = pd.Timestamp(dt.datetime.combine(day, dt.time(), tzinfo=tz))
    times = pd.date_range(start, start + pd.Timedelta(days=1), freq="1min", inclusive="left")
    hours = (times - start).total_seconds().to_numpy() / 3600
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
    frame = pd.concat(
        [env_readings_for_day(room, day, tz) for day in days for room in ROOMS], ignore_index=True
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


def _cycle(rng: np.random.Generator, minutes: int, on: tuple[int, int], off: tuple[int, int]) -> np.ndarray:
    """A switch cycling ON for `on` and OFF for `off` minutes (random within the ranges)."""
    state = np.zeros(minutes)
    t, value = int(rng.integers(0, off[1])), 1
    while t < minutes:
        length = int(rng.integers(*(on if value else off)))
        state[t : t + length] = value
        t, value = t + length, 1 - value
    return state


def setpoints_for_day(room: str, day: dt.date, tz: ZoneInfo) -> pd.DataFrame:
    """One room's device points, snapshotted every minute of one local day."""
    rng = _rng("setpoints", room, day)
    start = pd.Timestamp(dt.datetime.combine(day, dt.time(), tzinfo=tz))
    times = pd.date_range(start, start + pd.Timedelta(days=1), freq="1min", inclusive="left")
    minutes = len(times)
    hour = np.asarray((times - start).total_seconds() // 3600)
    temperature_target = np.full(minutes, 16.5)
    temperature_target[int(rng.integers(480, 1080)) :] = rng.choice([16.0, 17.0])  # operator
    humidity_target = np.where(hour < 12, 90.0, 92.0)
    cooler = _cycle(rng, minutes, (15, 35), (10, 30))
    points = {
        ("air_cooler", "on_off"): cooler,
        ("air_cooler", "temperature_setpoint"): temperature_target,
        ("air_cooler", "mode"): np.where(hour < 6, 2.0, 1.0),  # 1 cooling, 2 eco at night
        ("air_cooler", "compressor_running"): cooler,  # a running state, excluded by the config
        ("air_cooler", "temperature_reading"): 16.5 + rng.normal(0, 0.2, minutes),  # a sensor leak
        ("humidifier", "on_off"): _cycle(rng, minutes, (5, 15), (10, 40)),
        ("humidifier", "humidity_setpoint"): humidity_target,
        ("fresh_air_fan", "fan_on_off"): ((np.arange(minutes) % 60) < 10).astype(float),
        ("grow_light", "light_on_off"): ((hour >= 6) & (hour < 18)).astype(float),
    }
    frames = [
        pd.DataFrame({"room": room, "device": device, "point": point,
                      "value": values.astype(object), "recorded_at": times})
        for (device, point), values in points.items()
    ]
    frame = pd.concat(frames, ignore_index=True)
    frame.loc[rng.choice(len(frame), 3, replace=False), "value"] = None  # dropped reads
    repeated = frame.iloc[rng.choice(len(frame), 20, replace=False)]  # delivered twice
    return pd.concat([frame, repeated], ignore_index=True)


def seed_setpoints(engine: sa.Engine, days: list[dt.date], tz: ZoneInfo) -> int:
    frame = pd.concat(
        [setpoints_for_day(room, day, tz) for day in days for room in ROOMS], ignore_index=True
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


def seed_images(store, days: list[dt.date]) -> tuple[int, int]:
    """Camera images per the contract's key layout; the last day also gets one corrupt upload
    (a camera that lost power mid-write), so the failure path shows. Returns (images, corrupt)."""
    count = 0
    for day in days:
        for room in ROOMS:
            for hour in IMAGE_HOURS:
                stamp = f"{day:%Y%m%d}{hour:02d}0000"
                store.put(f"{room}/{day:%Y%m%d}/{room}_cam1_{stamp}.jpg", demo_image(room, day, hour))
                count += 1
    last = days[-1]
    whole = demo_image(ROOMS[0], last, 23)
    store.put(f"{ROOMS[0]}/{last:%Y%m%d}/{ROOMS[0]}_cam1_{last:%Y%m%d}230000.jpg", whole[: len(whole) // 3])
    return count, 1
