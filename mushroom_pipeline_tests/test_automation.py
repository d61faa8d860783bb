"""Definitions load; the schedule asks for yesterday; the late-data sensor asks for exactly the
days whose source rows changed after they were materialized."""

import datetime as dt

import dagster as dg

from mushroom_pipeline.automation.schedules import daily_env_stats
from mushroom_pipeline.automation.sensors import late_env_readings_sensor
from mushroom_pipeline.definitions import database_resources, defs
from mushroom_pipeline.environment.assets import env_daily_stats, env_readings

from .helpers import insert_readings


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    assert {s.name for s in defs.schedules} >= {"daily_env_stats"}
    for key in ("env_readings", "env_daily_stats"):
        assert defs.resolve_assets_def(key) is not None


def test_the_daily_schedule_requests_yesterday_at_0103():
    assert daily_env_stats.cron_schedule == "3 1 * * *"
    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 1, 14, 1, 3, tzinfo=dt.timezone.utc),
        repository_def=defs.get_repository_def(),
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
        resources = database_resources()
        with dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            resources={k: resources[k] for k in ("warehouse", "source_database")},
            repository_def=defs.get_repository_def(),
        ) as context:
            return late_env_readings_sensor.evaluate_tick(context)

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
    from mushroom_pipeline.automation.schedules import daily_clip_inference

    assert daily_clip_inference.cron_schedule == "2 3 * * *"
    assert daily_clip_inference.job_name == "vision_job"
    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 1, 14, 3, 2, tzinfo=dt.timezone.utc),
        repository_def=defs.get_repository_def(),
    )
    requests = list(daily_clip_inference.evaluate_tick(context).run_requests)
    assert [r.partition_key for r in requests] == ["2026-01-13"]
    assert {"image_manifest", "image_embeddings"} == {
        k.to_user_string() for k in defs.resolve_job_def("vision_job").asset_layer.executable_asset_keys
    }
