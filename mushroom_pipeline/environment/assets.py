"""Environment readings (temperature, humidity, CO2 per room) → validated readings → daily stats."""

import json

import dagster as dg

from mushroom_pipeline.checks.environment import (
    check_complete,
    check_coverage,
    check_invalid_share,
    complete_spec,
    coverage_spec,
    invalid_share_spec,
)
from mushroom_pipeline.environment.readings import (
    KNOWN_RANGES,
    SOURCE_COLUMNS,
    quarantine_relation,
    readings_relation,
)
from mushroom_pipeline.io.postgres import (
    PostgresClient,
    PostgresRelation,
    column_schema,
    column_types,
    read_frame,
)
from mushroom_pipeline.io.source import (
    SourceLedger,
    SourceWindowConfig,
    quarantined_source,
    time_slice,
)
from mushroom_pipeline.partitions import daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import POSTGRES_HEAVY_POOL, TRANSIENT_RETRY

READINGS_SCHEMA = column_schema(
    ("room", "text"),
    ("metric", "text"),
    ("measured_at", "timestamptz"),
    ("value", "double precision", "mean of the source rows of this reading"),
    ("source_rows", "bigint", "source rows folded into this reading (>1: duplicates)"),
)
QUARANTINE_SCHEMA = column_schema(
    ("room", "text"),
    ("metric", "text"),
    ("measured_at", "timestamptz"),
    ("value", "double precision"),
    ("reason", "text", "null_value, nan_value, infinite_value, out_of_range, blank_room, ..."),
)
STATS_SCHEMA = column_schema(
    ("day", "date", "the farm's local day"),
    ("room", "text"),
    ("metric", "text"),
    ("n", "bigint", "valid readings"),
    ("mean", "double precision"),
    ("min", "double precision"),
    ("max", "double precision"),
    ("std", "double precision", "sample standard deviation (n-1); NULL when n = 1"),
    ("p05", "double precision"),
    ("p25", "double precision"),
    ("p50", "double precision"),
    ("p75", "double precision"),
    ("p95", "double precision"),
    ("cadence_s", "double precision", "median seconds between consecutive readings"),
    ("coverage", "double precision", "n × cadence / length of the day, at most 1"),
    ("n_invalid", "bigint", "quarantined source rows"),
    ("duplicate_rows", "bigint", "source rows folded into other readings"),
    ("first_at", "timestamptz"),
    ("last_at", "timestamptz"),
)

QUARANTINE_TABLE = "env_readings_quarantine"
ENV_READINGS_LEDGER = SourceLedger(
    "iot.env_readings", "measured_at", ("env_readings", "sum(source_rows)"), QUARANTINE_TABLE
)


@dg.asset(
    description="The day's valid readings of iot.env_readings, one row per (room, metric, "
    f"measured_at): duplicates folded into their mean. Invalid source rows go to "
    f"mushroom.{QUARANTINE_TABLE} with their reason.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "measured_at", "dagster/column_schema": READINGS_SCHEMA},
    check_specs=[invalid_share_spec],
    group_name="environment",
    pool=POSTGRES_HEAVY_POOL,
    kinds={"postgres"},
)
def env_readings(
    context: dg.AssetExecutionContext,
    config: SourceWindowConfig,
    source_database: PostgresResource,
    warehouse: PostgresResource,
):
    window = context.partition_time_window
    with quarantined_source(
        context,
        source_database,
        warehouse,
        ENV_READINGS_LEDGER,
        SOURCE_COLUMNS,
        quarantine_relation,
        column_types(QUARANTINE_SCHEMA),
        config.allow_shrink,
    ) as source:
        yield dg.Output(readings_relation(source.table, window), metadata=source.metadata())
    yield check_invalid_share(source.source_rows, source.invalid_by_reason)


