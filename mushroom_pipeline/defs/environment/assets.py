"""Environment readings (temperature, humidity, CO2 per room) → validated readings → daily stats."""

import datetime as dt
import functools
import json

import dagster as dg
import pandas as pd

from mushroom_pipeline.catalog.metrics import NAME_TYPES
from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.defs.environment import OWNERS, TAGS
from mushroom_pipeline.defs.environment.checks import (
    RECENT_DAYS,
    check_complete,
    check_coverage,
    check_invalid_share,
    check_silence,
    complete_spec,
    coverage_spec,
    invalid_share_spec,
    silence_spec,
)
from mushroom_pipeline.defs.environment.readings import (
    SOURCE_COLUMNS,
    classify_and_quarantine,
    readings_relation,
)
from mushroom_pipeline.defs.side_tables import report_side_table, side_table
from mushroom_pipeline.defs.sources import IOT_ENV_READINGS
from mushroom_pipeline.partitions import FARM_TZ, daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import POSTGRES_HEAVY_POOL, TRANSIENT_RETRY
from mushroom_pipeline.warehouse.frames import read_frame
from mushroom_pipeline.warehouse.io_manager import BY_DAY_METADATA, PostgresClient
from mushroom_pipeline.warehouse.source import (
    SourceLedger,
    SourceWindowConfig,
    quarantined_source,
    staged_frame,
    time_slice,
)
from mushroom_pipeline.warehouse.sql import (
    PostgresRelation,
    table_exists,
    warehouse_table,
)
from mushroom_pipeline.warehouse.staging import staging_table
from mushroom_pipeline.warehouse.tables import (
    column_schema,
    column_types,
)

METRIC_DESCRIPTION = "canonical name of the metric catalog (the source's name if it has none)"
READINGS_SCHEMA = column_schema(
    ("room", "text"),
    ("metric", "text", METRIC_DESCRIPTION),
    ("measured_at", "timestamptz"),
    ("value", "double precision", "mean of the source rows of this reading"),
    ("source_rows", "bigint", "source rows folded into this reading (>1: duplicates)"),
    ("source_metrics", "text[]", "the names the source reported this reading under"),
)
QUARANTINE_SCHEMA = column_schema(
    ("room", "text"),
    ("metric", "text", METRIC_DESCRIPTION),
    ("source_metric", "text", "the name in the source row"),
    ("measured_at", "timestamptz"),
    ("value", "double precision"),
    ("reason", "text", "null_value, nan_value, infinite_value, out_of_range, blank_room, ..."),
)
STATS_SCHEMA = column_schema(
    ("day", "date", "the farm's local day"),
    ("room", "text"),
    ("metric", "text", METRIC_DESCRIPTION),
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
    ("source_metrics", "text", "the names the source reported the metric under, comma-separated"),
)

QUARANTINE_TABLE = "env_readings_quarantine"
ENV_READINGS_LEDGER = SourceLedger(
    "iot.env_readings", "measured_at", ("env_readings", "sum(source_rows)"), QUARANTINE_TABLE
)


@dg.asset(
    description="The day's valid readings of iot.env_readings, one row per (room, metric, "
    "measured_at) under the metric catalog's canonical names (aliases folded in): duplicates "
    f"folded into their mean. Invalid source rows go to mushroom.{QUARANTINE_TABLE} with their "
    "reason.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "measured_at", "dagster/column_schema": READINGS_SCHEMA,
              BY_DAY_METADATA: True},
    check_specs=[invalid_share_spec],
    deps=[IOT_ENV_READINGS],
    group_name="environment",
    owners=OWNERS,
    tags={**TAGS, "layer": "validated"},
    pool=POSTGRES_HEAVY_POOL,
    kinds={"postgres"},
)
def env_readings(
    context: dg.AssetExecutionContext,
    config: SourceWindowConfig,
    source_database: PostgresResource,
    warehouse: PostgresResource,
    farm_catalog: FarmCatalogResource,
):
    catalog = farm_catalog.metrics()
    # The staging tables live until the readings' INSERT … SELECT, which runs on the yield.
    with staged_frame(
        warehouse, f"metric_names_{context.run_id}", catalog.names(), NAME_TYPES
    ) as names, staging_table(warehouse, f"env_classified_{context.run_id}") as classified, quarantined_source(
        context,
        source_database,
        warehouse,
        ENV_READINGS_LEDGER,
        SOURCE_COLUMNS,
        functools.partial(classify_and_quarantine, warehouse=warehouse, names=names,
                          classified=classified),
        column_types(QUARANTINE_SCHEMA),
        config.allow_shrink,
    ) as source:
        yield dg.Output(
            readings_relation(classified),
            metadata={**source.metadata(), "metric_catalog": catalog.source},
        )
        report_side_table(context, QUARANTINE_TABLE, source.quarantined_per_day,
                          invalid_by_reason=dg.MetadataValue.json(source.invalid_by_reason))
    yield check_invalid_share(source.source_rows, source.invalid_by_reason)


