"""image_embeddings: the day's images → CLIP vectors, environment context, description and fused
vector in mushroom.image_embeddings. Images that cannot be read go to mushroom.image_failures.

Incremental: an image already embedded with the same etag by the same model is carried over,
not embedded again; rows of other models are carried over untouched.

Streamed, so memory does not grow with the day: the images still to embed are read from the
manifest a page at a time, fetched ahead within a byte budget, and every chunk of vectors is
committed to mushroom.image_embeddings_pending as soon as it is computed. A run that dies after
hours keeps that work: its retry embeds only the rest. At the end one transaction swaps the day
into mushroom.image_embeddings (and the day's failures into mushroom.image_failures) and empties
the pending rows, so readers see the day before or after, never half of it.
"""

import datetime as dt
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa
from dagster._core.storage.db_io_manager import TableSlice

from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.defs.batches.assets import room_batches
from mushroom_pipeline.defs.environment.assets import env_readings
from mushroom_pipeline.defs.side_tables import report_side_table, side_table
from mushroom_pipeline.defs.vision import OWNERS, TAGS
from mushroom_pipeline.defs.vision.checks import check_failure_rate, failure_rate_spec
from mushroom_pipeline.defs.vision.manifest import image_manifest
from mushroom_pipeline.images.context import environment_context
from mushroom_pipeline.images.decode import DecodedImage, ImageRejected, decode_image
from mushroom_pipeline.images.describer import Describer, DescriberResource
from mushroom_pipeline.images.encoder import ClipEncoder, ClipEncoderResource
from mushroom_pipeline.objectstore import ObjectMissingError, ObjectStore
from mushroom_pipeline.partitions import FARM_TZ, daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import CLIP_POOL, TRANSIENT_RETRY, UnavailableError
from mushroom_pipeline.warehouse.frames import (
    copy_frame,
    copy_frame_binary,
)
from mushroom_pipeline.warehouse.io_manager import (
    INDEXES_METADATA,
    PostgresClient,
)
from mushroom_pipeline.warehouse.source import time_slice
from mushroom_pipeline.warehouse.sql import (
    WAREHOUSE_SCHEMA,
    column_definitions,
    quote_ident,
    table_column_types,
    table_exists,
    warehouse_table,
    where_clause,
)
from mushroom_pipeline.warehouse.staging import staging_table
from mushroom_pipeline.warehouse.tables import (
    column_schema,
    column_types,
    ensure_table,
    ensure_vector_extension,
    markdown_preview,
)

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
# The search's cheap filters (model, room, day range): its count of the rows passing them and
# its exact scan of few such rows (images/search.py). Named, so that an earlier version's table
# gains it at the next write (IF NOT EXISTS).
EMBEDDING_FILTER_INDEX = (
    "CREATE INDEX IF NOT EXISTS image_embeddings_model_room_day ON {table} (model, room, day)"
)
# A search by room walks a graph of its room's bucket, not of every image: one partial HNSW
# index per bucket of rooms, numbered by a hash of the room, so that no room's name becomes DDL
# text and rooms may come and go. The day range is then the walk's main filter: a room of 10 on
# a 30-day range at 300k vectors, recall@10 0.962–0.970 against the whole-table walk's
# 0.891–0.928 (benchmarks/README.md, "Filtered search" (c)). Searches without a room walk the
# full index.
ROOM_BUCKETS = 16  # a power of two: the bucket is the hash's low bits


def room_bucket(room_sql: str) -> str:
    """The SQL of the bucket of `room_sql` (a column or a bound parameter): the partial
    indexes' predicates and the search's clause, the same text, so the planner matches them."""
    return f"(hashtext({room_sql}) & {ROOM_BUCKETS - 1})"


