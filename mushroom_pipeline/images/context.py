"""Each image's context: the room's batch that day (its growth day) and the room's readings
nearest its capture time, as a sentence that CLIP's text tower can embed beside the image.
Labels and units come from the metric catalog."""

from decimal import Decimal

import pandas as pd

from mushroom_pipeline.catalog.metrics import MetricCatalog
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.sql import table_exists, warehouse_table

READINGS_TABLE = warehouse_table("env_readings")
BATCHES_TABLE = warehouse_table("room_batches")
WINDOW_MINUTES = 15
DEFAULT_DECIMALS = 1  # a metric without a resolution in the catalog

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
# Per image: the batch in its room on its day (the farm has one batch device per room).
BATCH_SQL = f"""
SELECT i.n, b.growth_day, b.entry_date
FROM unnest(%s::text[], %s::date[]) WITH ORDINALITY AS i(room, day, n)
CROSS JOIN LATERAL (
    SELECT growth_day, entry_date FROM {BATCHES_TABLE} b
    WHERE b.room = i.room AND b.day = i.day ORDER BY device LIMIT 1
) b
"""


def _decimals(resolution: float | None) -> int:
    if resolution is None:
        return DEFAULT_DECIMALS
    return max(0, -Decimal(f"{resolution:g}").as_tuple().exponent)


def _readings_text(readings: dict[str, float], metrics: MetricCatalog) -> str:
    """Catalog metrics in the catalog's order, then the others by name."""
    order = {m.name: i for i, m in enumerate(metrics.metrics)}
    parts = []
    for name, value in readings.items():
        metric = metrics.get(name)
        if metric is None:
            parts.append(((len(order), name), f"{name} {value:.{DEFAULT_DECIMALS}f}"))
        else:
            text = f"{metric.label} {value:.{_decimals(metric.resolution)}f} {metric.unit}"
            parts.append(((order[metric.name], name), text.rstrip()))
    return ", ".join(text for _, text in sorted(parts)) or "no environment readings"


def _batch_text(growth_day, entry_date) -> str:
    if growth_day is None:
        return ""
    entered = f" (batch entered {entry_date.isoformat()})" if entry_date else ""
    return f", growth day {growth_day}{entered},"


def _sentence(room: str, captured_at: pd.Timestamp, batch: tuple, readings: str) -> str:
    return f"Mushroom growing room {room}{_batch_text(*batch)} at {captured_at:%Y-%m-%d %H:%M}: {readings}."


def environment_context(warehouse: PostgresResource, images: pd.DataFrame,
                        metrics: MetricCatalog) -> list[str]:
    """One sentence per row of `images` (room, day, captured_at in the farm's timezone)."""
    if images.empty:
        return []
    readings: dict[int, dict[str, float]] = {}
    batches: dict[int, tuple] = {}
    rooms = list(images["room"])
    with warehouse.begin() as conn:
        if table_exists(conn, READINGS_TABLE):
            rows = conn.exec_driver_sql(
                NEAREST_READINGS_SQL, (rooms, [t.to_pydatetime() for t in images["captured_at"]])
            )
            for n, metric, value in rows:
                readings.setdefault(n - 1, {})[metric] = value
        if table_exists(conn, BATCHES_TABLE):
            for n, growth_day, entry_date in conn.exec_driver_sql(
                BATCH_SQL, (rooms, [str(day) for day in images["day"]])
            ):
                batches[n - 1] = (growth_day, entry_date)
    return [
        _sentence(room, at, batches.get(i, (None, None)), _readings_text(readings.get(i, {}), metrics))
        for i, (room, at) in enumerate(zip(rooms, images["captured_at"]))
    ]
