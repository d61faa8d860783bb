"""Partition-aware pandas ↔ Postgres I/O manager, built on Dagster's DbIOManager (as dagster-duckdb).

Writing a partition (or a range of partitions) runs in ONE transaction: lock the table, delete the
slice, create the table if it is new, COPY the frame in. Readers see the old rows or the new ones,
never a gap; a failure anywhere rolls back to the old rows.

Columns and their Postgres types come from the asset's `dagster/column_schema` metadata (shown in
the UI too); columns not declared there are inferred from the frame's dtypes.

Two load types: `pd.DataFrame` (the slice's rows, via COPY) and `PostgresRelation` (the slice's
SELECT statement, for steps that aggregate inside the database instead of moving rows).
"""

import csv
import io
import os
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa
from dagster._core.definitions.partitions.utils import TimeWindow
from dagster._core.storage.db_io_manager import (
    DbClient,
    DbIOManager,
    DbTypeHandler,
    TablePartitionDimension,
    TableSlice,
)
from pydantic import Field

from mushroom_pipeline.resources import PostgresResource

NULL = r"\N"  # COPY's NULL marker: keeps NULL apart from an empty string in text columns


class PostgresRelation(NamedTuple):
    """The SELECT statement of an upstream table slice, to use as a subquery."""

    sql: str


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified_name(table_slice: TableSlice) -> str:
    return f"{quote_ident(table_slice.schema)}.{quote_ident(table_slice.table)}"


def _time_window_clause(dimension: TablePartitionDimension, pg_type: str | None) -> str:
    window = dimension.partitions
    assert isinstance(window, TimeWindow)
    column = dimension.partition_expr
    if pg_type == "date":
        # A DATE column compares with dates: no timezone takes part.
        return (
            f"{column} >= '{window.start.date().isoformat()}'::date AND "
            f"{column} < '{window.end.date().isoformat()}'::date"
        )
    # Absolute instants (with their offset): the connection's timezone plays no part.
    return (
        f"{column} >= '{window.start.isoformat()}'::timestamptz AND "
        f"{column} < '{window.end.isoformat()}'::timestamptz"
    )


def where_clause(
    table_slice: TableSlice, types: Mapping[str, str] | None = None
) -> tuple[str, dict[str, list]]:
    """The slice's predicate and its bound parameters. `types` ({column: Postgres type}) says
    which partition columns are DATEs; without it they are taken for timestamptz. Static
    partition keys are data (a model name may hold a quote or a `%`): they travel as parameters."""
    clauses, params = [], {}
    for number, dimension in enumerate(table_slice.partition_dimensions or []):
        if isinstance(dimension.partitions, TimeWindow):
            clauses.append(
                _time_window_clause(dimension, (types or {}).get(dimension.partition_expr))
            )
        elif dimension.partitions:
            name = f"partition_keys_{number}"
            clauses.append(f"{dimension.partition_expr} = ANY(%({name})s)")
            params[name] = list(dimension.partitions)
    return " AND ".join(f"({c})" for c in clauses) or "TRUE", params


def select_statement(table_slice: TableSlice, types: Mapping[str, str] | None = None) -> str:
    """The slice's SELECT, usable as a subquery: only time windows, no parameters."""
    clause, params = where_clause(table_slice, types)
    if params:
        raise ValueError(f"{table_slice.table}: a static partition cannot be selected as SQL text")
    columns = ", ".join(quote_ident(c) for c in table_slice.columns) if table_slice.columns else "*"
    return f"SELECT {columns} FROM {qualified_name(table_slice)} WHERE {clause}"


def table_exists(connection: sa.Connection, table: str) -> bool:
    """Whether `table` (schema-qualified, quoted or not) exists."""
    return connection.exec_driver_sql("SELECT to_regclass(%s)", (table,)).scalar() is not None


def _table_exists(connection: sa.Connection, table_slice: TableSlice) -> bool:
    return table_exists(connection, qualified_name(table_slice))


LOCK_NOT_AVAILABLE = "55P03"


class WriteLockTimeoutError(dg.Failure):
    """Another writer held the table longer than the lock timeout: retried by the step's policy."""


