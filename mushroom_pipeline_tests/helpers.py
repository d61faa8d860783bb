"""Shared test helpers: source rows in, Dagster runs, tables out."""

import socket
import time

import dagster as dg
import pandas as pd

from mushroom_pipeline.demo.farm import ENV_TYPES, SETPOINT_TYPES
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.frames import copy_frame


def insert_rows(database: PostgresResource, table: str, types: dict[str, str], rows) -> None:
    """rows: tuples in the order of `types`; a value None is NULL, float('nan') is NaN."""
    rows = list(rows)
    frame = pd.DataFrame(rows, columns=list(types))
    frame["value"] = pd.Series([row[list(types).index("value")] for row in rows], dtype=object)
    time_column = next(c for c, t in types.items() if t == "timestamptz")
    frame[time_column] = pd.to_datetime(frame[time_column], utc=True, format="ISO8601")
    with database.begin() as conn:
        copy_frame(conn, table, frame, types)


def insert_readings(database: PostgresResource, rows) -> None:
    """rows: (room, metric, value, measured_at)."""
    insert_rows(database, "iot.env_readings", ENV_TYPES, rows)


def insert_setpoints(database: PostgresResource, rows) -> None:
    """rows: (room, device, point, value, recorded_at)."""
    insert_rows(database, "iot.device_setpoints", SETPOINT_TYPES, rows)


def query(database: PostgresResource, sql: str, **params) -> pd.DataFrame:
    with database.begin() as conn:
        return pd.read_sql_query(sql, conn, params=params or None)


def range_tags(start: str, end: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every message of the first failed step's error chain."""
    error = result.get_step_failure_events()[0].event_specific_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sensor_tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor=None, **resources):
    """One evaluation of `sensor` with the code location's resources as the daemon gives them
    (`resources` replace some); the result has the run requests and the new cursor."""
    from mushroom_pipeline.definitions import all_resources, defs

    available = {**all_resources(), **resources}
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, repository_def=defs().get_repository_def(),
        sensor_name=sensor.name,
        resources={key: available[key] for key in sensor.required_resource_keys},
    ) as context:
        return sensor.evaluate_tick(context)


def launch_as_sensor(instance: dg.DagsterInstance, sensor_name: str, request: dg.RunRequest,
                     job_name: str) -> dg.ExecuteInProcessResult:
    """Runs a sensor's request as the daemon would: the job of the code location, with the run
    key and sensor tags Dagster sets."""
    from mushroom_pipeline.definitions import defs

    return defs().resolve_job_def(job_name).execute_in_process(
        partition_key=request.partition_key, instance=instance, raise_on_error=False,
        tags={**request.tags, "dagster/sensor_name": sensor_name, "dagster/run_key": request.run_key},
    )


def sleeping_writers(warehouse) -> int:
    return int(query(warehouse, "SELECT count(*) AS n FROM pg_stat_activity "
                                "WHERE wait_event = 'PgSleep'")["n"][0])


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
