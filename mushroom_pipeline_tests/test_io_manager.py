"""The partition-aware Postgres I/O manager against the real embedded Postgres."""

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.io_manager import PostgresPandasIOManager

from .conftest import TEST_HOME
from .helpers import failure_text, range_tags

SHANGHAI = ZoneInfo("Asia/Shanghai")
partitions = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="Asia/Shanghai")
SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("at", "timestamptz"),
        dg.TableColumn("room", "text"),
        dg.TableColumn("value", "double precision"),
    ]
)


def rows_for(window: dg.TimeWindow, version: float) -> pd.DataFrame:
    """Six rows per local day, at local 00:00, 04:00, …, 20:00."""
    times = pd.date_range(window.start, window.end, freq="4h", inclusive="left")
    return pd.DataFrame({"at": times, "room": "room 'A'", "value": version})


@dg.asset(
    partitions_def=partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "at", "dagster/column_schema": SCHEMA},
    config_schema={"version": float, "fail": bool, "outside": bool},
)
def measurements(context: dg.AssetExecutionContext) -> pd.DataFrame:
    frame = rows_for(context.partition_time_window, context.op_execution_context.op_config["version"])
    if context.op_execution_context.op_config["outside"]:
        frame.loc[0, "at"] = context.partition_time_window.end
    if context.op_execution_context.op_config["fail"]:
        # COPY fails on the last row, after the old slice was deleted in the same transaction
        frame["value"] = frame["value"].astype(object)
        frame.loc[len(frame) - 1, "value"] = "not a number"
    return frame


@dg.asset(partitions_def=partitions, io_manager_key="memory")
def measurement_count(measurements: pd.DataFrame) -> int:
    return len(measurements)


def resources():
    database = PostgresResource(home=str(TEST_HOME), timezone="Asia/Shanghai")
    io_managers = {"io_manager": PostgresPandasIOManager(database=database), "memory": dg.InMemoryIOManager()}
    return io_managers, database


def materialize(*, key=None, start=None, end=None, version=1.0, fail=False, outside=False):
    io_resources, _ = resources()
    tags = {}
    if start:
        tags = range_tags(start, end)
    config = {"ops": {"measurements": {"config": {"version": version, "fail": fail, "outside": outside}}}}
    return dg.materialize(
        [measurements],
        partition_key=key,
        tags=tags,
        run_config=config,
        resources=io_resources,
        raise_on_error=False,
    )


def table(database: PostgresResource) -> pd.DataFrame:
    with database.begin() as conn:
        return pd.read_sql_query(
            "SELECT at, room, value FROM mushroom.measurements ORDER BY at", conn
        )


def local(day: str, hour: int = 0) -> pd.Timestamp:
    return pd.Timestamp(dt.datetime.fromisoformat(day).replace(hour=hour, tzinfo=SHANGHAI))


def test_one_partition_is_the_local_day(warehouse):
    result = materialize(key="2026-01-13")
    assert result.success
    rows = table(resources()[1])
    assert len(rows) == 6
    # Asia/Shanghai is UTC+8: the day starts at 16:00 UTC the evening before
    assert rows["at"].min() == local("2026-01-13") == pd.Timestamp("2026-01-12 16:00", tz="UTC")
    assert rows["at"].max() < local("2026-01-14")
    assert rows["room"].eq("room 'A'").all()
    materialization = result.asset_materializations_for_node("measurements")[0]
    assert materialization.metadata["dagster/row_count"].value == 6


def test_rematerializing_replaces_exactly_the_partition(warehouse):
    assert materialize(key="2026-01-13", version=1).success
    assert materialize(key="2026-01-14", version=1).success
    assert materialize(key="2026-01-13", version=2).success
    rows = table(resources()[1])
    assert len(rows) == 12  # no duplicates
    by_day = rows.groupby(rows["at"].dt.tz_convert(SHANGHAI).dt.date)["value"].agg(set)
    assert by_day.to_dict() == {dt.date(2026, 1, 13): {2.0}, dt.date(2026, 1, 14): {1.0}}


