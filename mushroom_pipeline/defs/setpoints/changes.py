"""Change events of device points: each snapshot compared with the point's previous one.

Points without a deadband are compared in SQL (LAG over the snapshots, baselines included).
An analog point with a deadband is compared with its last *reported* value, which needs the
snapshots in order: that runs in Python, over those points' snapshots only. The reported value
carries across days: each run returns, per day and point, the reference in force at the day's
end (stored in mushroom.setpoint_deadband_references), and a point's first day of a run starts
from the reference stored for its baseline's day, else from the baseline snapshot itself.
A change counts when the value moved at least the deadband: jitter strictly below it is none.

Switch and enum events carry the labels the catalog gives their old and new values.
"""

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mushroom_pipeline.catalog.points import PointConfig
from mushroom_pipeline.defs.setpoints.snapshots import KEY, KEY_TYPES
from mushroom_pipeline.warehouse.frames import (
    copy_frame,
    read_frame,
)
from mushroom_pipeline.warehouse.sql import analyze, table_exists, warehouse_table

CHANGE_TYPES = {  # what the comparisons give; the labels are added from the treatments
    "day": "date",
    "room": "text",
    "device": "text",
    "point": "text",
    "changed_at": "timestamptz",
    "old_value": "double precision",
    "new_value": "double precision",
    "change_kind": "text",
}
EVENT_TYPES = {**CHANGE_TYPES, "old_label": "text", "new_label": "text"}
REFERENCES_TABLE = "setpoint_deadband_references"
REFERENCE_TYPES = {
    "day": "date",
    "room": "text",
    "device": "text",
    "point": "text",
    "reference": "double precision",
}
TREATMENT_COLUMNS = ["room", "device", "point", "kind", "deadband", "excluded", "configured",
                     "labels"]
POINT_TYPES = {"room": "text", "device": "text", "point": "text", "kind": "text",
               "deadband": "double precision", "ordinal": "integer"}
POINTS_TABLE = "tracked_points"  # temporary: lives as long as the caller's transaction


@dataclass(frozen=True)
class Changes:
    events: pd.DataFrame  # EVENT_TYPES
    references: pd.DataFrame  # REFERENCE_TYPES: per day and deadband point, at the day's end
    references_from_baseline: int  # deadband points whose previous reference was not stored
    values_without_label: int = 0  # events on labelled points whose old or new value has no label


def distinct_points(snapshots_sql: str) -> str:
    """The (room, device, point) keys of a snapshots relation, for point_treatments."""
    return f"SELECT DISTINCT {KEY} FROM ({snapshots_sql}) s"


def point_treatments(connection: sa.Connection, points_sql: str, config: PointConfig) -> pd.DataFrame:
    """The catalog's treatment of each point of `points_sql` (a relation of distinct keys)."""
    points = connection.exec_driver_sql(points_sql).all()
    rows = []
    for room, device, point in points:
        treatment = config.treatment(room, device, point)
        rows.append((room, device, point, treatment.kind, treatment.deadband,
                     treatment.excluded, treatment.configured, treatment.labels))
    # typed also when empty (a day without snapshots): boolean masks stay masks
    return pd.DataFrame(rows, columns=TREATMENT_COLUMNS).astype(
        {"deadband": float, "excluded": bool, "configured": bool})


def stage_tracked_points(connection: sa.Connection, treatments: pd.DataFrame) -> None:
    """The tracked points (kind, deadband) COPYed into the temporary table POINTS_TABLE, which
    the queries of this transaction of `connection` join; dropped when it commits."""
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {POINTS_TABLE} "
        f"({', '.join(f'{c} {t}' for c, t in POINT_TYPES.items())}) ON COMMIT DROP"
    )
    # `ordinal` numbers the points in key order: the windows over a point's snapshots partition
    # by it, one integer, where three text columns made each comparison of their sort up to
    # three string comparisons (an hourly tick's LAG: 152 → 60 ms)
    tracked = treatments[~treatments["excluded"]].sort_values(list(KEY_TYPES))
    tracked = tracked.assign(ordinal=range(len(tracked)))
    copy_frame(connection, POINTS_TABLE, tracked[list(POINT_TYPES)], POINT_TYPES)
    # statistics: without them the planner takes the table for 2 rows and may loop over it per
    # snapshot (a nested loop of 60,000 × 1,000 rows: 9 s for an hour's tail)
    analyze(connection, POINTS_TABLE)


