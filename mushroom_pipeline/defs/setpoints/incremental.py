"""Hourly runs "since the watermark": a run of today reads only the source rows after the newest
one the day's stored rows hold, and appends what they give, instead of re-reading the whole day.

The ledger of a day (its watermark, the newest source time read, and how many source rows up
to it the stored snapshots and quarantine account for) is the `ledger` metadata of each
setpoint_snapshots materialization. A run tagged MODE_TAG = SINCE_WATERMARK (the hourly
schedule's) reads only the tail after the watermark when all of these hold, else the whole day:

- one partition; no allow_shrink; the day's latest materialization has a ledger, made with the
  same catalog (points.yaml decides switches, kinds, deadbands);
- the source still holds exactly the ledger's rows up to the watermark: a late row in an
  earlier hour (or a purge) changes the count, and the day is re-read in full (the no-shrink
  guard then applies as in any full run);
- no stored snapshot or quarantined row is newer than the watermark (a run whose write
  committed but whose materialization was never recorded).

setpoint_change_events follows: it reads only the snapshots after the watermark, plus per point
the last stored snapshot at or before it as the seed (its deadband reference: the one stored
for the day by the previous run), when its own previous materialization was computed from
exactly the snapshots the tail was appended to; else the whole day.

Every run reads the source up to its cutoff, the newest row present when it starts: rows that
arrive while it runs are the next run's, and the ledger it records is exactly what it stored.
"""

import datetime as dt
import hashlib
from dataclasses import dataclass

import dagster as dg

from mushroom_pipeline.catalog.points import PointConfig
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.sql import table_exists, warehouse_table

MODE_TAG = "mushroom/setpoints_mode"
SINCE_WATERMARK = "since_watermark"
MICROSECOND = dt.timedelta(microseconds=1)  # timestamptz's resolution: "after" as a window start
SNAPSHOTS_TIME_INDEX = "setpoint_snapshots_recorded_at"


def catalog_fingerprint(config: PointConfig) -> str:
    return hashlib.sha256(repr((config.rules, config.batches)).encode()).hexdigest()[:16]


def wants_tail(context: dg.AssetExecutionContext) -> bool:
    key_range = context.partition_key_range
    return context.run.tags.get(MODE_TAG) == SINCE_WATERMARK and key_range.start == key_range.end


def latest_metadata(context: dg.AssetExecutionContext, asset: str, partition: str) -> dict | None:
    """The metadata values of `asset`'s latest materialization of `partition`, or None."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    return {name: value.value for name, value in records[0].asset_materialization.metadata.items()}


def ledger_entry(rows: int, watermark: dt.datetime | None) -> dict:
    return {"source_rows": rows, "watermark": watermark.isoformat() if watermark else None}


@dataclass(frozen=True)
class Tail:
    after: dt.datetime  # the watermark: the tail is every source row of the day after it
    ledger: dict  # ledger_entry of the day before the tail


def source_cutoff(source: PostgresResource, table: str, window: dg.TimeWindow) -> dt.datetime | None:
    """The newest source time in `window` now (an index lookup): what this run reads up to."""
    with source.begin() as conn:
        if not table_exists(conn, table):
            return None
        return conn.exec_driver_sql(
            f"SELECT max(recorded_at) FROM {table} WHERE recorded_at >= %s AND recorded_at < %s",
            (window.start, window.end),
        ).scalar()


def plan_snapshots_tail(
    context: dg.AssetExecutionContext, source: PostgresResource, warehouse: PostgresResource,
    source_table: str, quarantine_table: str, catalog: str, allow_shrink: bool,
) -> tuple[Tail | None, str]:
    """(the tail to read, why) or (None, why the whole day is read)."""
    if not wants_tail(context):
        return None, "full run (not tagged since_watermark, or a range)"
    if allow_shrink:
        return None, "allow_shrink: the whole day"
    day = context.partition_key
    previous = latest_metadata(context, "setpoint_snapshots", day)
    entry = (previous or {}).get("ledger", {}).get(day)
    if not entry or entry.get("watermark") is None:
        return None, "no ledger for the day yet"
    if previous.get("catalog") != catalog:
        return None, "the catalog changed since the day's last run"
    window = context.partition_time_window
    after = dt.datetime.fromisoformat(entry["watermark"])
    with source.begin() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT count(*) FROM {source_table} WHERE recorded_at >= %s AND recorded_at <= %s",
            (window.start, after),
        ).scalar()
    if rows != entry["source_rows"]:
        return None, (f"the source holds {rows} rows up to the watermark {entry['watermark']}, "
                      f"the ledger {entry['source_rows']}: a late or purged row, the whole day")
    snapshots = warehouse_table("setpoint_snapshots")
    with warehouse.begin() as conn:
        if not table_exists(conn, snapshots):
            return None, "no snapshots table"
        # the tail and its seeds are found by time; kept by every later write
        conn.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS {SNAPSHOTS_TIME_INDEX} ON {snapshots} (recorded_at)")
        tables = [snapshots] + [t for t in [warehouse_table(quarantine_table)] if table_exists(conn, t)]
        newer = any(conn.exec_driver_sql(
            f"SELECT EXISTS (SELECT 1 FROM {table} WHERE recorded_at > %s AND recorded_at < %s)",
            (after, window.end),
        ).scalar() for table in tables)
    if newer:
        return None, "stored rows newer than the ledger's watermark: the whole day"
    return Tail(after, entry), f"since the watermark {entry['watermark']}"


def plan_events_tail(context: dg.AssetExecutionContext, catalog: str) -> tuple[Tail | None, dict, str]:
    """(the snapshots' tail to compute the events of, or None for the whole day; the snapshots'
    ledger the events are computed from; why)."""
    key_range = context.partition_key_range
    snapshots = latest_metadata(context, "setpoint_snapshots", key_range.end) or {}
    through = snapshots.get("ledger", {})
    if not wants_tail(context):
        return None, through, "full run (not tagged since_watermark, or a range)"
    day = context.partition_key
    appended = snapshots.get("appended_after")
    if not appended:
        return None, through, "the snapshots were not appended to"
    previous = latest_metadata(context, "setpoint_change_events", day) or {}
    if previous.get("through", {}).get(day) != appended or previous.get("catalog") != catalog:
        return None, through, "the stored events are not those of the snapshots appended to"
    return (Tail(dt.datetime.fromisoformat(appended["watermark"]), appended), through,
            f"since the watermark {appended['watermark']}")
