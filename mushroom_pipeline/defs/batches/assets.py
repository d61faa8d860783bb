"""room_batches: per day, the batch in each room as its batch device (`mushroom_info_<room>`,
../shared/CONTRACTS.md "The farm's catalog") reports it, and the view
mushroom.env_daily_stats_by_batch that gives the environment statistics their growth day.

A day's values are those in force at its end: each point's last snapshot of the day, else its
baseline (its last snapshot before the day), both from that day's slice of setpoint_snapshots.
A day on which the batch device sent no snapshot has no row: a day's slice stands alone, so a
range run and day-by-day runs give the same rows.
"""

import datetime as dt
import math

import dagster as dg
import pandas as pd

from mushroom_pipeline.catalog.points import BatchPoints
from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.defs.batches import OWNERS, TAGS
from mushroom_pipeline.defs.environment.assets import STATS_SCHEMA
from mushroom_pipeline.partitions import daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import TRANSIENT_RETRY
from mushroom_pipeline.warehouse.io_manager import PostgresClient
from mushroom_pipeline.warehouse.source import time_slice
from mushroom_pipeline.warehouse.sql import (
    PostgresRelation,
    table_column_types,
    warehouse_table,
)
from mushroom_pipeline.warehouse.tables import (
    column_schema,
    column_types,
    ensure_table,
    markdown_preview,
)

TABLE = "room_batches"
STATS_TABLE = "env_daily_stats"
VIEW = warehouse_table("env_daily_stats_by_batch")
VIEW_COLUMNS = ("batch", "entry_date", "growth_day")  # appended to env_daily_stats' columns

BATCHES_SCHEMA = column_schema(
    ("day", "date", "the farm's local day"),
    ("room", "text"),
    ("device", "text", "the batch device (points.yaml `batches.device`)"),
    ("batch", "text", "<room>/<entry date>: the batch's identity; NULL when the date is a problem"),
    ("entry_date", "date", "in_year/in_month/in_day in force at the day's end"),
    ("bags", "bigint", "in_num in force at the day's end"),
    ("growth_day", "bigint", "reported_growth_day when reported, else derived_growth_day"),
    ("growth_day_source", "text", "reported | derived; NULL when neither is known"),
    ("reported_growth_day", "bigint", "in_day_num at the day's end; NULL when not reported"),
    ("derived_growth_day", "bigint", "day - entry_date: the entry day is day 0"),
    ("new_batch", "boolean", "the entry date differs from the one in force before the day, or "
                             "none was"),
    ("previous_entry_date", "date", "the entry date in force before the day (the baselines)"),
    ("problem", "text", "why a value is missing: no_entry_date, invalid_entry_date: 2026-13-01, "
                        "invalid_bags: …, invalid_growth_day: …, entry_date_after_day: …"),
    ("last_reported_at", "timestamptz", "the device's last snapshot of the day"),
)
BIGINT_COLUMNS = [name for name, pg_type in column_types(BATCHES_SCHEMA).items() if pg_type == "bigint"]

growth_day_agrees_spec = dg.AssetCheckSpec(
    "growth_day_agrees",
    asset=TABLE,
    description="Where the device reports a growth day (in_day_num) and the entry date is known, "
    "the two agree: in_day_num = day - entry_date.",
)

# Per day, batch device and point: the value in force at the day's end (the baseline is older
# than any snapshot of the day) and before the day (the baseline).
POINT_VALUES_SQL = """
SELECT day, room, device, point,
       (array_agg(value ORDER BY recorded_at DESC))[1] AS at_end,
       (array_agg(value ORDER BY recorded_at DESC) FILTER (WHERE is_baseline))[1] AS before_day,
       max(recorded_at) FILTER (WHERE NOT is_baseline) AS last_reported_at
FROM ({snapshots}) s
WHERE device = ANY(%(devices)s)
GROUP BY day, room, device, point
"""

VIEW_SQL = f"""
CREATE OR REPLACE VIEW {VIEW} AS
SELECT s.*, {', '.join(f'b.{c}' for c in VIEW_COLUMNS)}
FROM {warehouse_table(STATS_TABLE)} s LEFT JOIN {warehouse_table(TABLE)} b USING (day, room)
"""