EMBEDDING_ROOM_BUCKETS = [
    f"CREATE INDEX IF NOT EXISTS image_embeddings_room_bucket_{bucket} ON {{table}} "
    f"USING hnsw (embedding vector_cosine_ops) WHERE {room_bucket('room')} = {bucket}"
    for bucket in range(ROOM_BUCKETS)
] + [
    # The planner learns that the bucket follows from the room: without it, it counts the
    # search's bucket clause as one more filter (0.5 %) and under-estimates a room's rows 200×.
    f"CREATE STATISTICS IF NOT EXISTS {WAREHOUSE_SCHEMA}.image_embeddings_room_bucket "
    f"ON room, {room_bucket('room')} FROM {{table}}"
]
EMBEDDING_INDEXES = [
    "CREATE UNIQUE INDEX ON {table} (object_key, model)",
    "CREATE INDEX ON {table} USING hnsw (embedding vector_cosine_ops)",
    EMBEDDING_FILTER_INDEX,
    *EMBEDDING_ROOM_BUCKETS,
]
FAILURES_TABLE = "image_failures"
FAILURES_SCHEMA = column_schema(
    ("day", "date"),
    ("room", "text"),
    ("object_key", "text"),
    ("etag", "text"),
    ("model", "text"),
    ("captured_at", "timestamptz"),
    ("reason", "text",
     "empty, not_an_image, unsupported_format, truncated, corrupt, too_large, missing"),
    ("detail", "text"),
    ("failed_at", "timestamptz"),
)


image_failures = side_table(
    FAILURES_TABLE, "image_embeddings", "Images that could not be embedded, one row per image "
    "and model with the reason and detail; tried again on the next run.", FAILURES_SCHEMA,
    "vision", OWNERS, TAGS,
)
EMBEDDINGS_TABLE = warehouse_table("image_embeddings")
MANIFEST_TABLE = warehouse_table("image_manifest")
# Vectors computed but not yet swapped into the day: what a crashed run leaves for its retry.
PENDING_TABLE = "image_embeddings_pending"
EMBEDDED_COLUMNS = ["day", "room", "object_key", "etag", "captured_at", "embedding", "description",
                    "width", "height", "source_mode"]
FAILURE_COLUMNS = ["day", "room", "object_key", "etag", "captured_at", "reason", "detail"]

# Whether a manifest row still waits to be embedded by the model: listed, and neither in the
# table with the same etag nor computed by an earlier attempt (pending). Index lookups per row.
STILL_TO_EMBED = """
m.missing_since IS NULL
AND NOT EXISTS (SELECT 1 FROM {table} e WHERE e.object_key = m.object_key
                AND e.model = %(model)s AND e.etag IS NOT DISTINCT FROM m.etag)
AND NOT EXISTS (SELECT 1 FROM {pending} p WHERE p.object_key = m.object_key
                AND p.model = %(model)s AND p.etag IS NOT DISTINCT FROM m.etag)
"""
TO_EMBED_COUNT_SQL = "SELECT count(*) FROM {manifest} m WHERE {window} AND " + STILL_TO_EMBED
# One keyset page of the window's manifest along its (day, object_key) index, each row marked:
# a page costs its own rows, never a sort of the whole day (a 100k-image day made the filtered,
# sorted form cost 0.3 s a page, quadratic in the day's size).
MANIFEST_PAGE_SQL = (
    "SELECT day, room, object_key, etag, size, captured_at, (" + STILL_TO_EMBED + ") AS todo "
    "FROM {manifest} m WHERE {window} AND (day, object_key) > (%(after_day)s, %(after_key)s) "
    "ORDER BY day, object_key LIMIT %(page)s"
)
MANIFEST_KEYSET_INDEX = (
    "CREATE INDEX IF NOT EXISTS image_manifest_day_object_key ON {manifest} (day, object_key)"
)

