"""Nearest images by cosine distance through the HNSW index of mushroom.image_embeddings,
filtered by room, days, growth day and the environment at capture time, with each hit's
context: the readings at capture time and the room's recent setpoint changes."""

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mushroom_pipeline.defs.vision.embeddings import room_bucket
from mushroom_pipeline.defs.vision.health import NEAR_DUPLICATE_COSINE
from mushroom_pipeline.images.context import (
    NEAREST_READINGS_SQL,
    READINGS_TABLE,
    WINDOW_MINUTES,
)
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.frames import register_vectors
from mushroom_pipeline.warehouse.sql import table_exists, warehouse_table

log = logging.getLogger(__name__)
TABLE = warehouse_table("image_embeddings")
BATCHES_TABLE = warehouse_table("room_batches")
# recall@10 ≥ 0.95 on 100 k clustered 512-d vectors at about half the exact scan's latency
# (benchmarks/vector_search.py); pgvector's default of 40 gave less recall there.
EF_SEARCH = 100
# At most this many rows passing the cheap filters (model, room, days, growth days): an exact
# scan of them answers (recall 1 by construction) instead of the HNSW iterative scan, whose
# recall falls where a selective filter leaves the query's neighbourhood nearly empty (0.70 on
# the benchmark's noise floor). benchmarks/vector_search.py --sweep-days, 300k clustered 512-d
# vectors, one room of 10 and 7–30 days, each path forced, the room's bucket walked
# (benchmarks/README.md): up to 4,672 rows the exact path costs 28–46 ms p50 where the walk's
# recall@10 is 0.75–0.82; past that it climbs to 63–93 ms (7,000–10,000 rows, the vectors read
# out of TOAST) against the walk's 13–15 ms at recall 0.91–0.95. 5,000 also covers the 100k
# noise floor (room + 30 days: about 3,300 rows).
EXACT_SCAN_MAX_ROWS = 5_000
CHANGES_TABLE = warehouse_table("setpoint_change_events")
RECENT_CHANGE_HOURS = 6  # a hit's context: the room's setpoint changes this long before capture
# --distinct: a hit this close to a better-ranked kept hit of its room is the same view (one
# frame sent twice, a still picture): camera_health's near-duplicate threshold.
NEAR_DUPLICATE_DISTANCE = 1 - NEAR_DUPLICATE_COSINE
DISTINCT_CANDIDATES = 4  # --distinct fetches this many times --limit, more while short
DISTINCT_MAX_CANDIDATES = 10_000
# The only comparison texts that reach SQL: chosen from this table, never copied from input.
OPERATORS = {">=": ">=", "<=": "<=", ">": ">", "<": "<", "=": "=", "!=": "<>"}
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
CONDITION = re.compile(r"\s*(?P<metric>[^<>=!]*?)\s*(?P<op>>=|<=|!=|>|<|=)\s*(?P<value>.*?)\s*")


@dataclass(frozen=True)
class Condition:
    """An environment filter: the reading of `metric` (canonical name) nearest the capture
    time, within ±WINDOW_MINUTES, compares with `value` by `op` (a key of OPERATORS)."""

    metric: str
    op: str
    value: float

    def __post_init__(self):
        if self.op not in OPERATORS:
            raise ValueError(f"{self.op!r}: the comparisons are {', '.join(OPERATORS)}")
        if not math.isfinite(self.value):
            raise ValueError(f"{self.value!r} is not a finite number")


def parse_condition(text: str) -> tuple[str, str, float]:
    """`humidity_pct>=90` → ("humidity_pct", ">=", 90.0); the metric as written (the caller
    folds it to a catalog name). ValueError naming the problem otherwise."""
    form = f"give <metric><op><number> with op one of {', '.join(OPERATORS)} (humidity_pct>=90)"
    match = CONDITION.fullmatch(text)
    if not match or not match["metric"]:
        raise ValueError(f"{text!r}: {form}")
    if not NUMBER.fullmatch(match["value"]):
        raise ValueError(f"{text!r}: {match['value']!r} is not a number; {form}")
    value = float(match["value"])
    if not math.isfinite(value):
        raise ValueError(f"{text!r}: {match['value']!r} is not a finite number")
    return match["metric"], match["op"], value


