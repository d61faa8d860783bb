"""What the benchmarks share: an embedded Postgres of their own, timed Dagster runs."""

import atexit
import collections
import datetime as dt
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence

os.environ["MUSHROOM_HOME"] = tempfile.mkdtemp(prefix="mushroom-bench-")
os.environ.setdefault("MUSHROOM_START_DATE", "2024-01-01")
for variable in ("MUSHROOM_DATABASE_URL", "MUSHROOM_SOURCE_DATABASE_URL", "MUSHROOM_TIMEZONE",
                 "MUSHROOM_SETPOINT_CONFIG"):
    os.environ.pop(variable, None)

import dagster as dg  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from mushroom_pipeline import embedded  # noqa: E402
from mushroom_pipeline.definitions import database_resources  # noqa: E402
from mushroom_pipeline.demo.farm import ENV_TYPES, SOURCE_DDL  # noqa: E402
from mushroom_pipeline.settings import load_settings  # noqa: E402
from mushroom_pipeline.warehouse.frames import copy_frame  # noqa: E402

RESOURCES = database_resources()


@atexit.register
def _remove_server() -> None:
    """The benchmark's own server and its data (gigabytes) go when the benchmark does, finished
    or failed."""
    home = load_settings().home
    embedded.stop(home)
    shutil.rmtree(home, ignore_errors=True)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and the benchmark's Postgres server (the
    postmaster, its live backends, and those that exited, which it reaped): a measure of the
    work that the wall clock's noise on a shared machine leaves alone."""
    import psutil

    own = psutil.Process().cpu_times()
    postmaster = embedded.our_postmaster(load_settings().home.absolute() / "pgdata")
    total = own.user + own.system
    if postmaster is not None:
        times = postmaster.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
        for child in postmaster.children():
            try:
                times = child.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:  # exited meanwhile: counted by the postmaster next time
                pass
    return total


def timed_run(assets, fresh: bool = False, **run) -> float:
    """Seconds of one in-process Dagster run; `fresh`: into empty output tables."""
    if fresh:
        with RESOURCES["warehouse"].begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS mushroom CASCADE")
    began = time.perf_counter()
    result = dg.materialize(assets, resources=RESOURCES, **run)
    assert result.success
    return time.perf_counter() - began


def median_seconds(function, repeats: int) -> float:
    return statistics.median(function() for _ in range(repeats))


def execute_script(connection: sa.Connection, script: str, params: Mapping[str, object]) -> None:
    """Runs a script's statements (each ending with `;` at the end of a line) one by one:
    psycopg 3 binds parameters on the server, which takes one statement at a time."""
    for statement in re.split(r";[ \t]*$", script, flags=re.MULTILINE):
        if statement.strip():
            connection.exec_driver_sql(statement, params)


def reset_source(ddl: str) -> None:
    with RESOURCES["source_database"].begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS iot CASCADE; DROP SCHEMA IF EXISTS mushroom CASCADE")
        conn.exec_driver_sql(ddl)


ENV_METRICS = {"temperature_c": 16.0, "humidity_pct": 90.0, "co2_ppm": 1000.0}


def readings(days: Sequence[dt.date], rooms: int, cadence_s: int, seed: int = 1) -> pd.DataFrame:
    """iot.env_readings rows of `days`: `rooms` × 3 metrics every `cadence_s` seconds."""
    rng = np.random.default_rng(seed)
    frames = []
    for day in days:
        start = pd.Timestamp(day, tz="UTC")
        times = pd.date_range(start, start + pd.Timedelta(days=1), freq=f"{cadence_s}s", inclusive="left")
        for room in range(rooms):
            for metric, mean in ENV_METRICS.items():
                frames.append(pd.DataFrame({
                    "room": f"room {room:03d}", "metric": metric,
                    "value": mean + rng.normal(0, 1, len(times)), "measured_at": times,
                }))
    frame = pd.concat(frames, ignore_index=True)
    # As a farm's feed has them: 0.1 % without a value, 0.1 % out of range, 0.5 % rows sent
    # twice. (The NaN of this float column goes in as NULL: copy_frame writes a float column's
    # NaN as COPY's NULL, so these rows are null_value, not nan_value.)
    spoiled = rng.random(len(frame))
    frame.loc[spoiled < 0.001, "value"] = np.nan
    frame.loc[(spoiled >= 0.001) & (spoiled < 0.002), "value"] = 1e6
    return pd.concat([frame, frame.sample(frac=0.005, random_state=seed)], ignore_index=True)


