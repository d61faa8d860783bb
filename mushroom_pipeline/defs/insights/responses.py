"""change_responses: how did the room answer each setpoint change? (../shared/CONTRACTS.md,
"Insight tables", mushroom.change_responses).

One row per change event of a point that a compliance rule maps to a metric of its room (a
target point, or either point of a band; a tolerance_point is not a setpoint of its own: its
changes have no row). The metric's readings around the change:
- before_mean over [changed_at − 30 min, changed_at), after_30m_mean over (changed_at, +30 min],
  after_60m_mean over (+30 min, +60 min]; NULL without readings;
- reached_at: the first reading at or after changed_at, within 12 h, in band of the new
  setpoint; minutes_to_reach the minutes from the change to it.

"In band of the new setpoint" is the setpoint the change made, as it stood right after it: a
target rule's new_value ± its tolerance (the fixed one, or the tolerance_point's value in force
at changed_at); a band rule's new band, the changed point at new_value and the other point at
its value in force at changed_at (a simultaneous change of both points counts). With the
tolerance or the other point not in force, reached_at is NULL. The band is in new_low/new_high.

Across midnight: a day's changes read the readings of the day before (a change at 00:10 looks
back to 23:40) and of the day after (a change at 23:50 looks 12 h ahead). The asset's input
env_readings is mapped to partitions D−1..D+1 (TimeWindowPartitionMapping), so the lineage
shows it and Dagster sees D's responses go stale when D+1's readings land; the rows are read
from mushroom.env_readings as stored when D runs. A day run before the next day's readings were
materialized leaves `window_complete` false on the changes whose windows reach past the
readings: re-running D once D+1's env_readings is materialized makes them final (the daily
automation re-runs yesterday's change_responses with today's; see the README). Re-running D+1
never touches D's rows: a row belongs to the day of its change.
"""

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa

from mushroom_pipeline.catalog.points import PointConfig
from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.defs.insights import OWNERS, TAGS
from mushroom_pipeline.defs.insights.checks import (
    check_responses_unique,
    responses_unique_spec,
)
from mushroom_pipeline.defs.insights.compliance import (
    EDGE,
    PAIRS_TABLE,
    in_force_sql,
    known_points,
    map_points,
    query_frame,
    stage_setpoints,
)
from mushroom_pipeline.partitions import daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import TRANSIENT_RETRY
from mushroom_pipeline.warehouse.sql import PostgresRelation
from mushroom_pipeline.warehouse.tables import (
    column_schema,
    column_types,
)

BEFORE = "30 minutes"
AFTER = "30 minutes"
REACH_WITHIN = "12 hours"

RESPONSES_SCHEMA = column_schema(
    ("day", "date", "the local day of the change"),
    ("room", "text"),
    ("device", "text"),
    ("point", "text", "the point that changed"),
    ("changed_at", "timestamptz"),
    ("metric", "text", "the metric a compliance rule maps the point to"),
    ("old_value", "double precision"),
    ("new_value", "double precision"),
    ("before_mean", "double precision", "mean of the readings in [changed_at − 30 min, changed_at)"),
    ("after_30m_mean", "double precision", "mean of the readings in (changed_at, changed_at + 30 min]"),
    ("after_60m_mean", "double precision",
     "mean of the readings in (changed_at + 30 min, changed_at + 60 min]"),
    ("reached_at", "timestamptz",
     "first reading at or after changed_at, within 12 h, in band of the new setpoint"),
    ("minutes_to_reach", "double precision", "minutes from changed_at to reached_at"),
    ("new_low", "double precision",
     "the band of the new setpoint reached_at looks for: new target − tolerance, or the band's "
     "low (NULL: not in force)"),
    ("new_high", "double precision", "new target + tolerance, or the band's high"),
    ("window_complete", "boolean",
     "the stored readings reach past every window of the row (60 min, and 12 h unless reached "
     "sooner): later readings cannot change it. False: re-run once the next day's readings "
     "are materialized"),
)