def nearest(
    warehouse: PostgresResource,
    vector: np.ndarray,
    model: str,
    *,
    room: str | None = None,
    day: str | None = None,
    other_days_than: str | None = None,
    growth_days: tuple[int, int] | None = None,
    limit: int = 10,
    ef_search: int = EF_SEARCH,
    day_from: str | None = None,
    day_to: str | None = None,
    where: Sequence[Condition] = (),
    max_distance: float | None = None,
    distinct: bool = False,
    candidates: int | None = None,
    exact_max_rows: int | None = None,
) -> pd.DataFrame:
    """The `limit` nearest images of `model` (object_key, room, day, captured_at, distance, and
    the batch and growth day of the image's room and day, from mushroom.room_batches), nearest
    first.

    `day` or `day_from`/`day_to` (inclusive, YYYY-MM-DD): the images' days. `growth_days`
    (first, last): only images whose room's batch was at a growth day in that range on their
    day, from any batch, past ones too. `where`: only images whose room's reading of each
    condition's metric nearest their capture time (within ±WINDOW_MINUTES, the rule of the
    context sentences) passes it; an image without such a reading does not.

    Two strategies, chosen by a count of the rows that pass the cheap filters (model, room,
    days, growth days: the (model, room, day) index serves it), bounded at `exact_max_rows`
    (EXACT_SCAN_MAX_ROWS unless given) + 1:

    - at most `exact_max_rows`: an exact scan of those rows, ordered by distance (HNSW off, the
      btree through a bitmap scan); the environment filters run on the sorted rows, nearest
      first, only until `limit` pass. Recall 1 by construction.
    - more: the filters run inside the HNSW index scan: pgvector's iterative scan keeps walking
      the graph until `limit` rows pass them (the environment filters are correlated subqueries
      evaluated per candidate row, so they stay on the index scan). It stops after
      hnsw.max_scan_tuples, so a filter that few images pass can still leave the answer short:
      then an exact scan of the filtered rows answers.

    `exact_max_rows=0` forces the HNSW path (the benchmark compares the two paths with it).
    The answer's `attrs["strategy"]` says which ran: "exact", "hnsw", or "hnsw+exact" (the
    short answer's fallback).

    `max_distance`: only hits at most that cosine distance away. A distance is no filter an
    index scan can apply before it knows it: the cutoff applies to the hits, which come ordered
    by distance, so it ends the answer at the first one farther away.

    `distinct`: near-duplicates collapse: a hit within NEAR_DUPLICATE_DISTANCE of a better-ranked
    hit kept from the same room is dropped. DISTINCT_CANDIDATES × `limit` candidates are
    fetched (more while the answer is short and more exist), so it still fills `limit` when it
    can.

    `candidates`: how many rows the index scan gathers (at least `limit`) before the best
    `limit` are kept: with relaxed ordering the scan's first rows are not exactly the nearest,
    so gathering more raises recall, at the cost of a longer walk.
    """
    filters, params = ["e.model = %(model)s"], {"model": model}
    for condition, name, value in (
        ("e.room = %(room)s", "room", room),
        ("e.day = %(day)s", "day", day),
        ("e.day >= %(day_from)s", "day_from", day_from),
        ("e.day <= %(day_to)s", "day_to", day_to),
        ("e.day <> %(other)s", "other", other_days_than),
    ):
        if value:
            filters.append(condition)
            params[name] = value
    if growth_days:
        filters.append(
            f"(e.room, e.day) IN (SELECT room, day FROM {BATCHES_TABLE} "
            "WHERE growth_day BETWEEN %(first_growth_day)s AND %(last_growth_day)s)"
        )
        params["first_growth_day"], params["last_growth_day"] = growth_days
    cheap = list(filters)  # what the count and the exact scan's btree serve
    if room:  # implied by the room's filter; it lets the planner walk the bucket's own index
        filters.append(f"{room_bucket('e.room')} = {room_bucket('%(room)s')}")
    environment = [_condition_sql(condition, n, params) for n, condition in enumerate(where)]
    filters += environment
    params["vector"] = vector
    bound = EXACT_SCAN_MAX_ROWS if exact_max_rows is None else exact_max_rows
    with warehouse.begin() as conn:
        register_vectors(conn)
        # Planned for this search's values, never generically: psycopg prepares a statement
        # sent 5 times on a connection, and Postgres's generic plan of it cannot pick the room
        # bucket's partial index nor weigh the day range (a process searching repeatedly got
        # 46 ms per search where the custom plan takes 3 ms: benchmarks/README.md).
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
        batches = table_exists(conn, BATCHES_TABLE)
        if growth_days and not batches:
            raise LookupError(f"{BATCHES_TABLE} does not exist: materialize room_batches first")
        if where and not table_exists(conn, READINGS_TABLE):
            raise LookupError(f"{READINGS_TABLE} does not exist: materialize env_readings first")
        # The image's batch: the farm has one batch device per room (the first one otherwise).
        batch = (
            f"LEFT JOIN LATERAL (SELECT batch, growth_day FROM {BATCHES_TABLE} b "
            "WHERE b.room = h.room AND b.day = h.day ORDER BY device LIMIT 1) b ON true"
            if batches else "CROSS JOIN (SELECT NULL::text AS batch, NULL::bigint AS growth_day) b"
        )
        selected = f"""e.object_key, e.room, e.day, e.captured_at,
                       e.embedding <=> %(vector)s::vector AS distance
                       {', e.embedding' if distinct else ''}"""
        answer = f"SELECT h.*, b.batch, b.growth_day FROM hits h {batch} ORDER BY distance, object_key"
        sql = f"""
            WITH hits AS MATERIALIZED (
                SELECT {selected}
                FROM {TABLE} e WHERE {' AND '.join(filters)}
                ORDER BY e.embedding <=> %(vector)s::vector LIMIT %(limit)s
            )
            {answer}
        """
        # The exact scan: the cheap filters' rows sorted by distance (OFFSET 0 keeps the sort
        # apart), then the environment filters on them nearest first, until `limit` pass.
        exact_sql = f"""
            WITH hits AS MATERIALIZED (
                SELECT * FROM (
                    SELECT {selected} FROM {TABLE} e WHERE {' AND '.join(cheap)}
                    ORDER BY distance, e.object_key OFFSET 0
                ) e {'WHERE ' + ' AND '.join(environment) if environment else ''}
                ORDER BY distance, object_key LIMIT %(limit)s
            )
            {answer}
        """
        params["bound"] = bound + 1
        passing = conn.exec_driver_sql(
            f"SELECT count(*) FROM (SELECT 1 FROM {TABLE} e WHERE {' AND '.join(cheap)} "
            "LIMIT %(bound)s) c", params).scalar()
        exact = passing <= bound
        strategy = "exact" if exact else "hnsw"
        if exact:
            conn.exec_driver_sql("SET LOCAL enable_indexscan = off")  # no HNSW
            sql = exact_sql
        else:
            conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
            conn.exec_driver_sql("SET LOCAL hnsw.iterative_scan = relaxed_order")
        fetch = max(limit * DISTINCT_CANDIDATES if distinct else limit, candidates or 0)
        while True:
            params["limit"] = fetch
            rows = conn.exec_driver_sql(sql, params).all()
            if len(rows) < fetch and not exact:
                conn.exec_driver_sql("SET LOCAL enable_indexscan = off")  # exact: no HNSW
                exact, strategy = True, "hnsw+exact"
                rows = conn.exec_driver_sql(sql, params).all()
            hits = pd.DataFrame([(*row[:5], *row[-2:]) for row in rows], columns=COLUMNS)
            if max_distance is not None:
                hits = hits[hits["distance"] <= max_distance]
            if not distinct:
                hits = hits.iloc[:limit]
                break
            kept = _distinct([row[5].to_numpy() for row in rows[:len(hits)]], list(hits["room"]))
            hits = hits.iloc[kept[:limit]]
            if len(hits) >= limit or len(rows) < fetch or fetch >= DISTINCT_MAX_CANDIDATES:
                break  # filled, or no more candidates
            if max_distance is not None and rows[-1][4] > max_distance:
                break  # the next candidates are farther still
            fetch = min(fetch * DISTINCT_CANDIDATES, DISTINCT_MAX_CANDIDATES)
    log.debug("nearest: %s (%s rows pass the cheap filters, bound %s)", strategy,
              f"> {bound}" if passing > bound else passing, bound)
    hits = hits.reset_index(drop=True).astype({"growth_day": "Int64"})
    hits.attrs["strategy"] = strategy
    return hits


