"""What the benchmarks share: an embedded Postgres of their own, timed Dagster runs."""

import atexit
import os
import shutil
import statistics
import tempfile
import time

os.environ["MUSHROOM_HOME"] = tempfile.mkdtemp(prefix="mushroom-bench-")
os.environ.setdefault("MUSHROOM_START_DATE", "2024-01-01")
for variable in ("MUSHROOM_DATABASE_URL", "MUSHROOM_SOURCE_DATABASE_URL", "MUSHROOM_TIMEZONE",
                 "MUSHROOM_SETPOINT_CONFIG"):
    os.environ.pop(variable, None)

import dagster as dg  # noqa: E402

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
