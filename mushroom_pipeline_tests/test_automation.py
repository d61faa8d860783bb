"""Definitions load; the schedule asks for yesterday; the late-data sensor asks for exactly the
days whose source rows changed after they were materialized."""

import datetime as dt
import functools
import json

import dagster as dg
import pytest

from mushroom_pipeline.definitions import database_resources, defs
from mushroom_pipeline.defs.automation import requests as request_machinery
from mushroom_pipeline.defs.automation.alerts import AlertWebhookResource
from mushroom_pipeline.defs.environment.assets import env_daily_stats, env_readings
from mushroom_pipeline.defs.environment.schedules import daily_env_stats
from mushroom_pipeline.defs.environment.sensors import late_env_readings_sensor
from mushroom_pipeline.defs.vision import sensors as vision_sensors

from .helpers import (
    insert_readings,
    insert_setpoints,
    launch_as_sensor,
    query,
    sensor_tick,
)


def test_definitions_load():
    dg.Definitions.validate_loadable(defs())
    assert {s.name for s in defs().schedules} >= {"daily_env_stats"}
    for key in ("env_readings", "env_daily_stats"):
        assert defs().resolve_assets_def(key) is not None


def test_the_daily_schedule_requests_yesterday_at_0103():
    assert daily_env_stats.cron_schedule == "3 1 * * *"
    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 1, 14, 1, 3, tzinfo=dt.timezone.utc),
        repository_def=defs().get_repository_def(),
    )
    requests = list(daily_env_stats.evaluate_tick(context).run_requests)
    assert [r.partition_key for r in requests] == ["2026-01-13"]


def test_the_late_data_sensor_requests_the_changed_day_and_nothing_else(warehouse):
    today = dt.datetime.now(dt.timezone.utc).date()
    days = [today - dt.timedelta(days=n) for n in (3, 2, 1)]
    insert_readings(warehouse, [("r1", "temperature_c", 15.0, f"{d} 10:00") for d in days])
    instance = dg.DagsterInstance.ephemeral()
    for day in days:
        assert dg.materialize(
            [env_readings, env_daily_stats], partition_key=day.isoformat(),
            resources=database_resources(), instance=instance,
        ).success

    def tick(cursor=None):
        return sensor_tick(late_env_readings_sensor, instance, cursor)

    assert not tick().run_requests  # nothing arrived late yet

    insert_readings(warehouse, [
        ("r1", "temperature_c", 16.0, f"{days[1]} 11:00"),  # late, for a materialized day
        ("r1", "temperature_c", 16.0, f"{today} 00:30"),  # today: the day is still open
        ("r1", "temperature_c", 16.0, f"{today - dt.timedelta(days=5)} 11:00"),  # never run
    ])
    first = tick()
    assert [r.partition_key for r in first.run_requests] == [days[1].isoformat()]
    assert not tick(first.cursor).run_requests  # already requested: not again


def test_the_clip_schedule_requests_yesterdays_images_at_0302():
    from mushroom_pipeline.defs.vision.schedules import daily_clip_inference

    assert daily_clip_inference.cron_schedule == "2 3 * * *"
    assert daily_clip_inference.job_name == "vision_job"
    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 1, 14, 3, 2, tzinfo=dt.timezone.utc),
        repository_def=defs().get_repository_def(),
    )
    requests = list(daily_clip_inference.evaluate_tick(context).run_requests)
    assert [r.partition_key for r in requests] == ["2026-01-13"]
    # the nightly run covers camera_health too (the new-images sensor asks for the first two)
    assert {"image_manifest", "image_embeddings", "camera_health"} == {
        k.to_user_string() for k in defs().resolve_job_def("vision_job").asset_layer.executable_asset_keys
    }


@dg.asset
def broken_run():
    raise RuntimeError("the warehouse went read-only")


def fail_as_sensor(instance, sensor_name: str, request: dg.RunRequest) -> None:
    """A run of `request` that fails, tagged as the daemon tags a sensor's run."""
    result = dg.materialize([broken_run], instance=instance, raise_on_error=False, tags={
        "dagster/sensor_name": sensor_name, "dagster/run_key": request.run_key})
    assert not result.success


