"""image_embeddings: the day's images → CLIP vectors, environment context, description and fused
vector in mushroom.image_embeddings. Images that cannot be read go to mushroom.image_failures.

Incremental: an image already embedded with the same etag by the same model is carried over,
not embedded again; rows of other models are carried over untouched. The output is the day's
complete table slice, which the I/O manager swaps in one transaction.
"""

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import dagster as dg
import numpy as np
import pandas as pd
from dagster._core.storage.db_io_manager import TablePartitionDimension, TableSlice

from mushroom_pipeline.batches.assets import room_batches
from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.checks.vision import check_failure_rate, failure_rate_spec
from mushroom_pipeline.environment.assets import env_readings
from mushroom_pipeline.io.postgres import (
    INDEXES_METADATA,
    column_schema,
    column_types,
    markdown_preview,
    read_frame,
    replace_table_slice,
    table_column_types,
    select_statement,
)
from mushroom_pipeline.io.source import time_slice
from mushroom_pipeline.objectstore import ObjectMissingError, ObjectStoreResource
from mushroom_pipeline.partitions import daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import CLIP_POOL, TRANSIENT_RETRY, UnavailableError
from mushroom_pipeline.vision.context import environment_context
from mushroom_pipeline.vision.decode import ImageRejected, decode_image
from mushroom_pipeline.vision.describer import Describer, DescriberResource
from mushroom_pipeline.vision.encoder import ClipEncoder, ClipEncoderResource

IMAGE_WEIGHT, TEXT_WEIGHT = 0.7, 0.3  # the old system's fusion

EMBEDDINGS_SCHEMA = column_schema(
    ("day", "date", "the capture day: the key's folder date"),
    ("room", "text"),
    ("object_key", "text"),
    ("etag", "text"),
    ("model", "text", ("architecture/weights, e.g. ViT-B-32/laion2b_s34b_b79k, ViT-B-32/random, "
                       "ViT-B-32/file:<checkpoint>@<sha256 prefix>")),
    ("captured_at", "timestamptz"),
    ("embedding", "vector", "the image's L2-normalized CLIP vector (dimension: the model's)"),
    ("context", "text", "room, growth day (room_batches), capture time and the nearest readings "
                        "of env_readings"),
    ("description", "text", "the describer's text; NULL when no describer is configured"),
    ("describer", "text", "the describer model; NULL when none"),
    ("fused_embedding", "vector",
     f"normalize({IMAGE_WEIGHT}·image + {TEXT_WEIGHT}·text(context + description))"),
    ("width", "integer", "pixels, as stored"),
    ("height", "integer"),
    ("source_mode", "text", "the image's PIL mode before conversion to RGB (CMYK, L, I;16, ...)"),
    ("embedded_at", "timestamptz"),
    ("missing_since", "timestamptz",
     "NULL while the image is in the object store; else since when it is gone (row kept)"),
)
EMBEDDING_INDEXES = [
    "CREATE UNIQUE INDEX ON {table} (object_key, model)",
    "CREATE INDEX ON {table} USING hnsw (embedding vector_cosine_ops)",
]
FAILURES_TABLE = "image_failures"
FAILURES_SCHEMA = column_schema(
    ("day", "date"),
    ("room", "text"),
    ("object_key", "text"),
    ("etag", "text"),
    ("model", "text"),
    ("captured_at", "timestamptz"),
    ("reason", "text", "empty, not_an_image, truncated, corrupt, too_large, missing"),
    ("detail", "text"),
    ("failed_at", "timestamptz"),
)


def prefetched(items: Iterable, prepare: Callable, threads: int, ahead: int) -> Iterator[tuple]:
    """(item, prepare(item)) in order, with up to `ahead` items fetched and decoded in advance by
    `threads` threads, so the model's forward pass does not wait on the object store."""
    items = iter(items)
    with ThreadPoolExecutor(threads, thread_name_prefix="image-prefetch") as pool:
        pending = deque((item, pool.submit(prepare, item)) for item in islice(items, ahead))
        while pending:
            item, future = pending.popleft()
            for following in islice(items, 1):
                pending.append((following, pool.submit(prepare, following)))
            yield item, future.result()


def _existing_rows(warehouse: PostgresResource, window: dg.TimeWindow, dim: int) -> pd.DataFrame:
    table_slice = time_slice("image_embeddings", "day", window)
    table = "mushroom.image_embeddings"
    with warehouse.begin() as conn:
        types = table_column_types(conn, table)
        if not types:
            return pd.DataFrame(columns=list(column_types(EMBEDDINGS_SCHEMA)))
        if types.get("embedding") != f"vector({dim})":
            raise UnavailableError(
                f"{table}.embedding is {types.get('embedding')}, the configured model gives "
                f"vector({dim}). One table holds one dimension: rename or drop the old table to "
                "embed with this model, or set MUSHROOM_CLIP_MODEL back."
            )
        rows = read_frame(conn, select_statement(table_slice, types), types)
    # A table from an earlier version lacks the columns added since: NULL, as ALTER TABLE gives.
    return rows.reindex(columns=list(column_types(EMBEDDINGS_SCHEMA)))


