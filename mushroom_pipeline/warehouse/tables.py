"""Tables the pipeline writes: column schemas, creation (and columns added since), the write
lock, pgvector, and replacing a slice's rows (or an incremental run's tail of them) with a frame
or an INSERT … SELECT."""

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from dagster._core.storage.db_io_manager import (
    TablePartitionDimension,
    TableSlice,
)

from mushroom_pipeline.warehouse.frames import copy_frame, copy_frame_binary
from mushroom_pipeline.warehouse.sql import (
    PostgresRelation,
    column_definitions,
    qualified_name,
    quote_ident,
    slice_table_exists,
    table_column_types,
    where_clause,
)

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
        if getattr(err.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
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


def _vector_dimensions(
    connection: sa.Connection, table_slice: TableSlice, frame: pd.DataFrame, types: dict[str, str]
) -> bool:
    """Fixes each declared `vector` column to its vectors' length, against the table's if it
    exists. False when some vector column's length cannot be known (no rows, no table)."""
    existing = table_column_types(connection, qualified_name(table_slice)) if slice_table_exists(
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
    if not isinstance(window, dg.TimeWindow) or column not in frame.columns or frame.empty:
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
    *,
    defer_indexes: bool = False,
    by_day: bool = False,
) -> list[str]:
    """Creates the table on first write, with an index on its partition column and the
    `indexes` given as statements with a `{table}` placeholder. A table made by an earlier
    version gains the columns declared since (NULL in its old rows).

    `by_day`: a Postgres table partitioned by range of its time partition column, one partition
    per farm day, replaced by swap_days instead of a DELETE.

    `defer_indexes`: a table created now gets its indexes from the caller after its first load
    (returned, to run in the same transaction): building an index over 1.3 M rows costs a fifth
    of maintaining it row by row (benchmarks/README.md, the environment day)."""
    table = qualified_name(table_slice)
    if slice_table_exists(connection, table_slice):
        existing = table_column_types(connection, table)
        for column, pg_type in types.items():
            if column not in existing:
                connection.exec_driver_sql(
                    f"ALTER TABLE {table} ADD COLUMN {quote_ident(column)} {pg_type}"
                )
        return []
    columns = column_definitions(types)
    partitioning = f" PARTITION BY RANGE ({_time_column(table_slice)})" if by_day else ""
    connection.exec_driver_sql(f"CREATE TABLE {table} ({columns}){partitioning}")
    statements = [
        f"CREATE INDEX ON {table} ({quote_ident(dimension.partition_expr)})"
        for dimension in table_slice.partition_dimensions or []
        if dimension.partition_expr in types
        # a DATE column of a table partitioned by day holds one value per day's table: its index
        # would only cost each write (a tick's 60,000 snapshots: 0.05 s of 0.07 s)
        and not (by_day and types[dimension.partition_expr] == "date")
    ] + [statement.format(table=table) for statement in indexes]
    if defer_indexes:
        return statements
    for statement in statements:
        connection.exec_driver_sql(statement)
    return []


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
    deferred = ensure_table(connection, table_slice, types, indexes, defer_indexes=True)
    table = qualified_name(table_slice)
    if len(frame) and any(t.startswith("vector") for t in types.values()):
        copy_frame_binary(connection, table, frame, types)
    elif len(frame):
        copy_frame(connection, table, frame, types)
    for statement in deferred:
        connection.exec_driver_sql(statement)
    return len(frame)


def write_relation(
    connection: sa.Connection,
    table_slice: TableSlice,
    relation: PostgresRelation,
    declared: Mapping[str, str],
    indexes: Sequence[str] = (),
) -> int:
    """Inserts the relation's rows inside the database: the rows never travel to Python.
    The relation must select only rows of the slice's window, with the declared columns."""
    if not declared:
        raise ValueError(f"{table_slice.table}: a relation output needs dagster/column_schema")
    deferred = ensure_table(connection, table_slice, declared, indexes, defer_indexes=True)
    columns = ", ".join(quote_ident(c) for c in declared)
    result = connection.exec_driver_sql(
        f"INSERT INTO {qualified_name(table_slice)} ({columns}) "
        f"SELECT {columns} FROM ({relation.sql}) relation"
    )
    for statement in deferred:
        connection.exec_driver_sql(statement)
    return result.rowcount


class SliceTail(NamedTuple):
    """An output that replaces only the slice's rows matching `where` (SQL over the table's
    columns, its values bound from `params`), the rest of the slice kept: what an incremental
    run changes. `rows` (frame or relation) must hold only rows matching `where`, or the slice
    would gain duplicates."""

    rows: pd.DataFrame | PostgresRelation
    where: str
    params: Mapping[str, object]


def delete_slice(connection: sa.Connection, table_slice: TableSlice, tail: SliceTail | None = None
                 ) -> None:
    """Deletes the slice's rows (only those matching `tail`'s predicate, when given)."""
    if not slice_table_exists(connection, table_slice):
        return
    table = qualified_name(table_slice)
    clause, params = where_clause(table_slice, table_column_types(connection, table))
    if tail:
        clause, params = f"({clause}) AND ({tail.where})", {**params, **tail.params}
    connection.exec_driver_sql(f"DELETE FROM {table} WHERE {clause}", params)


def replace_slice(
    connection: sa.Connection,
    table_slice: TableSlice,
    obj: pd.DataFrame | PostgresRelation | SliceTail,
    declared: Mapping[str, str],
    indexes: Sequence[str] = (),
    *,
    by_day: bool = False,
) -> int:
    """Replaces the slice's rows (a SliceTail: its tail's rows) with `obj`'s, in the caller's
    transaction, which holds the table's write lock. Returns the rows written. `by_day`: a new
    table is created partitioned by day (ensure_table), and a partitioned table's days are
    swapped (swap_days); a table created unpartitioned by an earlier version keeps the DELETE."""
    tail = obj if isinstance(obj, SliceTail) else None
    rows = tail.rows if tail else obj
    deferred = []
    if by_day and not tail:
        deferred = ensure_table(connection, table_slice, declared, indexes, defer_indexes=True,
                                by_day=True)
    if not tail and _partitioned(connection, qualified_name(table_slice)):
        written = swap_days(connection, table_slice, rows, declared)
        for statement in deferred:  # on the partitioned table: built on each day's table
            connection.exec_driver_sql(statement)
        return written
    delete_slice(connection, table_slice, tail)
    if isinstance(rows, PostgresRelation):
        return write_relation(connection, table_slice, rows, declared, indexes)
    return write_frame(connection, table_slice, rows, declared, indexes)


def _time_column(table_slice: TableSlice) -> str:
    dimensions = [d for d in table_slice.partition_dimensions or []
                  if isinstance(d.partitions, dg.TimeWindow)]
    if len(dimensions) != 1:
        raise ValueError(f"{table_slice.table}: partitioning by day needs one time dimension")
    return quote_ident(dimensions[0].partition_expr)


def _partitioned(connection: sa.Connection, table: str) -> bool:
    return bool(connection.exec_driver_sql(
        "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)", (table,)).scalar())


def _farm_days(window: dg.TimeWindow) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    """The window's days in its own timezone (a farm day lasts 23 or 25 hours across DST:
    adding a day to an aware datetime keeps its wall-clock time)."""
    start = window.start
    while start < window.end:
        end = min(window.end, start + dt.timedelta(days=1))
        yield start, end
        start = end


DAYS_SCHEMA_SUFFIX = "_days"  # mushroom_days: the day partitions of mushroom's tables


def swap_days(connection: sa.Connection, table_slice: TableSlice, rows, declared: Mapping[str, str]
              ) -> int:
    """Replaces each day of the slice's window by swapping its partition: the rows are loaded
    into new day tables (routed through a staging table partitioned as the table is), then per
    day the old partition is dropped and the new one attached, which builds its indexes after
    its load. A re-run thus costs what a first run does, where a DELETE left the day's dead
    rows beside an index maintained row by row (benchmarks/README.md, the environment day).
    Readers wait for the commit from the first swap on (the swaps take the table's exclusive
    lock) and then see the new days; a failure keeps the old ones."""
    table = qualified_name(table_slice)
    column = _time_column(table_slice)
    window = next(d.partitions for d in table_slice.partition_dimensions
                  if isinstance(d.partitions, dg.TimeWindow))
    # the days' tables in a schema of their own: the table's schema lists only the tables users read
    days_schema = f"{table_slice.schema}{DAYS_SCHEMA_SUFFIX}"
    connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(days_schema)}")
    stage = TableSlice(table=f"{table_slice.table}__swap", schema=days_schema,
                       partition_dimensions=table_slice.partition_dimensions)
    staged = qualified_name(stage)
    connection.exec_driver_sql(f"CREATE TABLE {staged} (LIKE {table}) PARTITION BY RANGE ({column})")
    days = []
    for start, end in _farm_days(window):
        # the day's bounds are rendered as window_predicate renders them: DDL takes no parameters
        bounds = f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        name = f"{table_slice.table}_{start:%Y%m%d}"
        new = f"{quote_ident(days_schema)}.{quote_ident(name + '__new')}"
        connection.exec_driver_sql(f"CREATE TABLE {new} PARTITION OF {staged} {bounds}")
        days.append((bounds, name, new))
    if isinstance(rows, PostgresRelation):
        written = write_relation(connection, stage, rows, declared)
    else:
        written = write_frame(connection, stage, rows, declared)
    for bounds, name, new in days:
        connection.exec_driver_sql(f"ALTER TABLE {staged} DETACH PARTITION {new}")
        old = f"{quote_ident(days_schema)}.{quote_ident(name)}"
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {old}")
        connection.exec_driver_sql(f"ALTER TABLE {table} ATTACH PARTITION {new} {bounds}")
        connection.exec_driver_sql(f"ALTER TABLE {new} RENAME TO {quote_ident(name)}")
    connection.exec_driver_sql(f"DROP TABLE {staged}")
    return written