def lock_table(connection: sa.Connection, table: str) -> None:
    """Writers of one table wait for each other until the transaction ends: concurrent first
    writes cannot both create the schema or the table, nor re-materializations of one partition
    both delete and then both insert. The wait is bounded by the session's lock_timeout."""
    try:
        with connection.begin_nested():
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
    except sa.exc.DBAPIError as err:
        if getattr(err.orig, "pgcode", None) != LOCK_NOT_AVAILABLE:
            raise
        waited = connection.exec_driver_sql("SHOW lock_timeout").scalar()
        message = (f"Waited {waited} for the write lock of {table}: another run (a backfill?) "
                   "is writing it. The step is retried; MUSHROOM_LOCK_TIMEOUT_S sets the wait.")
        # logged too: a retry event shows the error's class, not its description
        dg.get_dagster_logger().warning(message)
        raise WriteLockTimeoutError(message) from None


VECTOR_EXTENSION_LOCK = "mushroom_pipeline: CREATE EXTENSION vector"


class VectorExtensionMissingError(dg.Failure):
    pass


def ensure_vector_extension(connection: sa.Connection) -> None:
    """pgvector in the warehouse database: created when missing, as a fresh database of the
    pgvector image, RDS or Cloud SQL has it installed but not created. A role that may not create
    it gets the statement a DBA must run."""
    if connection.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'vector'").first():
        return
    lock_table(connection, VECTOR_EXTENSION_LOCK)
    database, role = connection.exec_driver_sql("SELECT current_database(), current_user").one()
    try:
        with connection.begin_nested():
            connection.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
    except sa.exc.DBAPIError as err:
        reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise VectorExtensionMissingError(
            f"The warehouse database {database!r} has no pgvector extension and role {role!r} "
            f"cannot create it ({reason}). A database owner or superuser must run, in database "
            f"{database!r}:  CREATE EXTENSION IF NOT EXISTS vector;  (the server needs pgvector "
            "installed). Or point MUSHROOM_DATABASE_URL at a role that may create it.",
            allow_retries=False,
        ) from None


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
        if _table_exists(connection, table_slice):
            table = qualified_name(table_slice)
            clause, params = where_clause(table_slice, table_column_types(connection, table))
            connection.exec_driver_sql(f"DELETE FROM {table} WHERE {clause}", params)

    @staticmethod
    def get_table_name(table_slice: TableSlice) -> str:
        return f"{table_slice.schema}.{table_slice.table}"

    @staticmethod
    def get_select_statement(table_slice: TableSlice) -> str:
        return select_statement(table_slice)


def column_schema(*columns: tuple[str, str] | tuple[str, str, str]) -> dg.TableSchema:
    """(name, Postgres type[, description]) → the schema the I/O manager creates tables from."""
    return dg.TableSchema(
        columns=[dg.TableColumn(c[0], c[1], description=c[2] if len(c) > 2 else None) for c in columns]
    )


def column_types(schema: dg.TableSchema) -> dict[str, str]:
    return {column.name: column.type for column in schema.columns}


def declared_column_types(context: dg.OutputContext) -> dict[str, str]:
    schema = (context.definition_metadata or {}).get("dagster/column_schema")
    if schema is None:
        return {}
    schema = getattr(schema, "schema", schema)  # TableSchemaMetadataValue or TableSchema
    return {column.name: column.type for column in schema.columns}


def _inferred_type(series: pd.Series) -> str:
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        return "timestamptz"
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "bigint"
    if pd.api.types.is_float_dtype(dtype):
        return "double precision"
    if pd.api.types.is_datetime64_dtype(dtype):
        raise ValueError(
            f"column {series.name!r} holds timestamps without a timezone; localize it first "
            "(the warehouse stores timestamptz)"
        )
    return "text"


def _csv_column(series: pd.Series, pg_type: str) -> pd.Series:
    """One column as COPY text; vectorized for the big ones (timestamps)."""
    if pg_type.startswith("timestamp"):
        values = pd.to_datetime(series, utc=True)
        text = np.datetime_as_string(
            values.dt.tz_localize(None).to_numpy().astype("datetime64[us]"), unit="us"
        )
        return pd.Series(np.char.add(text, "+00"), index=series.index).where(values.notna(), NULL)
    if pg_type == "date":
        return pd.to_datetime(series).dt.strftime("%Y-%m-%d")
    if pg_type in ("double precision", "real") and series.dtype == object:
        # An object column keeps NULL (None) apart from NaN (float nan), as the source may.
        return series.map(lambda v: NULL if v is None else "NaN" if v != v else repr(float(v)))
    return series


