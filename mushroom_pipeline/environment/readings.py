"""Validation of raw environment readings, as ../shared/CONTRACTS.md defines it, in SQL: the
day's rows are classified and folded inside Postgres and never travel to Python."""

import dagster as dg

from mushroom_pipeline.io.postgres import PostgresRelation
from mushroom_pipeline.io.source import window_predicate

# Physical ranges of the known metrics (inclusive); other metrics are free text without a range.
KNOWN_RANGES: dict[str, tuple[float, float]] = {
    "temperature_c": (-20.0, 60.0),
    "humidity_pct": (0.0, 100.0),
    "co2_ppm": (0.0, 50000.0),
}
SOURCE_COLUMNS = {
    "room": "text",
    "metric": "text",
    "value": "double precision",
    "measured_at": "timestamptz",
}


def _reason_case() -> str:
    """The first reason a row is invalid, or NULL. Postgres orders NaN above every number, so
    the NaN test comes before the range tests."""
    ranges = "\n".join(
        f"        WHEN metric = '{metric}' AND value NOT BETWEEN {low} AND {high} THEN 'out_of_range'"
        for metric, (low, high) in KNOWN_RANGES.items()
    )
    return f"""CASE
        WHEN coalesce(btrim(room), '') = '' THEN 'blank_room'
        WHEN coalesce(btrim(metric), '') = '' THEN 'blank_metric'
        WHEN value IS NULL THEN 'null_value'
        WHEN value = 'NaN' THEN 'nan_value'
        WHEN value IN ('Infinity', '-Infinity') THEN 'infinite_value'
{ranges}
    END"""


def _classified(table: str, window: dg.TimeWindow) -> str:
    return (
        f"SELECT room, metric, value, measured_at, {_reason_case()} AS reason "
        f"FROM {table} WHERE {window_predicate('measured_at', window)}"
    )


def readings_relation(table: str, window: dg.TimeWindow) -> PostgresRelation:
    """Valid rows; rows sharing (room, metric, measured_at) are one reading, their mean. Only
    valid rows take part, so one bad duplicate does not spoil a good one."""
    return PostgresRelation(
        "SELECT room, metric, measured_at, avg(value) AS value, count(*) AS source_rows "
        f"FROM ({_classified(table, window)}) c WHERE reason IS NULL "
        "GROUP BY room, metric, measured_at"
    )


def quarantine_relation(table: str, window: dg.TimeWindow) -> PostgresRelation:
    return PostgresRelation(
        "SELECT room, metric, measured_at, value, reason "
        f"FROM ({_classified(table, window)}) c WHERE reason IS NOT NULL"
    )
