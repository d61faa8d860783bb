"""Runs killed mid-write (kill -9) and runs at once on one partition, on the real Postgres: the
previous rows stay until a write commits, nothing is left behind in mushroom_staging, one copy of
the rows in the end; a writer held up by another waits at most the lock timeout, fails clearly
and is retried."""

import logging
import signal
import subprocess
import sys
import threading
import time

import dagster as dg
import pandas as pd

from mushroom_pipeline.definitions import database_resources
from mushroom_pipeline.defs.environment.assets import env_daily_stats, env_readings
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.staging import staging_table

from .helpers import insert_readings, query, sleeping_writers, wait_until

DAY = "2026-01-13"
ASSETS = [env_readings, env_daily_stats]
KILLED_RUN = f"""
import dagster as dg
from mushroom_pipeline.definitions import database_resources
from mushroom_pipeline.defs.environment.assets import env_daily_stats, env_readings
dg.materialize([env_readings, env_daily_stats], partition_key="{DAY}", resources=database_resources())
"""


def readings(hours: range, value: float) -> list[tuple]:
    return [(room, "temperature", value, f"{DAY} {h:02d}:{m:02d}")
            for room in ("607", "608") for h in hours for m in (0, 30)]


def snapshot(warehouse, table: str) -> pd.DataFrame:
    columns = {"env_readings": "room, metric, measured_at, value, source_rows",
               "env_daily_stats": "day, room, metric, n, mean"}[table]
    return query(warehouse, f"SELECT {columns} FROM mushroom.{table} ORDER BY 1, 2, 3")


def staging_tables(warehouse) -> list[str]:
    return query(warehouse, "SELECT tablename FROM pg_tables WHERE schemaname = 'mushroom_staging'"
                 )["tablename"].tolist()


def test_a_staging_table_is_held_while_in_use_then_released_on_a_pooled_connection(warehouse):
    """The keeper's session lock marks the table as in use (another staging leaves it alone);
    on exit the table is dropped, the lock released, and the keeper's connection goes back to
    the pool (a new connection per staged table cost every hourly tick 4 of them)."""
    advisory = ("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    with staging_table(warehouse, "held") as table:
        with warehouse.begin() as conn:
            conn.exec_driver_sql(f"CREATE UNLOGGED TABLE {table} (x int)")
        with staging_table(warehouse, "another"):  # its staging looks for abandoned tables
            assert "held" in staging_tables(warehouse)
        keepers = query(warehouse, advisory)["pid"].tolist()
        assert len(keepers) == 1
    assert staging_tables(warehouse) == []
    assert query(warehouse, advisory).empty
    alive = query(warehouse, f"SELECT pid FROM pg_stat_activity WHERE pid = {keepers[0]}")
    assert alive["pid"].tolist() == keepers  # pooled, not closed


def test_leaving_a_staging_table_after_its_database_went_away_raises_nothing(warehouse):
    """A failed step's generator can be closed by the GC after its run, its server or database
    already gone (seen at the end of a test session): leaving staging_table must not raise then.
    The table went with its database (or the next staging drops it as abandoned)."""
    engine = warehouse.get_engine()
    admin = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    admin.exec_driver_sql("DROP DATABASE IF EXISTS staging_gone")
    admin.exec_driver_sql("CREATE DATABASE staging_gone")
    gone = PostgresResource(
        url=engine.url.set(database="staging_gone").render_as_string(hide_password=False))
    try:
        with staging_table(gone, "left_behind") as table:
            with gone.begin() as conn:
                conn.exec_driver_sql(f"CREATE UNLOGGED TABLE {table} (x int)")
            admin.exec_driver_sql("DROP DATABASE staging_gone WITH (FORCE)")
    finally:
        admin.exec_driver_sql("DROP DATABASE IF EXISTS staging_gone WITH (FORCE)")
        admin.close()


def _killed_then_rerun(warehouse, run: subprocess.Popen, stalled, released, table: str,
                       before: pd.DataFrame, leftover: list[str]) -> None:
    """Kills `run` once `stalled()` says its write is held up inside its transaction, lets the
    orphaned statement end (`released()`), and checks that nothing was committed, what the run
    left in mushroom_staging, and that the next run writes the day whole."""
    try:
        wait_until(stalled, 120, "the run to reach its write")
        run.send_signal(signal.SIGKILL)
        run.wait(10)
    finally:
        run.kill()
    released()
    pd.testing.assert_frame_equal(snapshot(warehouse, table), before)  # rolled back
    assert sorted(name.rsplit("_", 1)[0] for name in staging_tables(warehouse)) == leftover
    assert dg.materialize(ASSETS, partition_key=DAY, resources=database_resources()).success
    after = snapshot(warehouse, "env_readings")
    assert len(after) == 2 * 24 * 2 and sorted(set(after["value"])) == [16.0, 18.0]
    assert staging_tables(warehouse) == []  # the next run dropped what the killed one left


def _first_run_then_late_rows(warehouse, table: str) -> pd.DataFrame:
    insert_readings(warehouse, readings(range(0, 12), 16.0))
    assert dg.materialize(ASSETS, partition_key=DAY, resources=database_resources()).success
    before = snapshot(warehouse, table)
    insert_readings(warehouse, readings(range(12, 24), 18.0))  # late rows: the re-run has work
    return before


def test_a_run_killed_during_a_slice_copy_leaves_the_previous_rows(warehouse):
    before = _first_run_then_late_rows(warehouse, "env_daily_stats")
    # The write stalls inside its statement, after the DELETE of the old slice in the same
    # transaction: that is when the process is killed.
    with warehouse.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION mushroom.stall() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(4); RETURN NULL; END $$; "
            "CREATE TRIGGER stall BEFORE INSERT ON mushroom.env_daily_stats "
            "FOR EACH STATEMENT EXECUTE FUNCTION mushroom.stall()"
        )
    run = subprocess.Popen([sys.executable, "-c", KILLED_RUN], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    def stalled() -> bool:
        if sleeping_writers(warehouse) == 0:
            return False
        pd.testing.assert_frame_equal(snapshot(warehouse, "env_daily_stats"), before)  # not committed
        return True

    def released() -> None:
        wait_until(lambda: sleeping_writers(warehouse) == 0, 30, "the orphaned statement to end")
        with warehouse.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER stall ON mushroom.env_daily_stats; "
                                 "DROP FUNCTION mushroom.stall()")

    _killed_then_rerun(warehouse, run, stalled, released, "env_daily_stats", before, [])


