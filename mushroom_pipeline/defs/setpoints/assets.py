"""Device setpoints: snapshots → exact change events → daily switching statistics."""

from functools import partial

import dagster as dg

from mushroom_pipeline.catalog.points import BATCH_KIND
from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.defs.setpoints import OWNERS, TAGS
from mushroom_pipeline.defs.setpoints.changes import (
    EVENT_TYPES,
    POINTS_TABLE,
    REFERENCE_TYPES,
    REFERENCES_TABLE,
    detect_changes,
    distinct_points,
    point_treatments,
    stage_tracked_points,
    tail_snapshots,
)
from mushroom_pipeline.defs.setpoints.checks import (
    chain_spec,
    check_chain,
    check_no_duplicates,
    check_unconfigured,
    no_duplicates_spec,
    unconfigured_spec,
)
from mushroom_pipeline.defs.setpoints.incremental import (
    MICROSECOND,
    catalog_fingerprint,
    ledger_entry,
    plan_events_tail,
    plan_snapshots_tail,
    source_cutoff,
)
from mushroom_pipeline.defs.setpoints.snapshots import (
    KEY,
    SOURCE_COLUMNS,
    SOURCE_TABLE,
    fold_and_quarantine,
    snapshots_relation,
    staged_baselines,
    window_points,
)
from mushroom_pipeline.defs.side_tables import report_side_table, side_table
from mushroom_pipeline.defs.sources import IOT_DEVICE_SETPOINTS
from mushroom_pipeline.partitions import daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import POSTGRES_HEAVY_POOL, TRANSIENT_RETRY
from mushroom_pipeline.warehouse.frames import read_frame
from mushroom_pipeline.warehouse.io_manager import BY_DAY_METADATA, replace_table_slice
from mushroom_pipeline.warehouse.source import (
    SourceLedger,
    SourceWindowConfig,
    quarantined_source,
    time_slice,
)
from mushroom_pipeline.warehouse.sql import PostgresRelation
from mushroom_pipeline.warehouse.staging import staging_table
from mushroom_pipeline.warehouse.tables import (
    SliceTail,
    column_schema,
    column_types,
    markdown_preview,
)

SNAPSHOTS_SCHEMA = column_schema(
    ("room", "text"),
    ("device", "text"),
    ("point", "text"),
    ("value", "double precision"),
    ("recorded_at", "timestamptz"),
    ("day", "date", "the partition day; a baseline row belongs to the day it opens"),
    ("source_rows", "bigint", "identical source rows folded into this snapshot (0: a baseline)"),
    ("is_baseline", "boolean", "a copy of the point's last snapshot before the day"),
)
QUARANTINE_SCHEMA = column_schema(
    ("room", "text"),
    ("device", "text"),
    ("point", "text"),
    ("value", "double precision"),
    ("recorded_at", "timestamptz"),
    ("reason", "text", "blank_key, null_value, nan_value, not_a_switch_value, conflicting_duplicate…"),
)
EVENT_DESCRIPTIONS = {
    "old_label": "the catalog's name of old_value (switch and enum points; NULL: none)",
    "new_label": "the catalog's name of new_value (switch and enum points; NULL: none)",
}
EVENTS_SCHEMA = column_schema(
    *[(name, pg_type, EVENT_DESCRIPTIONS.get(name)) for name, pg_type in EVENT_TYPES.items()]
)
SWITCH_STATS_SCHEMA = column_schema(
    ("day", "date"),
    ("room", "text"),
    ("device", "text"),
    ("point", "text"),
    ("switch_ons", "bigint"),
    ("switch_offs", "bigint"),
    ("minutes_on", "double precision", "time ON within the day (up to now for today)"),
    ("minutes_off", "double precision"),
    ("minutes_unknown", "double precision", "before the point's first-ever snapshot"),
)
QUARANTINE_TABLE = "setpoint_snapshots_quarantine"
# Baseline rows repeat an earlier snapshot: they hold no source row of their day (and a day
# that was not materialized may hold only the next day's baselines: 0, not NULL).
SETPOINTS_LEDGER = SourceLedger(
    SOURCE_TABLE, "recorded_at",
    ("setpoint_snapshots", "coalesce(sum(source_rows) FILTER (WHERE NOT is_baseline), 0)"),
    QUARANTINE_TABLE,
)


