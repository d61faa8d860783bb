"""Reading a day of a source table: existence check, row count, staging, quarantine.

Both ingesting assets (environment readings, setpoint snapshots) do the same: check the source
table, count the window's rows, make them queryable from the warehouse, write the invalid ones
to a quarantine table with their reason, and count those by reason.
"""

import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd
from dagster._core.storage.db_io_manager import TablePartitionDimension, TableSlice
from pydantic import Field

from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import UnavailableError
from mushroom_pipeline.warehouse.frames import copy_frame
from mushroom_pipeline.warehouse.io_manager import (
    PostgresClient,
    replace_table_slice,
)
from mushroom_pipeline.warehouse.sql import (
    WAREHOUSE_SCHEMA,
    PostgresRelation,
    column_definitions,
    table_exists,
    warehouse_table,
    window_predicate,
)
from mushroom_pipeline.warehouse.staging import (
    source_table,
    staging_table,
)


def time_slice(table: str, column: str, window: dg.TimeWindow) -> TableSlice:
    """The rows of mushroom.`table` whose timestamptz `column` falls in `window`."""
    return TableSlice(
        table=table,
        schema=WAREHOUSE_SCHEMA,
        partition_dimensions=[TablePartitionDimension(column, window)],
    )


@contextmanager
def staged_frame(
    warehouse: PostgresResource, name: str, frame: pd.DataFrame, types: Mapping[str, str]
) -> Iterator[str]:
    """`frame` COPYed into a table of mushroom_staging (lookup data a run's SQL joins: names
    and values stay data, never SQL text); yields its qualified name, dropped on exit. Lives
    until after the asset's output is written (a relation's INSERT … SELECT)."""
    with staging_table(warehouse, name) as table:
        with warehouse.begin() as conn:
            # the step's own table: created and filled, no slice of a shared table to replace
            conn.exec_driver_sql(f"CREATE UNLOGGED TABLE {table} ({column_definitions(types)})")
            copy_frame(conn, table, frame[list(types)], types)
        yield table


def rows_per_day(
    database: PostgresResource,
    table: str,
    time_column: str,
    count: str,
    start: dt.datetime,
    end: dt.datetime | None = None,
) -> dict[str, int]:
    """{local day: `count`} of `table` in [start, end); empty when the table does not exist."""
    with database.begin() as conn:
        if not table_exists(conn, table):
            return {}
        rows = conn.exec_driver_sql(
            f"SELECT {time_column}::date, {count} FROM {table} "
            f"WHERE {time_column} >= %s AND {time_column} < %s GROUP BY 1",
            (start, end or dt.datetime.max.replace(tzinfo=dt.UTC)),
        ).all()
    return {day.isoformat(): int(n) for day, n in rows}


def marks_per_day(
    database: PostgresResource, table: str, time_column: str, start: dt.datetime, end: dt.datetime
) -> dict[str, tuple[int, dt.datetime]]:
    """{local day: (rows, newest time)} of `table` in [start, end), in one scan."""
    with database.begin() as conn:
        if not table_exists(conn, table):
            return {}
        rows = conn.exec_driver_sql(
            f"SELECT {time_column}::date, count(*), max({time_column}) FROM {table} "
            f"WHERE {time_column} >= %s AND {time_column} < %s GROUP BY 1",
            (start, end),
        ).all()
    return {day.isoformat(): (int(n), newest) for day, n, newest in rows}


@dataclass(frozen=True)
class SourceLedger:
    """How a source table's rows are accounted for in the warehouse: every source row of a
    materialized day is folded into a stored row (`stored`: mushroom table, expression counting
    the source rows it holds) or quarantined (`quarantine`: mushroom table). Late rows show as
    more source rows than stored, purged ones as fewer."""

    source_table: str
    time_column: str
    stored: tuple[str, str]
    quarantine: str

    def source_per_day(self, source: PostgresResource, start, end=None) -> dict[str, int]:
        return rows_per_day(source, self.source_table, self.time_column, "count(*)", start, end)

    def latest(self, source: PostgresResource) -> str | None:
        """The source's newest time (ISO), for the UI: when did the source last change."""
        with source.begin() as conn:
            if not table_exists(conn, self.source_table):
                return None
            latest = conn.exec_driver_sql(
                f"SELECT max({self.time_column}) FROM {self.source_table}").scalar()
        return latest.isoformat() if latest else None

    def stored_per_day(self, warehouse: PostgresResource, start, end=None) -> dict[str, int]:
        table, count = self.stored
        stored = rows_per_day(warehouse, warehouse_table(table), self.time_column, count, start, end)
        quarantined = rows_per_day(warehouse, warehouse_table(self.quarantine), self.time_column,
                                   "count(*)", start, end)
        for day, n in quarantined.items():
            stored[day] = stored.get(day, 0) + n
        return stored


class SourceWindowConfig(dg.Config):
    allow_shrink: bool = Field(
        default=False,
        description="Let a re-run store fewer rows for a day than it holds now, mirroring rows "
        "deleted from the source on purpose. Off: such a run fails and changes nothing.",
    )


