"""image_manifest: the day's camera images, one row per object under `<room>/<YYYYMMDD>/`."""

import dataclasses
import datetime as dt

import dagster as dg
import pandas as pd

from mushroom_pipeline.io.postgres import column_schema, column_types
from mushroom_pipeline.objectstore import (
    ImageObject,
    ObjectStoreResource,
    parse_image_key,
)
from mushroom_pipeline.partitions import SETTINGS, daily_partitions
from mushroom_pipeline.retries import TRANSIENT_RETRY

MANIFEST_SCHEMA = column_schema(
    ("day", "date", "the capture day: the key's folder date"),
    ("room", "text"),
    ("object_key", "text"),
    ("etag", "text"),
    ("size", "bigint", "bytes"),
    ("captured_at", "timestamptz", "from the file name's _YYYYMMDDHHMMSS, else last-modified"),
)


def window_days(window: dg.TimeWindow) -> list[dt.date]:
    first, last = window.start.date(), window.end.date()
    return [first + dt.timedelta(days=n) for n in range((last - first).days)]


def list_images(store, days: list[dt.date]) -> tuple[list[ImageObject], list[str]]:
    """The images under `<room>/<YYYYMMDD>/` for each room and day, and the keys ignored there."""
    images, ignored = [], []
    for room in store.rooms():
        for day in days:
            for info in store.objects(f"{room}/{day:%Y%m%d}/"):
                image = parse_image_key(info, SETTINGS.tz)
                if image is None or image.day != day:
                    ignored.append(info.key)
                else:
                    images.append(image)
    return images, ignored


@dg.asset(
    description="The day's camera images in the object store (key, etag, size, room, capture "
    "time). Keys outside `<room>/<YYYYMMDD>/<file>.<jpg|jpeg|png>` are ignored and counted.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "dagster/column_schema": MANIFEST_SCHEMA},
    group_name="vision",
    kinds={"s3", "postgres"},
)
def image_manifest(context: dg.AssetExecutionContext, object_store: ObjectStoreResource):
    images, ignored = list_images(object_store.store(), window_days(context.partition_time_window))
    manifest = pd.DataFrame(
        [dataclasses.asdict(image) for image in images],
        columns=["day", "room", "key", "etag", "size", "captured_at"],
    )
    manifest = manifest.rename(columns={"key": "object_key"})
    manifest["captured_at"] = pd.to_datetime(manifest["captured_at"], utc=True)
    manifest["size"] = manifest["size"].astype("int64")
    context.log.info(
        f"{len(manifest)} images in {manifest['room'].nunique()} rooms, {len(ignored)} keys ignored"
    )
    return dg.Output(
        manifest[list(column_types(MANIFEST_SCHEMA))],
        metadata={
            "images": len(manifest),
            "rooms": int(manifest["room"].nunique()),
            "ignored_keys": len(ignored),
            "ignored_examples": dg.MetadataValue.json(ignored[:20]),
            "bytes": int(manifest["size"].sum()),
        },
    )