def copy_frame(connection: sa.Connection, table: str, frame: pd.DataFrame, types: Mapping[str, str]):
    buffer = io.StringIO()
    pd.DataFrame({name: _csv_column(frame[name], types[name]) for name in frame.columns}).to_csv(
        buffer, index=False, header=False, na_rep=NULL, quoting=csv.QUOTE_MINIMAL
    )
    buffer.seek(0)
    columns = ", ".join(quote_ident(c) for c in frame.columns)
    cursor = connection.connection.dbapi_connection.cursor()
    cursor.copy_expert(
        f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv, NULL '{NULL}')", buffer
    )


PG_EPOCH = pd.Timestamp("2000-01-01", tz="UTC")
BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_FIXED_WIDTH = {"double precision": ">f8", "real": ">f4", "bigint": ">i8", "integer": ">i4",
                "smallint": ">i2", "boolean": "?"}


def _missing(value) -> bool:
    """None, NaN, NA or NaT (what pandas holds for NULL), but never a vector."""
    return value is None or (np.ndim(value) == 0 and pd.isna(value))


def _binary_fields(series: pd.Series, pg_type: str) -> list[bytes | None]:
    """One column in COPY's binary format, field by field (None: NULL)."""
    if pg_type.startswith("vector"):
        return [
            None if _missing(v) else struct.pack(">HH", len(v), 0) + np.asarray(v, ">f4").tobytes()
            for v in series
        ]
    if pg_type == "text":
        return [None if _missing(v) else str(v).encode() for v in series]
    if pg_type.startswith("timestamp"):
        values = pd.to_datetime(series, utc=True)
        micros = ((values - PG_EPOCH) // pd.Timedelta(microseconds=1)).astype("Int64")
        return [None if m is pd.NA else struct.pack(">q", m) for m in micros]
    if pg_type == "date":
        days = pd.to_datetime(series).dt.normalize()
        offsets = ((days - PG_EPOCH.tz_localize(None)) // pd.Timedelta(days=1)).astype("Int64")
        return [None if d is pd.NA else struct.pack(">i", d) for d in offsets]
    if pg_type in _FIXED_WIDTH:
        nulls = series.isna().to_numpy()  # NaN goes in as NULL on this path
        kind = {"boolean": "bool", "double precision": "float64", "real": "float64"}.get(pg_type, "int64")
        filled = series.astype(object).where(~nulls, 0).astype(kind)
        # Sliced from the array's bytes: numpy scalars would give them in native byte order.
        packed = filled.to_numpy().astype(_FIXED_WIDTH[pg_type]).tobytes()
        width = np.dtype(_FIXED_WIDTH[pg_type]).itemsize
        return [None if null else packed[i * width:(i + 1) * width] for i, null in enumerate(nulls)]
    raise ValueError(f"no binary COPY encoding for column {series.name!r} of type {pg_type}")


def copy_frame_binary(connection: sa.Connection, table: str, frame: pd.DataFrame,
                      types: Mapping[str, str]):
    """COPY in binary: vectors travel as float4 bytes, not as decimal text to parse."""
    buffer = io.BytesIO()
    buffer.write(BINARY_HEADER)
    row_head = struct.pack(">h", frame.shape[1])
    for fields in zip(*(_binary_fields(frame[c], types[c]) for c in frame.columns)):
        buffer.write(row_head)
        for field in fields:
            buffer.write(b"\xff\xff\xff\xff" if field is None else struct.pack(">i", len(field)) + field)
    buffer.write(struct.pack(">h", -1))
    buffer.seek(0)
    columns = ", ".join(quote_ident(c) for c in frame.columns)
    connection.connection.dbapi_connection.cursor().copy_expert(
        f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT binary)", buffer
    )


def table_column_types(connection: sa.Connection, table: str) -> dict[str, str]:
    """{column: Postgres type} of an existing table, in column order."""
    return dict(
        connection.exec_driver_sql(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum",
            (table,),
        ).all()
    )


def _vector_dimensions(
    connection: sa.Connection, table_slice: TableSlice, frame: pd.DataFrame, types: dict[str, str]
) -> bool:
    """Fixes each declared `vector` column to its vectors' length, against the table's if it
    exists. False when some vector column's length cannot be known (no rows, no table)."""
    existing = table_column_types(connection, qualified_name(table_slice)) if _table_exists(
        connection, table_slice) else {}
    known = True
    for column, pg_type in types.items():
        if not pg_type.startswith("vector"):
            continue
        lengths = {len(v) for v in frame[column] if v is not None}
        if len(lengths) > 1:
            raise ValueError(f"{table_slice.table}.{column}: vectors of lengths {sorted(lengths)}")
        if lengths:
            types[column] = f"vector({lengths.pop()})"
        if column in existing:
            if types[column] != "vector" and existing[column] != types[column]:
                raise ValueError(
                    f"{qualified_name(table_slice)}.{column} is {existing[column]}, these vectors "
                    f"are {types[column]}: a model with another dimension needs its own table "
                    "(rename or drop the old one first)"
                )
            types[column] = existing[column]
        known = known and types[column] != "vector"
    return known


def _check_inside_window(frame: pd.DataFrame, dimension: TablePartitionDimension, pg_type: str):
    """Rows outside the written window would survive the next re-materialization: refuse them."""
    window = dimension.partitions
    column = dimension.partition_expr
    if not isinstance(window, TimeWindow) or column not in frame.columns or frame.empty:
        return
    if pg_type == "date":
        values = pd.to_datetime(frame[column]).dt.date
        low, high = window.start.date(), window.end.date()
    else:
        values = pd.to_datetime(frame[column], utc=True)
        low, high = pd.Timestamp(window.start), pd.Timestamp(window.end)
    outside = ~((values >= low) & (values < high))
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} row(s) have {column} outside the partition window "
            f"[{window.start.isoformat()}, {window.end.isoformat()}), e.g. "
            f"{frame.loc[outside, column].iloc[0]!r}; they would never be replaced"
        )


