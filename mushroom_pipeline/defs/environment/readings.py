"""Validation of raw environment readings, as ../shared/CONTRACTS.md defines it, in SQL: the
day's rows are classified and folded inside Postgres and never travel to Python.

Source metric names go through the metric catalog (staged as a table of names, joined on
lower(btrim(metric))): an alias and its canonical name are one metric with one range."""

import dagster as dg

from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.sql import PostgresRelation, window_predicate

SOURCE_COLUMNS = {
    "room": "text",
    "metric": "text",
    "value": "double precision",
    "measured_at": "timestamptz",
}

# The first reason a row is invalid, or NULL. Postgres orders NaN above every number, so the
# NaN test comes before the range test.
REASON = """CASE
        WHEN coalesce(btrim(c.room), '') = '' THEN 'blank_room'
        WHEN coalesce(btrim(c.metric), '') = '' THEN 'blank_metric'
        WHEN c.value IS NULL THEN 'null_value'
        WHEN c.value = 'NaN' THEN 'nan_value'
        WHEN c.value IN ('Infinity', '-Infinity') THEN 'infinite_value'
        WHEN c.value NOT BETWEEN n.low AND n.high THEN 'out_of_range'
    END"""


def _classified(table: str, window: dg.TimeWindow, names: str) -> str:
    """`names`: the catalog's names (catalog.metrics.NAME_TYPES). A metric it does not know
    keeps its source name and has no range."""
    return (
        "SELECT c.room, coalesce(n.metric, c.metric) AS metric, c.metric AS source_metric, "
        f"c.value, c.measured_at, {REASON} AS reason "
        f"FROM {table} c LEFT JOIN {names} n ON n.source_name = lower(btrim(c.metric)) "
        f"WHERE {window_predicate('c.measured_at', window)}"
    )


def classify_and_quarantine(
    table: str, window: dg.TimeWindow, *, warehouse: PostgresResource, names: str, classified: str
) -> PostgresRelation:
    """Stages the window's rows with their reason (`_classified`) as the warehouse table
    `classified` (a staging table the caller holds until the readings are written) and returns
    the quarantine: its invalid rows. The day is thus read and classified once for the
    quarantine and the readings (readings_relation reads `classified`), both from one snapshot
    of the source, as the benchmark's same-output floor does. quarantined_source's factory."""
    with warehouse.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE UNLOGGED TABLE {classified} AS {_classified(table, window, names)}")
    return PostgresRelation(
        "SELECT room, metric, source_metric, measured_at, value, reason "
        f"FROM {classified} WHERE reason IS NOT NULL"
    )


def readings_relation(classified: str) -> PostgresRelation:
    """Valid rows of the staged `classified` (classify_and_quarantine); rows sharing (room,
    canonical metric, measured_at) are one reading, their mean, whatever names they came under.
    Only valid rows take part, so one bad duplicate does not spoil a good one."""
    return PostgresRelation(
        "SELECT room, metric, measured_at, avg(value) AS value, count(*) AS source_rows, "
        "array_agg(DISTINCT source_metric ORDER BY source_metric) AS source_metrics "
        f"FROM {classified} WHERE reason IS NULL GROUP BY room, metric, measured_at"
    )
