"""setpoint_compliance: did each room hold its setpoints? (../shared/CONTRACTS.md, "Insight
tables", mushroom.setpoint_compliance).

Which setpoint governs which metric is the catalog's `compliance:` section (points.yaml, or
MUSHROOM_SETPOINT_CONFIG). Its globs are matched here, in Python, against the points the
warehouse knows; the matches reach the SQL as temporary tables filled by COPY, so names and
values never become SQL text.

The setpoint in force at a reading is the point's last valid snapshot at or before the reading,
from any earlier day too. It is read from the warehouse's mushroom.setpoint_snapshots (valid
snapshots after quarantine, repeats folded):
- inside the partition window: the window's own snapshots (the upstream slice);
- before it: each point's last snapshot before the window, looked up in the stored table
  (earlier days' slices and the baselines they carry), over the last day first, then a week, a
  month, a year, then all of it. A day whose points sent no snapshot at all thus takes the value
  in force from the last day that did, as long as that day's setpoint_snapshots was
  materialized (the schedules materialize every day; a backfill materializes its days in order,
  upstream first). Readings before a point's first snapshot ever have no setpoint in force.

A (room, metric, device, point) row exists for a day when the rule's point (for a band, each
of its two points) has a snapshot at or before the day's end: devices are known from the day
they first report, so a day's rows are the same whether it runs alone or in a range, and do not
change when later days are loaded.
"""

import datetime as dt
import fnmatch
from collections.abc import Iterable, Mapping

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pydantic import Field

from mushroom_pipeline.catalog.points import PointConfig
from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.defs.insights import OWNERS, TAGS
from mushroom_pipeline.defs.insights.checks import (
    THRESHOLD_VARIABLE,
    check_compliance_counts,
    check_share_in_band,
    compliance_counts_spec,
    resolve_threshold,
    share_in_band_spec,
)
from mushroom_pipeline.partitions import daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import TRANSIENT_RETRY
from mushroom_pipeline.settings import ConfigurationError
from mushroom_pipeline.warehouse.frames import copy_frame
from mushroom_pipeline.warehouse.sql import (
    PostgresRelation,
    analyze,
    table_exists,
    warehouse_table,
)
from mushroom_pipeline.warehouse.tables import (
    column_schema,
    column_types,
)

SNAPSHOTS_TABLE = warehouse_table("setpoint_snapshots")
# Decimal readings against decimal setpoints: 17.6 − 16.6 is 1.0000000000000036 in binary
# floating point. A hair of tolerance keeps a reading exactly on the edge in band, as the
# deadbands of the change events do.
EDGE = 1e-9
# Looking back for each point's value in force before the window: the last day nearly always
# has it; points silent longer are looked up further back, then in all stored days.
LOOKBACK_DAYS = (1, 7, 31, 366, None)

METRIC_DESCRIPTION = "canonical name of the metric catalog"
COMPLIANCE_SCHEMA = column_schema(
    ("day", "date", "the farm's local day of the readings"),
    ("room", "text"),
    ("metric", "text", METRIC_DESCRIPTION),
    ("device", "text"),
    ("point", "text", "the target point, or <low_point>..<high_point> for a band"),
    ("tolerance", "double precision",
     "the rule's tolerance; with a tolerance_point, its value in force at the day's last "
     "counted reading (NULL when none); NULL for a band"),
    ("n", "bigint", "readings of the day with a setpoint in force"),
    ("in_band", "bigint", "of the n: |error| <= tolerance (target) or low <= value <= high"),
    ("share_in_band", "double precision", "in_band / n; NULL when n = 0"),
    ("mean_error", "double precision",
     "target: value − target; band: value − high above it, value − low below it, 0 inside"),
    ("mean_abs_error", "double precision"),
    ("max_abs_error", "double precision"),
    ("readings_above", "bigint", "error beyond the tolerance (or the band) upward"),
    ("readings_below", "bigint", "error beyond the tolerance (or the band) downward"),
    ("readings_without_setpoint", "bigint",
     "readings with no setpoint in force (before the first snapshot; a band lacking a point; "
     "a tolerance_point not yet reported): counted only here"),
    ("kind", "text", "target or band"),
    ("tolerance_point", "text", "the point whose last value is the tolerance (NULL: fixed)"),
)