def test_a_range_runs_once_and_replaces_the_range(warehouse):
    assert materialize(key="2026-01-11", version=1).success
    assert materialize(key="2026-01-15", version=1).success
    result = materialize(start="2026-01-12", end="2026-01-14", version=3)
    assert result.success
    assert len(result.get_step_success_events()) == 1  # one step for three days
    rows = table(resources()[1])
    assert len(rows) == 5 * 6
    days = rows.groupby(rows["at"].dt.tz_convert(SHANGHAI).dt.date)["value"].first()
    assert days.to_dict() == {
        dt.date(2026, 1, 11): 1.0,
        dt.date(2026, 1, 12): 3.0,
        dt.date(2026, 1, 13): 3.0,
        dt.date(2026, 1, 14): 3.0,
        dt.date(2026, 1, 15): 1.0,
    }


def test_a_failed_write_leaves_the_previous_rows(warehouse):
    assert materialize(key="2026-01-13", version=1).success
    result = materialize(key="2026-01-13", version=2, fail=True)
    assert not result.success
    rows = table(resources()[1])
    assert len(rows) == 6 and rows["value"].eq(1.0).all()


def test_rows_outside_the_partition_are_refused(warehouse):
    assert materialize(key="2026-01-13", version=1).success
    result = materialize(key="2026-01-13", version=2, outside=True)
    assert not result.success
    assert "outside the partition window" in failure_text(result)
    assert table(resources()[1])["value"].eq(1.0).all()


def test_an_empty_partition_creates_the_table_and_loads_empty(warehouse):
    io_resources, database = resources()

    @dg.asset(
        name="measurements",
        partitions_def=partitions,
        metadata={"partition_expr": "at", "dagster/column_schema": SCHEMA},
    )
    def empty_measurements() -> pd.DataFrame:
        return pd.DataFrame({"at": pd.Series([], dtype="datetime64[us, UTC]"), "room": [], "value": []})

    result = dg.materialize(
        [empty_measurements, measurement_count], partition_key="2026-01-13", resources=io_resources
    )
    assert result.success
    assert result.output_for_node("measurement_count") == 0
    assert table(database).empty


def test_loading_gives_typed_frames_in_the_farm_timezone(warehouse):
    assert materialize(key="2026-01-13").success
    io_resources, _ = resources()
    result = dg.materialize(
        [measurements, measurement_count],
        selection=[measurement_count],
        partition_key="2026-01-13",
        resources=io_resources,
    )
    assert result.output_for_node("measurement_count") == 6


def test_timestamps_without_timezone_are_refused(warehouse):
    @dg.asset(name="naive", metadata={})
    def naive() -> pd.DataFrame:
        return pd.DataFrame({"at": pd.to_datetime(["2026-01-13 00:00"])})

    io_resources, _ = resources()
    with pytest.raises(Exception, match="without a timezone"):
        dg.materialize([naive], resources=io_resources)


def test_frames_with_vectors_round_trip_through_binary_copy(warehouse):
    from dagster._core.storage.db_io_manager import TableSlice

    from mushroom_pipeline.warehouse.frames import read_frame
    from mushroom_pipeline.warehouse.io_manager import replace_table_slice

    types = {"day": "date", "at": "timestamptz", "name": "text", "n": "bigint", "k": "integer",
             "x": "double precision", "ok": "boolean", "v": "vector", "w": "vector"}
    frame = pd.DataFrame({
        "day": [dt.date(2026, 1, 13), None],
        "at": pd.to_datetime(["2026-01-13 10:00:00.123456+08:00", None], utc=True, format="ISO8601"),
        "name": ["caps 'é'", None],
        "n": pd.array([2**62 + 1, None], dtype="Int64"),
        "k": pd.array([-320, None], dtype="Int64"),
        "x": [1.5, None],
        "ok": pd.array([True, None], dtype="boolean"),
        "v": [np.array([0.25, -1e-7, 3.4e38], np.float32), np.array([0, 1, 2], np.float32)],
        "w": [np.array([np.pi, 1e-45], np.float32), None],
    })
    written = replace_table_slice(warehouse, TableSlice(table="vectors", schema="mushroom"), frame, types)
    assert written == 2
    database = resources()[1]
    with database.begin() as conn:
        back = read_frame(conn, "SELECT * FROM mushroom.vectors ORDER BY n NULLS LAST",
                          {**types, "v": "vector(3)", "w": "vector(2)"})
    assert back.loc[0, ["day", "name", "n", "k", "x", "ok"]].tolist() == [
        dt.date(2026, 1, 13), "caps 'é'", 2**62 + 1, -320, 1.5, True]
    assert back.loc[0, "at"] == pd.Timestamp("2026-01-13 02:00:00.123456", tz="UTC")
    assert back.loc[1, ["day", "name", "n", "k", "x", "ok", "at"]].isna().all()
    np.testing.assert_array_equal(np.stack(back["v"]), np.stack(frame["v"]))
    assert back.loc[0, "w"].dtype == np.float32 and pd.isna(back.loc[1, "w"])
    np.testing.assert_array_equal(back.loc[0, "w"], frame.loc[0, "w"])