def load_readings(frames: Iterable[pd.DataFrame]) -> int:
    """iot.env_readings emptied, then filled with `frames`, one COPY each: a generator of day
    frames keeps one day in memory at a time. Returns the rows loaded."""
    reset_source(SOURCE_DDL)
    rows = 0
    for frame in frames:
        with RESOURCES["source_database"].begin() as conn:
            copy_frame(conn, "iot.env_readings", frame, ENV_TYPES)
        rows += len(frame)
    with RESOURCES["source_database"].begin() as conn:
        conn.exec_driver_sql("ANALYZE iot.env_readings")
    return rows


# Each table's rows as an order-free fingerprint: equal fingerprints, equal output. Floats are
# compared to 9 significant digits: a mean summed in another row order differs in its last bit.
FINGERPRINT = "SELECT count(*), sum(hashtext(t::text)::numeric) FROM (SELECT {columns} FROM {table}) t"
FLOAT = "round(({0})::numeric, 9 - ceil(log(greatest(abs(({0})::numeric), 1e-9)))::int)"


def assert_same_tables(compared: Mapping[str, tuple[str, Sequence[str]]],
                       pipeline_schema: str = "mushroom", floor_schema: str = "floor") -> None:
    """Each table of `compared` ({table: (columns compared exactly, float columns)}) holds the
    same rows in the pipeline's schema and the floor's, or the benchmark fails: a floor that
    persisted something else would be no floor."""
    with RESOURCES["warehouse"].begin() as conn:
        for table, (exact, floats) in compared.items():
            columns = ", ".join([exact, *(FLOAT.format(f"nullif({c}, 'NaN')") for c in floats)])
            pipeline, floor = (conn.exec_driver_sql(FINGERPRINT.format(
                columns=columns, table=f"{schema}.{table}")).one()
                for schema in (pipeline_schema, floor_schema))
            assert pipeline == floor, f"{table}: pipeline {pipeline} ≠ floor {floor}"


def print_statement_seconds(assets, partition_key: str, shown: int = 6) -> None:
    """One first run and one re-run of `assets` for `partition_key` with the seconds of each SQL
    statement (SQLAlchemy cursor events; COPY through the raw cursor is not among them), the
    `shown` largest first."""
    seconds: dict[str, float] = collections.defaultdict(float)

    @sa.event.listens_for(sa.Engine, "before_cursor_execute")
    def started(conn, cursor, statement, parameters, context, executemany):
        conn.info["statement_began"] = time.perf_counter()

    @sa.event.listens_for(sa.Engine, "after_cursor_execute")
    def finished(conn, cursor, statement, parameters, context, executemany):
        seconds[re.sub(r"\s+", " ", statement)[:100]] += time.perf_counter() - conn.info.pop("statement_began")

    try:
        for label, fresh in (("first run", True), ("re-run", False)):
            seconds.clear()
            total = timed_run(assets, fresh, partition_key=partition_key)
            print(f"\n## Statements of one {label}: {total:.2f} s in all, "
                  f"{sum(seconds.values()):.2f} s in its {len(seconds)} distinct statements")
            for statement, spent in sorted(seconds.items(), key=lambda item: -item[1])[:shown]:
                print(f"{spent:7.2f} s  {statement}")
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", started)
        sa.event.remove(sa.Engine, "after_cursor_execute", finished)
