"""camera_health: per (day, room), what the camera sent — how many images, how bright, how many
frames repeat the one before (a frozen camera), how far the day's mean vector moved from the day
before's (a moved or blocked camera) — and a check that names frozen and moved cameras.

Read from mushroom.image_embeddings: the rows of the model the `clip_encoder` resource is
configured with (the model is only named, never loaded), vectors through pgvector's psycopg2
adapter, one day at a time (memory holds one day's vectors). The pixels, for the luminance, are
fetched again from the object store and decoded small (a JPEG at reduced scale).

Definitions:
- Frames are taken in capture order (captured_at, then object_key) within the room and day; a
  pair of consecutive frames is a near duplicate when the cosine similarity of their CLIP vectors
  is at least NEAR_DUPLICATE_COSINE (0.995: what one frame sent twice, or a still picture
  re-encoded, gives; two shots of a living room a few minutes apart are below it).
- The day's mean vector is the mean of its (L2-normalized) image vectors; the shift is the cosine
  distance 1 − cos between it and the previous calendar day's mean of the same room and model.
- Mean luminance: each image's mean over its pixels of the Rec. 601 luma 0.299 R + 0.587 G +
  0.114 B (0–255, after decode_image's conversion to RGB), averaged over the images.

Thresholds of the check, for a pretrained CLIP (ViT-B-32 class):
- FROZEN_SHARE 0.5: half the consecutive pairs or more are near duplicates. A camera that sends
  the same frame again and again (a hung firmware, a stale snapshot URL) gives a share near 1;
  a working camera near 0.
- MOVED_AFTER_DISTANCE 0.15: day means of one fixed view stay within a few hundredths of each
  other (averaging over the day smooths the growth and the lights); a view turned to another
  shelf or wall, a covered or fogged lens, a dark room, moves the mean by tenths. 0.15 sits
  between the two; not measured here on the farm's own images (no pretrained weights in the
  tests): tune it from the table's history, e.g. above the 99th percentile of a normal month.
  The tests' tiny random CLIP compresses every distance (its shifts are hundredths), so they set
  their own threshold.
"""

import datetime as dt
import itertools
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import numpy as np
import pandas as pd
from pgvector.psycopg2 import register_vector

from mushroom_pipeline.defs.vision import OWNERS, TAGS
from mushroom_pipeline.defs.vision.embeddings import EMBEDDINGS_TABLE, image_embeddings
from mushroom_pipeline.defs.vision.manifest import window_days
from mushroom_pipeline.images.decode import ImageRejected, decode_image
from mushroom_pipeline.images.encoder import ClipEncoderResource
from mushroom_pipeline.objectstore import ObjectMissingError, ObjectStore
from mushroom_pipeline.partitions import daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import TRANSIENT_RETRY
from mushroom_pipeline.warehouse.sql import table_exists
from mushroom_pipeline.warehouse.tables import column_schema, markdown_preview

NEAR_DUPLICATE_COSINE = 0.995
FROZEN_SHARE = 0.5
MOVED_AFTER_DISTANCE = 0.15
LUMINANCE_MIN_SIDE = 64  # decode_image's min_side: a JPEG is decoded at 128 px a side or more
LUMA = np.array([0.299, 0.587, 0.114])

CAMERA_HEALTH_SCHEMA = column_schema(
    ("day", "date", "the capture day: the key's folder date"),
    ("room", "text"),
    ("model", "text", "the CLIP model whose vectors were compared (the configured one)"),
    ("images", "bigint", ("images of the room that day with a vector of the model "
                          "(image_embeddings rows, images since gone from the store included)")),
    ("first_captured_at", "timestamptz", "the day's first image"),
    ("last_captured_at", "timestamptz", "the day's last image"),
    ("mean_luminance", "double precision",
     ("mean over the images of each image's mean gray level, 0–255 (Rec. 601 luma 0.299 R + "
      "0.587 G + 0.114 B; JPEGs decoded at reduced scale); NULL when no image could be read")),
    ("luminance_images", "bigint", "images whose pixels went into mean_luminance"),
    ("luminance_skipped", "bigint",
     ("images whose pixels could not be read (gone from the object store, or no longer "
      "decodable): left out of mean_luminance")),
    ("near_duplicate_pairs", "bigint",
     f"consecutive frames (capture order) whose vectors have cosine similarity ≥ {NEAR_DUPLICATE_COSINE}"),
    ("near_duplicate_share", "double precision",
     "near_duplicate_pairs / (images − 1); NULL with fewer than 2 images. High: a frozen camera"),
    ("mean_shift_from_previous_day", "double precision",
     ("cosine distance 1 − cos between the mean of the day's vectors and the previous day's "
      "mean (same room and model); NULL when the previous day has no image. High: a moved or "
      "blocked camera")),
)