def _whole(value: float | None) -> int | None:
    """A value reported as a whole number (the platform sends floats), else None."""
    if value is None or not math.isfinite(value) or value != math.floor(value):
        return None
    return int(value)


def _shown(value: float, width: int) -> str:
    whole = _whole(value)
    return f"{whole:0{width}d}" if whole is not None else f"{value:g}"


def entry_date(year: float | None, month: float | None, day: float | None,
               points: BatchPoints) -> tuple[dt.date | None, str | None]:
    """(date, None), or (None, the reason there is none)."""
    parts = {points.entry_year: year, points.entry_month: month, points.entry_day: day}
    missing = [name for name, value in parts.items() if value is None]
    if len(missing) == len(parts):
        return None, "no_entry_date"
    if missing:
        return None, f"incomplete_entry_date: {', '.join(missing)} not reported"
    try:
        return dt.date(*(_whole(v) for v in (year, month, day))), None
    except (TypeError, ValueError, OverflowError):  # None (not whole), out of range
        return None, f"invalid_entry_date: {_shown(year, 4)}-{_shown(month, 2)}-{_shown(day, 2)}"


def _count(value: float | None, name: str, problems: list[str]) -> int | None:
    """A non-negative whole number, or None (a problem when a value was reported)."""
    if value is None:
        return None
    whole = _whole(value)
    if whole is None or whole < 0:
        problems.append(f"invalid_{name}: {value:g}")
        return None
    return whole


def batch_row(points: BatchPoints, day: dt.date, room: str, device: str,
              at_end: dict[str, float], before: dict[str, float],
              last_reported_at: pd.Timestamp) -> dict:
    """One (day, room, device) row from its points' values at the day's end and before it."""
    date_points = (points.entry_year, points.entry_month, points.entry_day)
    problems: list[str] = []
    entry, problem = entry_date(*(at_end.get(p) for p in date_points), points)
    if problem:
        problems.append(problem)
    previous, _ = entry_date(*(before.get(p) for p in date_points), points)
    bags = _count(at_end.get(points.bags), "bags", problems)
    reported = _count(at_end.get(points.growth_day), "growth_day", problems)
    derived = (day - entry).days if entry else None
    if derived is not None and derived < 0:
        problems.append(f"entry_date_after_day: {entry}")
        derived = None
    growth_day = reported if reported is not None else derived
    return {
        "day": day,
        "room": room,
        "device": device,
        "batch": f"{room}/{entry.isoformat()}" if entry else None,
        "entry_date": entry,
        "bags": bags,
        "growth_day": growth_day,
        "growth_day_source": None if growth_day is None else
        "reported" if reported is not None else "derived",
        "reported_growth_day": reported,
        "derived_growth_day": derived,
        "new_batch": entry is not None and entry != previous,
        "previous_entry_date": previous,
        "problem": "; ".join(problems) or None,
        "last_reported_at": last_reported_at,
    }


def point_values(warehouse: PostgresResource, snapshots: PostgresRelation,
                 points: BatchPoints) -> tuple[list[str], pd.DataFrame]:
    """(the batch devices of the slice, their points' values: POINT_VALUES_SQL)."""
    # The upstream SQL is text among bound parameters: its own % signs are escaped.
    relation = snapshots.sql.replace("%", "%%")
    with warehouse.begin() as conn:
        names = conn.exec_driver_sql(f"SELECT DISTINCT device FROM ({relation}) s").scalars()
        # The device glob is configuration: matched here, the names travel as parameters.
        devices = sorted(name for name in names if points.is_batch_device(name))
        result = conn.exec_driver_sql(POINT_VALUES_SQL.format(snapshots=relation),
                                      {"devices": devices})
        return devices, pd.DataFrame(result.all(), columns=list(result.keys()))


