"""Partition-aware pandas ↔ Postgres I/O manager, built on Dagster's DbIOManager (as dagster-duckdb).

Writing a partition (or a range of partitions) runs in ONE transaction: lock the table, delete the
slice, create the table if it is new, COPY the frame in. Readers see the old rows or the new ones,
never a gap; a failure anywhere rolls back to the old rows.

Columns and their Postgres types come from the asset's `dagster/column_schema` metadata (shown in
the UI too); columns not declared there are inferred from the frame's dtypes.

Two load types: `pd.DataFrame` (the slice's rows, via COPY) and `PostgresRelation` (the slice's
SELECT statement, for steps that aggregate inside the database instead of moving rows).

An output wrapped in `SliceTail` replaces only the slice's rows matching its predicate (the
rows after a watermark), in the same one transaction: what an incremental run changes.
"""


from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from dagster._core.storage.db_io_manager import (
    DbClient,
    DbIOManager,
    DbTypeHandler,
    TableSlice,
)

from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.frames import read_frame
from mushroom_pipeline.warehouse.sql import (
    WAREHOUSE_SCHEMA,
    PostgresRelation,
    qualified_name,
    quote_ident,
    select_statement,
    slice_table_exists,
    table_column_types,
    where_clause,
)
from mushroom_pipeline.warehouse.tables import (
    declared_column_types,
    lock_table,
    markdown_preview,
    write_frame,
    write_output,
    write_relation,
)


class PostgresClient(DbClient):
    def __init__(self, database: PostgresResource):
        self._database = database

    @contextmanager
    def connect(self, context, table_slice: TableSlice) -> Iterator[sa.Connection]:
        with self._database.begin() as connection:
            yield connection

    def ensure_schema_exists(self, context, table_slice: TableSlice, connection) -> None:
        # Called first for every write: the lock covers schema and table creation too.
        lock_table(connection, qualified_name(table_slice))
        connection.exec_driver_sql(
            f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table_slice.schema)}"
        )

    def delete_table_slice(self, context, table_slice: TableSlice, connection) -> None:
        lock_table(connection, qualified_name(table_slice))  # held already: a no-op
        if slice_table_exists(connection, table_slice):
            table = qualified_name(table_slice)
            clause, params = where_clause(table_slice, table_column_types(connection, table))
            connection.exec_driver_sql(f"DELETE FROM {table} WHERE {clause}", params)

    @staticmethod
    def get_table_name(table_slice: TableSlice) -> str:
        return f"{table_slice.schema}.{table_slice.table}"

    @staticmethod
    def get_select_statement(table_slice: TableSlice) -> str:
        return select_statement(table_slice)


class SliceTail(NamedTuple):
    """An output that replaces only the slice's rows matching `where` (SQL over the table's
    columns, values rendered by the caller as in window_predicate): the rest of the slice is
    kept. `rows` (frame or relation) must hold only rows matching `where`, or the slice would
    gain duplicates."""

    rows: Any
    where: str


def replace_table_slice(
    database: PostgresResource,
    table_slice: TableSlice,
    obj,
    declared: Mapping[str, str],
    indexes: Sequence[str] = (),
) -> int:
    """What the I/O manager does for an output, for a table that is not an asset of its own."""
    client = PostgresClient(database)
    with client.connect(None, table_slice) as connection:
        client.ensure_schema_exists(None, table_slice, connection)
        client.delete_table_slice(None, table_slice, connection)
        return write_output(connection, table_slice, obj, declared, indexes)


def replace_slice_rows(
    database: PostgresResource,
    table_slice: TableSlice,
    obj,
    declared: Mapping[str, str],
    where: str,
    params: Mapping[str, object],
) -> int:
    """replace_table_slice for the slice's rows matching `where` (bound `params`) only."""
    client = PostgresClient(database)
    with client.connect(None, table_slice) as connection:
        client.ensure_schema_exists(None, table_slice, connection)
        if slice_table_exists(connection, table_slice):
            table = qualified_name(table_slice)
            clause, slice_params = where_clause(table_slice, table_column_types(connection, table))
            connection.exec_driver_sql(
                f"DELETE FROM {table} WHERE ({clause}) AND ({where})", {**slice_params, **params})
        return write_output(connection, table_slice, obj, declared)