DAY_SQL = f"""
SELECT room, object_key, captured_at, missing_since IS NOT NULL AS gone, embedding
FROM {EMBEDDINGS_TABLE} WHERE day = %s AND model = %s
ORDER BY room, captured_at, object_key
"""


def day_embeddings(warehouse: PostgresResource, day: dt.date, model: str) -> pd.DataFrame:
    """The day's rows of `model`, in capture order per room; `embedding` as float64 arrays."""
    with warehouse.begin() as conn:
        if not table_exists(conn, EMBEDDINGS_TABLE):
            rows = []
        else:
            # The adapter on this cursor only: the pooled connection is left as it was.
            cursor = conn.connection.dbapi_connection.cursor()
            register_vector(cursor)
            cursor.execute(DAY_SQL, (day, model))
            rows = cursor.fetchall()
    frame = pd.DataFrame(rows, columns=["room", "object_key", "captured_at", "gone", "embedding"])
    frame["embedding"] = [np.asarray(v.to_numpy(), dtype=np.float64) for v in frame["embedding"]]
    return frame


def mean_vectors(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {room: np.mean(np.stack(group["embedding"]), axis=0)
            for room, group in frame.groupby("room", sort=True)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def luminance(store, object_key: str) -> float | None:
    """The image's mean Rec. 601 luma, 0–255; None when it cannot be fetched or decoded."""
    try:
        decoded = decode_image(store.get(object_key), LUMINANCE_MIN_SIDE)
    except (ObjectMissingError, ImageRejected):
        return None
    return float((np.asarray(decoded.image, dtype=np.float64) @ LUMA).mean())


def room_health(day: dt.date, room: str, group: pd.DataFrame, lumas: list[float | None],
                previous: np.ndarray | None) -> dict:
    vectors = np.stack(group["embedding"])
    similar = [cosine(a, b) >= NEAR_DUPLICATE_COSINE for a, b in itertools.pairwise(vectors)]
    read = [v for v in lumas if v is not None]
    return {
        "day": day, "room": room, "images": len(group),
        "first_captured_at": group["captured_at"].min(),
        "last_captured_at": group["captured_at"].max(),
        "mean_luminance": float(np.mean(read)) if read else np.nan,
        "luminance_images": len(read), "luminance_skipped": len(lumas) - len(read),
        "near_duplicate_pairs": sum(similar),
        "near_duplicate_share": sum(similar) / len(similar) if similar else np.nan,
        "mean_shift_from_previous_day":
            np.nan if previous is None else 1.0 - cosine(vectors.mean(axis=0), previous),
    }


camera_spec = dg.AssetCheckSpec(
    "no_frozen_or_moved_cameras",
    asset="camera_health",
    description=f"No camera frozen (near_duplicate_share ≥ {FROZEN_SHARE}: consecutive frames "
    f"with cosine similarity ≥ {NEAR_DUPLICATE_COSINE}) nor moved or blocked "
    f"(mean_shift_from_previous_day ≥ {MOVED_AFTER_DISTANCE} cosine distance). Names each.",
)


def check_cameras(health: pd.DataFrame, moved_after: float | None = None) -> dg.AssetCheckResult:
    """Names every room whose camera looks frozen or moved on some day of `health`."""
    moved_after = MOVED_AFTER_DISTANCE if moved_after is None else moved_after
    frozen = health[health["near_duplicate_share"] >= FROZEN_SHARE]
    moved = health[health["mean_shift_from_previous_day"] >= moved_after]
    frozen_list = [{"day": str(r.day), "room": r.room, "images": int(r.images),
                    "near_duplicate_share": round(float(r.near_duplicate_share), 3)}
                   for r in frozen.itertuples()]
    moved_list = [{"day": str(r.day), "room": r.room,
                   "mean_shift": round(float(r.mean_shift_from_previous_day), 4)}
                  for r in moved.itertuples()]
    parts = [f"{label}: {', '.join(sorted(set(frame['room'])))}"
             for label, frame in (("frozen", frozen), ("moved or blocked", moved)) if len(frame)]
    return dg.AssetCheckResult(
        check_name=camera_spec.name,
        passed=frozen.empty and moved.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(parts) or None,
        metadata={
            "frozen_cameras": len(frozen_list),
            "moved_cameras": len(moved_list),
            "frozen": dg.MetadataValue.json(frozen_list),
            "moved": dg.MetadataValue.json(moved_list),
            "moved_after_distance": moved_after,
        },
    )


@dg.asset(
    description="Per day and room, what the camera sent: images, mean luminance, the share of "
    "consecutive frames that are near duplicates (cosine ≥ "
    f"{NEAR_DUPLICATE_COSINE} between CLIP vectors: a frozen camera) and the cosine distance "
    "from the day's mean vector to the previous day's (a moved or blocked camera), from the "
    "configured model's rows of image_embeddings and the images' pixels. Its check names frozen "
    "and moved cameras.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    # reads the day's vectors and the day before's (the mean shift)
    deps=[dg.AssetDep(image_embeddings, partition_mapping=dg.TimeWindowPartitionMapping(
        start_offset=-1, allow_nonexistent_upstream_partitions=True))],
    metadata={"partition_expr": "day", "dagster/column_schema": CAMERA_HEALTH_SCHEMA},
    check_specs=[camera_spec],
    group_name="vision",
    owners=OWNERS,
    tags={**TAGS, "layer": "derived"},
    kinds={"postgres", "s3"},
)
def camera_health(
    context: dg.AssetExecutionContext,
    clip_encoder: ClipEncoderResource,
    object_store: ObjectStore,
    warehouse: PostgresResource,
):
    model = clip_encoder.model_id()
    days = window_days(context.partition_time_window)
    previous = mean_vectors(day_embeddings(warehouse, days[0] - dt.timedelta(days=1), model))
    rows = []
    with ThreadPoolExecutor(clip_encoder.decode_threads, thread_name_prefix="luminance") as pool:
        for day in days:
            frame = day_embeddings(warehouse, day, model)
            # an image gone from the store is not fetched: its vector still counts
            lumas = list(pool.map(lambda key, gone: None if gone else luminance(object_store, key),
                                  frame["object_key"], frame["gone"]))
            frame["luma"] = pd.Series(lumas, index=frame.index, dtype=object)
            for room, group in frame.groupby("room", sort=True):
                rows.append(room_health(day, room, group, list(group["luma"]), previous.get(room)))
            previous = mean_vectors(frame)
    health = pd.DataFrame(rows, columns=["day", "room", *(
        c.name for c in CAMERA_HEALTH_SCHEMA.columns if c.name not in ("day", "room", "model"))])
    health.insert(2, "model", model)
    for column in ("images", "luminance_images", "luminance_skipped", "near_duplicate_pairs"):
        health[column] = health[column].astype("int64")
    for column in ("mean_luminance", "near_duplicate_share", "mean_shift_from_previous_day"):
        health[column] = health[column].astype("float64")
    context.log.info(f"{len(health)} camera health rows, {int(health['images'].sum())} images, "
                     f"model {model}")
    yield dg.Output(
        health,
        metadata={
            "model": model,
            "rooms": health["room"].nunique(),
            "images": int(health["images"].sum()),
            "luminance_skipped": int(health["luminance_skipped"].sum()),
            "max_near_duplicate_share": float(health["near_duplicate_share"].max())
            if health["near_duplicate_share"].notna().any() else 0.0,
            "max_mean_shift": float(health["mean_shift_from_previous_day"].max())
            if health["mean_shift_from_previous_day"].notna().any() else 0.0,
            "rows": markdown_preview(health),
        },
    )
    yield check_cameras(health)