def late_day(warehouse, instance) -> str:
    """A closed day, materialized, that then receives a late reading."""
    day = (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=2)).isoformat()
    insert_readings(warehouse, [("r1", "temperature_c", 15.0, f"{day} 10:00")])
    assert dg.materialize([env_readings, env_daily_stats], partition_key=day,
                          resources=database_resources(), instance=instance).success
    insert_readings(warehouse, [("r1", "temperature_c", 16.0, f"{day} 11:00")])
    return day


def test_a_day_whose_run_failed_is_requested_again_with_backoff_then_alerted(
        warehouse, webhook, monkeypatch):
    url, received = webhook
    instance = dg.DagsterInstance.ephemeral()
    day = late_day(warehouse, instance)
    tick = functools.partial(sensor_tick, late_env_readings_sensor, instance,
                             alert_webhook=AlertWebhookResource(url=url))
    result = tick()
    keys = [result.run_requests[0].run_key]
    assert result.run_requests[0].partition_key == day and keys[0].endswith(":a1")
    fail_as_sensor(instance, "late_env_readings_sensor", result.run_requests[0])
    result = tick(result.cursor)
    assert not result.run_requests  # the first retry waits RETRY_BACKOFF (10 min)
    monkeypatch.setattr(request_machinery, "RETRY_BACKOFF", dt.timedelta(0))
    for attempt in range(2, request_machinery.MAX_ATTEMPTS + 1):
        result = tick(result.cursor)
        assert [r.partition_key for r in result.run_requests] == [day]
        keys.append(result.run_requests[0].run_key)
        fail_as_sensor(instance, "late_env_readings_sensor", result.run_requests[0])
    assert [k.rsplit(":", 1)[1] for k in keys] == ["a1", "a2", "a3", "a4"]
    assert len({k.rsplit(":", 1)[0] for k in keys}) == 1  # one content, four attempts
    assert received == []
    for _ in range(2):
        result = tick(result.cursor)
        assert not result.run_requests  # given up ...
    assert [(a["kind"], a["partition"], a["attempts"]) for a in received] == [
        ("sensor_gave_up", day, 4)]  # ... and said so, once
    # new content starts over, and a run that succeeds ends the requests
    insert_readings(warehouse, [("r1", "temperature_c", 17.0, f"{day} 12:00")])
    result = tick(result.cursor)
    assert [r.run_key.rsplit(":", 1)[1] for r in result.run_requests] == ["a1"]
    assert launch_as_sensor(instance, "late_env_readings_sensor", result.run_requests[0],
                            "environment_job").success
    result = tick(result.cursor)
    assert not result.run_requests and json.loads(result.cursor)["days"] == {}


def test_run_keys_change_when_the_content_comes_back_to_an_earlier_count(warehouse):
    instance = dg.DagsterInstance.ephemeral()
    day = late_day(warehouse, instance)
    first = sensor_tick(late_env_readings_sensor, instance)
    assert launch_as_sensor(instance, "late_env_readings_sensor", first.run_requests[0],
                            "environment_job").success
    assert not sensor_tick(late_env_readings_sensor, instance, first.cursor).run_requests
    # the late row is deleted on purpose and the deletion mirrored, then it arrives again:
    # the same count (2) as the first request
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DELETE FROM iot.env_readings WHERE value = 16.0")
    assert dg.materialize([env_readings, env_daily_stats], partition_key=day, instance=instance,
                          resources=database_resources(), run_config={"ops": {"env_readings": {
                              "config": {"allow_shrink": True}}}}).success
    insert_readings(warehouse, [("r1", "temperature_c", 16.0, f"{day} 11:00")])
    again = sensor_tick(late_env_readings_sensor, instance, first.cursor)
    assert [r.partition_key for r in again.run_requests] == [day]
    assert ":2:" in first.run_requests[0].run_key and ":2:" in again.run_requests[0].run_key
    assert again.run_requests[0].run_key != first.run_requests[0].run_key  # Dagster would skip it


@pytest.mark.parametrize("cursor", ["{not json", '{"2026-01-01": 5}', '{"version": 2, "days": []}'])
def test_a_corrupt_or_old_cursor_starts_afresh_from_the_warehouse(warehouse, cursor, capfd):
    instance = dg.DagsterInstance.ephemeral()
    day = late_day(warehouse, instance)
    result = sensor_tick(late_env_readings_sensor, instance, cursor)
    assert [r.partition_key for r in result.run_requests] == [day]
    assert "unreadable sensor cursor" in capfd.readouterr().err
    assert json.loads(result.cursor)["version"] == request_machinery.CURSOR_VERSION