PAIR_TYPES = {
    "pair_id": "bigint",
    "room": "text",
    "device": "text",
    "metric": "text",
    "point": "text",
    "kind": "text",
    "tolerance": "double precision",
    "tolerance_point": "text",
    "target_point": "text",
    "low_point": "text",
    "high_point": "text",
    "first_at": "timestamptz",
}
ROLE_TYPES = {"pair_id": "bigint", "role": "text", "room": "text", "device": "text",
              "point": "text"}
HISTORY_TYPES = {"room": "text", "device": "text", "point": "text", "value": "double precision",
                 "recorded_at": "timestamptz"}
PAIRS_TABLE = "insight_pairs"  # temporary tables: they live as long as the caller's transaction
ROLES_TABLE = "insight_roles"
EARLIER_TABLE = "insight_earlier"


# ---------------------------------------------------------------------------------------------
# The catalog's rules, matched against the points the warehouse knows


def known_points(connection: sa.Connection, end: dt.datetime) -> pd.DataFrame:
    """(room, device, point, first_at): every point with a stored snapshot before `end`."""
    if not table_exists(connection, SNAPSHOTS_TABLE):
        return pd.DataFrame(columns=["room", "device", "point", "first_at"])
    rows = connection.exec_driver_sql(
        f"SELECT room, device, point, min(recorded_at) FROM {SNAPSHOTS_TABLE} "
        "WHERE recorded_at < %(end)s GROUP BY room, device, point ORDER BY 1, 2, 3",
        {"end": end},
    ).all()
    return pd.DataFrame(rows, columns=["room", "device", "point", "first_at"])


def map_points(config: PointConfig, known: pd.DataFrame) -> pd.DataFrame:
    """The compliance rules' matches (PAIR_TYPES without pair_id): one per (room, metric, device,
    point) where a rule matches a tracked point of a device in that room; the first matching
    rule wins. A band needs both its points tracked; `first_at` is when the row's points first
    reported (for a band, the later of the two: from then on both are known). A
    tolerance_point glob takes the device's first matching point (sorted by name), tracked or
    not: it is read, not judged."""
    matches: dict[tuple, dict] = {}
    for (room, device), group in known.groupby(["room", "device"], sort=True):
        first_at = dict(zip(group["point"], group["first_at"]))
        tracked = sorted(p for p in first_at if not config.treatment(room, device, p).excluded)
        for rule in config.compliance:
            if not fnmatch.fnmatchcase(device, rule.device):
                continue
            if rule.is_band:
                found = [
                    (f"{low}..{high}", None, low, high, max(first_at[low], first_at[high]))
                    for low in tracked if fnmatch.fnmatchcase(low, rule.low_point)
                    for high in tracked if fnmatch.fnmatchcase(high, rule.high_point)
                    if low != high
                ]
            else:
                found = [(point, point, None, None, first_at[point])
                         for point in tracked if fnmatch.fnmatchcase(point, rule.point)]
            tolerance_point = None
            if rule.tolerance_point is not None:
                candidates = sorted(p for p in first_at if fnmatch.fnmatchcase(p, rule.tolerance_point))
                # a name the device never reported: the tolerance is never in force
                tolerance_point = candidates[0] if candidates else rule.tolerance_point
            for label, target, low, high, since in found:
                key = (room, rule.metric, device, label)
                if key in matches:
                    continue
                matches[key] = {
                    "room": room, "device": device, "metric": rule.metric, "point": label,
                    "kind": "band" if rule.is_band else "target",
                    "tolerance": None if rule.tolerance is None else float(rule.tolerance),
                    "tolerance_point": tolerance_point, "target_point": target,
                    "low_point": low, "high_point": high, "first_at": since,
                }
    columns = [c for c in PAIR_TYPES if c != "pair_id"]
    frame = pd.DataFrame(list(matches.values()), columns=columns)
    frame["tolerance"] = frame["tolerance"].astype("float64")
    return frame