def _normalized(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class ImageEmbedder:
    """Fetch and decode (threads) → batched forward pass → rows and failure rows."""

    def __init__(self, store, encoder: ClipEncoder, describer: Describer | None,
                 batch_size: int, threads: int, log):
        self.store, self.encoder, self.describer = store, encoder, describer
        self.batch_size, self.threads, self.log = batch_size, threads, log
        self.rows: list[dict] = []
        self.failures: list[dict] = []
        self.forward_s = 0.0

    def _prepare(self, image):
        try:
            decoded = decode_image(self.store.get(image.object_key), self.encoder.image_size)
            return decoded, self.encoder.preprocess(decoded.image)
        except ObjectMissingError:
            return ImageRejected("missing", "listed in the manifest, gone from the object store")
        except ImageRejected as rejected:
            return rejected

    def _flush(self, batch: list) -> None:
        import torch

        started = time.perf_counter()
        vectors = self.encoder.encode_images(torch.stack([tensor for _, _, tensor in batch]))
        descriptions = (
            self.describer.describe([decoded.image for _, decoded, _ in batch])
            if self.describer else [None] * len(batch)
        )
        self.forward_s += time.perf_counter() - started
        for (image, decoded, _), vector, description in zip(batch, vectors, descriptions):
            self.rows.append({
                "day": image.day, "room": image.room, "object_key": image.object_key,
                "etag": image.etag, "captured_at": image.captured_at, "embedding": vector,
                "description": description, "width": decoded.width, "height": decoded.height,
                "source_mode": decoded.source_mode,
            })

    def run(self, images: pd.DataFrame) -> None:
        batch, started = [], time.perf_counter()
        ahead = self.batch_size + 2 * self.threads
        for done, (image, prepared) in enumerate(
            prefetched(images.itertuples(index=False), self._prepare, self.threads, ahead), 1
        ):
            if isinstance(prepared, ImageRejected):
                self.failures.append({
                    "day": image.day, "room": image.room, "object_key": image.object_key,
                    "etag": image.etag, "captured_at": image.captured_at,
                    "reason": prepared.reason, "detail": prepared.detail[:500],
                })
                self.log.warning(f"{image.object_key}: {prepared.reason}: {prepared.detail}")
            else:
                batch.append((image, *prepared))
            if len(batch) == self.batch_size:
                self._flush(batch)
                batch = []
            if done % (10 * self.batch_size) == 0:
                rate = done / (time.perf_counter() - started)
                self.log.info(f"{done}/{len(images)} images read ({rate:.1f}/s)")
        if batch:
            self._flush(batch)


def fuse(encoder: ClipEncoder, image_vectors: np.ndarray, texts: list[str], batch_size: int
         ) -> np.ndarray:
    text_vectors = np.concatenate(
        [encoder.encode_texts(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    ) if texts else np.zeros((0, encoder.dim), np.float32)
    return _normalized(IMAGE_WEIGHT * image_vectors + TEXT_WEIGHT * text_vectors).astype(np.float32)


def _by_day(frame: pd.DataFrame) -> dict[str, int]:
    return {str(day): int(n) for day, n in frame.groupby("day").size().items()}


@dg.asset(
    description="CLIP vectors of the day's images (one row per image and model) with each "
    "image's environment context, optional description and fused vector. Unchanged images are "
    f"not embedded again. Unreadable images go to mushroom.{FAILURES_TABLE} with their reason.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    ins={"image_manifest": dg.AssetIn()},
    deps=[env_readings, room_batches],  # read by the context sentences
    metadata={
        "partition_expr": "day",
        "dagster/column_schema": EMBEDDINGS_SCHEMA,
        INDEXES_METADATA: EMBEDDING_INDEXES,
    },
    check_specs=[failure_rate_spec],
    group_name="vision",
    kinds={"pytorch", "postgres"},
    pool=CLIP_POOL,
    # On Kubernetes with the k8s_job_executor: this step's pod goes to a GPU node.
    op_tags={"dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
        "pod_spec_config": {"node_selector": {"mushroom.farm/accelerator": "nvidia-gpu"},
                            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                             "effect": "NoSchedule"}]},
    }},
)
def image_embeddings(
    context: dg.AssetExecutionContext,
    image_manifest: pd.DataFrame,
    clip_encoder: ClipEncoderResource,
    describer: DescriberResource,
    object_store: ObjectStoreResource,
    warehouse: PostgresResource,
    farm_catalog: FarmCatalogResource,
):
    encoder = clip_encoder.encoder()
    if encoder.random_weights:
        context.log.warning(
            f"{encoder.model_id}: UNTRAINED (random) weights, as MUSHROOM_CLIP_PRETRAINED=random "
            "asks. The vectors are stable but carry no meaning: do not search them."
        )
    describe = describer.describer()
    window = context.partition_time_window
    existing = _existing_rows(warehouse, window, encoder.dim)
    missing = image_manifest.reindex(columns=["missing_since"])["missing_since"].notna()
    present = image_manifest[~missing]
    listed = set(zip(present["object_key"], present["etag"]))
    current = existing["model"] == encoder.model_id
    unchanged = current & pd.Series(
        [key in listed for key in zip(existing["object_key"], existing["etag"])], index=existing.index, dtype=bool
    )
    # An image gone from the store keeps its vector, marked as the manifest marks it.
    missing_since = dict(zip(image_manifest.loc[missing, "object_key"],
                             image_manifest.loc[missing, "missing_since"]))
    gone = current & existing["object_key"].isin(missing_since)
    kept_gone = existing[gone].assign(missing_since=existing.loc[gone, "object_key"].map(missing_since))
    done = set(zip(existing.loc[unchanged, "object_key"], existing.loc[unchanged, "etag"]))
    todo = present[[key not in done for key in zip(present["object_key"], present["etag"])]]
    context.log.info(
        f"{len(image_manifest)} images: {len(todo)} to embed with {encoder.model_id} on "
        f"{encoder.device}, {int(unchanged.sum())} unchanged, {len(kept_gone)} gone from the "
        "store (kept)"
    )

    started = time.perf_counter()
    embedder = ImageEmbedder(object_store.store(), encoder, describe, clip_encoder.batch_size,
                             clip_encoder.decode_threads, context.log)
    embedder.run(todo)
    embedded = pd.DataFrame(embedder.rows, columns=[
        "day", "room", "object_key", "etag", "captured_at", "embedding", "description",
        "width", "height", "source_mode",
    ])
    embedded["model"] = encoder.model_id
    embedded["describer"] = describe.model_id if describe else None
    embedded["context"] = environment_context(warehouse, embedded, farm_catalog.metrics())
    texts = [c if d is None else f"{c} {d}" for c, d in zip(embedded["context"], embedded["description"])]
    image_vectors = np.stack(embedded["embedding"]) if len(embedded) else np.zeros((0, encoder.dim))
    embedded["fused_embedding"] = list(fuse(encoder, image_vectors, texts, clip_encoder.batch_size))
    embedded["embedded_at"] = pd.Timestamp.now(tz="UTC")
    embedded["missing_since"] = pd.Series(pd.NaT, index=embedded.index, dtype="datetime64[us, UTC]")
    elapsed = time.perf_counter() - started

    failures = pd.DataFrame(embedder.failures, columns=[
        "day", "room", "object_key", "etag", "captured_at", "reason", "detail"])
    failures["model"] = encoder.model_id
    failures["failed_at"] = pd.Timestamp.now(tz="UTC")
    failures_slice = TableSlice(
        table=FAILURES_TABLE, schema="mushroom",
        partition_dimensions=[TablePartitionDimension("day", window),
                              TablePartitionDimension("model", [encoder.model_id])],
    )
    replace_table_slice(warehouse, failures_slice, failures[list(column_types(FAILURES_SCHEMA))],
                        column_types(FAILURES_SCHEMA))

    columns = list(column_types(EMBEDDINGS_SCHEMA))
    slice_rows = pd.concat(
        [frame[columns] for frame in (existing[~current], existing[unchanged], kept_gone, embedded)
         if len(frame)] or [embedded[columns]],
        ignore_index=True,
    )
    reasons = Counter(failures["reason"])
    context.log.info(
        f"embedded {len(embedded)} images in {elapsed:.1f} s ({len(embedded) / max(elapsed, 1e-9):.1f}/s), "
        f"{len(failures)} failed {dict(reasons)}"
    )
    yield dg.Output(
        slice_rows,
        metadata={
            "model": encoder.model_id,
            "weights": "RANDOM: untrained, vectors carry no meaning" if encoder.random_weights
            else "pretrained",
            "device": encoder.device,
            "dimension": encoder.dim,
            "describer": describe.model_id if describe else "off (MUSHROOM_DESCRIBER_MODEL unset)",
            "images": len(image_manifest),
            "embedded": len(embedded),
            "skipped_unchanged": int(unchanged.sum()),
            "kept_missing_from_store": len(kept_gone),
            "failed": len(failures),
            "failure_reasons": dg.MetadataValue.json(dict(reasons)),
            "other_model_rows": int((~current).sum()),
            "images_per_s": len(embedded) / elapsed if len(embedded) else 0.0,
            "forward_share": embedder.forward_s / elapsed if len(embedded) else 0.0,
            "new_rows": markdown_preview(embedded.drop(columns=["embedding", "fused_embedding"])),
        },
    )
    yield check_failure_rate(
        _by_day(image_manifest),
        {day: dict(Counter(group["reason"])) for day, group in failures.groupby(failures["day"].astype(str))},
    )