STATS_SQL = """
WITH r AS (
    SELECT room, metric, value, source_rows, measured_at, measured_at::date AS day
    FROM ({readings}) s
), gaps AS (
    SELECT *, extract(epoch FROM measured_at - lag(measured_at) OVER (
        PARTITION BY day, room, metric ORDER BY measured_at)) AS gap_s
    FROM r
), agg AS (
    SELECT day, room, metric, count(*) AS n, avg(value) AS mean, min(value) AS min,
           max(value) AS max, stddev_samp(value) AS std,
           percentile_cont(ARRAY[0.05, 0.25, 0.5, 0.75, 0.95])
               WITHIN GROUP (ORDER BY value) AS p,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY gap_s) AS cadence_s,
           sum(source_rows) - count(*) AS duplicate_rows,
           min(measured_at) AS first_at, max(measured_at) AS last_at
    FROM gaps GROUP BY day, room, metric
), invalid AS (
    SELECT measured_at::date AS day, room, metric, count(*) AS n_invalid
    FROM ({quarantine}) q GROUP BY 1, 2, 3
)
SELECT agg.day, agg.room, agg.metric, n, mean, min, max, std,
       p[1] AS p05, p[2] AS p25, p[3] AS p50, p[4] AS p75, p[5] AS p95, cadence_s,
       -- the session runs in the farm's timezone: a day lasts 23 or 25 hours across DST
       least(1.0, n * cadence_s / extract(epoch FROM (agg.day + 1)::timestamptz
                                                    - agg.day::timestamptz)) AS coverage,
       coalesce(n_invalid, 0) AS n_invalid, duplicate_rows, first_at, last_at
FROM agg LEFT JOIN invalid USING (day, room, metric)
ORDER BY 1, 2, 3
"""

# Groups with readings all have a stats row (the stats come from them): only groups whose every
# row was quarantined can lack one, so the quarantine alone is looked at.
QUARANTINED_GROUPS_SQL = "SELECT DISTINCT measured_at::date AS day, room, metric FROM ({quarantine}) q"


@dg.asset(
    description="Daily statistics per room and metric of the valid readings (contract columns "
    "plus cadence, coverage, invalid and duplicate counts), computed inside Postgres.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "dagster/column_schema": STATS_SCHEMA},
    check_specs=[coverage_spec, complete_spec],
    group_name="environment",
    kinds={"postgres"},
)
def env_daily_stats(
    context: dg.AssetExecutionContext,
    warehouse: PostgresResource,
    env_readings: PostgresRelation,
):
    quarantine = PostgresClient.get_select_statement(
        time_slice(QUARANTINE_TABLE, "measured_at", context.partition_time_window)
    )
    relations = {"readings": env_readings.sql, "quarantine": quarantine}
    with warehouse.begin() as conn:
        stats = read_frame(conn, STATS_SQL.format(**relations), column_types(STATS_SCHEMA))
        quarantined = read_frame(
            conn,
            QUARANTINED_GROUPS_SQL.format(**relations),
            {"day": "date", "room": "text", "metric": "text"},
        )
    means = stats.groupby("metric")["mean"].mean()
    context.log.info(f"{len(stats)} stats rows for {stats['day'].nunique()} day(s)")
    yield dg.Output(
        stats,
        metadata={
            "days": stats["day"].nunique(),
            "rooms": stats["room"].nunique(),
            "readings": int(stats["n"].sum()),
            "duplicate_rows_folded": int(stats["duplicate_rows"].sum()),
            "metrics_without_range": dg.MetadataValue.json(
                sorted(set(stats["metric"]) - set(KNOWN_RANGES))
            ),
            **{f"mean_{metric}": float(means[metric]) for metric in KNOWN_RANGES if metric in means},
            "lowest_coverage": float(stats["coverage"].fillna(0).min()) if len(stats) else 1.0,
            "rooms_by_day": dg.MetadataValue.json(
                json.loads(stats.groupby(stats["day"].astype(str))["room"].nunique().to_json())
            ),
        },
    )
    yield check_coverage(stats)
    yield check_complete(stats, quarantined)