def pair_roles(pairs: pd.DataFrame) -> pd.DataFrame:
    """(pair_id, role, room, device, point): the points whose value in force each pair reads."""
    rows = []
    for pair in pairs.itertuples(index=False):
        for role, point in (("target", pair.target_point), ("tolerance", pair.tolerance_point),
                            ("low", pair.low_point), ("high", pair.high_point)):
            if isinstance(point, str):
                rows.append((pair.pair_id, role, pair.room, pair.device, point))
    return pd.DataFrame(rows, columns=list(ROLE_TYPES))


def earlier_snapshots(
    connection: sa.Connection, keys: Iterable[tuple[str, str, str]], start: dt.datetime
) -> pd.DataFrame:
    """Each key's last stored snapshot before `start` (HISTORY_TYPES), looked back for over
    the last day, week, month, year, then every stored day (the table's `day` index)."""
    missing = set(keys)
    found: list[tuple] = []
    if not table_exists(connection, SNAPSHOTS_TABLE):
        missing = set()
    for days in LOOKBACK_DAYS:
        if not missing:
            break
        since = dt.date.min if days is None else start.date() - dt.timedelta(days=days)
        rooms, devices, points = (list(column) for column in zip(*sorted(missing)))
        rows = connection.exec_driver_sql(
            "SELECT DISTINCT ON (room, device, point) room, device, point, value, recorded_at "
            f"FROM {SNAPSHOTS_TABLE} s JOIN unnest(%(rooms)s::text[], %(devices)s::text[], "
            "%(points)s::text[]) AS k(room, device, point) USING (room, device, point) "
            "WHERE s.recorded_at < %(start)s AND s.day >= %(since)s "
            # a baseline copies a snapshot: the original, where stored, is the same value
            "ORDER BY room, device, point, recorded_at DESC, is_baseline",
            {"rooms": rooms, "devices": devices, "points": points, "start": start,
             "since": since},
        ).all()
        found.extend(tuple(row) for row in rows)
        missing -= {tuple(row[:3]) for row in rows}
    frame = pd.DataFrame(found, columns=list(HISTORY_TYPES))
    frame["value"] = frame["value"].astype("float64")
    return frame


def temporary_frame(connection: sa.Connection, table: str, frame: pd.DataFrame,
                    types: Mapping[str, str]) -> None:
    """`frame` COPYed into a temporary table of this transaction (dropped when it ends)."""
    columns = ", ".join(f"{name} {pg_type}" for name, pg_type in types.items())
    connection.exec_driver_sql(f"CREATE TEMPORARY TABLE {table} ({columns}) ON COMMIT DROP")
    frame = frame[list(types)]
    if len(frame):
        copy_frame(connection, table, frame, types)
    analyze(connection, table)


def stage_setpoints(connection: sa.Connection, pairs: pd.DataFrame, start: dt.datetime) -> None:
    """PAIRS_TABLE, ROLES_TABLE and EARLIER_TABLE (each role point's last snapshot before
    `start`) as temporary tables of this transaction, for in_force_sql."""
    roles = pair_roles(pairs)
    earlier = earlier_snapshots(connection, set(zip(roles["room"], roles["device"], roles["point"])),
                                start)
    temporary_frame(connection, PAIRS_TABLE, pairs, PAIR_TYPES)
    temporary_frame(connection, ROLES_TABLE, roles, ROLE_TYPES)
    temporary_frame(connection, EARLIER_TABLE, earlier, HISTORY_TYPES)


