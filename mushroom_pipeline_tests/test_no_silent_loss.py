"""No silent loss: a re-run never deletes what the source merely no longer has.

A day whose source rows were purged (retention) or whose images vanished (an unmounted volume,
a lifecycle rule) fails and changes nothing; `allow_shrink: true` mirrors a deliberate deletion;
images gone from the store keep their rows, marked `missing_since`; the late-data sensor never
turns a purge into a re-run.
"""

import datetime as dt

import dagster as dg
import pytest

from mushroom_pipeline.definitions import database_resources
from mushroom_pipeline.defs.environment.assets import env_daily_stats, env_readings
from mushroom_pipeline.defs.environment.sensors import late_env_readings_sensor
from mushroom_pipeline.defs.setpoints.assets import setpoint_snapshots
from mushroom_pipeline.defs.vision.embeddings import image_embeddings
from mushroom_pipeline.defs.vision.manifest import image_manifest

from .helpers import failure_text, insert_readings, insert_setpoints, query, sensor_tick
from .test_vision import DAY, key, photo, resources, tiny_clip  # noqa: F401 (fixture)

READINGS_DAY = "2026-01-13"


def materialize(assets, partition, res=None, allow_shrink=False, instance=None):
    config = {"ops": {a.op.name: {"config": {"allow_shrink": True}} for a in assets
                      if a.op.name in ("env_readings", "setpoint_snapshots", "image_manifest")}}
    return dg.materialize(
        assets, partition_key=partition, resources=res or database_resources(),
        run_config=config if allow_shrink else None, raise_on_error=False, instance=instance,
    )


def counts(warehouse, *tables) -> list[int]:
    return [int(query(warehouse, f"SELECT count(*) AS n FROM mushroom.{t}")["n"][0]) for t in tables]


@pytest.mark.parametrize("purge", ["all", "part"])
def test_a_purged_source_day_fails_and_keeps_the_stored_rows(warehouse, purge):
    insert_readings(warehouse, [("r1", "temperature_c", 15.0 + n / 10, f"{READINGS_DAY} {n:02d}:00")
                                for n in range(24)] + [("r1", "temperature_c", None, f"{READINGS_DAY} 12:30")])
    assert materialize([env_readings, env_daily_stats], READINGS_DAY).success
    tables = ("env_readings", "env_readings_quarantine", "env_daily_stats")
    before = counts(warehouse, *tables)
    assert before == [24, 1, 1]

    with warehouse.begin() as conn:  # retention deletes the day, or its first half
        conn.exec_driver_sql("DELETE FROM iot.env_readings WHERE measured_at::date = %s"
                             + (" AND extract(hour FROM measured_at) < 12" if purge == "part" else ""),
                             (READINGS_DAY,))
    result = materialize([env_readings, env_daily_stats], READINGS_DAY)
    assert not result.success
    message = failure_text(result)
    assert "fewer rows" in message and "allow_shrink: true" in message and READINGS_DAY in message
    assert counts(warehouse, *tables) == before  # nothing deleted
    # not retried: a purge does not come back by waiting
    assert len([e for e in result.all_events if e.event_type_value == "STEP_RESTARTED"]) == 0

    mirrored = materialize([env_readings, env_daily_stats], READINGS_DAY, allow_shrink=True)
    assert mirrored.success
    assert counts(warehouse, *tables) == ([0, 0, 0] if purge == "all" else [12, 1, 1])


def test_a_purged_setpoint_day_fails_and_keeps_the_stored_snapshots(warehouse):
    insert_setpoints(warehouse, [("r1", "cooler", "temp_set", 15.0 + n, f"{READINGS_DAY} {n:02d}:00")
                                 for n in range(3)])
    assert materialize([setpoint_snapshots], READINGS_DAY).success
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DELETE FROM iot.device_setpoints")
    result = materialize([setpoint_snapshots], READINGS_DAY)
    assert not result.success and "allow_shrink" in failure_text(result)
    stored = query(warehouse, "SELECT count(*) AS n FROM mushroom.setpoint_snapshots WHERE NOT is_baseline")
    assert stored["n"][0] == 3


def test_the_late_data_sensor_does_not_turn_a_purge_into_a_wipe(warehouse):
    today = dt.datetime.now(dt.UTC).date()
    day = today - dt.timedelta(days=2)
    insert_readings(warehouse, [("r1", "temperature_c", 15.0, f"{day} {h:02d}:00") for h in range(4)])
    instance = dg.DagsterInstance.ephemeral()
    assert materialize([env_readings], day.isoformat(), instance=instance).success

    def tick():
        return sensor_tick(late_env_readings_sensor, instance)

    with warehouse.begin() as conn:
        conn.exec_driver_sql("DELETE FROM iot.env_readings")
    purged = tick()
    assert not purged.run_requests
    assert "purged" in purged.skip_message

    insert_readings(warehouse, [("r1", "temperature_c", 15.0, f"{day} {h:02d}:00") for h in range(6)])
    grown = tick()  # more source rows than stored: late data, re-run
    assert [r.partition_key for r in grown.run_requests] == [day.isoformat()]


def test_images_gone_from_the_store_keep_their_rows_and_an_emptied_day_fails(warehouse, tmp_path, tiny_clip):  # noqa: F811
    config, (checkpoint, _) = tiny_clip
    res = resources(tmp_path, config, checkpoint)
    store = res["object_store"]
    keys = [key("601", f"cam{n}") for n in range(3)]
    for n, k in enumerate(keys):
        store.put(k, photo(n))
    vision = [image_manifest, image_embeddings]
    assert materialize(vision, DAY, res).success

    (tmp_path / "objects" / "mushroom-images" / keys[0]).unlink()  # one image vanishes
    assert materialize(vision, DAY, res).success
    manifest = query(warehouse, "SELECT object_key, missing_since FROM mushroom.image_manifest ORDER BY 1")
    embeddings = query(warehouse, "SELECT object_key, missing_since FROM mushroom.image_embeddings ORDER BY 1")
    for frame in (manifest, embeddings):
        assert list(frame["object_key"]) == keys
        assert frame["missing_since"].notna().tolist() == [True, False, False]
    first_seen_missing = manifest["missing_since"][0]
    assert materialize(vision, DAY, res).success  # still gone: the first time it was seen stays
    again = query(warehouse, "SELECT missing_since FROM mushroom.image_embeddings ORDER BY object_key")
    assert again["missing_since"][0] == first_seen_missing

    for k in keys[1:]:  # the whole day's folder is gone
        (tmp_path / "objects" / "mushroom-images" / k).unlink()
    result = materialize(vision, DAY, res)
    assert not result.success
    assert "allow_shrink" in failure_text(result) and "MUSHROOM_IMAGE_BUCKET" in failure_text(result)
    assert counts(warehouse, "image_manifest", "image_embeddings") == [3, 3]

    assert materialize(vision, DAY, res, allow_shrink=True).success  # deleted on purpose
    assert counts(warehouse, "image_manifest", "image_embeddings") == [0, 0]
