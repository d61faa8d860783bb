"""image_manifest: the day's camera images, one row per object under `<room>/<YYYYMMDD>/`."""

import dataclasses
import datetime as dt

import dagster as dg
import pandas as pd

from mushroom_pipeline.defs.sources import CAMERA_IMAGES
from mushroom_pipeline.defs.vision import OWNERS, TAGS
from mushroom_pipeline.objectstore import (
    ImageObject,
    ObjectStore,
    parse_image_key,
)
from mushroom_pipeline.partitions import FARM_TZ, daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import TRANSIENT_RETRY
from mushroom_pipeline.warehouse.frames import read_frame
from mushroom_pipeline.warehouse.source import (
    SourceWindowConfig,
    time_slice,
)
from mushroom_pipeline.warehouse.sql import (
    select_statement,
    table_column_types,
    warehouse_table,
)
from mushroom_pipeline.warehouse.tables import (
    column_schema,
    column_types,
)

MANIFEST_SCHEMA = column_schema(
    ("day", "date", "the capture day: the key's folder date"),
    ("room", "text"),
    ("object_key", "text"),
    ("etag", "text"),
    ("size", "bigint", "bytes"),
    ("captured_at", "timestamptz", "from the file name's _YYYYMMDDHHMMSS, else last-modified"),
    ("missing_since", "timestamptz",
     "NULL while the object is listed; else when a run first found it gone (the row is kept)"),
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
                image = parse_image_key(info, FARM_TZ)
                if image is None or image.day != day:
                    ignored.append(info.key)
                else:
                    images.append(image)
    return images, ignored


def stored_manifest(warehouse: PostgresResource, window: dg.TimeWindow) -> pd.DataFrame:
    """The manifest rows stored for the window (none before the table exists)."""
    table = warehouse_table("image_manifest")
    with warehouse.begin() as conn:
        types = table_column_types(conn, table)
        if not types:
            return pd.DataFrame(columns=list(column_types(MANIFEST_SCHEMA)))
        query = select_statement(time_slice("image_manifest", "day", window), types)
        frame = read_frame(conn, query, types)
    if "missing_since" not in frame:  # a table from before missing_since existed
        frame["missing_since"] = pd.NaT
    return frame[list(column_types(MANIFEST_SCHEMA))]


def keep_gone_images(
    listed: pd.DataFrame, stored: pd.DataFrame, days: list[dt.date], allow_shrink: bool, now
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the manifest to store, the stored rows no longer listed). Objects that vanished keep
    their row, marked `missing_since`; a day whose listing is empty while rows are stored fails
    (an unmounted volume, a lifecycle rule, a wrong bucket) unless `allow_shrink`."""
    gone = stored[~stored["object_key"].isin(listed["object_key"])]
    if allow_shrink:
        return listed, gone
    listed_days = set(listed["day"])
    emptied = sorted({d for d in gone["day"] if d not in listed_days and d in days})
    if emptied:
        raise dg.Failure(
            f"The object store lists no image for {', '.join(map(str, emptied))}, while "
            f"{warehouse_table('image_manifest')} holds {int(gone['day'].isin(emptied).sum())} for them. "
            "Nothing was changed. Check the bucket (MUSHROOM_MINIO_ENDPOINT, "
            "MUSHROOM_IMAGE_BUCKET) or the local folder under MUSHROOM_HOME; if the images were "
            "deleted on purpose, re-run with run config "
            "`ops: {image_manifest: {config: {allow_shrink: true}}}`.",
            allow_retries=False,
        )
    kept = gone.assign(missing_since=gone["missing_since"].fillna(now))
    frames = [f for f in (listed, kept) if len(f)]
    return (pd.concat(frames, ignore_index=True) if frames else listed), gone


@dg.asset(
    description="The day's camera images in the object store (key, etag, size, room, capture "
    "time). Keys outside `<room>/<YYYYMMDD>/<file>.<jpg|jpeg|png>` are ignored and counted.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "dagster/column_schema": MANIFEST_SCHEMA},
    deps=[CAMERA_IMAGES],
    group_name="vision",
    owners=OWNERS,
    tags={**TAGS, "layer": "validated"},
    kinds={"s3", "postgres"},
)
def image_manifest(
    context: dg.AssetExecutionContext,
    config: SourceWindowConfig,
    object_store: ObjectStore,
    warehouse: PostgresResource,
):
    window = context.partition_time_window
    days = window_days(window)
    images, ignored = list_images(object_store, days)
    listed = pd.DataFrame(
        [dataclasses.asdict(image) for image in images],
        columns=["day", "room", "key", "etag", "size", "captured_at"],
    )
    listed = listed.rename(columns={"key": "object_key"})
    listed["captured_at"] = pd.to_datetime(listed["captured_at"], utc=True)
    listed["size"] = listed["size"].astype("int64")
    listed["missing_since"] = pd.Series(pd.NaT, index=listed.index, dtype="datetime64[us, UTC]")
    manifest, gone = keep_gone_images(
        listed, stored_manifest(warehouse, window), days, config.allow_shrink,
        pd.Timestamp.now(tz="UTC"),
    )
    context.log.info(
        f"{len(listed)} images in {listed['room'].nunique()} rooms, {len(ignored)} keys ignored, "
        f"{len(gone)} stored images no longer listed "
        f"({'dropped: allow_shrink' if config.allow_shrink else 'kept, marked missing_since'})"
    )
    return dg.Output(
        manifest[list(column_types(MANIFEST_SCHEMA))],
        metadata={
            "images": len(listed),
            "missing_images": len(gone),
            "rooms": int(listed["room"].nunique()),
            "ignored_keys": len(ignored),
            "ignored_examples": dg.MetadataValue.json(ignored[:20]),
            "bytes": int(listed["size"].sum()),
        },
    )

