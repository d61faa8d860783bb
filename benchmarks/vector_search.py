"""Benchmark: nearest-image search through pgvector's HNSW index against the exact scan.

    .venv/bin/python benchmarks/vector_search.py [--vectors 100000] [--dim 512] [--clusters 1000]
                                                 [--queries 200] [--ef 40,64,100,200]

Vectors with cluster structure like CLIP embeddings (uniformly random vectors have no meaningful
neighbours): a mixture of Gaussians around `clusters` random unit centres, L2-normalized; the
queries are new draws from the same mixture. The table and index are those of
mushroom.image_embeddings (vector(dim), HNSW with vector_cosine_ops, defaults m=16,
ef_construction=64), queried through `mushroom_pipeline.images.search.nearest`.

Exact scan: the same query with index scans disabled. Reported: p50 / p95 latency per query and
recall@10 against the exact answer, for each hnsw.ef_search.

Filtered search, as `mushroom-pipeline search --room R --from A --to B --where
"humidity_pct>=90"` runs it (`--filtered-ef`; `--skip-unfiltered` for this part alone): the
images spread over `--rooms` rooms and `--days` days at random times of day, a synthetic
mushroom.env_readings of humidity every 5 minutes per room (a slow wave around 90 % RH plus
noise, so about half the images pass) with the warehouse's index (measured_at). Each query: a
random room, a random 30-day range, humidity ≥ 90 at capture time (the reading nearest within
±15 minutes). The exact answer is computed apart from SQL: the nearest reading per image with
pandas (merge_asof), the distances with numpy. The exact SQL (the same filters, the HNSW order
disabled) is timed beside it.
"""

import argparse
import re
import sys
import time

import numpy as np
import pandas as pd
from _common import RESOURCES
from dagster._core.storage.db_io_manager import TableSlice

from mushroom_pipeline.defs.vision.embeddings import EMBEDDING_INDEXES
from mushroom_pipeline.images.context import READINGS_TABLE
from mushroom_pipeline.images.search import Condition, nearest, register_vectors
from mushroom_pipeline.warehouse.frames import copy_frame
from mushroom_pipeline.warehouse.io_manager import replace_table_slice

MODEL = "bench/clustered"
READING_TYPES = {"room": "text", "metric": "text", "measured_at": "timestamptz",
                 "value": "double precision"}
FIRST_DAY = pd.Timestamp("2025-06-01")
READING_EVERY = pd.Timedelta(minutes=5)
RANGE_DAYS = 30