def batch_rows(points: BatchPoints, values: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (day, room, device), group in values.groupby(["day", "room", "device"], sort=True):
        at_end = {p: float(v) for p, v in zip(group["point"], group["at_end"]) if pd.notna(v)}
        before = {p: float(v) for p, v in zip(group["point"], group["before_day"]) if pd.notna(v)}
        rows.append(batch_row(points, day, room, device, at_end, before,
                              group["last_reported_at"].max()))
    frame = pd.DataFrame(rows, columns=list(column_types(BATCHES_SCHEMA)))
    return frame.astype({name: "Int64" for name in BIGINT_COLUMNS})


def ensure_stats_view(warehouse: PostgresResource, window: dg.TimeWindow) -> None:
    """mushroom.env_daily_stats_by_batch, over both tables, created first as their I/O manager
    would create them (declared types, partition index): the view exists after any run."""
    client = PostgresClient(warehouse)
    with warehouse.begin() as conn:
        for table, types in ((STATS_TABLE, STATS_SCHEMA), (TABLE, BATCHES_SCHEMA)):
            table_slice = time_slice(table, "day", window)
            # Takes the table's lock, as the I/O manager's writes do: no race to create it.
            client.ensure_schema_exists(None, table_slice, conn)
            ensure_table(conn, table_slice, column_types(types))
        columns = [*table_column_types(conn, warehouse_table(STATS_TABLE)), *VIEW_COLUMNS]
        existing = list(table_column_types(conn, VIEW))
        if existing != columns[:len(existing)]:
            # CREATE OR REPLACE can only append columns; a column env_daily_stats gained since
            # comes before the batch's. Dropped and created in one transaction: readers wait.
            conn.exec_driver_sql(f"DROP VIEW {VIEW}")
        conn.exec_driver_sql(VIEW_SQL)
        conn.exec_driver_sql(
            f"COMMENT ON VIEW {VIEW} IS 'env_daily_stats with the batch in the room that day "
            "(room_batches; NULL where no batch device reported): batch, entry_date, growth_day'"
        )


@dg.asset(
    description="Per day and room, the batch its batch device reports (mushroom_info_<room>): "
    "entry date, bags and growth day at the day's end, new batches, problems. A day without "
    f"a snapshot of the device has no row. Its runs keep the view {VIEW} (env_daily_stats with "
    "batch, entry_date and growth_day).",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "dagster/column_schema": BATCHES_SCHEMA},
    check_specs=[growth_day_agrees_spec],
    group_name="batches",
    owners=OWNERS,
    tags={**TAGS, "layer": "derived"},
    kinds={"postgres"},
)
def room_batches(
    context: dg.AssetExecutionContext,
    warehouse: PostgresResource,
    farm_catalog: FarmCatalogResource,
    setpoint_snapshots: PostgresRelation,
):
    points = farm_catalog.points().batches
    ensure_stats_view(warehouse, context.partition_time_window)
    devices, values = point_values(warehouse, setpoint_snapshots, points)
    batches = batch_rows(points, values)
    both = batches["reported_growth_day"].notna() & batches["derived_growth_day"].notna()
    disagree = batches[both & (batches["reported_growth_day"] != batches["derived_growth_day"])]
    shown = ["day", "room", "batch", "reported_growth_day", "derived_growth_day"]
    problems = batches[batches["problem"].notna()]
    new = batches[batches["new_batch"].astype(bool)]  # bool also when there are no rows
    context.log.info(
        f"{len(batches)} room-days from {len(devices)} batch device(s) matching "
        f"{points.device!r}: {len(new)} new batch(es), {len(problems)} problem row(s), "
        f"{len(disagree)} growth-day disagreement(s)"
    )
    yield dg.Output(
        batches,
        metadata={
            "rooms": batches["room"].nunique(),
            "batch_devices": dg.MetadataValue.json(devices),
            "batches": batches["batch"].nunique(),
            "new_batches": dg.MetadataValue.json(sorted(set(new["batch"]))),
            "growth_day_disagreements": len(disagree),
            "growth_day_disagreement_rows": markdown_preview(disagree[shown], 20),
            "problems": len(problems),
            "problem_rows": markdown_preview(problems[["day", "room", "device", "problem"]], 20),
        },
    )
    yield dg.AssetCheckResult(
        check_name=growth_day_agrees_spec.name,
        passed=disagree.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "growth_day_disagreements": len(disagree),
            "examples": markdown_preview(disagree[shown], 20),
        },
    )
