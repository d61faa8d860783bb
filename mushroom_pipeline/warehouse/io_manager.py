"""Partition-aware pandas ↔ Postgres I/O manager, built on Dagster's DbIOManager (as dagster-duckdb).

Writing a partition (or a range of partitions) runs in ONE transaction: lock the table, delete the
slice, create the table if it is new, COPY the frame in. Readers see the old rows or the new ones,
never a gap; a failure anywhere rolls back to the old rows. The type handler deletes, not the
client: it knows the object, and a `SliceTail` replaces only the rows after a watermark (what
an incremental run changes).

Columns and their Postgres types come from the asset's `dagster/column_schema` metadata (shown in
the UI too); columns not declared there are inferred from the frame's dtypes.

Two load types: `pd.DataFrame` (the slice's rows, via COPY) and `PostgresRelation` (the slice's
SELECT statement, for steps that aggregate inside the database instead of moving rows).
"""


from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

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
)
from mushroom_pipeline.warehouse.tables import (
    SliceTail,
    declared_column_types,
    lock_table,
    markdown_preview,
    replace_slice,
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
        """Nothing: the type handler deletes what its object replaces (replace_slice)."""

    @staticmethod
    def get_table_name(table_slice: TableSlice) -> str:
        return f"{table_slice.schema}.{table_slice.table}"

    @staticmethod
    def get_select_statement(table_slice: TableSlice) -> str:
        return select_statement(table_slice)


def replace_table_slice(
    database: PostgresResource,
    table_slice: TableSlice,
    obj,
    declared: Mapping[str, str],
    indexes: Sequence[str] = (),
) -> int:
    """What the I/O manager does for an output (`obj` a frame, a relation or a SliceTail), for a
    table that is not an asset of its own."""
    client = PostgresClient(database)
    with client.connect(None, table_slice) as connection:
        client.ensure_schema_exists(None, table_slice, connection)
        return replace_slice(connection, table_slice, obj, declared, indexes)


INDEXES_METADATA = "mushroom/indexes"  # CREATE INDEX statements ({table}) for a new table
# a new table partitioned by day, each re-run's days swapped in (tables.swap_days): for the
# big tables, where deleting a day's rows cost more than writing them
BY_DAY_METADATA = "mushroom/partitioned_by_day"


def _replace(context: dg.OutputContext, table_slice: TableSlice, obj, connection) -> int:
    metadata = context.definition_metadata or {}
    return replace_slice(connection, table_slice, obj, declared_column_types(context),
                         metadata.get(INDEXES_METADATA, ()),
                         by_day=bool(metadata.get(BY_DAY_METADATA, False)))


class PandasPostgresTypeHandler(DbTypeHandler[pd.DataFrame]):
    def handle_output(self, context: dg.OutputContext, table_slice: TableSlice, obj, connection):
        _replace(context, table_slice, obj, connection)
        declared = declared_column_types(context)
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
        rows = _replace(context, table_slice, obj, connection)
        preview = pd.read_sql_query(
            f"SELECT * FROM ({select_statement(table_slice, declared_column_types(context))}) s "
            "LIMIT 10", connection
        )
        return {"dagster/row_count": rows, "preview": markdown_preview(preview)}

    def load_input(self, context, table_slice: TableSlice, connection) -> PostgresRelation:
        types = table_column_types(connection, qualified_name(table_slice))
        return PostgresRelation(select_statement(table_slice, types))

    @property
    def supported_types(self):
        return [PostgresRelation]


class SliceTailTypeHandler(DbTypeHandler[SliceTail]):
    """An incremental run's output: the slice's rows after its watermark replaced, the rest kept."""

    def handle_output(self, context, table_slice: TableSlice, obj: SliceTail, connection):
        # the tail's rows, not the slice's: the day's count would cost a scan of the day
        return {"rows_written": _replace(context, table_slice, obj, connection),
                "replaced_where": obj.where}

    def load_input(self, context, table_slice: TableSlice, connection):
        raise TypeError("a SliceTail is only written: load the asset as a DataFrame or a "
                        "PostgresRelation")

    @property
    def supported_types(self):
        return [SliceTail]


class PostgresPandasIOManager(dg.ConfigurableIOManagerFactory):
    """Stores pandas frames as Postgres tables, one partition slice per write."""

    database: PostgresResource

    def create_io_manager(self, context) -> DbIOManager:
        return DbIOManager(
            type_handlers=[PandasPostgresTypeHandler(), RelationTypeHandler(), SliceTailTypeHandler()],
            db_client=PostgresClient(self.database),
            database="warehouse",
            schema=WAREHOUSE_SCHEMA,
            io_manager_name="PostgresPandasIOManager",
            default_load_type=pd.DataFrame,
        )
