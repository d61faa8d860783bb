"""new_images_sensor: days with images not yet embedded by the configured model."""

import datetime as dt
import hashlib

import dagster as dg

from mushroom_pipeline.defs.automation.alerts import AlertWebhookResource
from mushroom_pipeline.defs.automation.jobs import vision_job
from mushroom_pipeline.defs.automation.requests import (
    LOOKBACK_DAYS,
    materialization_ids,
    requests_that_never_lose_work,
)
from mushroom_pipeline.defs.sources import CAMERA_IMAGES, observation
from mushroom_pipeline.images.encoder import ClipEncoderResource
from mushroom_pipeline.objectstore import (
    ImageObject,
    ObjectStore,
    parse_image_key,
)
from mushroom_pipeline.partitions import FARM_TZ, daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.sql import table_exists, warehouse_table

NEW_IMAGES_SELECTION = [dg.AssetKey("image_manifest"), dg.AssetKey("image_embeddings")]
RESCAN_EVERY_S = 300  # each tick lists one day of the lookback in full, in turn


def _last_known_keys(warehouse: PostgresResource, first: dt.date) -> dict[tuple[str, str], str]:
    """{(room, day): the greatest key of the day's manifest}: the listing's start-after."""
    with warehouse.begin() as conn:
        manifest = warehouse_table("image_manifest")
        if not table_exists(conn, manifest):
            return {}
        return {(room, day.isoformat()): key for room, day, key in conn.exec_driver_sql(
            f"SELECT room, day, max(object_key) FROM {manifest} WHERE day >= %s "
            "GROUP BY room, day", (first,)
        )}


def _handled_images(warehouse: PostgresResource, model: str, keys: list[str]) -> set[tuple[str, str]]:
    """Of `keys`, (object_key, etag) already embedded by `model`, or failed with it (they would
    fail again)."""
    handled: set[tuple[str, str]] = set()
    with warehouse.begin() as conn:
        for table in (warehouse_table("image_embeddings"), warehouse_table("image_failures")):
            if table_exists(conn, table):
                handled.update(conn.exec_driver_sql(
                    f"SELECT object_key, etag FROM {table} WHERE model = %s AND object_key = ANY(%s)",
                    (model, keys),
                ).all())
    return handled


def days_with_new_images(
    object_store: ObjectStore, warehouse: PostgresResource, model: str, now: dt.datetime
) -> dict[str, list[tuple[str, str]]]:
    """{day: sorted new (key, etag)} over the lookback, newest day first.

    A tick costs what is new, not the lookback: each (room, day) folder is listed only after the
    greatest key its manifest holds (S3's start-after; cameras name files by time, so new shots
    sort last). One day in turn is listed in full, for keys that sort before the last known one
    (another camera) or were overwritten: each day within LOOKBACK_DAYS ticks. Memory holds at
    most one day's listing."""
    today = now.astimezone(FARM_TZ).date()
    days = [today - dt.timedelta(days=n) for n in range(LOOKBACK_DAYS + 1)]
    in_full = days[int(now.timestamp() // RESCAN_EVERY_S) % len(days)]
    known = _last_known_keys(warehouse, days[-1])
    store = object_store
    listed: list[ImageObject] = []
    for room in store.rooms():
        for day in days:
            after = None if day == in_full else known.get((room, day.isoformat()))
            for info in store.objects(f"{room}/{day:%Y%m%d}/", start_after=after):
                image = parse_image_key(info, FARM_TZ)
                if image is not None and image.day == day:
                    listed.append(image)
    handled = _handled_images(warehouse, model, [image.key for image in listed])
    new: dict[str, list[tuple[str, str]]] = {}
    for image in listed:
        if (image.key, image.etag) not in handled:
            new.setdefault(image.day.isoformat(), []).append((image.key, image.etag))
    return {day: sorted(new[day]) for day in sorted(new, reverse=True)}


@dg.sensor(
    name="new_images_sensor",
    job=vision_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"Embeds images as they arrive: a run for each day (last {LOOKBACK_DAYS}) with "
    "images the configured model has not embedded yet.",
)
def new_images_sensor(
    context: dg.SensorEvaluationContext,
    object_store: ObjectStore,
    warehouse: PostgresResource,
    clip_encoder: ClipEncoderResource,
    alert_webhook: AlertWebhookResource,
):
    new = days_with_new_images(
        object_store, warehouse, clip_encoder.model_id(), dt.datetime.now(dt.UTC)
    )
    embedded = materialization_ids(context, "image_embeddings")
    # The content is the new images with their etags: an image overwritten again is new content.
    wanted = {
        day: "new_images:{}:{}:m{}".format(
            day, hashlib.sha256("\n".join(f"{k} {e}" for k, e in images).encode()).hexdigest()[:16],
            embedded.get(day, 0))
        for day, images in new.items() if daily_partitions.has_partition_key(day)
    }
    requests = requests_that_never_lose_work(
        context, wanted,
        # the new images only: camera_health, which re-reads the whole day, waits for the
        # nightly run
        lambda day, run_key: dg.RunRequest(
            run_key=run_key, partition_key=day, asset_selection=NEW_IMAGES_SELECTION,
            tags={"mushroom/trigger": "new_images", "mushroom/new_images": str(len(new[day]))}),
        alert_webhook, dt.datetime.now(dt.UTC),
    )
    observed = observation(context, CAMERA_IMAGES, new_images_by_day={
        day: len(images) for day, images in sorted(new.items())})
    return dg.SensorResult(
        run_requests=requests, asset_events=observed,
        skip_reason=None if requests else f"{len(new)} day(s) with new images, none to request now",
    )