def detect_changes(connection: sa.Connection, snapshots_sql: str, treatments: pd.DataFrame) -> Changes:
    """Runs in one transaction of `connection` (see stage_tracked_points)."""
    stage_tracked_points(connection, treatments)
    exact = _exact_changes(connection, snapshots_sql)
    if (treatments.loc[~treatments["excluded"], "deadband"] > 0).any():
        banded = _deadband_changes(connection, snapshots_sql, exact["changed_at"].dt.tz)
    else:
        banded = Changes(exact.iloc[:0], pd.DataFrame(columns=list(REFERENCE_TYPES)), 0)
    events = pd.concat([f for f in (exact, banded.events) if len(f)] or [exact], ignore_index=True)
    events, unlabelled = _labelled(
        events.sort_values(["changed_at", "room", "device", "point"], ignore_index=True), treatments
    )
    return Changes(events, banded.references, banded.references_from_baseline, unlabelled)


def _labelled(events: pd.DataFrame, treatments: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The events with old_label / new_label (None: no label for that value, or an analog
    point), and how many events on labelled points lack a label."""
    labels = dict(zip(zip(treatments["room"], treatments["device"], treatments["point"]),
                      treatments["labels"]))
    point_labels = [labels[key] for key in zip(events["room"], events["device"], events["point"])]
    old = [names.get(value) for names, value in zip(point_labels, events["old_value"])]
    new = [names.get(value) for names, value in zip(point_labels, events["new_value"])]
    unlabelled = sum(bool(names) and (o is None or n is None)
                     for names, o, n in zip(point_labels, old, new))
    return events.assign(old_label=pd.Series(old, index=events.index, dtype=object),
                         new_label=pd.Series(new, index=events.index, dtype=object)), unlabelled


def _exact_changes(connection, snapshots_sql: str) -> pd.DataFrame:
    return read_frame(
        connection,
        f"""
        SELECT changed_at::date AS day, room, device, point, changed_at, old_value, new_value,
               CASE WHEN kind = 'switch' AND new_value = 1 THEN 'switched_on'
                    WHEN kind = 'switch' AND new_value = 0 THEN 'switched_off'
                    ELSE 'changed' END AS change_kind
        FROM (
            -- a baseline sorts after the snapshot it copies (the next day's, in a range)
            SELECT {KEY}, kind, is_baseline, recorded_at AS changed_at, value AS new_value,
                   lag(value) OVER (PARTITION BY ordinal ORDER BY recorded_at, is_baseline)
                       AS old_value
            FROM ({snapshots_sql}) s JOIN {POINTS_TABLE} p USING ({KEY})
            WHERE p.deadband = 0
        ) l
        WHERE NOT is_baseline AND old_value IS NOT NULL AND new_value <> old_value
        """,
        CHANGE_TYPES,
    )


def _stored_references(connection) -> str:
    """The stored references' table, or an empty one before the first deadband run."""
    table = warehouse_table(REFERENCES_TABLE)
    if table_exists(connection, table):
        return table
    nulls = ", ".join(f"NULL::{t} AS {c}" for c, t in REFERENCE_TYPES.items())
    return f"(SELECT {nulls} WHERE false)"


def _deadband_changes(connection, snapshots_sql: str, zone) -> Changes:
    s_key = "s.room, s.device, s.point"
    snapshots = read_frame(
        connection,
        f"SELECT {s_key}, s.value, s.recorded_at, s.day, s.is_baseline, p.deadband, "
        "r.reference AS stored "
        f"FROM ({snapshots_sql}) s JOIN {POINTS_TABLE} p USING ({KEY}) "
        f"LEFT JOIN {_stored_references(connection)} r ON s.is_baseline "
        "AND r.day = s.recorded_at::date AND (r.room, r.device, r.point) = (s.room, s.device, s.point) "
        # a baseline sorts after the snapshot it copies: it only ever opens a point's first day
        "WHERE p.deadband > 0 ORDER BY p.ordinal, s.recorded_at, s.is_baseline",
        {"room": "text", "device": "text", "point": "text", "value": "double precision",
         "recorded_at": "timestamptz", "day": "date", "is_baseline": "boolean",
         "deadband": "double precision", "stored": "double precision"},
    )
    events, references, from_baseline = [], {}, 0
    for key, group in snapshots.groupby(["room", "device", "point"], sort=False):
        # a hair under the deadband: 16.5 → 16.6 (0.0999…) is a step of a 0.1 deadband
        threshold = group["deadband"].iloc[0] - 1e-9
        reported = None
        for value, at, day, is_baseline, stored in zip(
            group["value"], group["recorded_at"], group["day"], group["is_baseline"], group["stored"]
        ):
            if is_baseline:
                if reported is None:
                    from_baseline += int(np.isnan(stored))
                    reported = value if np.isnan(stored) else stored
                continue
            if reported is None:
                reported = value  # the point's first-ever snapshot: no change
            elif abs(value - reported) >= threshold:
                events.append((day, *key, at, reported, value, "changed"))
                reported = value
            references[(day, *key)] = reported
    frame = pd.DataFrame(events, columns=list(CHANGE_TYPES))
    frame["changed_at"] = pd.to_datetime(frame["changed_at"], utc=True).dt.tz_convert(zone)
    return Changes(
        frame.astype({"old_value": np.float64, "new_value": np.float64}),
        pd.DataFrame([(*k, v) for k, v in references.items()], columns=list(REFERENCE_TYPES)),
        from_baseline,
    )


TAIL_TABLE = "setpoint_tail"  # temporary, as the seeds: they live as long as the caller's transaction
TAIL_POINTS_TABLE = "setpoint_tail_points"
SEEDS_TABLE = "setpoint_seeds"
# Snapshots are periodic: the last minutes before the tail nearly always hold each seed (as
# BASELINE_LOOKBACKS); a point silent longer is looked for further back, at last in the whole day.
SEED_LOOKBACKS = (dt.timedelta(minutes=10), dt.timedelta(hours=1))


def tail_snapshots(connection: sa.Connection, window, after) -> tuple[str, str]:
    """The stored snapshots of the day `window` after `after` (an incremental run's tail), plus
    per point of the tail its seed: its last stored snapshot at or before `after` (its baseline
    when it has none that day), marked as a baseline, so it is compared with and never itself
    an event, and a deadband point takes the day's stored reference as its reported value.
    Returns the relation's SQL and its points' (distinct keys, for point_treatments), over
    temporary tables of `connection`'s transaction."""
    snapshots = warehouse_table("setpoint_snapshots")
    bounds = {"after": after, "end": window.end, "start": window.start, "day": window.start.date()}
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {TAIL_TABLE} ON COMMIT DROP AS "
        f"SELECT {KEY}, value, recorded_at, day, source_rows, is_baseline FROM {snapshots} "
        "WHERE recorded_at > %(after)s AND recorded_at < %(end)s AND NOT is_baseline",
        bounds,
    )
    # the tail's points, found once: the seeds' lookups and the points' treatments ask for them
    # (three scans of the tail's 60,000 rows an hourly tick before)
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {TAIL_POINTS_TABLE} ON COMMIT DROP AS SELECT DISTINCT {KEY} FROM {TAIL_TABLE}")
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {SEEDS_TABLE} ON COMMIT DROP AS "
        f"SELECT {KEY}, value, recorded_at FROM {snapshots} WITH NO DATA"
    )
    unseeded = f"SELECT {KEY} FROM {TAIL_POINTS_TABLE} EXCEPT SELECT {KEY} FROM {SEEDS_TABLE}"
    lookbacks = [
        ("recorded_at > %(after)s - %(lookback)s AND recorded_at <= %(after)s "
         "AND recorded_at >= %(start)s AND NOT is_baseline", lookback)
        for lookback in SEED_LOOKBACKS
    ] + [("day = %(day)s AND (is_baseline OR recorded_at <= %(after)s)", None)]  # the whole day
    for step, (where, lookback) in enumerate(lookbacks):
        # every point of the tail is unseeded before the first step
        if step and not connection.exec_driver_sql(f"SELECT EXISTS ({unseeded})").scalar():
            break
        connection.exec_driver_sql(
            f"INSERT INTO {SEEDS_TABLE} SELECT DISTINCT ON ({KEY}) {KEY}, value, recorded_at "
            f"FROM {snapshots} JOIN ({unseeded}) m USING ({KEY}) WHERE {where} "
            f"ORDER BY {KEY}, recorded_at DESC",
            {**bounds, "lookback": lookback},
        )
    for table in (TAIL_TABLE, TAIL_POINTS_TABLE, SEEDS_TABLE):
        analyze(connection, table)
    return (
        f"SELECT {KEY}, value, recorded_at, day, source_rows, is_baseline FROM {TAIL_TABLE}\n"
        f"UNION ALL SELECT {KEY}, value, recorded_at, recorded_at::date, 0::bigint, true FROM {SEEDS_TABLE}"
    ), f"TABLE {TAIL_POINTS_TABLE}"  # the seeds' points are the tail's
