"""Staging tables in mushroom_staging, held while a step uses them; a source table staged from
another database by streaming COPY."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import sqlalchemy as sa

from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.frames import driver_cursor
from mushroom_pipeline.warehouse.sql import column_definitions, quote_ident

STAGING_SCHEMA = "mushroom_staging"


def _keeper_lock(table: str) -> str:
    # not the table's own write lock (lock_table), which the step takes while filling it
    return f"staging in use: {table}"


def _drop_abandoned(conn: sa.Connection) -> None:
    """Drops, in `conn`'s transaction, the staging tables no live step holds (see
    staging_table): what a run killed mid-step (kill -9, OOM, a lost node) left behind."""
    tables = [f"{quote_ident(schema)}.{quote_ident(name)}" for schema, name in conn.exec_driver_sql(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = %s", (STAGING_SCHEMA,)
    )]
    if not tables:
        return
    # the lock of each table nobody holds, kept until the drops commit
    abandoned = [table for (table,) in conn.exec_driver_sql(
        "SELECT name FROM unnest(%s::text[], %s::text[]) AS t(name, lock) "
        "WHERE pg_try_advisory_xact_lock(hashtext(lock))",
        (tables, [_keeper_lock(table) for table in tables]),
    )]
    for table in abandoned:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")


@contextmanager
def staging_table(database: PostgresResource, name: str) -> Iterator[str]:
    """The qualified name of a table in mushroom_staging for one step (`name` unique to it), to
    create and fill; dropped on exit. While in use it is held by a session advisory lock on a
    connection of its own, the keeper, so a process killed mid-step leaves a table nobody
    holds, and the next staging of any step drops it. The keeper comes from the pool and goes
    back to it (a new connection per staged table cost an hourly tick 4 of them), its lock and
    the table's drop in one transaction each way."""
    table = f"{quote_ident(STAGING_SCHEMA)}.{quote_ident(name)}"
    keeper = database.get_engine().connect()
    try:
        # held before the table exists: a table nobody holds is always abandoned (a table of
        # this name left by a killed try of this step is too: this session's lock is its own)
        keeper.exec_driver_sql("SELECT pg_advisory_lock(hashtext(%s))", (_keeper_lock(table),))
        keeper.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(STAGING_SCHEMA)}")
        _drop_abandoned(keeper)
        keeper.commit()
        yield table
    finally:
        _drop_and_release(keeper, table)


def _drop_and_release(keeper: sa.Connection, table: str) -> None:
    """The table dropped and the keeper's lock released, its connection back to the pool. When
    that cannot be confirmed, the connection is discarded instead, which ends its session and so
    its lock: never back to the pool with it."""
    released = False
    try:
        keeper.rollback()  # when its first transaction failed: the session's lock outlives it
        keeper.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        released = keeper.exec_driver_sql(
            "SELECT pg_advisory_unlock(hashtext(%s))", (_keeper_lock(table),)).scalar()
        keeper.commit()
    except sa.exc.OperationalError:
        # The server or database is gone: a failed step's generator closed late, by the GC,
        # after its run (or its test session) ended. Nothing to drop it with; the table went
        # with its database, or the next staging drops it as abandoned.
        released = False
    finally:
        if not released:
            keeper.invalidate()
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
                f"({column_definitions(columns)})"
            )
            _stream_copy(
                source, f"COPY (SELECT {selects} FROM {table} WHERE {where}) TO STDOUT WITH (FORMAT binary)",
                conn, f"COPY {staged} FROM STDIN WITH (FORMAT binary)",
            )
        yield staged


def _stream_copy(source: PostgresResource, copy_out: str, target: sa.Connection, copy_in: str) -> None:
    """One server's COPY … TO STDOUT written block by block into another's COPY … FROM STDIN:
    memory stays at one block whatever the size of the window. A failed read aborts the write
    (the COPY in is ended with the error), and the exception is raised."""
    with source.begin() as conn, driver_cursor(conn).copy(copy_out) as rows_out, \
            driver_cursor(target).copy(copy_in) as rows_in:
        for block in rows_out:
            rows_in.write(block)