COLUMNS = ["object_key", "room", "day", "captured_at", "distance", "batch", "growth_day"]


def _condition_sql(condition: Condition, n: int, params: dict) -> str:
    """The EXISTS of one environment filter; the metric and value as bound parameters, the
    comparison from OPERATORS."""
    op = OPERATORS[condition.op]
    params[f"metric_{n}"], params[f"value_{n}"] = condition.metric, float(condition.value)
    params["window_minutes"] = WINDOW_MINUTES
    return (
        "EXISTS (SELECT 1 FROM ("
        f"SELECT r.value FROM {READINGS_TABLE} r "
        f"WHERE r.room = e.room AND r.metric = %(metric_{n})s "
        "AND r.measured_at BETWEEN e.captured_at - %(window_minutes)s * interval '1 minute' "
        "AND e.captured_at + %(window_minutes)s * interval '1 minute' "
        "ORDER BY abs(extract(epoch FROM r.measured_at - e.captured_at)), r.measured_at LIMIT 1"
        f") nearest_reading WHERE nearest_reading.value {op} %(value_{n})s)"
    )


def _distinct(vectors: list[np.ndarray], rooms: list[str]) -> list[int]:
    """Positions of the hits kept, best first: each one farther than NEAR_DUPLICATE_DISTANCE
    from every hit kept before it in its room."""
    kept: list[int] = []
    by_room: dict[str, list[np.ndarray]] = {}
    for i, (vector, room) in enumerate(zip(vectors, rooms)):
        unit = vector / (np.linalg.norm(vector) or 1.0)
        seen = by_room.setdefault(room, [])
        if seen and float(np.max(np.stack(seen) @ unit)) >= NEAR_DUPLICATE_COSINE:
            continue
        seen.append(unit)
        kept.append(i)
    return kept