@pytest.mark.parametrize("kind", ["frame", "relation"])
def test_a_new_table_is_loaded_first_and_indexed_after_with_every_index(warehouse, kind):
    """The partition column's index and the declared ones exist after the first write (built
    once the rows are in), for frames and relations alike, and later writes add none."""
    from dagster._core.storage.db_io_manager import TablePartitionDimension, TableSlice

    from mushroom_pipeline.warehouse.io_manager import replace_table_slice
    from mushroom_pipeline.warehouse.sql import PostgresRelation

    from .helpers import query

    types = {"at": "timestamptz", "room": "text", "value": "double precision"}
    day = dt.datetime(2026, 1, 13, tzinfo=dt.UTC)
    window = dg.TimeWindow(day, day + dt.timedelta(days=1))
    table_slice = TableSlice(table="indexed", schema="mushroom",
                             partition_dimensions=[TablePartitionDimension("at", window)])
    rows = pd.DataFrame({"at": pd.date_range(day, periods=5, freq="h"), "room": "607",
                         "value": np.arange(5.0)})
    source = (PostgresRelation("SELECT g * interval '1 hour' + '2026-01-13T00:00Z'::timestamptz "
                               "AS at, '607' AS room, g::float8 AS value FROM generate_series(0, 4) g")
              if kind == "relation" else rows)
    unique_rooms = "CREATE UNIQUE INDEX ON {table} (room, at)"
    for _ in range(2):
        assert replace_table_slice(warehouse, table_slice, source, types, [unique_rooms]) == 5
    indexes = sorted(query(warehouse, "SELECT indexdef FROM pg_indexes WHERE tablename = 'indexed'")
                     ["indexdef"].str.extract(r"USING btree \((.*)\)")[0])
    assert indexes == ["at", "room, at"]
    assert query(warehouse, "SELECT count(*) AS n FROM mushroom.indexed")["n"][0] == 5


@dg.asset(
    partitions_def=partitions,
    metadata={"partition_expr": "at", "dagster/column_schema": SCHEMA},
    config_schema={"after_hour": int, "room": str, "fail": bool},
    name="measurements",
)
def measurements_tail(context: dg.AssetExecutionContext):
    """The day's rows after `after_hour` only, for `room`: an incremental run's output."""
    from mushroom_pipeline.warehouse.tables import SliceTail

    config = context.op_execution_context.op_config
    window = context.partition_time_window
    after = window.start + dt.timedelta(hours=config["after_hour"])
    frame = rows_for(window, 9.0)
    frame = frame[frame["at"] > after].assign(room=config["room"])
    if config["fail"]:
        frame["value"] = frame["value"].astype(object)
        frame.iloc[-1, frame.columns.get_loc("value")] = "not a number"
    return SliceTail(frame, "at > %(after)s AND room = %(room)s",
                     {"after": after, "room": config["room"]})


