"""The day's device-point snapshots, validated in SQL, each day with its own baselines (every
point's last valid snapshot before that day), so any day's slice stands alone: a change across
midnight or a run boundary is seen exactly once, whatever runs wrote or read the days.

Names and values are data: they travel as bound parameters or through COPY, never as SQL text."""

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pandas as pd
from dagster._core.storage.db_io_manager import TableSlice

from mushroom_pipeline.io.postgres import (
    PostgresRelation,
    qualified_name,
    replace_table_slice,
)
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
STAGING_SCHEMA = "mushroom_staging"

REASON = """CASE
        WHEN coalesce(btrim(room), '') = '' OR coalesce(btrim(device), '') = ''
             OR coalesce(btrim(point), '') = '' THEN 'blank_key'
        WHEN value IS NULL THEN 'null_value'
        WHEN value = 'NaN' THEN 'nan_value'
        WHEN value IN ('Infinity', '-Infinity') THEN 'infinite_value'
        WHEN point ~ '(^|_)on_off$' AND value NOT IN (0, 1)
             THEN 'not_a_switch_value'
    END"""


def _classified(table: str, where: str) -> str:
    return f"SELECT {KEY}, value, recorded_at, {REASON} AS reason FROM {table} WHERE {where}"


def _valid(table: str, where: str, join: str = "") -> str:
    """Valid snapshots, identical repeats folded (source_rows); a time of a point with two
    values is no snapshot. `join` narrows the rows before they are grouped."""
    return (
        f"SELECT {KEY}, min(value) AS value, recorded_at, count(*) AS source_rows "
        f"FROM ({_classified(table, where)}) c {join} WHERE reason IS NULL "
        f"GROUP BY {KEY}, recorded_at HAVING min(value) = max(value)"
    )


def _conflicts(table: str, window: dg.TimeWindow) -> str:
    """Keys at which one snapshot time carries different values: no value can be trusted."""
    return (
        f"SELECT {KEY}, recorded_at FROM ({_classified(table, window_predicate('recorded_at', window))}) c "
        f"WHERE reason IS NULL GROUP BY {KEY}, recorded_at HAVING min(value) <> max(value)"
    )


def snapshots_relation(table: str, window: dg.TimeWindow, earlier: str) -> PostgresRelation:
    """Valid snapshots of the window, plus for each point and day with snapshots its baseline:
    the previous snapshot (LAG), from an earlier day of the window or from `earlier` (each
    point's last snapshot before the window). A baseline is a copy: source_rows 0."""
    valid = _valid(table, window_predicate("recorded_at", window))
    chained = (
        f"SELECT {KEY}, value, recorded_at, source_rows, in_window, "
        "lag(value) OVER w AS previous_value, lag(recorded_at) OVER w AS previous_at "
        f"FROM (SELECT *, true AS in_window FROM ({valid}) v "
        f"UNION ALL SELECT {KEY}, value, recorded_at, 0, false FROM {earlier}) s "
        f"WINDOW w AS (PARTITION BY {KEY} ORDER BY recorded_at)"
    )
    # As the lookup before the window: a point silent longer than the last lookback starts afresh.
    limit = f"interval '{BASELINE_LOOKBACKS[-1].days} days'"
    return PostgresRelation(
        f"WITH chained AS ({chained})\n"
        f"SELECT {KEY}, value, recorded_at, recorded_at::date AS day, source_rows, "
        "false AS is_baseline FROM chained WHERE in_window\n"
        f"UNION ALL\nSELECT {KEY}, previous_value, previous_at, recorded_at::date, 0, true "
        "FROM chained WHERE in_window AND previous_at::date < recorded_at::date "
        f"AND previous_at >= recorded_at::date::timestamptz - {limit}"
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
    wanted = f"unnest(%(rooms)s::text[], %(devices)s::text[], %(points)s::text[]) AS w({KEY})"
    found: list[tuple] = []
    with source.begin() as conn:
        missing = {tuple(row) for row in conn.exec_driver_sql(
            f"SELECT DISTINCT {KEY} FROM {SOURCE_TABLE} WHERE {window_predicate('recorded_at', window)}"
        )}
        for lookback in BASELINE_LOOKBACKS:
            if not missing:
                break
            rooms, devices, points = (list(column) for column in zip(*missing))
            before = window_predicate("recorded_at", dg.TimeWindow(window.start - lookback, window.start))
            rows = conn.exec_driver_sql(
                f"SELECT DISTINCT ON ({KEY}) {KEY}, value, recorded_at "
                f"FROM ({_valid(SOURCE_TABLE, before, f'JOIN {wanted} USING ({KEY})')}) v "
                f"ORDER BY {KEY}, recorded_at DESC",
                {"rooms": rooms, "devices": devices, "points": points},
            ).all()
            found.extend(rows)
            missing -= {tuple(row[:3]) for row in rows}
    return pd.DataFrame(found, columns=list(SOURCE_COLUMNS))


@contextmanager
def staged_baselines(
    source: PostgresResource, warehouse: PostgresResource, window: dg.TimeWindow, name: str
) -> Iterator[tuple[str, int]]:
    """(table, rows): the baselines before the window, copied into a warehouse table for the
    snapshots' INSERT … SELECT (which runs after the asset yields), dropped on exit."""
    staged = TableSlice(table=name, schema=STAGING_SCHEMA)
    rows = replace_table_slice(warehouse, staged, find_baselines(source, window), SOURCE_COLUMNS)
    try:
        yield qualified_name(staged), rows
    finally:
        with warehouse.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {qualified_name(staged)}")