@dg.asset(
    description="The day's valid snapshots of iot.device_setpoints (repeats folded) plus, for "
    "each point with snapshots that day, its last snapshot before the day, its baseline. Invalid "
    "rows go to "
    f"mushroom.{QUARANTINE_TABLE} with their reason (a switch of the farm's catalog holding "
    "a value other than 0/1: not_a_switch_value). The hourly ticks read only the rows after "
    "the day's watermark and append them (the whole day when a late row landed before it).",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "dagster/column_schema": SNAPSHOTS_SCHEMA,
              BY_DAY_METADATA: True},
    deps=[IOT_DEVICE_SETPOINTS],
    group_name="setpoints",
    owners=OWNERS,
    tags={**TAGS, "layer": "validated"},
    pool=POSTGRES_HEAVY_POOL,
    kinds={"postgres"},
)
def setpoint_snapshots(
    context: dg.AssetExecutionContext,
    config: SourceWindowConfig,
    source_database: PostgresResource,
    warehouse: PostgresResource,
    farm_catalog: FarmCatalogResource,
):
    partition = context.partition_time_window
    points_config = farm_catalog.points()
    catalog = catalog_fingerprint(points_config)
    tail, why = plan_snapshots_tail(context, source_database, warehouse, SOURCE_TABLE,
                                    QUARANTINE_TABLE, catalog, config.allow_shrink)
    # up to the newest row present now: rows arriving meanwhile are the next run's
    cutoff = source_cutoff(source_database, SOURCE_TABLE, partition)
    start = tail.after + MICROSECOND if tail else partition.start
    end = min(partition.end, max(start, cutoff + MICROSECOND)) if cutoff else partition.end
    read = dg.TimeWindow(start, end)
    context.log.info(f"setpoint_snapshots: {why}; reading {read.start.isoformat()} .. {read.end.isoformat()}")
    # The staging tables live until the snapshots' INSERT … SELECT, which runs on the yield.
    with window_points(
        source_database, warehouse, read, points_config,
        f"setpoint_switches_{context.run_id}",
    ) as points, staging_table(warehouse, f"setpoint_fold_{context.run_id}") as fold, staging_table(
        warehouse, f"setpoint_fold_points_{context.run_id}"
    ) as fold_points, quarantined_source(
        context,
        source_database,
        warehouse,
        SETPOINTS_LEDGER,
        SOURCE_COLUMNS,
        partial(fold_and_quarantine, warehouse=warehouse, switches=points.switches_table, fold=fold,
                points=fold_points),
        column_types(QUARANTINE_SCHEMA),
        config.allow_shrink,
        read=read,
        tail=tail is not None,
    ) as source, staged_baselines(
        source_database, warehouse, read, points, f"setpoint_baselines_{context.run_id}"
    ) as (earlier, found):
        relation = snapshots_relation(fold, fold_points, earlier)
        if tail:
            # Every stored row of the day is at or before the watermark (plan_snapshots_tail):
            # the tail's snapshots, and the baselines of its points first seen after it, are new.
            rows, newest = source.marks.get(context.partition_key, (0, None))
            ledger = {context.partition_key: ledger_entry(
                tail.ledger["source_rows"] + rows, max(tail.after, newest or tail.after))}
            output = SliceTail(relation, "NOT is_baseline AND recorded_at > %(after)s",
                               {"after": tail.after})
        else:
            ledger = {day: ledger_entry(n, newest) for day, (n, newest) in source.marks.items()}
            output = relation
        yield dg.Output(
            output,
            metadata={
                **source.metadata(),
                # the source rows the day's stored rows account for; read by this run
                "source_rows": sum(entry["source_rows"] for entry in ledger.values()),
                "source_rows_read": source.source_rows,
                "mode": "since watermark" if tail else "full",
                "mode_reason": why,
                "ledger": dg.MetadataValue.json(ledger),
                "appended_after": dg.MetadataValue.json(tail.ledger if tail else {}),
                "catalog": catalog,
                "baselines_before_window": found,
                "switch_points": len(points.switches),
            },
        )
        report_side_table(context, QUARANTINE_TABLE, source.quarantined_per_day,
                          invalid_by_reason=dg.MetadataValue.json(source.invalid_by_reason))


