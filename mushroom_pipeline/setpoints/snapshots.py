"""The day's device-point snapshots, validated in SQL, with each point's baseline (its last valid
snapshot before the day), so a change across midnight or a run boundary is seen exactly once."""

import datetime as dt

import dagster as dg
import pandas as pd

from mushroom_pipeline.io.postgres import PostgresRelation, read_frame
from mushroom_pipeline.io.source import window_predicate
from mushroom_pipeline.resources import PostgresResource

SOURCE_TABLE = "iot.device_setpoints"
SOURCE_COLUMNS = {
    "room": "text",
    "device": "text",
    "point": "text",
    "value": "double precision",
    "recorded_at": "timestamptz",
}
KEY = "room, device, point"
# Snapshots are periodic: the last hour before the day nearly always holds every point's
# baseline; points silent longer are looked up further back, up to a year.
BASELINE_LOOKBACKS = (
    dt.timedelta(hours=1),
    dt.timedelta(days=1),
    dt.timedelta(days=7),
    dt.timedelta(days=31),
    dt.timedelta(days=366),
)

REASON = """CASE
        WHEN coalesce(btrim(room), '') = '' OR coalesce(btrim(device), '') = ''
             OR coalesce(btrim(point), '') = '' THEN 'blank_key'
        WHEN value IS NULL THEN 'null_value'
        WHEN value = 'NaN' THEN 'nan_value'
        WHEN value IN ('Infinity', '-Infinity') THEN 'infinite_value'
        WHEN point ~ '(^|_)on_off$' AND value NOT IN (0, 1)
             THEN 'not_a_switch_value'
    END"""


def sql_literal(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (dt.datetime, pd.Timestamp)):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(float(value))


def values_table(rows: list[tuple], columns: list[str], types: list[str]) -> str:
    """A VALUES list usable as a table; an empty one has the columns and no rows."""
    if not rows:
        nulls = ", ".join(f"NULL::{t} AS {c}" for c, t in zip(columns, types))
        return f"(SELECT {nulls} WHERE false)"
    body = ",\n".join(
        "(" + ", ".join(f"{sql_literal(v)}::{t}" for v, t in zip(row, types)) + ")" for row in rows
    )
    return f"(VALUES {body}) AS v({', '.join(columns)})"


def _classified(table: str, where: str) -> str:
    return f"SELECT {KEY}, value, recorded_at, {REASON} AS reason FROM {table} WHERE {where}"


def _conflicts(table: str, window: dg.TimeWindow) -> str:
    """Keys at which one snapshot time carries different values: no value can be trusted."""
    return (
        f"SELECT {KEY}, recorded_at FROM ({_classified(table, window_predicate('recorded_at', window))}) c "
        f"WHERE reason IS NULL GROUP BY {KEY}, recorded_at HAVING min(value) <> max(value)"
    )


def snapshots_relation(table: str, window: dg.TimeWindow, baseline: pd.DataFrame) -> PostgresRelation:
    """Valid snapshots of the window, repeated rows folded (source_rows), plus the baselines."""
    day_rows = (
        f"SELECT {KEY}, min(value) AS value, recorded_at, recorded_at::date AS day, "
        "count(*) AS source_rows, false AS is_baseline "
        f"FROM ({_classified(table, window_predicate('recorded_at', window))}) c "
        f"WHERE reason IS NULL GROUP BY {KEY}, recorded_at HAVING min(value) = max(value)"
    )
    baseline_rows = values_table(
        [(r.room, r.device, r.point, r.value, r.recorded_at) for r in baseline.itertuples()],
        ["room", "device", "point", "value", "recorded_at"],
        ["text", "text", "text", "double precision", "timestamptz"],
    )
    first_day = window.start.date().isoformat()
    return PostgresRelation(
        f"{day_rows}\nUNION ALL\nSELECT {KEY}, value, recorded_at, '{first_day}'::date, 1, true "
        f"FROM {baseline_rows}"
    )


def quarantine_relation(table: str, window: dg.TimeWindow) -> PostgresRelation:
    classified = _classified(table, window_predicate("recorded_at", window))
    return PostgresRelation(
        f"SELECT {KEY}, value, recorded_at, reason FROM ({classified}) c WHERE reason IS NOT NULL\n"
        f"UNION ALL\nSELECT {KEY}, value, recorded_at, 'conflicting_duplicate' "
        f"FROM ({classified}) c JOIN ({_conflicts(table, window)}) x USING ({KEY}, recorded_at) "
        "WHERE c.reason IS NULL"
    )


def find_baselines(source: PostgresResource, window: dg.TimeWindow) -> pd.DataFrame:
    """Each point of the window's last valid snapshot before it, looking back step by step."""
    types = {**SOURCE_COLUMNS}
    with source.begin() as conn:
        wanted = conn.exec_driver_sql(
            f"SELECT DISTINCT {KEY} FROM {SOURCE_TABLE} WHERE {window_predicate('recorded_at', window)}"
        ).all()
        found: list[pd.DataFrame] = []
        missing = {tuple(row) for row in wanted}
        for lookback in BASELINE_LOOKBACKS:
            if not missing:
                break
            keys = values_table(sorted(missing), ["room", "device", "point"], ["text"] * 3)
            frame = read_frame(
                conn,
                f"SELECT DISTINCT ON ({KEY}) {KEY}, value, recorded_at FROM "
                f"({_classified(SOURCE_TABLE, window_predicate('recorded_at', dg.TimeWindow(window.start - lookback, window.start)))}) c "
                f"JOIN {keys} USING ({KEY}) WHERE reason IS NULL "
                f"ORDER BY {KEY}, recorded_at DESC",
                types,
            )
            found.append(frame)
            missing -= set(zip(frame["room"], frame["device"], frame["point"]))
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=list(types))
