"""Dagster's own storage (runs, event logs, schedules) on dagster-postgres, found from the
project's settings, so every Dagster process (CLI, webserver, daemon, run workers) shares it
without extra variables:

1. MUSHROOM_DAGSTER_STORAGE_URL, when set;
2. else database `dagster` on MUSHROOM_DATABASE_URL's server (created when missing);
3. else database `dagster` on the embedded server under MUSHROOM_HOME.

Concurrent first starts. dagster-postgres creates its tables and stamps `alembic_version` from
whichever process comes first, with nothing but retries between processes
(dagster-io/dagster#27390). Here every process opens the storage under one Postgres advisory
lock (`STORAGE_LOCK_KEY`, held in a transaction of a connection of its own): the first one
creates and stamps the storage, the others wait and find it done. Under the same lock the
storage is checked:

- `alembic_version` holding several identical rows (one revision, written twice): repaired at
  once (one row kept: the table is a set of revisions, a copy adds nothing), with a warning;
- several different revisions: not guessed at. Opening the storage fails with a message giving
  the command, `mushroom-pipeline db repair-storage`, which keeps the oldest revision and
  migrates from it (Dagster's migrations check what exists before changing it).

`mushroom-pipeline db repair-storage` is also the one-shot migrate step that docker compose, the
Helm chart and `make ui` run before the long-running services: repair, create, migrate (as
`dagster instance migrate`), all under the lock.
"""

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
import yaml
from dagster._core.storage.event_log.schema import ConcurrencyLimitsTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage

from mushroom_pipeline import embedded
from mushroom_pipeline.settings import Settings, load_settings

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key of Dagster's storage initialization: b"mushdags" as a bigint
STORAGE_LOCK_KEY = int.from_bytes(b"mushdags", "big", signed=True)
# how long a process waits for another one initializing or migrating the storage
LOCK_TIMEOUT_S = 300
REPAIR_COMMAND = "mushroom-pipeline db repair-storage"


class BrokenStorageError(RuntimeError):
    """Dagster's storage cannot be used as it is; the message says what to run."""