def test_a_late_setpoint_reruns_its_day_and_the_next_whose_baseline_it_changes(warehouse):
    from mushroom_pipeline.defs.setpoints.assets import (
        setpoint_change_events,
        setpoint_snapshots,
        switch_daily_stats,
    )
    from mushroom_pipeline.defs.setpoints.sensors import late_setpoints_sensor

    today = dt.datetime.now(dt.timezone.utc).date()
    d1, d2 = (today - dt.timedelta(days=n) for n in (3, 2))
    insert_setpoints(warehouse, [("607", "air_cooler_607", "temp_set", 16.0, f"{d1} 10:00"),
                                 ("607", "air_cooler_607", "temp_set", 16.0, f"{d2} 10:00")])
    instance = dg.DagsterInstance.ephemeral()
    for day in (d1, d2):
        assert dg.materialize([setpoint_snapshots, setpoint_change_events, switch_daily_stats],
                              partition_key=day.isoformat(), resources=database_resources(),
                              instance=instance).success
    # late on d1: the operator's change at 23:00 is d2's baseline, and d2's 10:00 a change back
    insert_setpoints(warehouse, [("607", "air_cooler_607", "temp_set", 17.0, f"{d1} 23:00")])
    request, = sensor_tick(late_setpoints_sensor, instance).run_requests
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == (d1.isoformat(), d2.isoformat())
    from mushroom_pipeline.definitions import defs

    assert defs().resolve_job_def("setpoints_job").execute_in_process(
        instance=instance, tags={**request.tags, "dagster/run_key": request.run_key}).success
    events = query(warehouse, "SELECT day, old_value, new_value FROM mushroom.setpoint_change_events "
                              "ORDER BY changed_at")
    assert events.values.tolist() == [[d1, 16.0, 17.0], [d2, 17.0, 16.0]]


def test_an_image_overwritten_twice_gets_a_new_run_key_each_time():
    from mushroom_pipeline.defs.vision.sensors import new_images_sensor
    from mushroom_pipeline.objectstore import LocalObjectStore
    from mushroom_pipeline.settings import load_settings

    store = LocalObjectStore(home=str(load_settings().home), bucket="sensor-test-images")
    day = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    key = f"607/{day:%Y%m%d}/607_cam1_{day:%Y%m%d}080000.jpg"
    instance = dg.DagsterInstance.ephemeral()
    keys, cursor = [], None
    for content in (b"first shot", b"second shot", b"third shot"):
        store.put(key, content)
        result = sensor_tick(new_images_sensor, instance, cursor, object_store=store)
        cursor = result.cursor
        keys += [r.run_key for r in result.run_requests]
    assert len(keys) == 3 and len(set(keys)) == 3


def test_the_new_images_tick_lists_after_the_manifest_and_one_day_in_full_in_turn(warehouse):
    from mushroom_pipeline.definitions import database_resources
    from mushroom_pipeline.defs.vision.manifest import image_manifest
    from mushroom_pipeline.defs.vision.sensors import (
        RESCAN_EVERY_S,
        days_with_new_images,
    )
    from mushroom_pipeline.objectstore import LocalObjectStore
    from mushroom_pipeline.settings import load_settings

    store = LocalObjectStore(home=str(load_settings().home), bucket="tick-cost-images")
    # noon: the ticks tried below (within 3 h) fall on the same date
    now = dt.datetime.combine(dt.datetime.now(dt.timezone.utc).date(), dt.time(12), dt.timezone.utc)
    day = now.date() - dt.timedelta(days=1)

    def key(camera: str, hour: int) -> str:
        return f"607/{day:%Y%m%d}/607_{camera}_{day:%Y%m%d}{hour:02d}0000.jpg"

    for hour in (8, 9):
        store.put(key("cam2", hour), b"shot")
    assert dg.materialize([image_manifest], partition_key=day.isoformat(), resources={
        **database_resources(), "object_store": store}).success
    store.put(key("cam2", 10), b"a new shot")  # sorts after the manifest's last key
    store.put(key("cam1", 10), b"another camera's shot")  # sorts before it
    model = "ViT-B-32/random"
    # a tick whose day in full is another day: only what sorts after the manifest is listed
    other_day = next(now + dt.timedelta(seconds=RESCAN_EVERY_S * n) for n in range(0, 2)
                     if days_in_full(now + dt.timedelta(seconds=RESCAN_EVERY_S * n)) != day)
    fast = days_with_new_images(store, warehouse, model, other_day)
    assert [k for k, _ in fast[day.isoformat()]] == [key("cam2", 10)]
    # the tick whose turn it is to list the day in full finds the other camera's shot too, and
    # the manifest's images, never embedded
    full_tick = next(now + dt.timedelta(seconds=RESCAN_EVERY_S * n) for n in range(0, 30)
                     if days_in_full(now + dt.timedelta(seconds=RESCAN_EVERY_S * n)) == day)
    full = days_with_new_images(store, warehouse, model, full_tick)
    assert [k for k, _ in full[day.isoformat()]] == sorted(
        [key("cam1", 10), key("cam2", 8), key("cam2", 9), key("cam2", 10)])


