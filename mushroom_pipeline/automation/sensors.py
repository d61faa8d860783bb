"""Sensors: work the cron jobs could not see, such as readings that arrive after their day ran."""

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

import dagster as dg

from mushroom_pipeline.automation.jobs import environment_job, vision_job
from mushroom_pipeline.environment.assets import ENV_READINGS_LEDGER
from mushroom_pipeline.io.source import SourceLedger, rows_per_day
from mushroom_pipeline.objectstore import ObjectStoreResource
from mushroom_pipeline.partitions import SETTINGS, daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.vision.encoder import ClipEncoderResource
from mushroom_pipeline.vision.manifest import list_images

LOOKBACK_DAYS = 14  # late data older than this needs a manual backfill
MAX_RUNS_PER_TICK = 5  # the rest waits for the next tick, so one tick stays cheap


def not_yet_requested(context: dg.SensorEvaluationContext, wanted: dict[str, object]) -> dict:
    """The days of `wanted` ({partition key: version}) not yet requested at that version, at most
    MAX_RUNS_PER_TICK. The cursor remembers what was requested, so a day whose run is still
    queued is not asked again; days no longer wanted are forgotten."""
    requested = json.loads(context.cursor) if context.cursor else {}
    fresh = {day: version for day, version in wanted.items() if requested.get(day) != version}
    batch = dict(list(fresh.items())[:MAX_RUNS_PER_TICK])
    kept = {day: version for day, version in requested.items() if day in wanted}
    context.update_cursor(json.dumps({**kept, **batch}))
    return batch


@dataclass(frozen=True)
class StaleDays:
    grown: dict[str, int]  # {day: source rows}: rows arrived since the day was materialized
    shrunk: dict[str, tuple[int, int]]  # {day: (source rows, stored rows)}: rows were deleted


def stale_partitions(
    ledger: SourceLedger,
    source_database: PostgresResource,
    warehouse: PostgresResource,
    materialized: set[str],
    now: dt.datetime,
) -> StaleDays:
    """Materialized, closed days of the lookback whose source row count differs from what was
    stored. A day whose source now has fewer rows was purged (retention, a cleanup): re-running
    it would delete stored rows, so it is only reported, never requested."""
    today = now.astimezone(SETTINGS.tz).date()
    first = today - dt.timedelta(days=LOOKBACK_DAYS)
    start = dt.datetime.combine(first, dt.time(), tzinfo=SETTINGS.tz)
    source = ledger.source_per_day(source_database, start)
    stored = ledger.stored_per_day(warehouse, start)
    closed = [
        day for day in sorted(set(source) | set(stored), reverse=True)
        if day in materialized and day < today.isoformat()
    ]
    return StaleDays(
        grown={d: source[d] for d in closed if source.get(d, 0) > stored.get(d, 0)},
        shrunk={d: (source.get(d, 0), stored[d]) for d in closed
                if source.get(d, 0) < stored.get(d, 0)},
    )


def late_data_requests(
    context: dg.SensorEvaluationContext, stale: StaleDays, trigger: str
) -> list[dg.RunRequest] | dg.SkipReason:
    """Run requests for the days with late rows; purged days are logged, never re-run."""
    if stale.shrunk:
        context.log.warning(
            f"{len(stale.shrunk)} day(s) have fewer source rows than the warehouse stored "
            f"(source, stored): {stale.shrunk}. Not re-run: the stored rows are kept. To mirror "
            "a deliberate deletion, re-run the day with run config allow_shrink: true."
        )
    batch = not_yet_requested(context, stale.grown)
    if not batch:
        return dg.SkipReason(
            f"{len(stale.grown)} day(s) with late data, none new; {len(stale.shrunk)} purged "
            "day(s) left as stored"
        )
    return [
        dg.RunRequest(
            run_key=f"{trigger}:{day}:{count}",
            partition_key=day,
            tags={"mushroom/trigger": trigger},
        )
        for day, count in batch.items()
        if daily_partitions.has_partition_key(day)
    ]


@dg.sensor(
    name="late_env_readings_sensor",
    job=environment_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"Re-runs already materialized days (last {LOOKBACK_DAYS}) that received source "
    "rows since: late or repeated readings. Days whose source rows were purged are kept as stored.",
)
def late_env_readings_sensor(
    context: dg.SensorEvaluationContext,
    source_database: PostgresResource,
    warehouse: PostgresResource,
):
    materialized = context.instance.get_materialized_partitions(dg.AssetKey("env_readings"))
    stale = stale_partitions(ENV_READINGS_LEDGER, source_database, warehouse, set(materialized),
                             dt.datetime.now(dt.UTC))
    return late_data_requests(context, stale, "late_env_readings")


def _handled_images(warehouse: PostgresResource, model: str, first: dt.date) -> set[tuple[str, str]]:
    """(object_key, etag) already embedded by `model`, or failed with it (they would fail again)."""
    handled: set[tuple[str, str]] = set()
    with warehouse.begin() as conn:
        for table in ("mushroom.image_embeddings", "mushroom.image_failures"):
            if conn.exec_driver_sql("SELECT to_regclass(%s)", (table,)).scalar() is not None:
                handled.update(conn.exec_driver_sql(
                    f"SELECT object_key, etag FROM {table} WHERE model = %s AND day >= %s",
                    (model, first),
                ).all())
    return handled


def days_with_new_images(
    object_store: ObjectStoreResource, warehouse: PostgresResource, model: str, now: dt.datetime
) -> dict[str, list[str]]:
    """{day: sorted new keys} over the lookback, newest day first."""
    today = now.astimezone(SETTINGS.tz).date()
    days = [today - dt.timedelta(days=n) for n in range(LOOKBACK_DAYS + 1)]
    images, _ = list_images(object_store.store(), days)
    handled = _handled_images(warehouse, model, days[-1])
    new: dict[str, list[str]] = {}
    for image in images:
        if (image.key, image.etag) not in handled:
            new.setdefault(image.day.isoformat(), []).append(image.key)
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
    object_store: ObjectStoreResource,
    warehouse: PostgresResource,
    clip_encoder: ClipEncoderResource,
):
    new = days_with_new_images(
        object_store, warehouse, clip_encoder.model_id(), dt.datetime.now(dt.UTC)
    )
    batches = {
        day: hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16] for day, keys in new.items()
    }
    batch = not_yet_requested(context, batches)
    if not batch:
        return dg.SkipReason(f"{len(batches)} day(s) with new images, none not yet requested")
    return [
        dg.RunRequest(
            run_key=f"new_images:{day}:{digest}",
            partition_key=day,
            tags={"mushroom/trigger": "new_images", "mushroom/new_images": str(len(new[day]))},
        )
        for day, digest in batch.items()
        if daily_partitions.has_partition_key(day)
    ]