def _redact(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


def _psycopg2(url: str) -> sa.URL:
    # dagster-postgres needs the explicit psycopg2 driver: SQLAlchemy 2.1 would pick psycopg 3.
    return sa.make_url(url).set(drivername="postgresql+psycopg2")


def dagster_storage_url(settings: Settings) -> str:
    explicit = os.environ.get("MUSHROOM_DAGSTER_STORAGE_URL", "").strip()
    if explicit:
        return explicit
    if settings.database_url is None:
        return embedded.server_url(settings.home, embedded.DAGSTER_DATABASE)
    warehouse = _psycopg2(settings.database_url)
    admin = sa.create_engine(
        warehouse,
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": 5},
    )
    try:
        with admin.connect() as conn:
            embedded.create_database(conn, embedded.DAGSTER_DATABASE)
    finally:
        admin.dispose()
    return warehouse.set(database=embedded.DAGSTER_DATABASE).render_as_string(hide_password=False)


# --- the lock ----------------------------------------------------------------------------------

_process_locks: dict[str, threading.RLock] = {}
_held: dict[str, int] = {}  # url -> depth, changed only by the thread holding that url's RLock


@contextlib.contextmanager
def storage_lock(url: str, timeout_s: int = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Held by one process (and one thread) at a time per storage database; re-entrant.

    A transaction-level advisory lock on a connection of its own, open while the body runs:
    released at commit, or by the server when the process dies, and it works through a pooler
    in transaction mode too.
    """
    local = _process_locks.setdefault(url, threading.RLock())
    with local:
        if _held.get(url):
            _held[url] += 1
            try:
                yield
            finally:
                _held[url] -= 1
            return
        engine = sa.create_engine(
            _psycopg2(url), poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 5}
        )
        try:
            with engine.connect() as conn, conn.begin():
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(timeout_s)}s'")
                try:
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (STORAGE_LOCK_KEY,))
                except sa.exc.OperationalError as err:
                    if getattr(err.orig, "pgcode", None) != "55P03":  # lock_not_available
                        raise
                    raise TimeoutError(
                        f"Another process has been initializing or migrating Dagster's storage "
                        f"{_redact(url)} for over {timeout_s} s (it holds advisory lock "
                        f"{STORAGE_LOCK_KEY}: see pg_locks); wait for it or stop it."
                    ) from None
                _held[url] = 1
                try:
                    yield
                finally:
                    _held[url] = 0
        finally:
            engine.dispose()


# --- alembic_version ---------------------------------------------------------------------------


def _alembic_script():
    from alembic.script import ScriptDirectory
    from dagster_postgres.utils import pg_alembic_config

    import dagster_postgres.run_storage.run_storage as run_storage_module

    return ScriptDirectory.from_config(pg_alembic_config(run_storage_module.__file__))


def _ancestry(script, revision: str) -> set[str] | None:
    """`revision` and all its ancestors in the installed Dagster's migrations; None if unknown."""
    from alembic.util import CommandError

    seen: set[str] = set()
    stack = [revision]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        try:
            script_revision = script.get_revision(current)
        except CommandError:
            return None
        if script_revision is None:
            return None
        seen.add(current)
        down = script_revision.down_revision
        stack.extend(down if isinstance(down, tuple) else [down] if down else [])
    return seen


def alembic_revisions(conn: sa.Connection) -> list[str]:
    """The rows of alembic_version (none when the table does not exist yet)."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return []
    return list(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())


def _rewrite(conn: sa.Connection, revision: str) -> None:
    """alembic_version := one row, `revision`, with the primary key Alembic gives it (a table
    without one is how identical rows got in)."""
    conn.exec_driver_sql("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
    conn.exec_driver_sql("DELETE FROM alembic_version")
    conn.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES (%s)", (revision,))
    if not sa.inspect(conn).get_pk_constraint("alembic_version").get("constrained_columns"):
        conn.exec_driver_sql(
            "ALTER TABLE alembic_version"
            " ADD CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)"
        )


def repair_alembic_version(url: str, *, repair_distinct: bool) -> str | None:
    """Checks alembic_version of the storage at `url`; returns what was repaired, or None.

    Identical rows: one kept. Different revisions, only when `repair_distinct` (and they lie on
    one line of the installed Dagster's migrations): the oldest kept, so that a migration
    (`instance.upgrade()`) afterwards re-applies what the newer rows claim; else
    BrokenStorageError with the command to run.
    """
    engine = sa.create_engine(
        _psycopg2(url), poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 5}
    )
    try:
        with engine.begin() as conn:
            rows = alembic_revisions(conn)
            distinct = sorted(set(rows))
            if len(rows) <= 1:
                return None
            where = f"Dagster's storage {_redact(url)}"
            if len(distinct) == 1:
                _rewrite(conn, distinct[0])
                return (
                    f"{where}: alembic_version held {len(rows)} identical rows of revision "
                    f"{distinct[0]} (written twice by processes that started at the same "
                    "moment, dagster-io/dagster#27390); kept one."
                )
            if not repair_distinct:
                raise BrokenStorageError(
                    f"{where} is broken: alembic_version holds {len(rows)} rows of different "
                    f"revisions {', '.join(distinct)} (\"more than one head\"; processes of "
                    "different Dagster versions, or a concurrent first start, wrote it). Repair "
                    f"it, with the same MUSHROOM_* environment, by running: {REPAIR_COMMAND} "
                    "(keeps the oldest revision and migrates from it; in docker compose: "
                    "`docker compose run --rm migrate`)."
                )
            script = _alembic_script()
            ancestries = {revision: _ancestry(script, revision) for revision in distinct}
            unknown = [revision for revision, seen in ancestries.items() if seen is None]
            if unknown:
                raise BrokenStorageError(
                    f"{where}: alembic_version holds revisions {', '.join(distinct)}, and "
                    f"{', '.join(unknown)} is not a migration of the installed Dagster "
                    f"{dg.__version__}: a newer Dagster wrote it. Run {REPAIR_COMMAND} with "
                    "that Dagster version."
                )
            oldest = [r for r in distinct if all(r in ancestries[other] for other in distinct)]
            if not oldest:
                raise BrokenStorageError(
                    f"{where}: alembic_version holds revisions {', '.join(distinct)} on "
                    "different branches of Dagster's migrations; no single one can be kept. "
                    "Restore a backup of the database, or set alembic_version by hand."
                )
            _rewrite(conn, oldest[0])
            return (
                f"{where}: alembic_version held revisions {', '.join(distinct)}; kept the "
                f"oldest, {oldest[0]}, to migrate from."
            )
    finally:
        engine.dispose()


# --- the storage -------------------------------------------------------------------------------


class MushroomEventLogStorage(PostgresEventLogStorage):
    """dagster-postgres' event log, safe on the first use of a concurrency pool by two runs.

    Both see the pool missing and INSERT its row; the loser's IntegrityError is caught by
    Dagster, which then runs its fallback (UPDATE the limit, allocate the slots) in the same,
    already aborted, transaction: the step fails with InFailedSqlTransaction (dagster 1.13).
    Here the fallback runs again in a transaction of its own, the pool's row locked.
    """

    def initialize_concurrency_limit_to_default(self, concurrency_key: str) -> bool:
        try:
            return super().initialize_concurrency_limit_to_default(concurrency_key)
        except sa.exc.DBAPIError:
            default_limit = (
                self._instance.global_op_concurrency_default_limit if self.has_instance else None
            )
            if default_limit is None or not self.has_default_pool_limit_col:
                raise
            with self.index_transaction() as conn:
                row = conn.execute(
                    sa.select(ConcurrencyLimitsTable.c.id)
                    .where(ConcurrencyLimitsTable.c.concurrency_key == concurrency_key)
                    .with_for_update()
                ).first()
                if row is None:  # not the race above: Dagster's own error stands
                    raise
                conn.execute(
                    ConcurrencyLimitsTable.update()
                    .values(limit=default_limit)
                    .where(
                        ConcurrencyLimitsTable.c.concurrency_key == concurrency_key,
                        ConcurrencyLimitsTable.c.limit != default_limit,
                    )
                )
                self._allocate_concurrency_slots(conn, concurrency_key, default_limit)
            return True


class MushroomPostgresStorage(DagsterPostgresStorage):
    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
    ):
        # DagsterPostgresStorage.__init__, with the event log above
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self._run_storage = PostgresRunStorage(postgres_url, should_autocreate_tables)
        self._event_log_storage = MushroomEventLogStorage(postgres_url, should_autocreate_tables)
        self._schedule_storage = PostgresScheduleStorage(postgres_url, should_autocreate_tables)
        super(DagsterPostgresStorage, self).__init__()

    @classmethod
    def config_type(cls):
        return {"postgres_url": dg.Field(dg.StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        url = config_value.get("postgres_url") or dagster_storage_url(load_settings())
        return open_storage(url, inst_data=inst_data)


def open_storage(url: str, inst_data=None) -> MushroomPostgresStorage:
    """The storage at `url`, created, stamped and checked by one process at a time."""
    with storage_lock(url):
        repaired = repair_alembic_version(url, repair_distinct=False)
        if repaired:
            log.warning("Repaired %s", repaired)
        return MushroomPostgresStorage(postgres_url=url, inst_data=inst_data)


def repair_and_migrate(url: str, print_fn: Callable[[str], None] = print) -> None:
    """`mushroom-pipeline db repair-storage`: under the lock, repair alembic_version (different
    revisions too), create what is missing and migrate, as `dagster instance migrate` does."""
    with storage_lock(url):
        repaired = repair_alembic_version(url, repair_distinct=True)
        print_fn(f"Repaired {repaired}" if repaired else
                 f"Dagster's storage {_redact(url)}: alembic_version is sound.")
        with tempfile.TemporaryDirectory(prefix="mushroom-migrate-") as home:
            # an instance on exactly this storage, whatever DAGSTER_HOME holds
            config = {
                "storage": {"custom": {"module": __name__, "class": "MushroomPostgresStorage",
                                       "config": {"postgres_url": url}}},
                "telemetry": {"enabled": False},
            }
            (Path(home) / "dagster.yaml").write_text(yaml.safe_dump(config))
            with dg.DagsterInstance.from_config(home) as instance:
                instance.upgrade(print_fn)
        print_fn(f"Dagster's storage {_redact(url)} is migrated to Dagster {dg.__version__}.")


def _storage_variable(settings: Settings) -> str:
    if os.environ.get("MUSHROOM_DAGSTER_STORAGE_URL", "").strip():
        return "MUSHROOM_DAGSTER_STORAGE_URL"
    return "MUSHROOM_DATABASE_URL" if settings.database_url else "MUSHROOM_HOME"


def repair_storage(settings: Settings, print_fn: Callable[[str], None] = print) -> None:
    """The storage of `settings` repaired and migrated; BrokenStorageError says what to fix."""
    variable = _storage_variable(settings)
    try:
        repair_and_migrate(dagster_storage_url(settings), print_fn)
    except sa.exc.ArgumentError as err:
        raise BrokenStorageError(f"{err}: fix {variable}") from None
    except TimeoutError as err:
        raise BrokenStorageError(str(err)) from None
    except sa.exc.OperationalError as err:
        reason = str(err.orig or err).strip().splitlines()[0]
        raise BrokenStorageError(
            f"Dagster's storage cannot be reached: {reason}. Check that the server is running, "
            f"or fix {variable}."
        ) from None