def test_a_slice_tail_replaces_only_its_rows_with_bound_values_and_a_failure_keeps_them(warehouse):
    """Rows of the day up to the watermark stay; the tail's are replaced, never duplicated; its
    values (a quote, a `%`) are bound; a failed tail write keeps every row."""
    assert materialize(key="2026-01-13", version=1).success
    database = resources()[1]
    room = "room 'A'"  # the rows' own room: a quote in a bound value
    run = {"after_hour": 11, "room": room, "fail": False}

    def tail(**config):
        return dg.materialize([measurements_tail], partition_key="2026-01-13", resources=resources()[0],
                              run_config={"ops": {"measurements": {"config": {**run, **config}}}},
                              raise_on_error=False)

    result = tail()
    assert result.success
    rows = table(database)
    assert len(rows) == 6
    assert rows.groupby(rows["at"] > local("2026-01-13", 11))["value"].agg(set).to_dict() == {
        False: {1.0}, True: {9.0}}
    metadata = result.asset_materializations_for_node("measurements")[0].metadata
    assert metadata["rows_written"].value == 3
    assert metadata["replaced_where"].value == "at > %(after)s AND room = %(room)s"

    assert not tail(after_hour=3, fail=True).success
    pd.testing.assert_frame_equal(table(database), rows)

    # another room's tail leaves this room's rows alone: 6 + its 4 rows after 07:00
    assert tail(after_hour=7, room="50% humidity room").success
    after = table(database)
    assert after.groupby("room")["value"].agg(lambda v: sorted(v)).to_dict() == {
        "50% humidity room": [9.0] * 4, room: [1.0] * 3 + [9.0] * 3}


AMSTERDAM = "Europe/Amsterdam"
dst_partitions = dg.DailyPartitionsDefinition(start_date="2026-03-01", timezone=AMSTERDAM)


def day_partitions(database: PostgresResource, table: str) -> pd.DataFrame:
    """The partitions of `table`: name and bounds, by name."""
    from .helpers import query

    return query(database, """
        SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bounds
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = %(table)s::regclass ORDER BY 1""", table=table)


@dg.asset(
    partitions_def=dst_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "at", "dagster/column_schema": SCHEMA,
              "mushroom/partitioned_by_day": True},
    config_schema={"version": float, "fail": bool},
    name="daily_swapped",
)
def daily_swapped(context: dg.AssetExecutionContext) -> pd.DataFrame:
    config = context.op_execution_context.op_config
    frame = rows_for(context.partition_time_window, config["version"])
    if config["fail"]:
        frame["value"] = frame["value"].astype(object)
        frame.loc[len(frame) - 1, "value"] = "not a number"
    return frame


def test_a_table_partitioned_by_day_swaps_each_days_partition(warehouse):
    """One Postgres partition per farm day (the 23-hour DST day included), created by a range
    run; a re-run of one day swaps only its partition; a failed re-run keeps every row."""
    from .helpers import query

    database = PostgresResource(home=str(TEST_HOME), timezone=AMSTERDAM)
    io_managers = {"io_manager": PostgresPandasIOManager(database=database)}

    def run(version, fail=False, **partition):
        return dg.materialize([daily_swapped], resources=io_managers, raise_on_error=False,
                              run_config={"ops": {"daily_swapped": {"config": {
                                  "version": version, "fail": fail}}}}, **partition)

    assert run(1.0, tags=range_tags("2026-03-28", "2026-03-30")).success
    assert run(2.0, partition_key="2026-03-29").success
    partitions = day_partitions(database, "mushroom.daily_swapped")
    assert list(partitions["name"]) == ["daily_swapped_20260328", "daily_swapped_20260329",
                                        "daily_swapped_20260330"]
    # in a schema of their own: mushroom lists only the tables users read
    assert set(query(database, "SELECT schemaname FROM pg_tables WHERE tablename LIKE "
                     "'daily\\_swapped%%'")["schemaname"]) == {"mushroom", "mushroom_days"}
    assert query(database, "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'mushroom' "
                 "AND tablename LIKE 'daily\\_swapped%%'")["n"][0] == 1
    # 2026-03-29 lasts 23 hours in Amsterdam: midnight +01:00 to midnight +02:00 (shown in the
    # session's timezone, the farm's)
    assert partitions["bounds"][1] == ("FOR VALUES FROM ('2026-03-29 00:00:00+01') "
                                       "TO ('2026-03-30 00:00:00+02')")
    # every day's partition has the time index, built when it was attached
    assert query(database, "SELECT count(*) AS n FROM pg_indexes WHERE tablename LIKE "
                 "'daily\\_swapped\\_2026%%'")["n"][0] == 3

    def values():
        rows = query(database, "SELECT at, value FROM mushroom.daily_swapped ORDER BY at")
        local_day = pd.to_datetime(rows["at"], utc=True).dt.tz_convert(AMSTERDAM).dt.date.astype(str)
        return rows.groupby(local_day)["value"].agg(lambda v: (len(v), sorted(set(v)))).to_dict()

    expected = {"2026-03-28": (6, [1.0]), "2026-03-29": (6, [2.0]), "2026-03-30": (6, [1.0])}
    assert values() == expected
    assert not run(3.0, fail=True, partition_key="2026-03-29").success
    assert values() == expected
    assert query(database, "SELECT count(*) AS n FROM pg_tables WHERE tablename LIKE "
                 "'%%\\_\\_%%'")["n"][0] == 0  # no staging or __new table left