setpoint_snapshots_quarantine = side_table(
    QUARANTINE_TABLE, "setpoint_snapshots", "Source rows of iot.device_setpoints that failed "
    "validation, one row each with its reason.", QUARANTINE_SCHEMA, "setpoints", OWNERS, TAGS,
)


@dg.asset(
    description="One row per change of a tracked device point (../shared/CONTRACTS.md): exactly "
    "once across midnight and run boundaries; switches as switched_on / switched_off; values "
    "named by the farm's catalog (old_label / new_label); the batch device's points never. The "
    f"reference of each deadband point at each day's end goes to mushroom.{REFERENCES_TABLE}.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "dagster/column_schema": EVENTS_SCHEMA},
    check_specs=[no_duplicates_spec, chain_spec, unconfigured_spec],
    group_name="setpoints",
    owners=OWNERS,
    tags={**TAGS, "layer": "derived"},
    kinds={"postgres"},
)
def setpoint_change_events(
    context: dg.AssetExecutionContext,
    warehouse: PostgresResource,
    farm_catalog: FarmCatalogResource,
    setpoint_snapshots: PostgresRelation,
):
    config = farm_catalog.points()
    catalog = catalog_fingerprint(config)
    tail, through, why = plan_events_tail(context, catalog)
    window = context.partition_time_window
    references = time_slice(REFERENCES_TABLE, "day", window)
    with warehouse.begin() as conn:
        if tail:
            snapshots, points = tail_snapshots(conn, window, tail.after)
        else:
            snapshots = setpoint_snapshots.sql
            points = distinct_points(snapshots)
        treatments = point_treatments(conn, points, config)
        changes = detect_changes(conn, snapshots, treatments)
    # Written first, as the quarantine is: a failed write of the events re-runs both.
    keys = changes.references
    replace_table_slice(warehouse, references, SliceTail(
        # the tail's deadband points' references; the others' stay as stored
        keys, "(room, device, point) IN (SELECT * FROM unnest(%(rooms)s::text[], "
        "%(devices)s::text[], %(points)s::text[]))",
        {"rooms": list(keys["room"]), "devices": list(keys["device"]), "points": list(keys["point"])},
    ) if tail else keys, REFERENCE_TYPES)
    events = changes.events
    context.log.info(f"setpoint_change_events: {why}")
    batch = treatments["kind"] == BATCH_KIND
    excluded = treatments[treatments["excluded"] & ~batch]
    tracked = ~treatments["excluded"]
    context.log.info(
        f"{len(events)} change events from {len(treatments)} points ({len(excluded)} excluded "
        f"by {config.source}, {int(batch.sum())} of the batch device); "
        f"{changes.references_from_baseline} deadband point(s) started from their baseline "
        "snapshot (no stored reference)"
    )
    # the values beside their names, newest first
    latest = events.sort_values("changed_at", ascending=False)[
        ["changed_at", "room", "device", "point", "old_value", "old_label", "new_value",
         "new_label", "change_kind"]
    ]
    yield dg.Output(
        SliceTail(events, "changed_at > %(after)s", {"after": tail.after}) if tail else events,
        metadata={
            "mode": "since watermark" if tail else "full",
            "mode_reason": why,
            # the snapshots' ledger these events are computed from: where the next tail starts
            "through": dg.MetadataValue.json(through),
            "catalog": catalog,
            "events_by_kind": dg.MetadataValue.json(events["change_kind"].value_counts().to_dict()),
            "events_by_room": dg.MetadataValue.json(events["room"].value_counts().to_dict()),
            "events_by_device": dg.MetadataValue.json(events["device"].value_counts().to_dict()),
            "points_tracked": int(tracked.sum()),
            # tracked by the contract's default: no rule of the catalog matched them
            "points_uncovered": int((tracked & ~treatments["configured"]).sum()),
            "points_excluded": len(excluded),
            "excluded_points": dg.MetadataValue.json(sorted(set(excluded["point"]))),
            "batch_points": int(batch.sum()),
            "values_without_label": changes.values_without_label,
            "point_config": config.source,
            "deadband_references_from_baseline": changes.references_from_baseline,
            "latest_events": markdown_preview(latest),
        },
    )
    report_side_table(context, REFERENCES_TABLE, {
        str(day): n for day, n in changes.references.groupby("day").size().items()})
    yield check_no_duplicates(events)
    yield check_chain(events)
    yield check_unconfigured(treatments)