def mixture(count: int, dim: int, centres: np.ndarray, spread: float, rng) -> np.ndarray:
    picks = rng.integers(0, len(centres), count)
    points = centres[picks] + rng.normal(0, spread / np.sqrt(dim), (count, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def exact(conn, vector: np.ndarray, k: int) -> list[str]:
    conn.exec_driver_sql("SET LOCAL enable_indexscan = off")
    rows = register_vectors(conn).exec_driver_sql(
        "SELECT object_key FROM mushroom.image_embeddings WHERE model = %s "
        "ORDER BY embedding <=> %s::vector LIMIT %s",
        (MODEL, vector, k),
    )
    return [r[0] for r in rows]


def percentiles(times: list[float]) -> tuple[float, float]:
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm relative to a centre")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", default="40,64,100,200")
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--filtered-ef", default="100", help="hnsw.ef_search for the filtered part")
    parser.add_argument("--filtered-candidates", default="10",
                        help="rows the index scan gathers before the best 10 are kept")
    parser.add_argument("--skip-unfiltered", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(args.clusters, args.dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = mixture(args.vectors, args.dim, centres, args.spread, rng)
    queries = mixture(args.queries, args.dim, centres, args.spread, rng)
    days = rng.integers(0, args.days, args.vectors)
    captured = (FIRST_DAY.tz_localize("UTC") + pd.to_timedelta(days, unit="D")
                + pd.to_timedelta(rng.integers(0, 86_400, args.vectors), unit="s"))
    frame = pd.DataFrame({
        "day": (FIRST_DAY + pd.to_timedelta(days, unit="D")).date,
        "room": [str(601 + n) for n in rng.integers(0, args.rooms, args.vectors)],
        "object_key": [f"img/{n:07d}.jpg" for n in range(args.vectors)],
        "model": MODEL,
        "captured_at": captured,
        "embedding": list(vectors),
    })
    warehouse = RESOURCES["warehouse"]
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS mushroom CASCADE")
    began = time.perf_counter()
    replace_table_slice(warehouse, TableSlice(table="image_embeddings", schema="mushroom"),
                        frame, {"day": "date", "room": "text", "object_key": "text", "model": "text",
                                "captured_at": "timestamptz", "embedding": "vector"})
    loaded = time.perf_counter() - began
    with warehouse.begin() as conn:
        conn.exec_driver_sql("SET maintenance_work_mem = '2GB'")
        began = time.perf_counter()
        for statement in EMBEDDING_INDEXES:
            conn.exec_driver_sql(statement.format(table="mushroom.image_embeddings"))
        built = time.perf_counter() - began
        conn.exec_driver_sql("ANALYZE mushroom.image_embeddings")
    print(f"{args.vectors:,} vectors × {args.dim} in {args.clusters} clusters: binary COPY "
          f"{loaded:.1f} s, indexes (unique + HNSW m=16, ef_construction=64) {built:.1f} s")

    readings = humidity_readings(args.rooms, args.days, rng)
    with warehouse.begin() as conn:
        began = time.perf_counter()
        columns = ", ".join(f"{column} {kind}" for column, kind in READING_TYPES.items())
        conn.exec_driver_sql(f"CREATE TABLE {READINGS_TABLE} ({columns})")
        copy_frame(conn, READINGS_TABLE, readings, READING_TYPES)
        conn.exec_driver_sql(f"CREATE INDEX ON {READINGS_TABLE} (measured_at)")
        conn.exec_driver_sql(f"ANALYZE {READINGS_TABLE}")
    print(f"{len(readings):,} humidity readings ({args.rooms} rooms × {args.days} days, every "
          f"{READING_EVERY.seconds // 60} min) in {time.perf_counter() - began:.1f} s")
    if not args.skip_unfiltered:
        unfiltered(warehouse, queries, args)
    filtered(warehouse, frame, vectors, readings, queries, args, rng)
    print(f"\ncommand: python {' '.join(sys.argv)}")


def humidity_readings(rooms: int, days: int, rng) -> pd.DataFrame:
    """Every READING_EVERY per room: a wave of a few hours around 90 % RH, plus noise."""
    times = pd.date_range(FIRST_DAY.tz_localize("UTC"), periods=days * 288, freq=READING_EVERY)
    hours = (times - times[0]).total_seconds().to_numpy() / 3600
    frames = []
    for n in range(rooms):
        wave = 90 + 4 * np.sin(2 * np.pi * hours / (5 + n) + n) + rng.normal(0, 1.5, len(times))
        frames.append(pd.DataFrame({"room": str(601 + n), "metric": "humidity_pct",
                                    "measured_at": times, "value": wave.round(1)}))
    return pd.concat(frames, ignore_index=True)


def reading_at_capture(images: pd.DataFrame, readings: pd.DataFrame) -> np.ndarray:
    """Per image, the reading nearest its capture time within ±15 minutes (NaN without one)."""
    left = images[["room", "captured_at"]].reset_index().sort_values("captured_at")
    right = readings.sort_values("measured_at")
    merged = pd.merge_asof(left, right, left_on="captured_at", right_on="measured_at", by="room",
                           direction="nearest", tolerance=pd.Timedelta(minutes=15))
    return merged.sort_values("index")["value"].to_numpy()


def unfiltered(warehouse, queries: np.ndarray, args) -> None:
    truth, exact_times = [], []
    for query in queries:
        with warehouse.begin() as conn:
            began = time.perf_counter()
            truth.append(exact(conn, query, 10))
            exact_times.append(time.perf_counter() - began)
    p50_exact, p95_exact = percentiles(exact_times)
    print("\n| search | p50 ms | p95 ms | recall@10 | p50 vs exact |\n|---|---:|---:|---:|---:|")
    print(f"| exact scan (index off) | {p50_exact:.1f} | {p95_exact:.1f} | 1.000 | 1.00× |")
    for ef in [int(e) for e in args.ef.split(",")]:
        times, hits = [], 0
        for query, expected in zip(queries, truth):
            began = time.perf_counter()
            found = nearest(warehouse, query, MODEL, limit=10, ef_search=ef)
            times.append(time.perf_counter() - began)
            hits += len(set(found["object_key"]) & set(expected))
        p50, p95 = percentiles(times)
        print(f"| HNSW, ef_search={ef} | {p50:.1f} | {p95:.1f} | {hits / (10 * len(queries)):.3f} "
              f"| {p50 / p50_exact:.2f}× |")


EXACT_FILTERED_SQL = f"""
SELECT e.object_key FROM mushroom.image_embeddings e
WHERE e.model = %(model)s AND e.room = %(room)s AND e.day BETWEEN %(first)s AND %(last)s
  AND EXISTS (SELECT 1 FROM (
      SELECT r.value FROM {READINGS_TABLE} r
      WHERE r.room = e.room AND r.metric = 'humidity_pct'
        AND r.measured_at BETWEEN e.captured_at - interval '15 minutes'
                              AND e.captured_at + interval '15 minutes'
      ORDER BY abs(extract(epoch FROM r.measured_at - e.captured_at)) LIMIT 1) n
    WHERE n.value >= 90)
ORDER BY (e.embedding <=> %(vector)s::vector) + 0  -- an expression: no HNSW order
LIMIT 10
"""


def filtered(warehouse, frame: pd.DataFrame, vectors: np.ndarray, readings: pd.DataFrame,
             queries: np.ndarray, args, rng) -> None:
    humid = reading_at_capture(frame, readings) >= 90  # NaN: False
    day_index = (pd.to_datetime(frame["day"]) - FIRST_DAY).dt.days.to_numpy()
    rooms = frame["room"].to_numpy()
    asks = []
    for query in queries:
        room = str(601 + rng.integers(0, args.rooms))
        first = int(rng.integers(0, args.days - RANGE_DAYS + 1))
        passing = np.flatnonzero((rooms == room) & (day_index >= first)
                                 & (day_index < first + RANGE_DAYS) & humid)
        distance = 1 - vectors[passing] @ query
        order = np.argsort(distance, kind="stable")[:10]
        day = (FIRST_DAY + pd.Timedelta(days=first)).date()
        asks.append((query, room, day.isoformat(),
                     (day + pd.Timedelta(days=RANGE_DAYS - 1)).isoformat(),
                     {frame["object_key"][i] for i in passing[order]}, len(passing),
                     float(distance[order].mean()), float(distance[order[-1]])))
    print(f"\nfiltered: room (1 of {args.rooms}) + {RANGE_DAYS} days of {args.days} + "
          f"humidity_pct>=90 at capture time ({humid.mean():.0%} of the images): "
          f"median {int(np.median([a[5] for a in asks])):,} images pass, of {len(frame):,}; "
          f"the exact 10th filtered neighbour at cosine distance "
          f"{np.median([a[7] for a in asks]):.3f} (median; an unrelated image is at about 1)")
    exact_times, agree = [], 0
    for query, room, first, last, expected, *_ in asks:
        with warehouse.begin() as conn:
            began = time.perf_counter()
            rows = register_vectors(conn).exec_driver_sql(EXACT_FILTERED_SQL, {
                "model": MODEL, "room": room, "first": first, "last": last, "vector": query})
            found = {r[0] for r in rows}
            exact_times.append(time.perf_counter() - began)
        agree += len(found & expected)
    p50_exact, p95_exact = percentiles(exact_times)
    print("\nrecall@10 against the numpy answer (the exact SQL's recall checks that answer)")
    print("\n| filtered search | p50 ms | p95 ms | recall@10 | p50 vs exact | mean distance − exact's |"
          "\n|---|---:|---:|---:|---:|---:|")
    print(f"| exact SQL (HNSW order off) | {p50_exact:.1f} | {p95_exact:.1f} | "
          f"{agree / (10 * len(asks)):.3f} | 1.00× | 0 |")
    where = [Condition("humidity_pct", ">=", 90)]
    settings = [(int(e), int(c)) for e in args.filtered_ef.split(",")
                for c in args.filtered_candidates.split(",")]
    for ef, candidates in settings:
        times, hits, worst, excess = [], 0, 1.0, []
        for query, room, first, last, expected, _, mean_distance, _ in asks:
            began = time.perf_counter()
            found = nearest(warehouse, query, MODEL, room=room, day_from=first, day_to=last,
                            where=where, limit=10, ef_search=ef, candidates=candidates)
            times.append(time.perf_counter() - began)
            hits += len(set(found["object_key"]) & expected)
            worst = min(worst, len(set(found["object_key"]) & expected) / 10)
            excess.append(found["distance"].mean() - mean_distance)
        p50, p95 = percentiles(times)
        gathered = f", {candidates} gathered" if candidates != 10 else ""
        print(f"| HNSW iterative scan, ef_search={ef}{gathered} | {p50:.1f} | {p95:.1f} | "
              f"{hits / (10 * len(asks)):.3f} (worst query {worst:.1f}) | {p50 / p50_exact:.2f}× "
              f"| {np.mean(excess):.4f} |")
    query, room, first, last, *_ = asks[0]
    print("\nplan of one filtered query (EXPLAIN ANALYZE, ef_search=100):")
    print(explain(warehouse, query, room, first, last))


def explain(warehouse, query, room, first, last) -> str:
    """The plan of the statement `nearest` sends, captured as it goes out."""
    import sqlalchemy as sa

    sent = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "WITH hits" in statement:
            sent.append((statement, parameters))

    engine = warehouse.get_engine()
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        nearest(warehouse, query, MODEL, room=room, day_from=first, day_to=last,
                where=[Condition("humidity_pct", ">=", 90)], limit=10)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = sent[0]
    with warehouse.begin() as conn:
        register_vectors(conn)
        conn.exec_driver_sql("SET LOCAL hnsw.ef_search = 100")
        conn.exec_driver_sql("SET LOCAL hnsw.iterative_scan = relaxed_order")
        rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF) " + statement, parameters)
        return "\n".join("    " + re.sub(r"'\[[^']*\]'", "'[…]'", r[0]) for r in rows)


if __name__ == "__main__":
    main()