@dg.asset(
    partitions_def=dst_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "mushroom/partitioned_by_day": True,
              "dagster/column_schema": dg.TableSchema(columns=[
                  dg.TableColumn("day", "date"), dg.TableColumn("value", "double precision")])},
    config_schema={"version": float},
    name="daily_dated",
)
def daily_dated(context: dg.AssetExecutionContext) -> pd.DataFrame:
    window = context.partition_time_window
    days = pd.date_range(window.start, window.end, freq="D", inclusive="left").date
    version = context.op_execution_context.op_config["version"]
    return pd.DataFrame({"day": np.repeat(days, 2), "value": version})


def test_a_date_column_is_partitioned_by_the_farm_days_dates(warehouse):
    """A DATE partition column (setpoint_snapshots' `day`) gets date bounds, one farm day each
    (the window's local midnights, which Postgres reads as their dates),
    across the 23-hour DST day; a re-run swaps its day only."""
    from .helpers import query

    database = PostgresResource(home=str(TEST_HOME), timezone=AMSTERDAM)
    io_managers = {"io_manager": PostgresPandasIOManager(database=database)}

    def run(version, **partition):
        return dg.materialize([daily_dated], resources=io_managers, run_config={
            "ops": {"daily_dated": {"config": {"version": version}}}}, **partition)

    assert run(1.0, tags=range_tags("2026-03-28", "2026-03-30")).success
    assert run(2.0, partition_key="2026-03-29").success
    partitions = day_partitions(database, "mushroom.daily_dated")
    assert list(partitions["bounds"]) == [
        "FOR VALUES FROM ('2026-03-28') TO ('2026-03-29')",
        "FOR VALUES FROM ('2026-03-29') TO ('2026-03-30')",
        "FOR VALUES FROM ('2026-03-30') TO ('2026-03-31')"]
    stored = query(database, "SELECT day::text AS day, value FROM mushroom.daily_dated ORDER BY 1, 2")
    assert stored.groupby("day")["value"].agg(list).to_dict() == {
        "2026-03-28": [1.0, 1.0], "2026-03-29": [2.0, 2.0], "2026-03-30": [1.0, 1.0]}
    # no index on the date: each day's table holds one value of it, and partition pruning finds it
    assert query(database, "SELECT count(*) AS n FROM pg_indexes WHERE tablename LIKE "
                 "'daily\\_dated%%'")["n"][0] == 0


def test_a_table_made_unpartitioned_by_an_earlier_version_keeps_its_rows_and_the_delete(warehouse):
    from .helpers import query

    database = PostgresResource(home=str(TEST_HOME), timezone=AMSTERDAM)
    with database.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS mushroom; CREATE TABLE "
                             "mushroom.daily_swapped (at timestamptz, room text, value float8)")
    io_managers = {"io_manager": PostgresPandasIOManager(database=database)}
    for key in ("2026-03-28", "2026-03-29", "2026-03-29"):
        assert dg.materialize([daily_swapped], resources=io_managers, partition_key=key, run_config={
            "ops": {"daily_swapped": {"config": {"version": 1.0, "fail": False}}}}).success
    assert query(database, "SELECT count(*) AS n FROM mushroom.daily_swapped")["n"][0] == 12
    assert query(database, "SELECT relkind FROM pg_class WHERE oid = "
                 "'mushroom.daily_swapped'::regclass")["relkind"][0] == "r"
