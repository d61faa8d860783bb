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
disabled) is timed beside it. Each filtered search runs through `nearest` twice: the composite
strategy (an exact scan when at most EXACT_SCAN_MAX_ROWS rows pass room and days, or each of
`--exact-max-rows`) and the HNSW iterative scan alone (`exact_max_rows=0`, the search before).

`--no-where`: room and days only (issue 13's case). `--sweep-days 1,3,7,30`: per day range, both
paths forced, to place EXACT_SCAN_MAX_ROWS. `--partial-room`: a partial HNSW index on one room
and that room's searches through it. `--storage main`: the vectors kept in the heap, not TOAST.
`--without-room-buckets`: last, a day's write with and without the room buckets' partial HNSW
indexes, then the same asks through the full index alone.
"""

import argparse
import re
import sys
import time

import numpy as np
import pandas as pd
from _common import RESOURCES
from dagster._core.storage.db_io_manager import TableSlice

from mushroom_pipeline.defs.vision.embeddings import EMBEDDING_INDEXES, ROOM_BUCKETS
from mushroom_pipeline.images.context import READINGS_TABLE
from mushroom_pipeline.images.search import (
    EXACT_SCAN_MAX_ROWS,
    Condition,
    nearest,
)
from mushroom_pipeline.warehouse.frames import (
    copy_frame,
    copy_frame_binary,
    register_vectors,
)
from mushroom_pipeline.warehouse.io_manager import replace_table_slice

MODEL = "bench/clustered"
READING_TYPES = {"room": "text", "metric": "text", "measured_at": "timestamptz",
                 "value": "double precision"}
FIRST_DAY = pd.Timestamp("2025-06-01")
READING_EVERY = pd.Timedelta(minutes=5)
RANGE_DAYS = 30
EMBEDDING_TYPES = {"day": "date", "room": "text", "object_key": "text", "model": "text",
                   "captured_at": "timestamptz", "embedding": "vector"}


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
    parser.add_argument("--no-where", action="store_true",
                        help="filtered part: room and 30 days only, no humidity condition")
    parser.add_argument("--range-days", type=int, default=RANGE_DAYS,
                        help="the filtered part's day range")
    parser.add_argument("--storage", choices=["default", "main", "external"], default="default",
                        help="the embedding column's storage (pgvector's default: external, "
                             "out of line in TOAST for a 512-d row)")
    parser.add_argument("--exact-max-rows", default="",
                        help="comma-separated thresholds to compare in place of EXACT_SCAN_MAX_ROWS")
    parser.add_argument("--partial-room", action="store_true",
                        help="filtered part: also a partial HNSW index on one room (WHERE room = "
                             "'601'), and that room's asks through it")
    parser.add_argument("--without-room-buckets", action="store_true",
                        help="filtered part, last: a day's write with and without the room "
                             "buckets' partial indexes, and the asks through the full index alone")
    parser.add_argument("--sweep-days", default="",
                        help="comma-separated day ranges (1,3,7,30): per range, the exact scan "
                             "and the HNSW scan forced, to place EXACT_SCAN_MAX_ROWS")
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
                        frame, EMBEDDING_TYPES)
    if args.storage != "default":  # the vectors rewritten under another storage
        with warehouse.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE mushroom.rewritten (LIKE mushroom.image_embeddings)")
            conn.exec_driver_sql("ALTER TABLE mushroom.rewritten ALTER COLUMN embedding "
                                 f"SET STORAGE {args.storage.upper()}")
            conn.exec_driver_sql("INSERT INTO mushroom.rewritten SELECT * FROM mushroom.image_embeddings")
            conn.exec_driver_sql("DROP TABLE mushroom.image_embeddings")
            conn.exec_driver_sql("ALTER TABLE mushroom.rewritten RENAME TO image_embeddings")
    loaded = time.perf_counter() - began
    with warehouse.begin() as conn:
        toast = conn.exec_driver_sql(
            "SELECT pg_size_pretty(pg_relation_size(reltoastrelid)), "
            "pg_size_pretty(pg_relation_size(oid)) FROM pg_class "
            "WHERE oid = 'mushroom.image_embeddings'::regclass").one()
    print(f"storage of embedding: {args.storage}; heap {toast[1]}, TOAST {toast[0]}")
    built = {}
    with warehouse.begin() as conn:
        conn.exec_driver_sql("SET maintenance_work_mem = '2GB'")
        for statement in EMBEDDING_INDEXES:
            began = time.perf_counter()
            conn.exec_driver_sql(statement.format(table="mushroom.image_embeddings"))
            kind = ("room buckets" if "room_bucket" in statement else "HNSW" if "hnsw" in statement
                    else "unique" if "UNIQUE" in statement else "btree")
            built[kind] = built.get(kind, 0.0) + time.perf_counter() - began
        conn.exec_driver_sql("ANALYZE mushroom.image_embeddings")
    print(f"{args.vectors:,} vectors × {args.dim} in {args.clusters} clusters: binary COPY "
          f"{loaded:.1f} s; index builds: HNSW (m=16, ef_construction=64) {built['HNSW']:.1f} s, "
          f"{ROOM_BUCKETS} room buckets' partial HNSW {built['room buckets']:.1f} s, "
          f"unique {built['unique']:.1f} s, (model, room, day) {built['btree']:.1f} s")

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
    humid = np.ones(len(frame), bool) if args.no_where else reading_at_capture(frame, readings) >= 90
    if args.sweep_days:
        sweep(warehouse, frame, vectors, humid, queries, args, rng)
    # --without-room-buckets: 3 days of new images after the last, drawn apart (the asks stay)
    fresh = np.random.default_rng(11)
    per_day = args.vectors // args.days
    new_days = [pd.DataFrame({
        "day": (FIRST_DAY + pd.Timedelta(days=args.days + n)).date(),
        "room": [str(601 + r) for r in fresh.integers(0, args.rooms, per_day)],
        "object_key": [f"new/{n}/{k:06d}.jpg" for k in range(per_day)],
        "model": MODEL,
        "captured_at": FIRST_DAY.tz_localize("UTC") + pd.Timedelta(days=args.days + n, hours=12),
        "embedding": list(mixture(per_day, args.dim, centres, args.spread, fresh)),
    }) for n in range(3)] if args.without_room_buckets else []
    filtered(warehouse, frame, vectors, humid, queries, args, rng, new_days)
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
            found = nearest(warehouse, query, MODEL, limit=10, ef_search=ef,
                            exact_max_rows=HNSW_ONLY)  # the index, even on a small table
            times.append(time.perf_counter() - began)
            hits += len(set(found["object_key"]) & set(expected))
        p50, p95 = percentiles(times)
        print(f"| HNSW, ef_search={ef} | {p50:.1f} | {p95:.1f} | {hits / (10 * len(queries)):.3f} "
              f"| {p50 / p50_exact:.2f}× |")


EXACT_FILTERED_SQL = """
SELECT e.object_key FROM mushroom.image_embeddings e
WHERE e.model = %(model)s AND e.room = %(room)s AND e.day BETWEEN %(first)s AND %(last)s
  {where}
ORDER BY (e.embedding <=> %(vector)s::vector) + 0  -- an expression: no HNSW order
LIMIT 10
"""
HUMIDITY_SQL = f"""AND EXISTS (SELECT 1 FROM (
      SELECT r.value FROM {READINGS_TABLE} r
      WHERE r.room = e.room AND r.metric = 'humidity_pct'
        AND r.measured_at BETWEEN e.captured_at - interval '15 minutes'
                              AND e.captured_at + interval '15 minutes'
      ORDER BY abs(extract(epoch FROM r.measured_at - e.captured_at)) LIMIT 1) n
    WHERE n.value >= 90)"""
HNSW_ONLY = 0  # nearest(exact_max_rows=0): never the exact path (the search before the composite)
EXACT_ONLY = 10**9  # nearest(exact_max_rows=…): always the exact path


def filter_asks(frame: pd.DataFrame, vectors: np.ndarray, humid: np.ndarray, queries: np.ndarray,
                range_days: int, args, rng) -> list[tuple]:
    """Per query: a random room and `range_days` days, with numpy's exact filtered top 10."""
    day_index = (pd.to_datetime(frame["day"]) - FIRST_DAY).dt.days.to_numpy()
    rooms = frame["room"].to_numpy()
    asks = []
    for query in queries:
        room = str(601 + rng.integers(0, args.rooms))
        first = int(rng.integers(0, args.days - range_days + 1))
        cheap = (rooms == room) & (day_index >= first) & (day_index < first + range_days)
        passing = np.flatnonzero(cheap & humid)
        distance = 1 - vectors[passing] @ query
        order = np.argsort(distance, kind="stable")[:10]
        day = (FIRST_DAY + pd.Timedelta(days=first)).date()
        asks.append((query, room, day.isoformat(),
                     (day + pd.Timedelta(days=range_days - 1)).isoformat(),
                     {frame["object_key"][i] for i in passing[order]}, len(passing),
                     float(distance[order].mean()), float(distance[order[-1]]), int(cheap.sum())))
    return asks


def run_nearest(warehouse, asks, args, **settings) -> dict:
    """p50/p95 ms, recall@10 (and the worst query's), the distance excess and the strategies
    `nearest` took, over the asks."""
    where = [] if args.no_where else [Condition("humidity_pct", ">=", 90)]
    times, hits, worst, excess, strategies = [], 0, 1.0, [], {}
    for query, room, first, last, expected, _, mean_distance, *_ in asks:
        began = time.perf_counter()
        found = nearest(warehouse, query, MODEL, room=room, day_from=first, day_to=last,
                        where=where, limit=10, **settings)
        times.append(time.perf_counter() - began)
        hits += len(set(found["object_key"]) & expected)
        worst = min(worst, len(set(found["object_key"]) & expected) / max(len(expected), 1))
        excess.append(found["distance"].mean() - mean_distance)
        strategies[found.attrs["strategy"]] = strategies.get(found.attrs["strategy"], 0) + 1
    p50, p95 = percentiles(times)
    return {"p50": p50, "p95": p95, "recall": hits / sum(len(a[4]) for a in asks), "worst": worst,
            "excess": float(np.mean(excess)), "strategies": strategies}


def sweep(warehouse, frame, vectors, humid, queries, args, rng) -> None:
    """Per day range: how many rows the cheap filters leave, and the exact path against the
    HNSW path, each forced: where the exact scan stops paying is EXACT_SCAN_MAX_ROWS."""
    print("\nthreshold sweep: room + N days, each path forced (recall@10 against numpy)\n"
          "\n| days | rows passing room + days (median) | exact path p50 / p95 ms | "
          "HNSW path p50 / p95 ms | HNSW recall@10 (worst) |\n|---:|---:|---:|---:|---:|")
    for days in [int(d) for d in args.sweep_days.split(",")]:
        asks = filter_asks(frame, vectors, humid, queries, days, args, rng)
        exact_path = run_nearest(warehouse, asks, args, exact_max_rows=EXACT_ONLY)
        hnsw_path = run_nearest(warehouse, asks, args, exact_max_rows=HNSW_ONLY)
        assert exact_path["recall"] == 1.0, exact_path
        print(f"| {days} | {int(np.median([a[8] for a in asks])):,} | {exact_path['p50']:.1f} / "
              f"{exact_path['p95']:.1f} | {hnsw_path['p50']:.1f} / {hnsw_path['p95']:.1f} | "
              f"{hnsw_path['recall']:.3f} ({hnsw_path['worst']:.1f}) |", flush=True)


def filtered(warehouse, frame: pd.DataFrame, vectors: np.ndarray, humid: np.ndarray,
             queries: np.ndarray, args, rng, new_days: list) -> None:
    asks = filter_asks(frame, vectors, humid, queries, args.range_days, args, rng)
    condition = "" if args.no_where else (
        f" + humidity_pct>=90 at capture time ({humid.mean():.0%} of the images)")
    print(f"\nfiltered: room (1 of {args.rooms}) + {args.range_days} days of {args.days}{condition}: "
          f"median {int(np.median([a[5] for a in asks])):,} images pass, of {len(frame):,} "
          f"({int(np.median([a[8] for a in asks])):,} pass room + days); "
          f"the exact 10th filtered neighbour at cosine distance "
          f"{np.median([a[7] for a in asks]):.3f} (median; an unrelated image is at about 1)")
    exact_times, agree = [], 0
    sql = EXACT_FILTERED_SQL.format(where="" if args.no_where else HUMIDITY_SQL)
    for query, room, first, last, expected, *_ in asks:
        with warehouse.begin() as conn:
            began = time.perf_counter()
            rows = register_vectors(conn).exec_driver_sql(sql, {
                "model": MODEL, "room": room, "first": first, "last": last, "vector": query})
            found = {r[0] for r in rows}
            exact_times.append(time.perf_counter() - began)
        agree += len(found & expected)
    p50_exact, p95_exact = percentiles(exact_times)
    trivial = []
    for _ in range(50):
        began = time.perf_counter()
        with warehouse.begin() as conn:
            conn.exec_driver_sql("SELECT 1").scalar()
        trivial.append(time.perf_counter() - began)
    print(f"\none transaction of SELECT 1 through the warehouse resource: p50 "
          f"{percentiles(trivial)[0]:.1f} ms (the floor of every search's latency)")
    print("\nrecall@10 against the numpy answer (the exact SQL's recall checks that answer)")
    print("\n| filtered search | p50 ms | p95 ms | recall@10 | p50 vs exact | mean distance − exact's |"
          "\n|---|---:|---:|---:|---:|---:|")
    print(f"| exact SQL (HNSW order off, filters in the WHERE) | {p50_exact:.1f} | {p95_exact:.1f} | "
          f"{agree / sum(len(a[4]) for a in asks):.3f} | 1.00× | 0 |")
    settings = [(int(e), int(c)) for e in args.filtered_ef.split(",")
                for c in args.filtered_candidates.split(",")]
    for ef, candidates in settings:
        gathered = f", {candidates} gathered" if candidates != 10 else ""
        bounds = [int(b) for b in args.exact_max_rows.split(",")] if args.exact_max_rows else [None]
        for label, bound in [(f"composite (EXACT_SCAN_MAX_ROWS={EXACT_SCAN_MAX_ROWS:,})"
                              if b is None else f"composite, exact up to {b:,} rows", b)
                             for b in bounds] + [("HNSW iterative scan alone", HNSW_ONLY)]:
            r = run_nearest(warehouse, asks, args, ef_search=ef, candidates=candidates,
                            exact_max_rows=bound)
            print_row(f"{label}, ef_search={ef}{gathered}", r, p50_exact)
    query, room, first, last, *_ = asks[0]
    for label, bound in (("composite", None), ("HNSW alone", HNSW_ONLY)):
        print(f"\nplan of one filtered query, {label} (EXPLAIN ANALYZE, ef_search=100):")
        print(explain(warehouse, query, room, first, last, args, bound))
    if args.without_room_buckets:
        without_room_buckets(warehouse, asks, args, p50_exact, new_days)
    if args.partial_room:
        partial_room(warehouse, frame, vectors, humid, queries, args, rng)


def without_room_buckets(warehouse, asks, args, p50_exact: float, new_days: list) -> None:
    """What the room buckets' partial indexes cost a day's write and give the filtered search:
    a day of new images (new vectors of the same mixture) inserted with them, another without
    them, and the same asks through the full index alone (the search before the buckets)."""
    written = {}
    # the first write warms the pages the later ones read: it is timed, not compared
    for label, day in zip(("first", "with", "without"), new_days):
        if label == "without":
            with warehouse.begin() as conn:
                for bucket in range(ROOM_BUCKETS):
                    conn.exec_driver_sql(f"DROP INDEX mushroom.image_embeddings_room_bucket_{bucket}")
                conn.exec_driver_sql("ANALYZE mushroom.image_embeddings")
        with warehouse.begin() as conn:
            began = time.perf_counter()
            copy_frame_binary(conn, "mushroom.image_embeddings", day, EMBEDDING_TYPES)
            written[label] = (len(day), time.perf_counter() - began)
    print(f"\na day's write ({written['with'][0]:,} new images, binary COPY, after a first day of "
          f"{written['first'][1]:.2f} s): with the room buckets {written['with'][1]:.2f} s, "
          f"full index only {written['without'][1]:.2f} s")
    print("\nthe same asks, the full HNSW index only (the room buckets dropped):\n"
          "\n| filtered search | p50 ms | p95 ms | recall@10 | p50 vs exact | distance excess |"
          "\n|---|---:|---:|---:|---:|---:|")
    for ef in [int(e) for e in args.filtered_ef.split(",")]:
        for label, bound in (("composite", None), ("HNSW iterative scan alone", HNSW_ONLY)):
            r = run_nearest(warehouse, asks, args, ef_search=ef, exact_max_rows=bound)
            print_row(f"{label}, full index only, ef_search={ef}", r, p50_exact)


def print_row(label: str, r: dict, p50_exact: float) -> None:
    """One filtered search's row: the paths `nearest` took, latency, recall, the excess."""
    paths = ", ".join(f"{n} {k}" for k, n in sorted(r["strategies"].items()))
    print(f"| {label} [{paths}] | {r['p50']:.1f} | {r['p95']:.1f} | {r['recall']:.3f} "
          f"(worst query {r['worst']:.1f}) | {r['p50'] / p50_exact:.2f}× | {r['excess']:.4f} |",
          flush=True)


def partial_room(warehouse, frame, vectors, humid, queries, args, rng) -> None:
    """One room's own HNSW index (a partial index, WHERE room = '601'): its asks walk a graph
    of that room's images only, so the day range is the only filter left in the walk."""
    with warehouse.begin() as conn:
        conn.exec_driver_sql("SET maintenance_work_mem = '2GB'")
        began = time.perf_counter()
        conn.exec_driver_sql("CREATE INDEX image_embeddings_room_601 ON mushroom.image_embeddings "
                             "USING hnsw (embedding vector_cosine_ops) WHERE room = '601'")
        built = time.perf_counter() - began
        conn.exec_driver_sql("ANALYZE mushroom.image_embeddings")
    asks = [a for a in filter_asks(frame, vectors, humid, queries, args.range_days, args, rng)]
    asks = [(a[0], "601", *a[2:]) for a in asks]  # the same ranges, room 601
    asks = filter_asks_for_room(frame, vectors, humid, asks, args)
    print(f"\npartial HNSW index on room 601 ({(frame['room'] == '601').sum():,} images, built in "
          f"{built:.1f} s), room 601 + {args.range_days} days, HNSW alone:")
    print("\n| filtered search | p50 ms | p95 ms | recall@10 | distance excess |\n|---|---:|---:|---:|---:|")
    for ef in [int(e) for e in args.filtered_ef.split(",")]:
        r = run_nearest(warehouse, asks, args, ef_search=ef, exact_max_rows=HNSW_ONLY)
        print(f"| partial index, ef_search={ef} | {r['p50']:.1f} | {r['p95']:.1f} | "
              f"{r['recall']:.3f} (worst query {r['worst']:.1f}) | {r['excess']:.4f} |", flush=True)
    query, room, first, last, *_ = asks[0]
    print(explain(warehouse, query, room, first, last, args, HNSW_ONLY))
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DROP INDEX mushroom.image_embeddings_room_601")


def filter_asks_for_room(frame, vectors, humid, asks, args) -> list[tuple]:
    """The asks' exact answers again, for the room now in them."""
    day_index = (pd.to_datetime(frame["day"]) - FIRST_DAY).dt.days.to_numpy()
    rooms = frame["room"].to_numpy()
    redone = []
    for query, room, first, last, *_ in asks:
        start = (pd.Timestamp(first) - FIRST_DAY).days
        cheap = (rooms == room) & (day_index >= start) & (day_index < start + args.range_days)
        passing = np.flatnonzero(cheap & humid)
        distance = 1 - vectors[passing] @ query
        order = np.argsort(distance, kind="stable")[:10]
        redone.append((query, room, first, last, {frame["object_key"][i] for i in passing[order]},
                       len(passing), float(distance[order].mean()), float(distance[order[-1]]),
                       int(cheap.sum())))
    return redone


def explain(warehouse, query, room, first, last, args, bound) -> str:
    """The plan of the statement `nearest` sends, captured as it goes out."""
    import sqlalchemy as sa

    sent = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "WITH hits" in statement:
            sent.append((statement, parameters))

    engine = warehouse.get_engine()
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        strategy = nearest(warehouse, query, MODEL, room=room, day_from=first, day_to=last,
                           where=[] if args.no_where else [Condition("humidity_pct", ">=", 90)],
                           limit=10, exact_max_rows=bound).attrs["strategy"]
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = sent[-1]
    with warehouse.begin() as conn:
        register_vectors(conn)
        if strategy == "exact":
            conn.exec_driver_sql("SET LOCAL enable_indexscan = off")
        else:
            conn.exec_driver_sql("SET LOCAL hnsw.ef_search = 100")
            conn.exec_driver_sql("SET LOCAL hnsw.iterative_scan = relaxed_order")
        rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF) " + statement, parameters)
        return "\n".join("    " + re.sub(r"'\[[^']*\]'", "'[…]'", r[0]) for r in rows)


if __name__ == "__main__":
    main()
