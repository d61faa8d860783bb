"""Run requests that never lose work: the cursor, run keys that carry the content, retries with
backoff, late-data detection; shared by the domains' sensors and schedules."""

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import dagster as dg

from mushroom_pipeline.defs.automation.alerts import AlertWebhookResource
from mushroom_pipeline.partitions import FARM_TZ, daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.source import SourceLedger

# Dagster's documented run tags
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"

LOOKBACK_DAYS = 14  # late data older than this needs a manual backfill
MAX_RUNS_PER_TICK = 5  # the rest waits for the next tick, so one tick stays cheap
MAX_ATTEMPTS = 4  # runs of one request before it is given up, with an alert
RETRY_BACKOFF = dt.timedelta(minutes=10)  # after a failed attempt; doubles with each attempt
LAUNCH_GRACE = dt.timedelta(minutes=10)  # a request with no run after this was lost: asked again
CURSOR_VERSION = 2
RUNNING = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
           dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.MANAGED}


@dataclass
class Requested:
    """A day's request as the cursor keeps it. `base` names the content (what made the day
    wanted, and its last materialization); each attempt gets its own run key, so Dagster never
    skips a retry as a duplicate, and a reset cursor re-derives the same keys."""

    base: str
    attempt: int
    at: float  # when this attempt was requested (epoch seconds)
    alerted: bool = False

    @property
    def run_key(self) -> str:
        return f"{self.base}:a{self.attempt}"


def read_requests(context: dg.SensorEvaluationContext) -> dict[str, Requested]:
    """The cursor's requests; an unreadable or old-format cursor starts afresh, with a warning:
    the days are re-derived from the warehouse, and repeated run keys are skipped by Dagster."""
    if not context.cursor:
        return {}
    try:
        document = json.loads(context.cursor)
        if document.get("version") != CURSOR_VERSION:
            raise ValueError(f"cursor version {document.get('version')!r}")
        return {day: Requested(**entry) for day, entry in document["days"].items()}
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        context.log.warning(f"unreadable sensor cursor ({err}): starting afresh from the warehouse")
        return {}


def _last_run(instance: dg.DagsterInstance, sensor_name: str, run_key: str):
    records = instance.get_run_records(
        dg.RunsFilter(tags={SENSOR_NAME_TAG: sensor_name, RUN_KEY_TAG: run_key}), limit=1
    )
    return records[0] if records else None


def requests_that_never_lose_work(
    context: dg.SensorEvaluationContext,
    wanted: dict[str, str],
    request_for: Callable[[str, str], dg.RunRequest],
    alert_webhook: AlertWebhookResource,
    now: dt.datetime,
) -> list[dg.RunRequest]:
    """Run requests for `wanted` ({day: content base}, most urgent first). A day is asked again
    until a run of its current content succeeds: a failed run is retried with backoff, up to
    MAX_ATTEMPTS, then an alert says it was given up; new content starts over. At most
    MAX_RUNS_PER_TICK requests per tick."""
    requests = read_requests(context)
    kept: dict[str, Requested] = {}
    emitted: list[dg.RunRequest] = []
    clock = now.timestamp()
    for day, base in wanted.items():
        entry = requests.get(day)
        if entry is None or entry.base != base:
            if len(emitted) < MAX_RUNS_PER_TICK:
                kept[day] = Requested(base, 1, clock)
                emitted.append(request_for(day, kept[day].run_key))
            continue
        kept[day] = entry
        run = _last_run(context.instance, context.sensor_name, entry.run_key)
        if run is None:
            if clock - entry.at > LAUNCH_GRACE.total_seconds() and len(emitted) < MAX_RUNS_PER_TICK:
                entry.at = clock
                emitted.append(request_for(day, entry.run_key))
        elif run.dagster_run.status in RUNNING or run.dagster_run.status == dg.DagsterRunStatus.SUCCESS:
            continue
        elif entry.attempt < MAX_ATTEMPTS:
            ended = run.end_time or entry.at
            if (clock >= ended + (RETRY_BACKOFF * 2 ** (entry.attempt - 1)).total_seconds()
                    and len(emitted) < MAX_RUNS_PER_TICK):
                kept[day] = Requested(base, entry.attempt + 1, clock)
                emitted.append(request_for(day, kept[day].run_key))
        elif not entry.alerted:
            entry.alerted = alert_webhook.send({
                "kind": "sensor_gave_up",
                "sensor": context.sensor_name,
                "partition": day,
                "attempts": entry.attempt,
                "last_run_id": run.dagster_run.run_id,
                "message": f"{entry.attempt} runs of {day} failed; re-run it by hand once fixed",
            }, context.log)
    context.update_cursor(json.dumps(
        {"version": CURSOR_VERSION, "days": {day: asdict(entry) for day, entry in kept.items()}}
    ))
    return emitted


def materialization_ids(context: dg.SensorEvaluationContext, asset: str) -> dict[str, int]:
    """{partition: storage id of its latest materialization}: part of a request's content, so a
    day wanted again after a successful run gets a new run key even if its counts repeat."""
    return dict(context.instance.get_latest_storage_id_by_partition(
        dg.AssetKey(asset), dg.DagsterEventType.ASSET_MATERIALIZATION
    ))


@dataclass(frozen=True)
class StaleDays:
    grown: dict[str, int]  # {day: source rows}: rows arrived since the day was materialized
    shrunk: dict[str, tuple[int, int]]  # {day: (source rows, stored rows)}: rows were deleted
    source_rows: dict[str, int]  # {day: source rows} over the lookback, as seen this tick


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
    today = now.astimezone(FARM_TZ).date()
    first = today - dt.timedelta(days=LOOKBACK_DAYS)
    start = dt.datetime.combine(first, dt.time(), tzinfo=FARM_TZ)
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
        source_rows=dict(sorted(source.items())),
    )


def late_data_requests(
    context: dg.SensorEvaluationContext,
    stale: StaleDays,
    trigger: str,
    materialized: dict[str, int],
    alert_webhook: AlertWebhookResource,
    observed: list[dg.AssetObservation],
    covering: Callable[[str], tuple[str, str]] = lambda day: (day, day),
) -> dg.SensorResult:
    """Run requests for the days with late rows, each run covering `covering(day)` (a first and
    last partition); purged days are logged, never re-run. `observed`: the source's observation."""
    if stale.shrunk:
        context.log.warning(
            f"{len(stale.shrunk)} day(s) have fewer source rows than the warehouse stored "
            f"(source, stored): {stale.shrunk}. Not re-run: the stored rows are kept. To mirror "
            "a deliberate deletion, re-run the day with run config allow_shrink: true."
        )

    def request_for(day: str, run_key: str) -> dg.RunRequest:
        first, last = covering(day)
        tags = {"mushroom/trigger": trigger}
        if first == last:
            return dg.RunRequest(run_key=run_key, partition_key=first, tags=tags)
        return dg.RunRequest(run_key=run_key, tags={
            **tags, ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last})

    wanted = {day: f"{trigger}:{day}:{count}:m{materialized[day]}"
              for day, count in stale.grown.items() if daily_partitions.has_partition_key(day)}
    requests = requests_that_never_lose_work(
        context, wanted, request_for, alert_webhook, dt.datetime.now(dt.UTC)
    )
    return dg.SensorResult(run_requests=requests, asset_events=observed, skip_reason=None if requests else (
        f"{len(stale.grown)} day(s) with late data, none to request now; {len(stale.shrunk)} "
        "purged day(s) left as stored"
    ))