def in_force_sql(snapshots: str, probes: str) -> str:
    """CTEs ending in `setpoints (pair_id, t, target, tolerance, low, high)`: each role's
    value in force at each probe time `t` (the last snapshot with recorded_at <= t). `probes`
    is a CTE name with (pair_id, t), one row per pair and time; `snapshots` the window's
    setpoint_snapshots slice, before which EARLIER_TABLE holds each point's last value.

    Snapshots and probes of a pair's role are sorted into one stream (a snapshot before a
    probe of the same time); the running count of snapshots numbers the stretches each
    snapshot opens, and a probe takes its stretch's snapshot value: n log n, however many days
    the window spans."""
    return f"""
history AS (
    SELECT room, device, point, value, recorded_at FROM ({snapshots}) s WHERE NOT is_baseline
    UNION ALL
    SELECT room, device, point, value, recorded_at FROM {EARLIER_TABLE}
), stream AS (
    SELECT ro.pair_id, ro.role, h.recorded_at AS t, 0 AS probe, h.value
    FROM {ROLES_TABLE} ro JOIN history h USING (room, device, point)
    UNION ALL
    SELECT ro.pair_id, ro.role, p.t, 1, NULL FROM {ROLES_TABLE} ro JOIN {probes} p USING (pair_id)
), stretches AS (
    SELECT *, count(value) OVER (PARTITION BY pair_id, role ORDER BY t, probe
                                 ROWS UNBOUNDED PRECEDING) AS stretch
    FROM stream
), filled AS (
    SELECT pair_id, role, t, probe, max(value) OVER (PARTITION BY pair_id, role, stretch) AS value
    FROM stretches
), setpoints AS (
    SELECT pair_id, t,
           max(value) FILTER (WHERE role = 'target') AS target,
           max(value) FILTER (WHERE role = 'tolerance') AS tolerance,
           max(value) FILTER (WHERE role = 'low') AS low,
           max(value) FILTER (WHERE role = 'high') AS high
    FROM filled WHERE probe = 1 GROUP BY pair_id, t
)"""


COMPLIANCE_SQL = """
WITH probes AS (
    SELECT p.pair_id, r.measured_at AS t, r.value
    FROM {pairs} p JOIN ({readings}) r ON r.room = p.room AND r.metric = p.metric
), {in_force}, judged AS (
    SELECT pr.pair_id, pr.t, pr.t::date AS day, pr.value, p.kind,
           coalesce(p.tolerance, s.tolerance) AS tol, s.target, s.low, s.high
    FROM probes pr JOIN setpoints s USING (pair_id, t) JOIN {pairs} p USING (pair_id)
), scored AS (
    SELECT *,
           CASE WHEN kind = 'target' THEN target IS NOT NULL AND tol IS NOT NULL
                ELSE low IS NOT NULL AND high IS NOT NULL END AS has_setpoint,
           CASE WHEN kind = 'target' THEN value - target
                WHEN value > high THEN value - high
                WHEN value < low THEN value - low
                ELSE 0 END AS error,
           CASE WHEN kind = 'target' THEN abs(value - target) <= tol + {edge}
                ELSE value >= low AND value <= high END AS inside,
           CASE WHEN kind = 'target' THEN value - target > tol + {edge}
                ELSE value > high END AS above
    FROM judged
), agg AS (
    SELECT pair_id, day,
           count(*) FILTER (WHERE has_setpoint) AS n,
           count(*) FILTER (WHERE has_setpoint AND inside) AS in_band,
           avg(error) FILTER (WHERE has_setpoint) AS mean_error,
           avg(abs(error)) FILTER (WHERE has_setpoint) AS mean_abs_error,
           max(abs(error)) FILTER (WHERE has_setpoint) AS max_abs_error,
           count(*) FILTER (WHERE has_setpoint AND above) AS readings_above,
           count(*) FILTER (WHERE has_setpoint AND NOT inside AND NOT above) AS readings_below,
           count(*) FILTER (WHERE NOT has_setpoint) AS readings_without_setpoint,
           (array_agg(tol ORDER BY t DESC) FILTER (WHERE has_setpoint))[1] AS last_tolerance
    FROM scored GROUP BY pair_id, day
), days AS (
    SELECT d::date AS day
    FROM generate_series(%(first_day)s::date, %(last_day)s::date, interval '1 day') d
)
SELECT days.day, p.room, p.metric, p.device, p.point,
       CASE WHEN p.kind = 'band' THEN NULL ELSE coalesce(p.tolerance, a.last_tolerance) END
           AS tolerance,
       coalesce(a.n, 0) AS n, coalesce(a.in_band, 0) AS in_band,
       a.in_band::double precision / nullif(a.n, 0) AS share_in_band,
       a.mean_error, a.mean_abs_error, a.max_abs_error,
       coalesce(a.readings_above, 0) AS readings_above,
       coalesce(a.readings_below, 0) AS readings_below,
       coalesce(a.readings_without_setpoint, 0) AS readings_without_setpoint,
       p.kind, p.tolerance_point
FROM {pairs} p CROSS JOIN days
LEFT JOIN agg a ON a.pair_id = p.pair_id AND a.day = days.day
WHERE p.first_at < (days.day + 1)::timestamptz
ORDER BY 1, 2, 3, 4, 5
"""


