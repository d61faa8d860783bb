"""Change events of device points: each snapshot compared with the point's previous one.

Points without a deadband are compared in SQL (LAG over the snapshots, baselines included).
An analog point with a deadband is compared with its last *reported* value, which needs the
snapshots in order: that runs in Python, over those points' snapshots only.
"""

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mushroom_pipeline.io.postgres import read_frame
from mushroom_pipeline.setpoints.config import PointConfig
from mushroom_pipeline.setpoints.snapshots import KEY, values_table

EVENT_TYPES = {
    "day": "date",
    "room": "text",
    "device": "text",
    "point": "text",
    "changed_at": "timestamptz",
    "old_value": "double precision",
    "new_value": "double precision",
    "change_kind": "text",
}
TREATMENT_COLUMNS = ["room", "device", "point", "kind", "deadband", "excluded", "configured"]


def point_treatments(connection: sa.Connection, snapshots_sql: str, config: PointConfig) -> pd.DataFrame:
    points = connection.exec_driver_sql(f"SELECT DISTINCT {KEY} FROM ({snapshots_sql}) s").all()
    rows = []
    for room, device, point in points:
        treatment = config.treatment(room, device, point)
        rows.append((room, device, point, treatment.kind, treatment.deadband,
                     treatment.excluded, treatment.configured))
    return pd.DataFrame(rows, columns=TREATMENT_COLUMNS)


def detect_changes(connection: sa.Connection, snapshots_sql: str, treatments: pd.DataFrame) -> pd.DataFrame:
    tracked = treatments[~treatments["excluded"]]
    exact = tracked[tracked["deadband"] == 0]
    banded = tracked[tracked["deadband"] > 0]
    frames = [_exact_changes(connection, snapshots_sql, exact)]
    if len(banded):
        frames.append(_deadband_changes(connection, snapshots_sql, banded))
    events = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    return events.sort_values(["changed_at", "room", "device", "point"], ignore_index=True)


def _points_table(points: pd.DataFrame) -> str:
    return values_table(
        list(points[["room", "device", "point", "kind"]].itertuples(index=False)),
        ["room", "device", "point", "kind"],
        ["text"] * 4,
    )


def _exact_changes(connection, snapshots_sql: str, points: pd.DataFrame) -> pd.DataFrame:
    return read_frame(
        connection,
        f"""
        SELECT changed_at::date AS day, room, device, point, changed_at, old_value, new_value,
               CASE WHEN kind <> 'switch' THEN 'changed'
                    WHEN new_value = 1 THEN 'switched_on' ELSE 'switched_off' END AS change_kind
        FROM (
            SELECT {KEY}, kind, is_baseline, recorded_at AS changed_at, value AS new_value,
                   lag(value) OVER (PARTITION BY {KEY} ORDER BY recorded_at) AS old_value
            FROM ({snapshots_sql}) s JOIN {_points_table(points)} USING ({KEY})
        ) l
        WHERE NOT is_baseline AND old_value IS NOT NULL AND new_value <> old_value
        """,
        EVENT_TYPES,
    )


def _deadband_changes(connection, snapshots_sql: str, points: pd.DataFrame) -> pd.DataFrame:
    snapshots = read_frame(
        connection,
        f"SELECT {KEY}, value, recorded_at, is_baseline FROM ({snapshots_sql}) s "
        f"JOIN {_points_table(points)} USING ({KEY}) ORDER BY {KEY}, recorded_at",
        {"room": "text", "device": "text", "point": "text", "value": "double precision",
         "recorded_at": "timestamptz", "is_baseline": "boolean"},
    )
    deadbands = points.set_index(["room", "device", "point"])["deadband"]
    rows = []
    for key, group in snapshots.groupby(["room", "device", "point"], sort=False):
        values = group["value"].to_numpy()
        times = group["recorded_at"].to_numpy()
        baseline = group["is_baseline"].to_numpy()
        reported = values[0]
        # a hair over the deadband: 16.50 → 16.55 is not a change of a 0.05 deadband
        threshold = deadbands[key] + 1e-9
        for i in range(1, len(values)):
            if abs(values[i] - reported) > threshold and not baseline[i]:
                rows.append((*key, times[i], reported, values[i]))
                reported = values[i]
    events = pd.DataFrame(rows, columns=["room", "device", "point", "changed_at", "old_value", "new_value"])
    events["changed_at"] = pd.to_datetime(events["changed_at"], utc=True).dt.tz_convert(
        snapshots["recorded_at"].dt.tz if len(snapshots) else "UTC"
    )
    events.insert(0, "day", events["changed_at"].dt.date)
    events["change_kind"] = "changed"
    return events[list(EVENT_TYPES)].astype({"old_value": np.float64, "new_value": np.float64})