RESPONSES_SQL = """
WITH events AS (
    SELECT DISTINCT ON (e.room, e.device, e.point, e.changed_at, p.metric)
           e.day, e.room, e.device, e.point, e.changed_at, e.old_value, e.new_value,
           p.pair_id, p.metric, p.kind, p.tolerance AS fixed_tolerance,
           CASE WHEN e.point = p.target_point THEN 'target'
                WHEN e.point = p.low_point THEN 'low' ELSE 'high' END AS role
    FROM ({events}) e JOIN {pairs} p ON p.room = e.room AND p.device = e.device
         AND e.point IN (p.target_point, p.low_point, p.high_point)
    ORDER BY e.room, e.device, e.point, e.changed_at, p.metric, p.pair_id
), probes AS (
    SELECT DISTINCT pair_id, changed_at AS t FROM events
), {in_force}, banded AS (
    SELECT ev.*, coalesce(ev.fixed_tolerance, s.tolerance) AS tol,
           CASE WHEN ev.role = 'low' THEN ev.new_value ELSE s.low END AS low,
           CASE WHEN ev.role = 'high' THEN ev.new_value ELSE s.high END AS high
    FROM events ev JOIN setpoints s ON s.pair_id = ev.pair_id AND s.t = ev.changed_at
), r AS NOT MATERIALIZED (
    SELECT room, metric, measured_at, value FROM ({readings}) x
), responses AS (
    SELECT b.*,
        (SELECT avg(value) FROM r WHERE r.room = b.room AND r.metric = b.metric
            AND r.measured_at >= b.changed_at - interval '{before}'
            AND r.measured_at < b.changed_at) AS before_mean,
        (SELECT avg(value) FROM r WHERE r.room = b.room AND r.metric = b.metric
            AND r.measured_at > b.changed_at
            AND r.measured_at <= b.changed_at + interval '{after}') AS after_30m_mean,
        (SELECT avg(value) FROM r WHERE r.room = b.room AND r.metric = b.metric
            AND r.measured_at > b.changed_at + interval '{after}'
            AND r.measured_at <= b.changed_at + 2 * interval '{after}') AS after_60m_mean,
        (SELECT min(measured_at) FROM r WHERE r.room = b.room AND r.metric = b.metric
            AND r.measured_at >= b.changed_at
            AND r.measured_at <= b.changed_at + interval '{within}'
            AND CASE WHEN b.kind = 'target' THEN abs(r.value - b.new_value) <= b.tol + {edge}
                     ELSE r.value >= b.low AND r.value <= b.high END) AS reached_at,
        (SELECT max(measured_at) FROM r WHERE r.room = b.room AND r.metric = b.metric
            AND r.measured_at >= b.changed_at) AS last_reading_at
    FROM banded b
)
SELECT day, room, device, point, changed_at, metric, old_value, new_value,
       before_mean, after_30m_mean, after_60m_mean, reached_at,
       extract(epoch FROM reached_at - changed_at) / 60 AS minutes_to_reach,
       CASE WHEN kind = 'target' THEN new_value - tol ELSE low END AS new_low,
       CASE WHEN kind = 'target' THEN new_value + tol ELSE high END AS new_high,
       coalesce(last_reading_at >= changed_at + interval '{within}'
                OR (reached_at IS NOT NULL
                    AND last_reading_at >= changed_at + 2 * interval '{after}'), false)
           AS window_complete
FROM responses
ORDER BY changed_at, room, device, point, metric
"""


def compute_responses(
    connection: sa.Connection, config: PointConfig, window: dg.TimeWindow, events_sql: str,
    readings_sql: str, snapshots_sql: str,
) -> pd.DataFrame:
    """Rows of RESPONSES_SCHEMA, in one transaction."""
    pairs = map_points(config, known_points(connection, window.end))
    pairs.insert(0, "pair_id", range(len(pairs)))
    stage_setpoints(connection, pairs, window.start)
    sql = RESPONSES_SQL.format(
        events=events_sql, pairs=PAIRS_TABLE, readings=readings_sql, edge=repr(EDGE),
        before=BEFORE, after=AFTER, within=REACH_WITHIN,
        in_force=in_force_sql(snapshots_sql, "probes"),
    )
    responses = query_frame(connection, sql, {}, column_types(RESPONSES_SCHEMA))
    responses["window_complete"] = responses["window_complete"].astype(bool)
    return responses