def days_in_full(now: dt.datetime) -> dt.date:
    """The day a tick at `now` lists in full (the sensor's rotation)."""
    today = now.astimezone(dt.timezone.utc).date()
    days = [today - dt.timedelta(days=n) for n in range(request_machinery.LOOKBACK_DAYS + 1)]
    return days[int(now.timestamp() // vision_sensors.RESCAN_EVERY_S) % len(days)]


def test_a_daily_asset_whose_yesterday_is_missing_after_the_deadline_fails_its_freshness_check(
        warehouse, monkeypatch):
    from mushroom_pipeline.definitions import defs
    from mushroom_pipeline.defs.automation.freshness import freshness_checks

    monkeypatch.setenv("MUSHROOM_FRESH_BY_HOUR", "0")  # the deadline has passed whenever this runs
    checks = freshness_checks([env_readings])
    today = dt.datetime.now(dt.timezone.utc).date()
    instance = dg.DagsterInstance.ephemeral()

    def evaluate() -> dg.AssetCheckEvaluation:
        result = dg.materialize([env_readings, *checks], instance=instance,
                                selection=dg.AssetSelection.checks(*checks),
                                resources=database_resources())
        evaluation, = result.get_asset_check_evaluations()
        return evaluation

    for days_ago in (3, 2):
        assert dg.materialize([env_readings], instance=instance, resources=database_resources(),
                              partition_key=(today - dt.timedelta(days=days_ago)).isoformat()).success
    late = evaluate()
    assert not late.passed and late.severity == dg.AssetCheckSeverity.WARN
    assert late.metadata["expected_partition"].value == (today - dt.timedelta(days=1)).isoformat()
    assert dg.materialize([env_readings], instance=instance, resources=database_resources(),
                          partition_key=(today - dt.timedelta(days=1)).isoformat()).success
    assert evaluate().passed
    # every daily asset carries one, run by a sensor that is on by default
    checked = {key.asset_key.to_user_string() for key in defs().resolve_asset_graph().asset_check_keys
               if key.name == "yesterday_by_deadline"}
    assert checked >= {"env_readings", "env_daily_stats", "setpoint_snapshots",
                       "setpoint_change_events", "switch_daily_stats", "room_batches",
                       "image_manifest", "image_embeddings"}
    # hourly from the deadline, read when the code location loads: the variable set above, else 06:00
    schedule = defs().resolve_schedule_def("freshness_checks")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.cron_schedule == "10 0-23 * * *"
    monkeypatch.delenv("MUSHROOM_FRESH_BY_HOUR")
    assert defs().resolve_schedule_def("freshness_checks").cron_schedule == "10 6-23 * * *"


def test_the_insights_schedule_runs_the_day_before_yesterday_and_yesterday_after_the_stats():
    from mushroom_pipeline.defs.insights.schedules import daily_insights

    assert daily_insights.cron_schedule == "33 1 * * *" and daily_insights.job_name == "insights_job"
    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 1, 14, 1, 33, tzinfo=dt.timezone.utc),
        repository_def=defs().get_repository_def(),
    )
    request, = daily_insights.evaluate_tick(context).run_requests
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == ("2026-01-12", "2026-01-13")
    assert {"setpoint_compliance", "change_responses"} == {
        k.to_user_string() for k in defs().resolve_job_def("insights_job").asset_layer.executable_asset_keys
    }