def query_frame(connection: sa.Connection, sql: str, params: Mapping, types: Mapping[str, str]
                ) -> pd.DataFrame:
    """The rows of `sql` (bound `params`) as a frame typed by `types` (timestamps in the
    session's timezone, the farm's)."""
    rows = connection.exec_driver_sql(sql, dict(params)).all()
    frame = pd.DataFrame([tuple(row) for row in rows], columns=list(types))
    zone = connection.exec_driver_sql("SHOW timezone").scalar()
    for name, pg_type in types.items():
        if pg_type.startswith("timestamp"):
            frame[name] = pd.to_datetime(frame[name], utc=True).dt.tz_convert(zone)
        elif pg_type in ("double precision", "real"):
            frame[name] = frame[name].astype("float64")
        elif pg_type == "bigint":
            frame[name] = frame[name].astype("int64") if frame[name].notna().all() else \
                frame[name].astype("Int64")
        elif pg_type == "boolean":
            frame[name] = frame[name].astype(object)
    return frame


def window_days(window: dg.TimeWindow) -> tuple[dt.date, dt.date]:
    """The first and last local day of a partition window."""
    return window.start.date(), (window.end - dt.timedelta(hours=1)).date()


def compute_compliance(
    connection: sa.Connection, config: PointConfig, window: dg.TimeWindow,
    readings_sql: str, snapshots_sql: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of COMPLIANCE_SCHEMA, the pairs they come from), in one transaction."""
    pairs = map_points(config, known_points(connection, window.end))
    pairs.insert(0, "pair_id", range(len(pairs)))
    stage_setpoints(connection, pairs, window.start)
    first_day, last_day = window_days(window)
    sql = COMPLIANCE_SQL.format(
        pairs=PAIRS_TABLE, readings=readings_sql, edge=repr(EDGE),
        in_force=in_force_sql(snapshots_sql, "probes"),
    )
    rows = query_frame(connection, sql, {"first_day": first_day, "last_day": last_day},
                       column_types(COMPLIANCE_SCHEMA))
    return rows, pairs


class ComplianceConfig(dg.Config):
    share_threshold: float | None = Field(
        default=None,
        description="The share of readings in band under which the check "
        f"share_in_band_above_threshold warns. Unset: {THRESHOLD_VARIABLE}, else 0.8.",
    )


def pooled(rows: pd.DataFrame, by: str | list[str]) -> pd.DataFrame:
    """Sums per group, the share in band over all its readings, error means weighted by n."""
    weighted = rows.assign(
        sum_error=rows["mean_error"].fillna(0) * rows["n"],
        sum_abs_error=rows["mean_abs_error"].fillna(0) * rows["n"],
    )
    grouped = weighted.groupby(by, sort=True).agg(
        n=("n", "sum"), in_band=("in_band", "sum"), sum_error=("sum_error", "sum"),
        sum_abs_error=("sum_abs_error", "sum"), max_abs_error=("max_abs_error", "max"),
        readings_above=("readings_above", "sum"), readings_below=("readings_below", "sum"),
        readings_without_setpoint=("readings_without_setpoint", "sum"),
    ).reset_index()
    n = grouped["n"].astype("float64").where(grouped["n"] > 0)
    grouped["share_in_band"] = grouped["in_band"] / n
    grouped["mean_error"] = grouped.pop("sum_error") / n
    grouped["mean_abs_error"] = grouped.pop("sum_abs_error") / n
    return grouped


def _number(value) -> float | None:
    return None if pd.isna(value) else round(float(value), 4)


def compliance_metadata(rows: pd.DataFrame, pairs: pd.DataFrame, threshold: float) -> dict:
    per_room = pooled(rows, ["room", "metric"])
    per_metric = pooled(rows, "metric")
    table = per_room[["room", "metric", "n", "share_in_band", "mean_error", "mean_abs_error",
                      "max_abs_error", "readings_above", "readings_below",
                      "readings_without_setpoint"]].round(3)
    metadata: dict[str, object] = {
        "rows": len(rows),
        "rooms": int(rows["room"].nunique()),
        "mapped_points": len(pairs),
        "readings_judged": int(rows["n"].sum()),
        "readings_without_setpoint": int(rows["readings_without_setpoint"].sum()),
        "share_threshold": threshold,
        "per_room": dg.MetadataValue.md(
            table.to_markdown(index=False, disable_numparse=True) if len(table)
            else "(no mapped setpoint)"
        ),
    }
    # numbers the UI plots across partitions: pooled over the day's rooms and devices
    for row in per_metric.itertuples(index=False):
        share = _number(row.share_in_band)
        if share is not None:
            metadata[f"share_in_band_{row.metric}"] = share
            metadata[f"mean_abs_error_{row.metric}"] = _number(row.mean_abs_error)
    for row in pooled(rows, "room").itertuples(index=False):
        share = _number(row.share_in_band)
        if share is not None:
            metadata[f"share_in_band_room_{row.room}"] = share
    return metadata


@dg.asset(
    description="Per day, room, metric and mapped setpoint (the catalog's compliance rules): "
    "how many readings held the setpoint in force (target ± tolerance, or a low..high band), "
    "the signed and absolute errors, readings above, below and without a setpoint "
    "(../shared/CONTRACTS.md). The setpoint in force may come from any earlier day's stored "
    f"snapshots. The check warns under the share in band set by {THRESHOLD_VARIABLE} "
    "(default 0.8).",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "dagster/column_schema": COMPLIANCE_SCHEMA},
    check_specs=[share_in_band_spec, compliance_counts_spec],
    group_name="insights",
    owners=OWNERS,
    tags={**TAGS, "layer": "insight"},
    kinds={"postgres"},
)
def setpoint_compliance(
    context: dg.AssetExecutionContext,
    config: ComplianceConfig,
    warehouse: PostgresResource,
    farm_catalog: FarmCatalogResource,
    env_readings: PostgresRelation,
    setpoint_snapshots: PostgresRelation,
):
    try:
        threshold = resolve_threshold(config.share_threshold)
    except ConfigurationError as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    points = farm_catalog.points()
    with warehouse.begin() as conn:
        rows, pairs = compute_compliance(
            conn, points, context.partition_time_window, env_readings.sql, setpoint_snapshots.sql
        )
    context.log.info(
        f"{len(rows)} compliance rows from {len(pairs)} mapped setpoint(s) of "
        f"{len(points.compliance)} rule(s) in {points.source}"
    )
    yield dg.Output(rows, metadata={**compliance_metadata(rows, pairs, threshold),
                                    "point_config": points.source})
    yield check_share_in_band(rows, threshold)
    yield check_compliance_counts(rows)

