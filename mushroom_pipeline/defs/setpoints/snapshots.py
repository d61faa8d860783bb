"""The day's device-point snapshots, validated in SQL, each day with its own baselines (every
point's last valid snapshot before that day), so any day's slice stands alone: a change across
midnight or a run boundary is seen exactly once, whatever runs wrote or read the days.

Which points are switches (0/1, else `not_a_switch_value`) is the catalog's word, decided in
Python per (room, device, point) of the window: the switch keys reach the warehouse's queries
as a staging table filled by COPY, and the source database's baseline lookup as bound arrays.

Names and values are data: they travel as bound parameters or through COPY, never as SQL text."""

import datetime as dt
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
import pandas as pd

from mushroom_pipeline.catalog.points import PointConfig
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.source import staged_frame
from mushroom_pipeline.warehouse.sql import (
    PostgresRelation,
    analyze,
    table_exists,
    window_predicate,
)

SOURCE_TABLE = "iot.device_setpoints"
SOURCE_COLUMNS = {
    "room": "text",
    "device": "text",
    "point": "text",
    "value": "double precision",
    "recorded_at": "timestamptz",
}
KEY = "room, device, point"
KEY_TYPES = {"room": "text", "device": "text", "point": "text"}
# Snapshots are periodic (the platform's every few minutes): the last ten minutes before the
# window nearly always hold every point's baseline, and cost an hourly tick a sixth of looking
# back an hour; points silent longer are looked up further back, up to a year.
BASELINE_LOOKBACKS = (
    dt.timedelta(minutes=10),
    dt.timedelta(hours=1),
    dt.timedelta(days=1),
    dt.timedelta(days=7),
    dt.timedelta(days=31),
    dt.timedelta(days=366),
)


def _reason(switches: str) -> str:
    """Why a row is invalid (NULL: valid). `switches`: a FROM item (with its alias) of the
    (room, device, point) keys the catalog reads as switches."""
    return f"""CASE
        WHEN coalesce(btrim(room), '') = '' OR coalesce(btrim(device), '') = ''
             OR coalesce(btrim(point), '') = '' THEN 'blank_key'
        WHEN value IS NULL THEN 'null_value'
        WHEN value = 'NaN' THEN 'nan_value'
        WHEN value IN ('Infinity', '-Infinity') THEN 'infinite_value'
        WHEN value NOT IN (0, 1) AND ({KEY}) IN (SELECT {KEY} FROM {switches})
             THEN 'not_a_switch_value'
    END"""


def _classified(table: str, where: str, switches: str) -> str:
    return f"SELECT {KEY}, value, recorded_at, {_reason(switches)} AS reason FROM {table} WHERE {where}"


def _valid(table: str, where: str, switches: str, points: str) -> str:
    """Valid snapshots of `points` (a FROM item of their keys and ordinals), by ordinal:
    identical repeats folded (source_rows); a time of a point with two values is no snapshot."""
    return (
        "SELECT ordinal, min(value) AS value, recorded_at, count(*) AS source_rows "
        f"FROM ({_classified(table, where, switches)}) c JOIN {points} USING ({KEY}) "
        "WHERE reason IS NULL GROUP BY ordinal, recorded_at HAVING min(value) = max(value)"
    )


def _fold(table: str, window: dg.TimeWindow, switches: str) -> str:
    """The window's valid rows folded per point and time: the value, the rows folded
    (identical repeats), and whether the time carries two values (a conflict: no snapshot)."""
    classified = _classified(table, window_predicate("recorded_at", window), switches)
    return (
        f"SELECT {KEY}, recorded_at, min(value) AS value, count(*) AS source_rows, "
        f"min(value) <> max(value) AS conflicting FROM ({classified}) c WHERE reason IS NULL "
        f"GROUP BY {KEY}, recorded_at"
    )