# Per hit: the room's setpoint changes in the RECENT_CHANGE_HOURS up to its capture time.
RECENT_CHANGES_SQL = f"""
SELECT i.n, c.changed_at, c.device, c.point, c.old_value, c.new_value, c.old_label, c.new_label,
       c.change_kind
FROM unnest(%s::text[], %s::timestamptz[]) WITH ORDINALITY AS i(room, at, n)
JOIN {CHANGES_TABLE} c ON c.room = i.room
 AND c.changed_at BETWEEN i.at - interval '{RECENT_CHANGE_HOURS} hours' AND i.at
ORDER BY i.n, c.changed_at, c.device, c.point
"""
CHANGE_FIELDS = ["changed_at", "device", "point", "old_value", "new_value", "old_label",
                 "new_label", "change_kind"]


def with_context(warehouse: PostgresResource, hits: pd.DataFrame) -> pd.DataFrame:
    """`hits` with each one's context: `readings`, {metric: value} of the room's readings
    nearest the capture time (within ±WINDOW_MINUTES, as the filters and the context sentences
    read them), and `recent_changes`, the room's setpoint changes (CHANGE_FIELDS) in the
    RECENT_CHANGE_HOURS up to the capture time, oldest first. A table not materialized yet
    gives none."""
    readings: list[dict] = [{} for _ in range(len(hits))]
    changes: list[list] = [[] for _ in range(len(hits))]
    if len(hits):
        arrays = (list(hits["room"]), [None if pd.isna(t) else t for t in hits["captured_at"]])
        with warehouse.begin() as conn:
            if table_exists(conn, READINGS_TABLE):
                for n, metric, value in conn.exec_driver_sql(NEAREST_READINGS_SQL, arrays):
                    readings[n - 1][metric] = value
            if table_exists(conn, CHANGES_TABLE):
                for n, *change in conn.exec_driver_sql(RECENT_CHANGES_SQL, arrays):
                    changes[n - 1].append(dict(zip(CHANGE_FIELDS, change)))
    hits = hits.copy()
    hits["readings"] = [dict(sorted(r.items())) for r in readings]
    hits["recent_changes"] = changes
    return hits


