"""Shared test helpers: source rows in, Dagster runs, tables out."""

import socket

import dagster as dg
import pandas as pd

from mushroom_pipeline.demo.farm import ENV_TYPES, SETPOINT_TYPES
from mushroom_pipeline.io.postgres import copy_frame
from mushroom_pipeline.resources import PostgresResource


def insert_rows(database: PostgresResource, table: str, types: dict[str, str], rows) -> None:
    """rows: tuples in the order of `types`; a value None is NULL, float('nan') is NaN."""
    rows = list(rows)
    frame = pd.DataFrame(rows, columns=list(types))
    frame["value"] = pd.Series([row[list(types).index("value")] for row in rows], dtype=object)
    time_column = next(c for c, t in types.items() if t == "timestamptz")
    frame[time_column] = pd.to_datetime(frame[time_column], utc=True, format="ISO8601")
    with database.begin() as conn:
        copy_frame(conn, table, frame, types)


def insert_readings(database: PostgresResource, rows) -> None:
    """rows: (room, metric, value, measured_at)."""
    insert_rows(database, "iot.env_readings", ENV_TYPES, rows)


def insert_setpoints(database: PostgresResource, rows) -> None:
    """rows: (room, device, point, value, recorded_at)."""
    insert_rows(database, "iot.device_setpoints", SETPOINT_TYPES, rows)


def query(database: PostgresResource, sql: str, **params) -> pd.DataFrame:
    with database.begin() as conn:
        return pd.read_sql_query(sql, conn, params=params or None)


def range_tags(start: str, end: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every message of the first failed step's error chain."""
    error = result.get_step_failure_events()[0].event_specific_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