# The swap, in one transaction. The model's rows of the window stay when the manifest lists
# their image with the same etag, or keeps it as gone from the store (marked as the manifest
# marks it); the others go, replaced by the pending vectors of the listed images.
DROP_REPLACED_SQL = """
DELETE FROM {table} e WHERE {window} AND model = %(model)s AND NOT EXISTS (
    SELECT 1 FROM {manifest} m WHERE m.object_key = e.object_key
    AND (m.missing_since IS NOT NULL OR m.etag IS NOT DISTINCT FROM e.etag))
"""
MARK_MISSING_SQL = """
UPDATE {table} e SET missing_since = m.missing_since
FROM (SELECT object_key, missing_since FROM {manifest} WHERE {window}) m
WHERE e.object_key = m.object_key AND e.model = %(model)s
  AND e.missing_since IS DISTINCT FROM m.missing_since
"""
INSERT_PENDING_SQL = """
INSERT INTO {table} ({columns})
SELECT {p_columns} FROM (SELECT * FROM {pending} WHERE {window} AND model = %(model)s) p
JOIN {manifest} m ON m.object_key = p.object_key AND m.etag IS NOT DISTINCT FROM p.etag
                 AND m.missing_since IS NULL
ON CONFLICT (object_key, model) DO NOTHING
"""


def prefetched(items: Iterable, prepare: Callable, threads: int, ahead: int,
               max_bytes: int, size: Callable) -> Iterator[tuple]:
    """(item, prepare(item)) in order, with up to `ahead` items, and `max_bytes` by `size(item)`,
    fetched and decoded in advance by `threads` threads, so the model's forward pass does not
    wait on the object store. An item over the budget alone goes through alone."""
    items = iter(items)
    end = object()
    waiting = next(items, end)
    pending: deque = deque()
    in_flight = 0
    with ThreadPoolExecutor(threads, thread_name_prefix="image-prefetch") as pool:
        while True:
            while waiting is not end and len(pending) < ahead and (
                not pending or in_flight + size(waiting) <= max_bytes
            ):
                pending.append((waiting, pool.submit(prepare, waiting)))
                in_flight += size(waiting)
                waiting = next(items, end)
            if not pending:
                return
            item, future = pending.popleft()
            in_flight -= size(item)
            yield item, future.result()


