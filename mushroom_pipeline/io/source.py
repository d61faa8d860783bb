"""Reading a day of a source table: existence check, row count, staging, quarantine.

Both ingesting assets (environment readings, setpoint snapshots) do the same: check the source
table, count the window's rows, make them queryable from the warehouse, write the invalid ones
to a quarantine table with their reason, and count those by reason.
"""

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
from dagster._core.storage.db_io_manager import TablePartitionDimension, TableSlice

from mushroom_pipeline.io.postgres import (
    PostgresClient,
    PostgresRelation,
    replace_table_slice,
    source_table,
)
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import UnavailableError


def window_predicate(column: str, window: dg.TimeWindow) -> str:
    return (
        f"{column} >= '{window.start.isoformat()}'::timestamptz "
        f"AND {column} < '{window.end.isoformat()}'::timestamptz"
    )


def time_slice(table: str, column: str, window: dg.TimeWindow) -> TableSlice:
    """The rows of mushroom.`table` whose timestamptz `column` falls in `window`."""
    return TableSlice(
        table=table,
        schema="mushroom",
        partition_dimensions=[TablePartitionDimension(column, window)],
    )


@dataclass(frozen=True)
class SourceWindow:
    table: str  # the name the warehouse queries the source rows by
    source_rows: int
    invalid_by_reason: dict[str, int]
    quarantine_table: str

    @property
    def invalid_rows(self) -> int:
        return sum(self.invalid_by_reason.values())

    def metadata(self) -> dict[str, object]:
        return {
            "source_rows": self.source_rows,
            "invalid_rows": self.invalid_rows,
            "invalid_by_reason": dg.MetadataValue.json(self.invalid_by_reason),
            "quarantine_table": f"mushroom.{self.quarantine_table}",
        }


@contextmanager
def quarantined_source(
    context: dg.AssetExecutionContext,
    source: PostgresResource,
    warehouse: PostgresResource,
    table: str,
    columns: Mapping[str, str],
    time_column: str,
    quarantine_table: str,
    quarantine_relation: Callable[[str, dg.TimeWindow], PostgresRelation],
    quarantine_types: Mapping[str, str],
) -> Iterator[SourceWindow]:
    window = context.partition_time_window
    quarantine = time_slice(quarantine_table, time_column, window)
    in_window = window_predicate(time_column, window)
    with source.begin() as conn:
        if conn.exec_driver_sql("SELECT to_regclass(%s)", (table,)).scalar() is None:
            raise UnavailableError(
                f"The source database has no table {table} (configured by "
                f"{source.url_variable}); see ../shared/CONTRACTS.md for its columns."
            )
        source_rows = conn.exec_driver_sql(f"SELECT count(*) FROM {table} WHERE {in_window}").scalar()
    staging_name = f"{table.split('.')[-1]}_{context.run_id}"
    with source_table(source, warehouse, table, columns, in_window, staging_name) as queryable:
        # The quarantine is written first: if the asset's own write then fails, a re-run
        # replaces both, and no invalid row is ever missing from it.
        replace_table_slice(warehouse, quarantine, quarantine_relation(queryable, window), quarantine_types)
        with warehouse.begin() as conn:
            by_reason = dict(
                conn.exec_driver_sql(
                    f"SELECT reason, count(*) FROM ({PostgresClient.get_select_statement(quarantine)}) q "
                    "GROUP BY reason ORDER BY 2 DESC"
                ).all()
            )
        context.log.info(
            f"{window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}: {source_rows} rows of {table}, "
            f"{sum(by_reason.values())} quarantined {by_reason}"
        )
        yield SourceWindow(queryable, source_rows, by_reason, quarantine_table)
