"""What the benchmarks share: an embedded Postgres of their own, timed Dagster runs."""

import atexit
import collections
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence

os.environ["MUSHROOM_HOME"] = tempfile.mkdtemp(prefix="mushroom-bench-")
os.environ.setdefault("MUSHROOM_START_DATE", "2024-01-01")
for variable in ("MUSHROOM_DATABASE_URL", "MUSHROOM_SOURCE_DATABASE_URL", "MUSHROOM_TIMEZONE",
                 "MUSHROOM_SETPOINT_CONFIG"):
    os.environ.pop(variable, None)

import dagster as dg  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from mushroom_pipeline import embedded  # noqa: E402
from mushroom_pipeline.definitions import database_resources  # noqa: E402
from mushroom_pipeline.settings import load_settings  # noqa: E402

RESOURCES = database_resources()


@atexit.register
def _remove_server() -> None:
    """The benchmark's own server and its data (gigabytes) go when the benchmark does, finished
    or failed."""
    home = load_settings().home
    embedded.stop(home)
    shutil.rmtree(home, ignore_errors=True)


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


def reset_source(ddl: str) -> None:
    with RESOURCES["source_database"].begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS iot CASCADE; DROP SCHEMA IF EXISTS mushroom CASCADE")
        conn.exec_driver_sql(ddl)


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