def _normalized(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class ImageEmbedder:
    """Fetch and decode (threads) → batched forward pass → chunks of rows and failure rows,
    handed to `write` as they fill."""

    def __init__(self, store, encoder: ClipEncoder, describer: Describer | None,
                 settings: ClipEncoderResource, log):
        self.store, self.encoder, self.describer, self.log = store, encoder, describer, log
        self.batch_size, self.threads = settings.batch_size, settings.decode_threads
        self.max_image_bytes = settings.max_image_mb * 2**20
        self.prefetch_bytes = settings.prefetch_mb * 2**20
        self.chunk_images = settings.chunk_images
        self.forward_s = 0.0

    def _fetched_bytes(self, image) -> int:
        return 0 if image.size > self.max_image_bytes else image.size

    def _prepare(self, image):
        if image.size > self.max_image_bytes:
            return ImageRejected("too_large", f"{image.size:,} bytes, over the "
                                 f"{self.max_image_bytes // 2**20} MB limit (MUSHROOM_MAX_IMAGE_MB)")
        try:
            decoded = decode_image(self.store.get(image.object_key), self.encoder.image_size)
            tensor = self.encoder.preprocess(decoded.image)
        except ObjectMissingError:
            return ImageRejected("missing", "listed in the manifest, gone from the object store")
        except ImageRejected as rejected:
            return rejected
        # The picture is kept only for the describer; the forward pass needs the tensor alone.
        return (decoded if self.describer else
                DecodedImage(None, decoded.source_mode, decoded.width, decoded.height)), tensor

    def _forward(self, batch: list) -> list[dict]:
        import torch

        started = time.perf_counter()
        vectors = self.encoder.encode_images(torch.stack([tensor for _, _, tensor in batch]))
        descriptions = (
            self.describer.describe([decoded.image for _, decoded, _ in batch])
            if self.describer else [None] * len(batch)
        )
        self.forward_s += time.perf_counter() - started
        return [{
            "day": image.day, "room": image.room, "object_key": image.object_key,
            "etag": image.etag, "captured_at": image.captured_at, "embedding": vector,
            "description": description, "width": decoded.width, "height": decoded.height,
            "source_mode": decoded.source_mode,
        } for (image, decoded, _), vector, description in zip(batch, vectors, descriptions)]

    def run(self, images: Iterable, total: int, write: Callable[[list[dict], list[dict]], None]
            ) -> None:
        batch, rows, failures, started = [], [], [], time.perf_counter()
        ahead = self.batch_size + 2 * self.threads
        done = 0
        for done, (image, prepared) in enumerate(prefetched(
            images, self._prepare, self.threads, ahead, self.prefetch_bytes, self._fetched_bytes
        ), 1):
            if isinstance(prepared, ImageRejected):
                failures.append({
                    "day": image.day, "room": image.room, "object_key": image.object_key,
                    "etag": image.etag, "captured_at": image.captured_at,
                    "reason": prepared.reason, "detail": prepared.detail[:500],
                })
                self.log.warning(f"{image.object_key}: {prepared.reason}: {prepared.detail}")
            else:
                batch.append((image, *prepared))
            if len(batch) == self.batch_size:
                rows += self._forward(batch)
                batch = []
            if len(rows) + len(failures) >= self.chunk_images:
                write(rows, failures)
                rows, failures = [], []
                rate = done / (time.perf_counter() - started)
                self.log.info(f"{done}/{total} images embedded and committed ({rate:.1f}/s)")
        if batch:
            rows += self._forward(batch)
        if rows or failures:
            write(rows, failures)


class TextVectors:
    """The text tower's vectors by text, for one run: a context sentence repeats across the
    images of a room and minute (several cameras, bursts), so each distinct text is encoded once.
    At most `limit` kept (least recently used out): memory stays bounded on any day."""

    def __init__(self, encoder: ClipEncoder, batch_size: int, limit: int = 20_000):
        self.encoder, self.batch_size, self.limit = encoder, batch_size, limit
        self.vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self.encoded = 0  # texts run through the text tower

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.encoder.dim), np.float32)
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start:start + self.batch_size]
            self.vectors.update(zip(batch, self.encoder.encode_texts(batch)))
            self.encoded += len(batch)
        found = np.stack([self.vectors[t] for t in texts])
        for text in dict.fromkeys(texts):
            self.vectors.move_to_end(text)
        while len(self.vectors) > self.limit:
            self.vectors.popitem(last=False)
        return found


def fuse(image_vectors: np.ndarray, text_vectors: np.ndarray) -> np.ndarray:
    return _normalized(IMAGE_WEIGHT * image_vectors + TEXT_WEIGHT * text_vectors).astype(np.float32)


def _slice(table: str, window: dg.TimeWindow) -> TableSlice:
    return time_slice(table, "day", window)