def markdown_preview(frame: pd.DataFrame, rows: int = 10) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.head(rows).to_markdown(index=False) if len(frame) else "(no rows)")


def ensure_table(
    connection: sa.Connection,
    table_slice: TableSlice,
    types: Mapping[str, str],
    indexes: Sequence[str] = (),
):
    """Creates the table on first write, with an index on its partition column and the
    `indexes` given as statements with a `{table}` placeholder. A table made by an earlier
    version gains the columns declared since (NULL in its old rows)."""
    table = qualified_name(table_slice)
    if _table_exists(connection, table_slice):
        existing = table_column_types(connection, table)
        for column, pg_type in types.items():
            if column not in existing:
                connection.exec_driver_sql(
                    f"ALTER TABLE {table} ADD COLUMN {quote_ident(column)} {pg_type}"
                )
        return
    columns = ", ".join(f"{quote_ident(c)} {t}" for c, t in types.items())
    connection.exec_driver_sql(f"CREATE TABLE {table} ({columns})")
    for dimension in table_slice.partition_dimensions or []:
        if dimension.partition_expr in types:
            connection.exec_driver_sql(
                f"CREATE INDEX ON {table} ({quote_ident(dimension.partition_expr)})"
            )
    for statement in indexes:
        connection.exec_driver_sql(statement.format(table=table))


def write_frame(
    connection: sa.Connection,
    table_slice: TableSlice,
    frame: pd.DataFrame,
    declared: Mapping[str, str],
    indexes: Sequence[str] = (),
) -> int:
    """COPYs `frame` into the table (types: `declared`, else inferred from the frame); the caller
    has deleted the slice in the same transaction. A declared `vector` takes its dimension from
    the vectors; frames with vectors go in as binary COPY."""
    missing = [c for c in declared if c not in frame.columns]
    if missing:
        raise ValueError(f"{table_slice.table}: the frame lacks declared columns {missing}")
    types = {c: declared.get(c) or _inferred_type(frame[c]) for c in frame.columns}
    for dimension in table_slice.partition_dimensions or []:
        _check_inside_window(frame, dimension, types.get(dimension.partition_expr, ""))
    if any(t.startswith("vector") for t in types.values()):
        ensure_vector_extension(connection)
    if not _vector_dimensions(connection, table_slice, frame, types):
        return 0  # no vectors and no table yet: nothing to write, no dimension to create it with
    ensure_table(connection, table_slice, types, indexes)
    if not len(frame):
        return 0
    table = qualified_name(table_slice)
    if any(t.startswith("vector") for t in types.values()):
        copy_frame_binary(connection, table, frame, types)
    else:
        copy_frame(connection, table, frame, types)
    return len(frame)