def point_summary(responses: pd.DataFrame) -> pd.DataFrame:
    """Per (room, device, point, metric): "this knob moves the room by X within Y minutes".
    A move counts in the direction of its change (after − before, times the sign of new − old):
    positive when the room followed the setpoint, whichever way it went."""
    columns = ["room", "device", "point", "metric", "changes", "mean_abs_step",
               "mean_follow_30m", "mean_follow_60m", "reached", "median_minutes_to_reach",
               "summary"]
    if responses.empty:
        return pd.DataFrame(columns=columns)
    step = responses["new_value"] - responses["old_value"]
    direction = np.sign(step)
    frame = responses.assign(
        abs_step=step.abs(),
        follow_30m=(responses["after_30m_mean"] - responses["before_mean"]) * direction,
        follow_60m=(responses["after_60m_mean"] - responses["before_mean"]) * direction,
    )
    summary = frame.groupby(["room", "device", "point", "metric"], sort=True).agg(
        changes=("abs_step", "size"), mean_abs_step=("abs_step", "mean"),
        mean_follow_30m=("follow_30m", "mean"), mean_follow_60m=("follow_60m", "mean"),
        reached=("reached_at", "count"), median_minutes_to_reach=("minutes_to_reach", "median"),
    ).reset_index()

    def sentence(row) -> str:
        moved = ("no readings around the changes" if pd.isna(row.mean_follow_60m)
                 else f"{row.metric} moved {row.mean_follow_60m:+.2f} toward the new setpoint "
                      "within 60 min")
        reached = ("never in band of the new setpoint within 12 h" if row.reached == 0 else
                   f"in band of the new setpoint after a median {row.median_minutes_to_reach:.0f} "
                   f"min ({row.reached} of {row.changes})")
        return (f"{row.changes} change(s) of {row.mean_abs_step:.2f} on average: {moved}; "
                f"{reached}")

    summary["summary"] = [sentence(row) for row in summary.itertuples(index=False)]
    return summary[columns]


def responses_metadata(responses: pd.DataFrame) -> dict:
    summary = point_summary(responses)
    shown = summary.round(2)
    metadata: dict[str, object] = {
        "changes": len(responses),
        "reached": int(responses["reached_at"].notna().sum()),
        "incomplete_windows": int((~responses["window_complete"]).sum()),
        "per_point": dg.MetadataValue.md(
            shown.to_markdown(index=False, disable_numparse=True) if len(shown)
            else "(no change of a mapped setpoint)"
        ),
    }
    if responses["minutes_to_reach"].notna().any():
        metadata["median_minutes_to_reach"] = float(responses["minutes_to_reach"].median())
    for metric, group in summary.groupby("metric"):
        if group["median_minutes_to_reach"].notna().any():
            metadata[f"median_minutes_to_reach_{metric}"] = float(
                responses.loc[responses["metric"] == metric, "minutes_to_reach"].median()
            )
    return metadata


@dg.asset(
    description="One row per change of a setpoint that a compliance rule maps to a metric: the "
    "metric's mean 30 min before, 0–30 and 30–60 min after, and when (within 12 h) it first "
    "came in band of the new setpoint (../shared/CONTRACTS.md). Reads the neighbouring days' "
    "readings (a change at 23:50 looks into the next day); window_complete false: re-run "
    "once the next day's readings are in. Metadata: per point, how far and how fast the room "
    "follows.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "dagster/column_schema": RESPONSES_SCHEMA},
    ins={
        "setpoint_change_events": dg.AssetIn(),
        "setpoint_snapshots": dg.AssetIn(),
        "env_readings": dg.AssetIn(
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-1, end_offset=1, allow_nonexistent_upstream_partitions=True
            )
        ),
    },
    check_specs=[responses_unique_spec],
    group_name="insights",
    owners=OWNERS,
    tags={**TAGS, "layer": "insight"},
    kinds={"postgres"},
)
def change_responses(
    context: dg.AssetExecutionContext,
    warehouse: PostgresResource,
    farm_catalog: FarmCatalogResource,
    setpoint_change_events: PostgresRelation,
    setpoint_snapshots: PostgresRelation,
    env_readings: PostgresRelation,
):
    points = farm_catalog.points()
    with warehouse.begin() as conn:
        responses = compute_responses(
            conn, points, context.partition_time_window, setpoint_change_events.sql,
            env_readings.sql, setpoint_snapshots.sql,
        )
    context.log.info(
        f"{len(responses)} responses to setpoint changes; "
        f"{int((~responses['window_complete']).sum())} still wait for later readings"
    )
    yield dg.Output(responses, metadata=responses_metadata(responses))
    yield check_responses_unique(responses)
