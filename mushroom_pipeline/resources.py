"""Resources: the Postgres databases (warehouse and the farm's IoT source)."""

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from mushroom_pipeline import embedded
from mushroom_pipeline.retries import UnavailableError


class DatabaseUnavailableError(UnavailableError):
    """The database cannot be reached; the message names the variable that configures it."""


def _redact(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


@functools.cache
def _engine(url: str, variable: str, timezone: str, timeout_s: int, lock_timeout_s: int) -> sa.Engine:
    """One pooled engine per configuration and process, checked by a first connection.

    The check makes a missing or unreachable server fail here, within `timeout_s`, with the
    variable to fix, instead of somewhere deep in a run (the old scheduler hung on a Redis
    that was never deployed).
    """
    # psycopg 3 is the warehouse's driver, whatever the URL names (postgresql+psycopg2:// too):
    # its COPY (binary rows, streamed blocks) carries the bulk loads. Dagster's own storage
    # keeps psycopg2, which dagster-postgres requires (dagster_storage.py).
    parsed = sa.make_url(url).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(
        parsed,
        pool_pre_ping=True,
        connect_args={"connect_timeout": timeout_s, "application_name": "mushroom_pipeline"},
    )

    @sa.event.listens_for(engine, "begin")
    def farm_transaction(connection: sa.Connection) -> None:
        # Set per transaction, not per session (no `options` startup parameter): a pooler in
        # transaction mode (PgBouncer) keeps it, and the server's own timezone plays no part.
        # work_mem: a day's sorts and hashes (percentiles, folding) stay in memory.
        # lock_timeout: a write waiting behind a long backfill fails (and is retried) instead
        # of hanging.
        connection.exec_driver_sql(
            "SELECT set_config('TimeZone', %s, true), set_config('work_mem', '64MB', true), "
            "set_config('lock_timeout', %s, true)",
            (timezone, f"{lock_timeout_s}s"),
        )
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as err:
        engine.dispose()
        reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise DatabaseUnavailableError(
            f"Cannot connect to the database {_redact(parsed)} within {timeout_s} s: {reason}. "
            f"Check that the server is running, or fix {variable}."
        ) from None
    return engine


class PostgresResource(dg.ConfigurableResource):
    """A Postgres database. With no `url`, the embedded server under `home` (database `mushroom`).

    Every transaction runs in the farm's timezone, so `timestamptz::date` is the farm's local day.
    """

    url: str | None = Field(default=None, description="SQLAlchemy URL; unset → embedded server")
    home: str = Field(default=".mushroom", description="MUSHROOM_HOME, for the embedded server")
    timezone: str = Field(default="UTC", description="the farm's IANA timezone")
    url_variable: str = Field(
        default="MUSHROOM_DATABASE_URL", description="named in errors as the variable to fix"
    )
    connect_timeout_s: int = Field(default=5, description="seconds to wait for a connection")
    lock_timeout_s: int = Field(
        default=300, description="MUSHROOM_LOCK_TIMEOUT_S: seconds a statement waits for a lock"
    )

    def get_engine(self) -> sa.Engine:
        return _engine(
            self.url or self._embedded_url(), self.url_variable, self.timezone,
            self.connect_timeout_s, self.lock_timeout_s,
        )

    def _embedded_url(self) -> str:
        """Asked on every use: a server that died is started again (same URL, and the pool's
        pre-ping replaces the dead connections)."""
        try:
            return embedded.server_url(Path(self.home))
        except Exception as err:
            raise DatabaseUnavailableError(
                f"{self.url_variable} is unset, so the embedded Postgres under MUSHROOM_HOME="
                f"{self.home} was started, and that failed: {err}. Set {self.url_variable} to a "
                "Postgres server's URL, or check that MUSHROOM_HOME is writable."
            ) from err

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """A connection in one transaction: committed on success, rolled back on error."""
        with self.get_engine().begin() as conn:
            yield conn