def _prepare_tables(warehouse: PostgresResource, window: dg.TimeWindow, dim: int) -> None:
    """The embeddings table (with the model's dimension), its pending table and the failures
    table exist; a table of another dimension stops the run before any work."""
    types = {**column_types(EMBEDDINGS_SCHEMA), "embedding": f"vector({dim})",
             "fused_embedding": f"vector({dim})"}
    client = PostgresClient(warehouse)
    for table_slice, table_types, indexes in (
        (_slice("image_embeddings", window), types, EMBEDDING_INDEXES),
        # `vector` without a dimension: pending rows of any model
        (_slice(PENDING_TABLE, window), column_types(EMBEDDINGS_SCHEMA),
         ["CREATE UNIQUE INDEX ON {table} (object_key, model, etag)"]),
        (_slice(FAILURES_TABLE, window), column_types(FAILURES_SCHEMA), ()),
    ):
        with client.connect(None, table_slice) as conn:
            client.ensure_schema_exists(None, table_slice, conn)
            if any(t.startswith("vector") for t in table_types.values()):
                ensure_vector_extension(conn)
            ensure_table(conn, table_slice, table_types, indexes)
    with warehouse.begin() as conn:
        stored = table_column_types(conn, EMBEDDINGS_TABLE)["embedding"]
        for statement in (EMBEDDING_FILTER_INDEX, *EMBEDDING_ROOM_BUCKETS):  # an older table too
            conn.exec_driver_sql(statement.format(table=EMBEDDINGS_TABLE))
        if table_exists(conn, MANIFEST_TABLE):  # a manifest table of an earlier version too
            conn.exec_driver_sql(MANIFEST_KEYSET_INDEX.format(manifest=MANIFEST_TABLE))
    if stored != types["embedding"]:
        raise UnavailableError(
            f"{EMBEDDINGS_TABLE}.embedding is {stored}, the configured model gives vector({dim}). "
            "One table holds one dimension: rename or drop the old table to embed with this "
            "model, or set MUSHROOM_CLIP_MODEL back."
        )


def _sql(template: str, window: dg.TimeWindow, **names) -> str:
    """A statement's text: table names and the window's predicate (DATE literals of the
    partition); every value in it travels as a bound parameter."""
    clause, _ = where_clause(_slice("image_embeddings", window), {"day": "date"})
    return template.format(
        window=clause, table=EMBEDDINGS_TABLE, manifest=MANIFEST_TABLE,
        pending=warehouse_table(PENDING_TABLE), **names,
    )


def images_to_embed(warehouse: PostgresResource, window: dg.TimeWindow, model: str, page: int
                    ) -> Iterator[sa.Row]:
    """The manifest rows still to embed, read lazily a keyset page at a time (short
    transactions)."""
    after = (dt.date.min, "")
    while True:
        with warehouse.begin() as conn:
            rows = conn.exec_driver_sql(_sql(MANIFEST_PAGE_SQL, window), {
                "after_day": after[0], "after_key": after[1], "model": model, "page": page,
            }).all()
        yield from (row for row in rows if row.todo)
        if len(rows) < page:
            return
        after = (rows[-1].day, rows[-1].object_key)


def _count(conn, template: str, window: dg.TimeWindow, **params) -> int:
    return conn.exec_driver_sql(_sql(template, window), params).scalar()