def stored_vector(warehouse: PostgresResource, object_key: str, model: str) -> tuple[np.ndarray, str]:
    """An embedded image's vector and day, for "similar historical cases"."""
    with warehouse.begin() as conn:
        row = register_vectors(conn).exec_driver_sql(
            f"SELECT embedding, day FROM {TABLE} WHERE object_key = %s AND model = %s",
            (object_key, model),
        ).first()
    if row is None:
        raise LookupError(f"{object_key} has no embedding by {model}: materialize its day first")
    return row[0].to_numpy(), row[1].isoformat()


def _value_text(value, label) -> str:
    if label:
        return str(label)
    return "?" if value is None or pd.isna(value) else f"{value:g}"


def change_text(change: dict) -> str:
    """`13:05 air_cooler_1 temp_set 18→16.5` (labels where the catalog names the values)."""
    return (f"{change['changed_at']:%H:%M} {change['device']} {change['point']} "
            f"{_value_text(change['old_value'], change['old_label'])}→"
            f"{_value_text(change['new_value'], change['new_label'])}")


def as_markdown(hits: pd.DataFrame) -> str:
    """One row per hit; the context as compact text (readings as `--where` names them)."""
    shown = hits.drop(columns=["readings", "recent_changes"]).astype(object)
    shown = shown.where(hits.drop(columns=["readings", "recent_changes"]).notna(), "")
    shown["readings"] = [", ".join(f"{m}={v:g}" for m, v in r.items()) for r in hits["readings"]]
    shown["recent_changes"] = ["; ".join(change_text(c) for c in cs) for cs in hits["recent_changes"]]
    return shown.to_markdown(index=False, floatfmt=".4f")


def as_records(hits: pd.DataFrame) -> list[dict]:
    """JSON-ready: dates and times in ISO 8601, a missing batch or time as null."""

    def iso(value):
        return None if value is None or pd.isna(value) else value.isoformat()

    return [
        {
            "object_key": hit.object_key,
            "room": hit.room,
            "day": iso(hit.day),
            "captured_at": iso(hit.captured_at),
            "distance": float(hit.distance),
            "batch": None if pd.isna(hit.batch) else hit.batch,
            "growth_day": None if pd.isna(hit.growth_day) else int(hit.growth_day),
            "readings": {metric: float(value) for metric, value in hit.readings.items()},
            "recent_changes": [
                {**change, "changed_at": iso(change["changed_at"]),
                 "old_value": None if change["old_value"] is None or pd.isna(change["old_value"])
                 else float(change["old_value"]),
                 "new_value": None if change["new_value"] is None or pd.isna(change["new_value"])
                 else float(change["new_value"])}
                for change in hit.recent_changes
            ],
        }
        for hit in hits.itertuples(index=False)
    ]