env_readings_quarantine = side_table(
    QUARANTINE_TABLE, "env_readings", "Source rows of iot.env_readings that failed validation, "
    "one row each with its reason.", QUARANTINE_SCHEMA, "environment", OWNERS, TAGS,
)


STATS_SQL = """
WITH r AS (
    SELECT room, metric, value, source_rows, source_metrics, measured_at, measured_at::date AS day
    FROM ({readings}) s
), names AS (
    SELECT day, room, metric, string_agg(DISTINCT name, ', ' ORDER BY name) AS source_metrics
    FROM r CROSS JOIN unnest(r.source_metrics) AS name GROUP BY 1, 2, 3
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
       coalesce(n_invalid, 0) AS n_invalid, duplicate_rows, first_at, last_at, source_metrics
FROM agg LEFT JOIN invalid USING (day, room, metric) LEFT JOIN names USING (day, room, metric)
ORDER BY 1, 2, 3
"""

# Groups with readings all have a stats row (the stats come from them): only groups whose every
# row was quarantined can lack one, so the quarantine alone is looked at.
QUARANTINED_GROUPS_SQL = "SELECT DISTINCT measured_at::date AS day, room, metric FROM ({quarantine}) q"


@dg.asset(
    description="Daily statistics per room and canonical metric of the valid readings (contract "
    "columns plus cadence, coverage, invalid and duplicate counts, the source's metric names), "
    "computed inside Postgres. With each room's batch and growth day: the view "
    "mushroom.env_daily_stats_by_batch.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "dagster/column_schema": STATS_SCHEMA},
    check_specs=[coverage_spec, complete_spec, silence_spec],
    deps=[env_readings_quarantine],  # its invalid counts
    group_name="environment",
    owners=OWNERS,
    tags={**TAGS, "layer": "derived"},
    kinds={"postgres"},
)
def env_daily_stats(
    context: dg.AssetExecutionContext,
    warehouse: PostgresResource,
    farm_catalog: FarmCatalogResource,
    env_readings: PostgresRelation,
):
    window = context.partition_time_window
    quarantine = PostgresClient.get_select_statement(
        time_slice(QUARANTINE_TABLE, "measured_at", window)
    )
    relations = {"readings": env_readings.sql, "quarantine": quarantine}
    with warehouse.begin() as conn:
        stats = read_frame(conn, STATS_SQL.format(**relations), column_types(STATS_SCHEMA))
        quarantined = read_frame(
            conn,
            QUARANTINED_GROUPS_SQL.format(**relations),
            {"day": "date", "room": "text", "metric": "text"},
        )
        stored = warehouse_table("env_daily_stats")
        recent = pd.DataFrame(conn.exec_driver_sql(
            f"SELECT DISTINCT room, metric FROM {stored} WHERE day >= %s AND day < %s",
            (window.start.date() - dt.timedelta(days=RECENT_DAYS), window.start.date()),
        ).all() if table_exists(conn, stored) else [], columns=["room", "metric"])
    means = stats.groupby("metric")["mean"].mean()
    known = [m.name for m in farm_catalog.metrics().metrics]
    context.log.info(f"{len(stats)} stats rows for {stats['day'].nunique()} day(s)")
    yield dg.Output(
        stats,
        metadata={
            "days": stats["day"].nunique(),
            "rooms": stats["room"].nunique(),
            "readings": int(stats["n"].sum()),
            "duplicate_rows_folded": int(stats["duplicate_rows"].sum()),
            "metrics_without_range": dg.MetadataValue.json(
                sorted(set(stats["metric"]) - set(known))
            ),
            "source_metric_names": dg.MetadataValue.json(
                stats.groupby("metric")["source_metrics"].agg(
                    lambda names: sorted({n for joined in names.dropna() for n in joined.split(", ")})
                ).to_dict()
            ),
            **{f"mean_{metric}": float(means[metric]) for metric in known if metric in means},
            "lowest_coverage": float(stats["coverage"].fillna(0).min()) if len(stats) else 1.0,
            "rooms_by_day": dg.MetadataValue.json(
                json.loads(stats.groupby(stats["day"].astype(str))["room"].nunique().to_json())
            ),
        },
    )
    yield check_coverage(stats)
    yield check_complete(stats, quarantined)
    days = [window.start.date() + dt.timedelta(days=n) for n in range((window.end - window.start).days)]
    yield check_silence(stats, quarantined, recent, days, pd.Timestamp.now(tz=FARM_TZ))
