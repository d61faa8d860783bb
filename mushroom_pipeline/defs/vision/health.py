"""camera_health: per (day, room), what the camera sent — how many images, how bright, how many
frames repeat the one before (a frozen camera), how far the day's mean vector moved from the day
before's (a moved or blocked camera) — and a check that names frozen and moved cameras.

Read from mushroom.image_embeddings: the rows of the model the `clip_encoder` resource is
configured with (the model is only named, never loaded), vectors through pgvector's psycopg
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
from PIL import Image

from mushroom_pipeline.defs.vision import OWNERS, TAGS
from mushroom_pipeline.defs.vision.embeddings import EMBEDDINGS_TABLE, image_embeddings
from mushroom_pipeline.defs.vision.manifest import window_days
from mushroom_pipeline.images.decode import ImageRejected, decode_image
from mushroom_pipeline.images.encoder import ClipEncoderResource
from mushroom_pipeline.objectstore import ObjectMissingError, ObjectStore
from mushroom_pipeline.partitions import daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import TRANSIENT_RETRY
from mushroom_pipeline.warehouse.frames import register_vectors
from mushroom_pipeline.warehouse.sql import table_exists
from mushroom_pipeline.warehouse.tables import column_schema, markdown_preview

NEAR_DUPLICATE_COSINE = 0.995
FROZEN_SHARE = 0.5
MOVED_AFTER_DISTANCE = 0.15
LUMINANCE_MIN_SIDE = 64  # decode_image's min_side: a JPEG is decoded at 128 px a side or more
LUMA = np.array([0.299, 0.587, 0.114])
# Model-independent: consecutive frames whose 32×32 gray thumbnails differ by less than one gray
# level on average are the same picture sent again. With untrained (random) CLIP weights every
# vector is alike, so only this rule judges a frozen camera then, and no camera is judged moved.
THUMBNAIL_SIDE = 32
IDENTICAL_MEAN_ABS_DIFF = 1.0

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
    ("identical_frame_pairs", "bigint",
     (f"consecutive frames whose {THUMBNAIL_SIDE}×{THUMBNAIL_SIDE} gray thumbnails differ by "
      f"less than {IDENTICAL_MEAN_ABS_DIFF} gray level on average: the same picture again")),
    ("identical_frame_share", "double precision",
     "identical_frame_pairs / (consecutive pairs with both frames read); NULL without such pairs"),
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
            rows = register_vectors(conn).exec_driver_sql(DAY_SQL, (day, model)).all()
    frame = pd.DataFrame(rows, columns=["room", "object_key", "captured_at", "gone", "embedding"])
    frame["embedding"] = [np.asarray(v.to_numpy(), dtype=np.float64) for v in frame["embedding"]]
    return frame


def mean_vectors(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {room: np.mean(np.stack(group["embedding"]), axis=0)
            for room, group in frame.groupby("room", sort=True)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def look(store, object_key: str) -> tuple[float, np.ndarray] | None:
    """The image's mean Rec. 601 luma (0–255) and its gray thumbnail; None when it cannot be
    fetched or decoded."""
    try:
        decoded = decode_image(store.get(object_key), LUMINANCE_MIN_SIDE)
    except (ObjectMissingError, ImageRejected):
        return None
    gray = np.asarray(decoded.image, dtype=np.float64) @ LUMA
    thumbnail = decoded.image.convert("L").resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.BILINEAR)
    return float(gray.mean()), np.asarray(thumbnail, dtype=np.float64)


def room_health(day: dt.date, room: str, group: pd.DataFrame,
                looks: list[tuple[float, np.ndarray] | None], previous: np.ndarray | None) -> dict:
    vectors = np.stack(group["embedding"])
    similar = [cosine(a, b) >= NEAR_DUPLICATE_COSINE for a, b in itertools.pairwise(vectors)]
    read = [seen for seen in looks if seen is not None]
    identical = [float(np.abs(a[1] - b[1]).mean()) < IDENTICAL_MEAN_ABS_DIFF
                 for a, b in itertools.pairwise(looks) if a is not None and b is not None]
    return {
        "day": day, "room": room, "images": len(group),
        "first_captured_at": group["captured_at"].min(),
        "last_captured_at": group["captured_at"].max(),
        "mean_luminance": float(np.mean([luma for luma, _ in read])) if read else np.nan,
        "luminance_images": len(read), "luminance_skipped": len(looks) - len(read),
        "identical_frame_pairs": sum(identical),
        "identical_frame_share": sum(identical) / len(identical) if identical else np.nan,
        "near_duplicate_pairs": sum(similar),
        "near_duplicate_share": sum(similar) / len(similar) if similar else np.nan,
        "mean_shift_from_previous_day":
            np.nan if previous is None else 1.0 - cosine(vectors.mean(axis=0), previous),
    }


camera_spec = dg.AssetCheckSpec(
    "no_frozen_or_moved_cameras",
    asset="camera_health",
    description=f"No camera frozen (identical_frame_share or near_duplicate_share ≥ "
    f"{FROZEN_SHARE}: consecutive frames the same picture, or with CLIP cosine ≥ "
    f"{NEAR_DUPLICATE_COSINE}) nor moved or blocked (mean_shift_from_previous_day ≥ "
    f"{MOVED_AFTER_DISTANCE} cosine distance). With untrained (random) weights the vectors are "
    "not judged: only identical frames count. Names each.",
)


def check_cameras(health: pd.DataFrame, moved_after: float | None = None,
                  vectors_meaningful: bool = True) -> dg.AssetCheckResult:
    """Names every room whose camera looks frozen or moved on some day of `health`.
    `vectors_meaningful`: False for untrained weights, whose vectors are all alike."""
    moved_after = MOVED_AFTER_DISTANCE if moved_after is None else moved_after
    by_vectors = health["near_duplicate_share"] >= FROZEN_SHARE
    frozen = health[(health["identical_frame_share"] >= FROZEN_SHARE)
                    | (by_vectors & vectors_meaningful)]
    moved = health[(health["mean_shift_from_previous_day"] >= moved_after) & vectors_meaningful]
    frozen_list = [{"day": str(r.day), "room": r.room, "images": int(r.images),
                    "identical_frame_share": round(float(r.identical_frame_share), 3),
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
            "vectors_judged": vectors_meaningful,
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
            looks = list(pool.map(lambda key, gone: None if gone else look(object_store, key),
                                  frame["object_key"], frame["gone"]))
            frame["look"] = pd.Series(looks, index=frame.index, dtype=object)
            for room, group in frame.groupby("room", sort=True):
                rows.append(room_health(day, room, group, list(group["look"]), previous.get(room)))
            previous = mean_vectors(frame)
    health = pd.DataFrame(rows, columns=["day", "room", *(
        c.name for c in CAMERA_HEALTH_SCHEMA.columns if c.name not in ("day", "room", "model"))])
    health.insert(2, "model", model)
    for column in ("images", "luminance_images", "luminance_skipped", "identical_frame_pairs",
                   "near_duplicate_pairs"):
        health[column] = health[column].astype("int64")
    for column in ("mean_luminance", "identical_frame_share", "near_duplicate_share",
                   "mean_shift_from_previous_day"):
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
    yield check_cameras(health, vectors_meaningful=clip_encoder.pretrained != "random")