SWITCH_STATS_SQL = """
WITH switches AS (
    SELECT {key}, value, greatest(recorded_at, '{start}'::timestamptz) AS t0,
           coalesce(lead(recorded_at) OVER (PARTITION BY p.ordinal ORDER BY recorded_at),
                    least('{end}'::timestamptz, now())) AS t1
    FROM ({snapshots}) s JOIN {points} p USING ({key})
    WHERE p.kind = 'switch'
), first_seen AS (
    SELECT {key}, min(t0) AS first_at FROM switches GROUP BY {key}
), days AS (
    SELECT d::date AS day, d AS day_start, (d::date + 1)::timestamptz AS day_end
    FROM generate_series('{start}'::timestamptz, least('{end}'::timestamptz, now()) - interval '1 microsecond',
                         interval '1 day') d
), spans AS (
    SELECT day, {key}, value,
           extract(epoch FROM least(t1, day_end) - greatest(t0, day_start)) / 60 AS minutes
    FROM switches JOIN days ON t0 < day_end AND t1 > day_start
), events AS (
    SELECT day, {key},
           count(*) FILTER (WHERE change_kind = 'switched_on') AS switch_ons,
           count(*) FILTER (WHERE change_kind = 'switched_off') AS switch_offs
    FROM ({events}) e GROUP BY day, {key}
)
SELECT days.day, f.room, f.device, f.point,
       coalesce(e.switch_ons, 0) AS switch_ons, coalesce(e.switch_offs, 0) AS switch_offs,
       coalesce(sum(minutes) FILTER (WHERE value = 1), 0) AS minutes_on,
       coalesce(sum(minutes) FILTER (WHERE value = 0), 0) AS minutes_off,
       greatest(0, extract(epoch FROM least(f.first_at, days.day_end) - days.day_start) / 60)
           AS minutes_unknown
FROM first_seen f CROSS JOIN days
LEFT JOIN spans s ON s.day = days.day AND (s.room, s.device, s.point) = (f.room, f.device, f.point)
LEFT JOIN events e ON e.day = days.day AND (e.room, e.device, e.point) = (f.room, f.device, f.point)
WHERE f.first_at < days.day_end
GROUP BY days.day, days.day_start, days.day_end, f.room, f.device, f.point, f.first_at,
         e.switch_ons, e.switch_offs
ORDER BY 1, 2, 3, 4
"""


setpoint_deadband_references = side_table(
    REFERENCES_TABLE, "setpoint_change_events", "Each deadband point's reference value at each "
    "day's end: where the next day's change detection starts.",
    column_schema(*REFERENCE_TYPES.items()), "setpoints", OWNERS, TAGS,
)


@dg.asset(
    description="Per day, room, device and tracked switch point of the farm's catalog: "
    "switch-ons, switch-offs, minutes ON and OFF (the figures of ioBroker / Home Assistant "
    "statistics).",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "dagster/column_schema": SWITCH_STATS_SCHEMA},
    group_name="setpoints",
    owners=OWNERS,
    tags={**TAGS, "layer": "derived"},
    kinds={"postgres"},
)
def switch_daily_stats(
    context: dg.AssetExecutionContext,
    warehouse: PostgresResource,
    farm_catalog: FarmCatalogResource,
    setpoint_snapshots: PostgresRelation,
    setpoint_change_events: PostgresRelation,
):
    window = context.partition_time_window
    sql = SWITCH_STATS_SQL.format(
        key=KEY,
        points=POINTS_TABLE,
        start=window.start.isoformat(),
        end=window.end.isoformat(),
        snapshots=setpoint_snapshots.sql,
        events=setpoint_change_events.sql,
    )
    with warehouse.begin() as conn:
        # the catalog's switches, as the change events read them (batch and excluded points: none)
        treatments = point_treatments(conn, distinct_points(setpoint_snapshots.sql), farm_catalog.points())
        stage_tracked_points(conn, treatments)
        stats = read_frame(conn, sql, column_types(SWITCH_STATS_SCHEMA))
    return dg.Output(
        stats,
        metadata={
            "switch_points": len(stats[["room", "device", "point"]].drop_duplicates()),
            "switch_ons": int(stats["switch_ons"].sum()),
            "mean_minutes_on": float(stats["minutes_on"].mean()) if len(stats) else 0.0,
        },
    )