def write_relation(
    connection: sa.Connection, table_slice: TableSlice, relation: PostgresRelation, declared: Mapping[str, str]
) -> int:
    """Inserts the relation's rows inside the database: the rows never travel to Python.
    The relation must select only rows of the slice's window, with the declared columns."""
    if not declared:
        raise ValueError(f"{table_slice.table}: a relation output needs dagster/column_schema")
    ensure_table(connection, table_slice, declared)
    columns = ", ".join(quote_ident(c) for c in declared)
    result = connection.exec_driver_sql(
        f"INSERT INTO {qualified_name(table_slice)} ({columns}) "
        f"SELECT {columns} FROM ({relation.sql}) relation"
    )
    return result.rowcount


def write_output(
    connection, table_slice: TableSlice, obj, declared: Mapping[str, str], indexes: Sequence[str] = ()
) -> int:
    if isinstance(obj, PostgresRelation):
        return write_relation(connection, table_slice, obj, declared)
    return write_frame(connection, table_slice, obj, declared, indexes)


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


INDEXES_METADATA = "mushroom/indexes"  # CREATE INDEX statements ({table}) for a new table


class PandasPostgresTypeHandler(DbTypeHandler[pd.DataFrame]):
    def handle_output(self, context: dg.OutputContext, table_slice: TableSlice, obj, connection):
        declared = declared_column_types(context)
        indexes = (context.definition_metadata or {}).get(INDEXES_METADATA, ())
        write_frame(connection, table_slice, obj, declared, indexes)
        shown = obj[[c for c in obj.columns if not declared.get(c, "").startswith("vector")]]
        return {"dagster/row_count": len(obj), "preview": markdown_preview(shown)}

    def load_input(self, context: dg.InputContext, table_slice: TableSlice, connection):
        if not _table_exists(connection, table_slice):
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


INTEGER_TYPES = ("bigint", "integer", "smallint")


def read_frame(connection: sa.Connection, query: str, types: Mapping[str, str]) -> pd.DataFrame:
    """Runs `query` (whose columns have the Postgres `types`) through COPY into a typed frame."""
    selects = []
    for name, pg_type in types.items():
        if pg_type.startswith("timestamp"):
            # Integer microseconds since the epoch: exact, and fast to parse.
            selects.append(
                f"(extract(epoch FROM {quote_ident(name)}) * 1000000)::bigint AS {quote_ident(name)}"
            )
        else:
            selects.append(quote_ident(name))
    buffer = io.StringIO()
    cursor = connection.connection.dbapi_connection.cursor()
    cursor.copy_expert(
        f"COPY (SELECT {', '.join(selects)} FROM ({query}) q) TO STDOUT "
        f"WITH (FORMAT csv, HEADER, NULL '{NULL}')",
        buffer,
    )
    buffer.seek(0)
    floats = {n for n, t in types.items() if t in ("double precision", "real")}
    frame = pd.read_csv(
        buffer,
        dtype={n: "float64" if n in floats else "Int64" if t in INTEGER_TYPES else str
               for n, t in types.items()
               if n in floats or t in ("text", "date", "boolean", *INTEGER_TYPES)
               or t.startswith("vector")},
        keep_default_na=False,
        # Postgres writes NaN as 'NaN'; with NULL as \N the two stay apart everywhere else.
        na_values={n: [NULL, "NaN"] if n in floats else [NULL] for n in types},
    )
    zone = connection.exec_driver_sql("SHOW timezone").scalar()  # the farm's, set per session
    for name, pg_type in types.items():
        column = frame[name]
        if pg_type.startswith("timestamp"):
            frame[name] = pd.to_datetime(column, unit="us", utc=True).dt.tz_convert(zone)
        elif pg_type == "date":
            frame[name] = pd.to_datetime(column).dt.date
        elif pg_type == "boolean":
            frame[name] = column.map({"t": True, "f": False})
        elif pg_type.startswith("vector"):
            frame[name] = column.map(
                lambda v: np.array(v[1:-1].split(","), dtype=np.float32), na_action="ignore"
            )
    return frame


