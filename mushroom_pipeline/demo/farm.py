"""A synthetic demo farm: the IoT source tables filled the way the real farm fills them.

Rooms with 1-minute readings following day/night cycles, with noise, a sensor outage, invalid
values (NaN, NULL, out of range) and duplicates, so every path of the pipeline shows in the demo.
Deterministic per (room, day): seeding the same days again writes the same rows.
"""

import datetime as dt
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


def seed_env_readings(engine: sa.Engine, days: list[dt.date], tz: ZoneInfo) -> int:
    """Replaces the demo rooms' readings of `days` in iot.env_readings; returns rows written."""
    frame = pd.concat(
        [env_readings_for_day(room, day, tz) for day in days for room in ROOMS], ignore_index=True
    )
    start = dt.datetime.combine(min(days), dt.time(), tzinfo=tz)
    end = dt.datetime.combine(max(days) + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    with engine.begin() as conn:
        conn.exec_driver_sql(SOURCE_DDL)
        conn.exec_driver_sql(
            "DELETE FROM iot.env_readings WHERE room = ANY(%s) "
            "AND measured_at >= %s AND measured_at < %s",
            (ROOMS, start, end),
        )
        copy_frame(conn, "iot.env_readings", frame, ENV_TYPES)
    return len(frame)