@dg.asset(
    description="CLIP vectors of the day's images (one row per image and model) with each "
    "image's environment context, optional description and fused vector. Unchanged images are "
    f"not embedded again. Unreadable images go to mushroom.{FAILURES_TABLE} with their reason.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    # read in SQL a page at a time, never loaded whole
    deps=[image_manifest, env_readings, room_batches],
    metadata={
        "partition_expr": "day",
        "dagster/column_schema": EMBEDDINGS_SCHEMA,
        INDEXES_METADATA: EMBEDDING_INDEXES,
    },
    check_specs=[failure_rate_spec],
    group_name="vision",
    owners=OWNERS,
    tags={**TAGS, "layer": "derived"},
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
    clip_encoder: ClipEncoderResource,
    describer: DescriberResource,
    object_store: ObjectStore,
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
    model, window = encoder.model_id, context.partition_time_window
    _prepare_tables(warehouse, window, encoder.dim)
    pending = warehouse_table(PENDING_TABLE)
    with warehouse.begin() as conn:
        total = _count(conn, "SELECT count(*) FROM {manifest} WHERE {window} AND missing_since IS NULL",
                       window)
        resumed = _count(conn, "SELECT count(*) FROM {pending} WHERE {window} AND model = %(model)s",
                         window, model=model)
        todo = _count(conn, TO_EMBED_COUNT_SQL, window, model=model)
    context.log.info(
        f"{total} images in the store: {todo} to embed with {model} on {encoder.device}, "
        f"{resumed} already computed by an earlier attempt, the rest unchanged"
    )

    started = time.perf_counter()
    embedded = 0
    metrics = farm_catalog.metrics()
    embedded_types = column_types(EMBEDDINGS_SCHEMA)
    text_vectors = TextVectors(encoder, clip_encoder.batch_size)
    with staging_table(warehouse, f"image_failures_{context.run_id}") as failures_table:
        with warehouse.begin() as conn:
            conn.exec_driver_sql(f"CREATE UNLOGGED TABLE {failures_table} "
                                 f"({column_definitions(column_types(FAILURES_SCHEMA))})")

        def write(rows: list[dict], failures: list[dict]) -> None:
            """One chunk, committed: its vectors are kept whatever happens next."""
            nonlocal embedded
            chunk = pd.DataFrame(rows, columns=EMBEDDED_COLUMNS)
            chunk["captured_at"] = pd.to_datetime(chunk["captured_at"], utc=True).dt.tz_convert(FARM_TZ)
            chunk["model"] = model
            chunk["describer"] = describe.model_id if describe else None
            chunk["context"] = environment_context(warehouse, chunk, metrics)
            texts = [c if d is None else f"{c} {d}" for c, d in zip(chunk["context"], chunk["description"])]
            vectors = np.stack(chunk["embedding"]) if len(chunk) else np.zeros((0, encoder.dim))
            chunk["fused_embedding"] = list(fuse(vectors, text_vectors(texts)))
            chunk["embedded_at"] = pd.Timestamp.now(tz="UTC")
            chunk["missing_since"] = pd.Series(pd.NaT, index=chunk.index, dtype="datetime64[us, UTC]")
            failed = pd.DataFrame(failures, columns=FAILURE_COLUMNS).assign(
                model=model, failed_at=pd.Timestamp.now(tz="UTC"))
            with warehouse.begin() as conn:
                if len(chunk):
                    # through a temporary table: a concurrent run of the same day may have
                    # committed some of these images already
                    conn.exec_driver_sql(f"CREATE TEMP TABLE chunk (LIKE {pending}) ON COMMIT DROP")
                    copy_frame_binary(conn, "chunk", chunk, embedded_types)
                    conn.exec_driver_sql(f"INSERT INTO {pending} SELECT * FROM chunk ON CONFLICT DO NOTHING")
                if len(failed):
                    copy_frame(conn, failures_table, failed, column_types(FAILURES_SCHEMA))
            embedded += len(chunk)

        embedder = ImageEmbedder(object_store, encoder, describe, clip_encoder, context.log)
        embedder.run(images_to_embed(warehouse, window, model, clip_encoder.chunk_images), todo, write)
        elapsed = time.perf_counter() - started
        outcome = _swap_in(warehouse, window, model, failures_table)

    reasons = outcome.pop("failure_reasons")
    new_rows = outcome.pop("new_rows")
    failures_by_day = outcome.pop("failures_by_day")
    check = check_failure_rate(outcome.pop("images_by_day"), failures_by_day)
    context.log.info(
        f"embedded {embedded} images in {elapsed:.1f} s ({embedded / max(elapsed, 1e-9):.1f}/s), "
        f"{outcome['failed']} failed {reasons}"
    )
    yield dg.MaterializeResult(
        metadata={
            "model": model,
            "weights": "RANDOM: untrained, vectors carry no meaning" if encoder.random_weights
            else "pretrained",
            "device": encoder.device,
            "dimension": encoder.dim,
            "describer": describe.model_id if describe else "off (MUSHROOM_DESCRIBER_MODEL unset)",
            "embedded": embedded,
            "resumed_from_earlier_attempt": resumed,
            **outcome,
            "failure_reasons": dg.MetadataValue.json(reasons),
            "images_per_s": embedded / elapsed if embedded else 0.0,
            "forward_share": embedder.forward_s / elapsed if embedded else 0.0,
            # distinct context texts through the text tower (each once per run)
            "texts_encoded": text_vectors.encoded,
            "new_rows": markdown_preview(new_rows),
        },
        check_results=[check],
    )
    report_side_table(context, FAILURES_TABLE,
                      {day: sum(by_reason.values()) for day, by_reason in failures_by_day.items()},
                      model=model)


def _swap_in(warehouse: PostgresResource, window: dg.TimeWindow, model: str, failures_table: str
             ) -> dict:
    """The day's swap, one transaction: carried-over rows kept, gone images marked, pending
    vectors of listed images inserted, pending rows of the window emptied, the day's failures
    replaced. Returns the counts and previews for the materialization."""
    params = {"model": model}
    columns = list(column_types(EMBEDDINGS_SCHEMA))
    client = PostgresClient(warehouse)
    with client.connect(None, _slice("image_embeddings", window)) as conn:
        client.ensure_schema_exists(None, _slice("image_embeddings", window), conn)  # write lock
        client.ensure_schema_exists(None, _slice(FAILURES_TABLE, window), conn)
        conn.exec_driver_sql(_sql(DROP_REPLACED_SQL, window), params)
        conn.exec_driver_sql(_sql(MARK_MISSING_SQL, window), params)
        skipped = _count(conn, "SELECT count(*) FROM {table} WHERE {window} AND model = %(model)s "
                               "AND missing_since IS NULL", window, **params)
        inserted = conn.exec_driver_sql(_sql(
            INSERT_PENDING_SQL, window, columns=", ".join(map(quote_ident, columns)),
            p_columns=", ".join(f"p.{quote_ident(c)}" for c in columns),
        ), params).rowcount
        conn.exec_driver_sql(_sql("DELETE FROM {pending} WHERE {window} AND model = %(model)s", window), params)
        conn.exec_driver_sql(
            _sql(f"DELETE FROM {warehouse_table(FAILURES_TABLE)} WHERE {{window}} AND model = %(model)s", window),
            params)
        failure_columns = ", ".join(map(quote_ident, column_types(FAILURES_SCHEMA)))
        conn.exec_driver_sql(f"INSERT INTO {warehouse_table(FAILURES_TABLE)} ({failure_columns}) "
                             f"SELECT {failure_columns} FROM {failures_table}")
        counts = dict(conn.exec_driver_sql(_sql(
            "SELECT 'kept_missing_from_store', count(*) FILTER (WHERE model = %(model)s "
            "AND missing_since IS NOT NULL) FROM {table} WHERE {window} UNION ALL "
            "SELECT 'other_model_rows', count(*) FILTER (WHERE model <> %(model)s) FROM {table} "
            "WHERE {window} UNION ALL SELECT 'dagster/row_count', count(*) FROM {table} WHERE {window}",
            window), params).all())
        images_by_day = {str(day): n for day, n in conn.exec_driver_sql(_sql(
            "SELECT day, count(*) FROM {manifest} WHERE {window} GROUP BY day", window))}
        failures_by_day: dict[str, dict[str, int]] = {}
        for day, reason, n in conn.exec_driver_sql(
            f"SELECT day, reason, count(*) FROM {failures_table} GROUP BY day, reason"
        ):
            failures_by_day.setdefault(str(day), {})[reason] = n
        new_rows = pd.read_sql_query(sa.text(_sql(
            "SELECT day, room, object_key, etag, captured_at, context, description, width, height, "
            "source_mode FROM {table} WHERE {window} AND model = :model ORDER BY embedded_at DESC, "
            "object_key LIMIT 10", window)), conn, params=params)
    reasons: dict[str, int] = {}
    for by_reason in failures_by_day.values():
        for reason, n in by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + n
    return {
        **counts, "images": sum(images_by_day.values()), "skipped_unchanged": skipped,
        "swapped_in": inserted, "failed": sum(reasons.values()), "failure_reasons": reasons,
        "images_by_day": images_by_day, "failures_by_day": failures_by_day, "new_rows": new_rows,
    }