def refuse_shrinking(
    ledger: SourceLedger, source: dict[str, int], stored: dict[str, int], asset: str
) -> None:
    """Fails, before anything is written, when a day's source holds fewer rows than the
    warehouse stored from it: a purge or an unmounted source must not wipe the warehouse."""
    shrunk = {day: (source.get(day, 0), n) for day, n in sorted(stored.items())
              if source.get(day, 0) < n}
    if shrunk:
        days = ", ".join(f"{day}: {now} source rows, {n} stored" for day, (now, n) in shrunk.items())
        raise dg.Failure(
            f"{ledger.source_table} now has fewer rows than {warehouse_table(ledger.stored[0])} and "
            f"{warehouse_table(ledger.quarantine)} hold for {days}. Nothing was changed: the stored rows "
            "are kept. If the rows were deleted on purpose, re-run with run config "
            f"`ops: {{{asset}: {{config: {{allow_shrink: true}}}}}}` to mirror the deletion.",
            allow_retries=False,
        )


@dataclass(frozen=True)
class SourceWindow:
    table: str  # the name the warehouse queries the source rows by
    source_rows: int  # of the rows read
    invalid_by_reason: dict[str, int]
    quarantine_table: str
    quarantined_per_day: dict[str, int]  # by partition key
    # {local day: (rows read, newest time read)}: where the next incremental run starts
    marks: dict[str, tuple[int, dt.datetime]] = field(default_factory=dict)

    @property
    def invalid_rows(self) -> int:
        return sum(self.invalid_by_reason.values())

    def metadata(self) -> dict[str, object]:
        return {
            "source_rows": self.source_rows,
            "invalid_rows": self.invalid_rows,
            "invalid_by_reason": dg.MetadataValue.json(self.invalid_by_reason),
            "quarantine_table": warehouse_table(self.quarantine_table),
        }


@contextmanager
def quarantined_source(
    context: dg.AssetExecutionContext,
    source: PostgresResource,
    warehouse: PostgresResource,
    ledger: SourceLedger,
    columns: Mapping[str, str],
    quarantine_relation: Callable[[str, dg.TimeWindow], PostgresRelation],
    quarantine_types: Mapping[str, str],
    allow_shrink: bool,
    read: dg.TimeWindow | None = None,
    tail: bool = False,
) -> Iterator[SourceWindow]:
    """The partition's source rows staged and its invalid ones quarantined. `read`: the rows
    read (default: the partition's), e.g. up to the newest row present when the run started.
    `tail`: `read` is an incremental run's tail after its watermark, and only its quarantine
    rows are replaced; the caller checked the rows before it against the ledger, so the
    no-shrink guard, which counts the whole partition, is left to full runs."""
    partition = context.partition_time_window
    window = read or partition
    table, time_column = ledger.source_table, ledger.time_column
    quarantine = time_slice(ledger.quarantine, time_column, window if tail else partition)
    in_window = window_predicate(time_column, window)
    with source.begin() as conn:
        if not table_exists(conn, table):
            raise UnavailableError(
                f"The source database has no table {table} (configured by "
                f"{source.url_variable}); see ../shared/CONTRACTS.md for its columns."
            )
    marks = marks_per_day(source, table, time_column, window.start, window.end)
    source_days = {day: n for day, (n, _) in marks.items()}
    source_rows = sum(source_days.values())
    if tail:
        pass
    elif allow_shrink:
        context.log.warning("allow_shrink: stored rows the source no longer has are deleted")
    else:
        # the rows read: up to the run's cutoff, at least what any earlier run stored
        refuse_shrinking(ledger, source_days,
                         ledger.stored_per_day(warehouse, partition.start, partition.end),
                         context.asset_key.to_user_string())
    staging_name = f"{table.split('.')[-1]}_{context.run_id}"
    with source_table(source, warehouse, table, columns, in_window, staging_name) as queryable:
        # The quarantine is written first: if the asset's own write then fails, a re-run
        # replaces both, and no invalid row is ever missing from it.
        replace_table_slice(warehouse, quarantine, quarantine_relation(queryable, window), quarantine_types)
        by_reason: dict[str, int] = {}
        per_day: dict[str, int] = {}
        with warehouse.begin() as conn:
            # the farm's day: the transaction runs in the farm's timezone
            for day, reason, count in conn.exec_driver_sql(
                f"SELECT {time_column}::date::text, reason, count(*) "
                f"FROM ({PostgresClient.get_select_statement(quarantine)}) q "
                "GROUP BY 1, 2 ORDER BY 3 DESC"
            ):
                by_reason[reason] = by_reason.get(reason, 0) + count
                per_day[day] = per_day.get(day, 0) + count
        context.log.info(
            f"{window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}: {source_rows} rows of {table}, "
            f"{sum(by_reason.values())} quarantined {by_reason}"
        )
        yield SourceWindow(queryable, source_rows, by_reason, ledger.quarantine, per_day, marks)