def fold_and_quarantine(
    table: str, window: dg.TimeWindow, *, warehouse: PostgresResource, switches: str, fold: str,
    points: str,
) -> PostgresRelation:
    """Stages the window's fold (`_fold`) as the warehouse table `fold`, and its points with
    their ordinals as `points` (staging tables the caller holds until the snapshots are
    written), and returns the quarantine: the invalid rows and the rows of the fold's
    conflicting times. The day is thus classified and grouped once for the quarantine and the
    snapshots (snapshots_relation reads both), as the benchmark's same-output floor does.
    quarantined_source's factory."""
    with warehouse.begin() as conn:
        conn.exec_driver_sql(f"CREATE UNLOGGED TABLE {fold} AS {_fold(table, window, switches)}")
        analyze(conn, fold, "conflicting")  # the quarantine joins its few conflicting times
        # Points without a valid snapshot in the window chain nothing (snapshots_relation).
        conn.exec_driver_sql(
            f"CREATE UNLOGGED TABLE {points} AS SELECT {KEY}, row_number() OVER () AS ordinal "
            f"FROM (SELECT DISTINCT {KEY} FROM {fold} WHERE NOT conflicting) d")
        analyze(conn, points)  # a few rows: hashed, not the fold sorted to merge with them
    classified = _classified(table, window_predicate("recorded_at", window), switches)
    return PostgresRelation(
        f"SELECT {KEY}, value, recorded_at, reason FROM ({classified}) c WHERE reason IS NOT NULL\n"
        f"UNION ALL\nSELECT {KEY}, value, recorded_at, 'conflicting_duplicate' "
        f"FROM ({classified}) c JOIN (SELECT {KEY}, recorded_at FROM {fold} WHERE conflicting) x "
        f"USING ({KEY}, recorded_at) WHERE c.reason IS NULL"
    )


def snapshots_relation(fold: str, points: str, earlier: str) -> PostgresRelation:
    """Valid snapshots of the window (its staged `fold`, conflicts left out), plus for each
    point and day with snapshots its baseline: the previous snapshot (LAG), from an earlier day
    of the window or from `earlier` (each point's last snapshot before the window). A baseline
    is a copy: source_rows 0. `points`: the fold's points and their ordinals."""
    # The chain partitions by the point's ordinal, one integer, where three text columns made
    # each comparison of its sort up to three string comparisons (an hourly tick's 61,000
    # snapshots: the sort 83 → 24 ms).
    chained = (
        f"SELECT {KEY}, value, recorded_at, source_rows, in_window, "
        "lag(value) OVER w AS previous_value, lag(recorded_at) OVER w AS previous_at "
        f"FROM (SELECT {KEY}, value, recorded_at, source_rows, true AS in_window FROM {fold} "
        "WHERE NOT conflicting "
        f"UNION ALL SELECT {KEY}, value, recorded_at, 0, false FROM {earlier}) s "
        f"JOIN {points} p USING ({KEY}) "
        "WINDOW w AS (PARTITION BY ordinal ORDER BY recorded_at)"
    )
    # As the lookup before the window: a point silent longer than the last lookback starts afresh.
    limit = f"interval '{BASELINE_LOOKBACKS[-1].days} days'"
    # Each chained snapshot gives itself and, when its previous one is from an earlier day, that
    # one as its day's baseline: one pass over the chain, no second read of it.
    return PostgresRelation(
        f"SELECT {', '.join(f'c.{name}' for name in KEY_TYPES)}, v.value, v.recorded_at, "
        "c.recorded_at::date AS day, v.source_rows, v.is_baseline "
        f"FROM ({chained}) c CROSS JOIN LATERAL (VALUES "
        "(c.value, c.recorded_at, c.source_rows, false), "
        "(c.previous_value, c.previous_at, 0, true)) v(value, recorded_at, source_rows, is_baseline) "
        "WHERE c.in_window AND (NOT v.is_baseline OR (c.previous_at::date < c.recorded_at::date "
        f"AND c.previous_at >= c.recorded_at::date::timestamptz - {limit}))"
    )