def test_a_run_killed_during_a_day_swap_leaves_the_previous_partition(warehouse):
    """env_readings swaps its day's partition: the run is killed while its DROP of the old
    partition waits for a reader's lock, after its new day was loaded, in the same transaction."""
    before = _first_run_then_late_rows(warehouse, "env_readings")
    partition = f"mushroom_days.env_readings_{DAY.replace('-', '')}"
    reader = warehouse.get_engine().connect()
    transaction = reader.begin()
    reader.exec_driver_sql(f"SELECT count(*) FROM {partition}")  # holds it until the rollback
    run = subprocess.Popen([sys.executable, "-c", KILLED_RUN], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    def dropping() -> int:
        return int(query(warehouse, "SELECT count(*) AS n FROM pg_stat_activity WHERE "
                         "wait_event_type = 'Lock' AND query LIKE %(drop)s",
                         drop=f"DROP TABLE IF EXISTS %env_readings_{DAY.replace('-', '')}%")["n"][0])

    def released() -> None:
        transaction.rollback()
        reader.close()
        wait_until(lambda: dropping() == 0, 30, "the orphaned DROP to end")

    try:
        _killed_then_rerun(warehouse, run, lambda: dropping() > 0, released, "env_readings",
                           before, ["env_classified", "metric_names"])
    finally:
        reader.close()
    assert query(warehouse, "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'mushroom_days' "
                 "AND tablename LIKE '%%\\_\\_%%'")["n"][0] == 0  # no __swap or __new table left


def test_two_runs_of_one_partition_at_once_leave_one_copy(warehouse):
    insert_readings(warehouse, readings(range(0, 24), 16.0))
    barrier = threading.Barrier(2)
    results = []

    def run():
        barrier.wait()
        results.append(dg.materialize(ASSETS, partition_key=DAY, resources=database_resources()))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.success for r in results] == [True, True]
    stored = snapshot(warehouse, "env_readings")
    assert len(stored) == 2 * 24 * 2 and not stored.duplicated(["room", "metric", "measured_at"]).any()
    stats = snapshot(warehouse, "env_daily_stats")
    assert stats[["room", "metric"]].values.tolist() == [["607", "temperature_c"], ["608", "temperature_c"]]
    assert stats["n"].tolist() == [48, 48]


def test_a_write_held_up_by_another_run_fails_after_the_lock_timeout_and_is_retried(
        warehouse, monkeypatch, caplog):
    monkeypatch.setenv("MUSHROOM_LOCK_TIMEOUT_S", "1")
    insert_readings(warehouse, readings(range(0, 24), 16.0))
    holding, release = threading.Event(), threading.Event()

    def backfill_holding_the_table():
        with warehouse.begin() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                 ('"mushroom"."env_daily_stats"',))
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=backfill_holding_the_table)
    holder.start()
    holding.wait(10)

    class BackfillEndsWhenTheWriterGivesUp(logging.Handler):
        """The retry's jittered delay may be well under a second: the backfill commits before
        the failed attempt even raises, so exactly one retry finds the lock free."""

        def emit(self, record):
            if "for the write lock" in record.getMessage() and not release.is_set():
                release.set()
                holder.join()

    ends_the_backfill = BackfillEndsWhenTheWriterGivesUp()
    logging.getLogger("dagster").addHandler(ends_the_backfill)
    started = time.monotonic()
    try:
        result = dg.materialize(ASSETS, partition_key=DAY, resources=database_resources())
    finally:
        logging.getLogger("dagster").removeHandler(ends_the_backfill)
        release.set()
        holder.join()
    assert result.success
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 1 and retried[0].step_key == "env_daily_stats"
    chain, error = [], retried[0].event_specific_data.error
    while error is not None:
        chain.append(error.cls_name)
        error = error.cause or error.context
    assert "WriteLockTimeoutError" in chain
    assert "for the write lock of \"mushroom\".\"env_daily_stats\"" in caplog.text
    assert "MUSHROOM_LOCK_TIMEOUT_S" in caplog.text
    assert time.monotonic() - started < 60  # failed after 1 s, retried after the policy's delay