INDEXES_METADATA = "mushroom/indexes"  # CREATE INDEX statements ({table}) for a new table


class PandasPostgresTypeHandler(DbTypeHandler[pd.DataFrame]):
    def handle_output(self, context: dg.OutputContext, table_slice: TableSlice, obj, connection):
        declared = declared_column_types(context)
        indexes = (context.definition_metadata or {}).get(INDEXES_METADATA, ())
        write_frame(connection, table_slice, obj, declared, indexes)
        shown = obj[[c for c in obj.columns if not declared.get(c, "").startswith("vector")]]
        return {"dagster/row_count": len(obj), "preview": markdown_preview(shown)}

    def load_input(self, context: dg.InputContext, table_slice: TableSlice, connection):
        if not slice_table_exists(connection, table_slice):
            raise dg.Failure(
                f"{qualified_name(table_slice)} does not exist: materialize "
                f"{table_slice.table} first",
                allow_retries=False,
            )
        types = table_column_types(connection, qualified_name(table_slice))
        query = select_statement(table_slice, types)
        if table_slice.columns:
            types = {c: types[c] for c in table_slice.columns}
        return read_frame(connection, query, types)

    @property
    def supported_types(self):
        return [pd.DataFrame]


class RelationTypeHandler(DbTypeHandler[PostgresRelation]):
    """Outputs: INSERT … SELECT inside the database. Inputs: the slice's SELECT statement."""

    def handle_output(self, context, table_slice: TableSlice, obj: PostgresRelation, connection):
        declared = declared_column_types(context)
        rows = write_relation(connection, table_slice, obj, declared)
        preview = pd.read_sql_query(
            f"SELECT * FROM ({select_statement(table_slice, declared)}) s LIMIT 10", connection
        )
        return {"dagster/row_count": rows, "preview": markdown_preview(preview)}

    def load_input(self, context, table_slice: TableSlice, connection) -> PostgresRelation:
        types = table_column_types(connection, qualified_name(table_slice))
        return PostgresRelation(select_statement(table_slice, types))

    @property
    def supported_types(self):
        return [PostgresRelation]


class PostgresDbIOManager(DbIOManager):
    """DbIOManager, plus SliceTail outputs: lock, delete the slice's rows matching the tail's
    predicate, insert the tail's rows, in one transaction (a failure keeps the old rows)."""

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if not isinstance(obj, SliceTail):
            return super().handle_output(context, obj)
        self._check_supported_type(type(obj.rows))
        table_slice = self._get_table_slice(context, context)
        with self._db_client.connect(context, table_slice) as conn:
            self._db_client.ensure_schema_exists(context, table_slice, conn)
            if slice_table_exists(conn, table_slice):
                table = qualified_name(table_slice)
                clause, params = where_clause(table_slice, table_column_types(conn, table))
                conn.exec_driver_sql(f"DELETE FROM {table} WHERE ({clause}) AND ({obj.where})", params)
            handler = self._resolve_handler(type(obj.rows))
            metadata = dict(handler.handle_output(context, table_slice, obj.rows, conn) or {})
        # the tail's rows, not the slice's: the day's count would cost a scan of the day
        metadata["rows_written"] = metadata.pop("dagster/row_count", 0)
        context.add_output_metadata({
            **metadata, "replaced_where": obj.where,
            "Query": self._db_client.get_select_statement(table_slice),
        })


class PostgresPandasIOManager(dg.ConfigurableIOManagerFactory):
    """Stores pandas frames as Postgres tables, one partition slice per write."""

    database: PostgresResource

    def create_io_manager(self, context) -> DbIOManager:
        return PostgresDbIOManager(
            type_handlers=[PandasPostgresTypeHandler(), RelationTypeHandler()],
            db_client=PostgresClient(self.database),
            database="warehouse",
            schema=WAREHOUSE_SCHEMA,
            io_manager_name="PostgresPandasIOManager",
            default_load_type=pd.DataFrame,
        )