def _arrays(prefix: str, keys: Collection[tuple]) -> dict[str, list]:
    """Keys as the bound arrays of `_unnested(prefix)`."""
    columns = [list(column) for column in zip(*keys)] or [[], [], []]
    return {f"{prefix}{name}": column for name, column in zip(KEY_TYPES, columns)}


def _unnested(prefix: str, alias: str, ordinal: bool = False) -> str:
    """The bound keys as a FROM item; `ordinal`: numbered (1, 2, …)."""
    arrays = ", ".join(f"%({prefix}{name})s::text[]" for name in KEY_TYPES)
    if ordinal:
        return f"unnest({arrays}) WITH ORDINALITY AS {alias}({KEY}, ordinal)"
    return f"unnest({arrays}) AS {alias}({KEY})"


@dataclass(frozen=True)
class WindowPoints:
    keys: list[tuple[str, str, str]]  # every (room, device, point) with a source row in the window
    switches: list[tuple[str, str, str]]  # those the catalog reads as switches
    switches_table: str  # the switches, staged in the warehouse for its queries


@contextmanager
def window_points(
    source: PostgresResource, warehouse: PostgresResource, window: dg.TimeWindow,
    config: PointConfig, name: str,
) -> Iterator[WindowPoints]:
    """The window's points, classified by the catalog; the switches staged until exit."""
    with source.begin() as conn:
        # No table: no points; quarantined_source then fails naming the table and its variable.
        exists = table_exists(conn, SOURCE_TABLE)
        keys = [tuple(row) for row in conn.exec_driver_sql(
            f"SELECT DISTINCT {KEY} FROM {SOURCE_TABLE} WHERE {window_predicate('recorded_at', window)}"
        )] if exists else []
    # A key with a NULL part is a blank_key whatever its kind.
    switches = [key for key in keys
                if None not in key and config.treatment(*key).kind == "switch"]
    with staged_frame(
        warehouse, name, pd.DataFrame(switches, columns=list(KEY_TYPES)), KEY_TYPES
    ) as table:
        yield WindowPoints(keys, switches, table)


def find_baselines(
    source: PostgresResource, window: dg.TimeWindow, points: WindowPoints
) -> pd.DataFrame:
    """Each point of the window's last valid snapshot before it, looking back step by step."""
    # grouped and sorted by each point's ordinal: one integer, not three text columns
    wanted = _unnested("", "w", ordinal=True)
    switches = _unnested("switch_", "sw")
    found: list[tuple] = []
    missing = set(points.keys)
    with source.begin() as conn:
        for lookback in BASELINE_LOOKBACKS:
            if not missing:
                break
            before = window_predicate("recorded_at", dg.TimeWindow(window.start - lookback, window.start))
            # plain tuples: a frame built from SQLAlchemy's rows costs 9× more (10 ms a tick)
            rows = [tuple(row) for row in conn.exec_driver_sql(
                f"SELECT {KEY}, value, recorded_at FROM (SELECT DISTINCT ON (ordinal) ordinal, "
                f"value, recorded_at FROM ({_valid(SOURCE_TABLE, before, switches, wanted)}) v "
                f"ORDER BY ordinal, recorded_at DESC) b JOIN {wanted} USING (ordinal)",
                {**_arrays("", missing), **_arrays("switch_", points.switches)},
            )]
            found.extend(rows)
            missing -= {tuple(row[:3]) for row in rows}
    return pd.DataFrame(found, columns=list(SOURCE_COLUMNS))


@contextmanager
def staged_baselines(
    source: PostgresResource, warehouse: PostgresResource, window: dg.TimeWindow,
    points: WindowPoints, name: str,
) -> Iterator[tuple[str, int]]:
    """(table, rows): the baselines before the window, staged in the warehouse until exit."""
    baselines = find_baselines(source, window, points)
    with staged_frame(warehouse, name, baselines, SOURCE_COLUMNS) as table:
        yield table, len(baselines)
