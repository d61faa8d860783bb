"""Each image's environment: the room's readings nearest its capture time, as a sentence that
CLIP's text tower can embed beside the image."""

import pandas as pd

from mushroom_pipeline.resources import PostgresResource

READINGS_TABLE = "mushroom.env_readings"
WINDOW_MINUTES = 15
UNITS = {"temperature_c": ("temperature", "°C"), "humidity_pct": ("humidity", "%"),
         "co2_ppm": ("CO2", "ppm")}

# Per image and metric: the valid reading closest in time within ±WINDOW_MINUTES (index on
# measured_at: a few rows per image, never the whole day).
NEAREST_READINGS_SQL = f"""
SELECT i.n, r.metric, r.value
FROM unnest(%s::text[], %s::timestamptz[]) WITH ORDINALITY AS i(room, at, n)
CROSS JOIN LATERAL (
    SELECT DISTINCT ON (metric) metric, value
    FROM {READINGS_TABLE} r
    WHERE r.room = i.room
      AND r.measured_at BETWEEN i.at - interval '{WINDOW_MINUTES} minutes'
                            AND i.at + interval '{WINDOW_MINUTES} minutes'
    ORDER BY metric, abs(extract(epoch FROM r.measured_at - i.at))
) r
"""


def _sentence(room: str, captured_at: pd.Timestamp, readings: dict[str, float]) -> str:
    parts = []
    for metric, value in sorted(readings.items()):
        name, unit = UNITS.get(metric, (metric, ""))
        parts.append(f"{name} {value:.1f} {unit}".rstrip())
    measured = ", ".join(parts) if parts else "no environment readings"
    return f"Mushroom growing room {room} at {captured_at:%Y-%m-%d %H:%M}: {measured}."


def environment_context(warehouse: PostgresResource, images: pd.DataFrame) -> list[str]:
    """One sentence per row of `images` (room, captured_at in the farm's timezone)."""
    if images.empty:
        return []
    readings: dict[int, dict[str, float]] = {}
    with warehouse.begin() as conn:
        if conn.exec_driver_sql("SELECT to_regclass(%s)", (READINGS_TABLE,)).scalar() is not None:
            rows = conn.exec_driver_sql(
                NEAREST_READINGS_SQL,
                (list(images["room"]), [t.to_pydatetime() for t in images["captured_at"]]),
            )
            for n, metric, value in rows:
                readings.setdefault(n - 1, {})[metric] = value
    return [
        _sentence(room, at, readings.get(i, {}))
        for i, (room, at) in enumerate(zip(images["room"], images["captured_at"]))
    ]