class PostgresPandasIOManager(dg.ConfigurableIOManagerFactory):
    """Stores pandas frames as Postgres tables, one partition slice per write."""

    database: PostgresResource
    schema_: str = Field(default="mushroom", alias="schema", description="schema of the tables")

    def create_io_manager(self, context) -> DbIOManager:
        return DbIOManager(
            type_handlers=[PandasPostgresTypeHandler(), RelationTypeHandler()],
            db_client=PostgresClient(self.database),
            database="warehouse",
            schema=self.schema_,
            io_manager_name="PostgresPandasIOManager",
            default_load_type=pd.DataFrame,
        )



STAGING_SCHEMA = "mushroom_staging"


def _keeper_lock(table: str) -> str:
    # not the table's own write lock (lock_table), which the step takes while filling it
    return f"staging in use: {table}"


def drop_abandoned_staging(database: PostgresResource) -> list[str]:
    """Drops the staging tables no live step holds (see staging_table): what a run killed
    mid-step (kill -9, OOM, a lost node) left behind. Returns their names."""
    with database.begin() as conn:
        tables = [f"{quote_ident(schema)}.{quote_ident(name)}" for schema, name in conn.exec_driver_sql(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = %s", (STAGING_SCHEMA,)
        )]
    dropped = []
    for table in tables:
        with database.begin() as conn:
            if conn.exec_driver_sql("SELECT pg_try_advisory_xact_lock(hashtext(%s))",
                                    (_keeper_lock(table),)).scalar():
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
                dropped.append(table)
    return dropped


@contextmanager
def staging_table(database: PostgresResource, name: str) -> Iterator[str]:
    """The qualified name of a table in mushroom_staging for one step (`name` unique to it), to
    create and fill; dropped on exit. While in use it is held by a session advisory lock on a
    connection of its own, so a process killed mid-step leaves a table nobody holds, and the
    next staging of any step drops it."""
    table = f"{quote_ident(STAGING_SCHEMA)}.{quote_ident(name)}"
    drop_abandoned_staging(database)
    keeper = database.get_engine().connect()
    try:
        # held before the table exists: a table nobody holds is always abandoned
        keeper.exec_driver_sql("SELECT pg_advisory_lock(hashtext(%s))", (_keeper_lock(table),))
        keeper.commit()
        with database.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(STAGING_SCHEMA)}")
        yield table
    finally:
        try:
            with database.begin() as conn:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
            keeper.exec_driver_sql("SELECT pg_advisory_unlock(hashtext(%s))", (_keeper_lock(table),))
            keeper.commit()
        finally:
            keeper.invalidate()  # never back to the pool: no lock can outlive the step
            keeper.close()


@contextmanager
def source_table(
    source: PostgresResource,
    warehouse: PostgresResource,
    table: str,
    columns: Mapping[str, str],
    where: str,
    staging_name: str,
) -> Iterator[str]:
    """A name the warehouse can query for `table`'s rows matching `where`.

    The same database: `table` itself. Another one: its matching rows are copied (binary COPY,
    never parsed in Python) into an unlogged staging table, dropped on exit.
    """
    if source.get_engine().url == warehouse.get_engine().url:
        yield table
        return
    selects = ", ".join(f"{quote_ident(c)}::{t}" for c, t in columns.items())
    with staging_table(warehouse, staging_name) as staged:
        with warehouse.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE UNLOGGED TABLE {staged} "
                f"({', '.join(f'{quote_ident(c)} {t}' for c, t in columns.items())})"
            )
            _stream_copy(
                source, f"COPY (SELECT {selects} FROM {table} WHERE {where}) TO STDOUT WITH (FORMAT binary)",
                conn, f"COPY {staged} FROM STDIN WITH (FORMAT binary)",
            )
        yield staged


def _stream_copy(source: PostgresResource, copy_out: str, target: sa.Connection, copy_in: str) -> None:
    """Pipes one server's COPY … TO STDOUT into another's COPY … FROM STDIN through an OS pipe:
    memory stays at the pipe's buffer whatever the size of the window."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as sink, source.begin() as conn:
                conn.connection.dbapi_connection.cursor().copy_expert(copy_out, sink)
        except BaseException as err:  # re-raised by the consumer, which sees a truncated stream
            failure.append(err)

    producer = threading.Thread(target=produce, name="source-copy", daemon=True)
    producer.start()
    try:
        with os.fdopen(read_fd, "rb") as stream:
            target.connection.dbapi_connection.cursor().copy_expert(copy_in, stream)
    except Exception:
        producer.join()
        if failure:
            raise failure[0] from None
        raise
    producer.join()
    if failure:
        raise failure[0]
