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
"""

import argparse
import sys
import time

import numpy as np
import pandas as pd
from _common import RESOURCES
from dagster._core.storage.db_io_manager import TableSlice

from mushroom_pipeline.defs.vision.embeddings import EMBEDDING_INDEXES
from mushroom_pipeline.images.search import nearest, register_vectors
from mushroom_pipeline.warehouse.io_manager import replace_table_slice

MODEL = "bench/clustered"


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
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(args.clusters, args.dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = mixture(args.vectors, args.dim, centres, args.spread, rng)
    queries = mixture(args.queries, args.dim, centres, args.spread, rng)
    frame = pd.DataFrame({
        "day": pd.Timestamp("2025-06-01").date(),
        "room": [str(601 + n % 4) for n in range(args.vectors)],
        "object_key": [f"img/{n:07d}.jpg" for n in range(args.vectors)],
        "model": MODEL,
        "captured_at": pd.Timestamp("2025-06-01 12:00", tz="UTC"),
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
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
