"""Benchmark: the project's binary COPY (image_embeddings chunks) against psycopg 3's floor.

    .venv/bin/python benchmarks/binary_copy.py [--rows 20000] [--dim 512] [--repeats 3]

A frame shaped like a chunk of image_embeddings (all of EMBEDDINGS_SCHEMA: date, texts,
timestamptz, two float32 vectors of `dim`, integers, a description and missing_since all NULL),
loaded into the same UNLOGGED table, emptied before each load, both ways on the same server in
the same run, alternating:

(a) `copy_frame_binary` (warehouse/frames.py): the frame turned into Python values column by
    column, then psycopg 3's `cursor.copy(… FORMAT binary)` with `set_types` and `write_row`,
    vectors dumped by pgvector-python's adapter; from the frame to the committed rows.
(b) the floor: the same COPY fed rows of Python values built before the clock starts (the
    least psycopg 3 can do with these rows).

Reported: median seconds, rows/s, and the ratio; both load the same rows (count + md5).
The hand-encoded COPY over psycopg2 this replaced (59 lines: `BINARY_HEADER`, `_binary_fields`,
a `struct` per field) was measured by the same script against (b) before it was removed:
psycopg 3's COPY gave 1.03-1.71x its rows/s over five runs (benchmarks/README.md).
"""

import argparse
import datetime as dt
import statistics
import sys
import time

import numpy as np
import pandas as pd
from _common import RESOURCES

from mushroom_pipeline.defs.vision.embeddings import EMBEDDINGS_SCHEMA
from mushroom_pipeline.warehouse.frames import (
    copy_frame_binary,
    driver_cursor,
    register_vectors,
)
from mushroom_pipeline.warehouse.sql import quote_ident
from mushroom_pipeline.warehouse.tables import column_types

TABLE = "bench_binary_copy"


def chunk(rows: int, dim: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)

    def vectors():
        values = rng.normal(size=(rows, dim)).astype(np.float32)
        return list(values / np.linalg.norm(values, axis=1, keepdims=True))

    captured = pd.Timestamp("2025-06-01 06:00", tz="UTC") + pd.to_timedelta(np.arange(rows), unit="s")
    return pd.DataFrame({
        "day": dt.date(2025, 6, 1),
        "room": [str(601 + n % 4) for n in range(rows)],
        "object_key": [f"{601 + n % 4}/20250601/cam_{n:07d}.jpg" for n in range(rows)],
        "etag": [f"{n:032x}" for n in range(rows)],
        "model": "ViT-B-32/laion2b_s34b_b79k",
        "captured_at": captured,
        "embedding": vectors(),
        "context": [f"Mushroom growing room {601 + n % 4}, growth day {n % 20}, at 2025-06-01 "
                    f"{n % 24:02d}:00: humidity 91.0 %, temperature 17.5 °C, CO2 1200 ppm."
                    for n in range(rows)],
        "description": None,
        "describer": None,
        "fused_embedding": vectors(),
        "width": 1920,
        "height": 1080,
        "source_mode": "RGB",
        "embedded_at": pd.Timestamp("2025-06-02 01:00", tz="UTC"),
        "missing_since": pd.Series(pd.NaT, index=range(rows), dtype="datetime64[us, UTC]"),
    })


def python_rows(frame: pd.DataFrame) -> list[tuple]:
    """Rows of Python values, None for NULL, as psycopg 3 dumps them: the floor's input."""
    columns = []
    for name in frame.columns:
        column = frame[name]
        if column.dtype == object:
            columns.append(column.tolist())  # texts, dates, vectors, None
        else:
            values = column.astype(object)
            columns.append(values.where(column.notna(), None).tolist())
    return list(zip(*columns))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warehouse = RESOURCES["warehouse"]
    types = {**column_types(EMBEDDINGS_SCHEMA), "embedding": f"vector({args.dim})",
             "fused_embedding": f"vector({args.dim})"}
    frame = chunk(args.rows, args.dim)
    with warehouse.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
        conn.exec_driver_sql(f"CREATE UNLOGGED TABLE {TABLE} "
                             f"({', '.join(f'{quote_ident(c)} {t}' for c, t in types.items())})")
    columns = ", ".join(quote_ident(c) for c in frame.columns)
    rows = python_rows(frame)

    def ours():
        with warehouse.begin() as conn:
            copy_frame_binary(conn, TABLE, frame, types)

    def floor():
        with warehouse.begin() as conn, driver_cursor(register_vectors(conn)).copy(
                f"COPY {TABLE} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([t.split("(")[0] for t in types.values()])
            for row in rows:
                copy.write_row(row)

    def loaded() -> str:
        """The table's contents as one digest, to check that both load the same rows."""
        with warehouse.begin() as conn:
            return conn.exec_driver_sql(
                f"SELECT count(*) || ' ' || md5(string_agg(t::text, '' ORDER BY object_key)) FROM {TABLE} t"
            ).scalar()

    times, digests = {ours: [], floor: []}, {}
    for _ in range(args.repeats):
        for load in (floor, ours):
            with warehouse.begin() as conn:
                conn.exec_driver_sql(f"TRUNCATE {TABLE}")
            began = time.perf_counter()
            load()
            times[load].append(time.perf_counter() - began)
            digests[load] = loaded()
    with warehouse.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {TABLE}")
    assert digests[ours] == digests[floor] and digests[ours].startswith(f"{args.rows} "), digests

    seconds = {load: statistics.median(t) for load, t in times.items()}
    print(f"{args.rows:,} rows, {len(types)} columns, two vector({args.dim}); median of "
          f"{args.repeats}; same rows loaded both ways (count + md5 of the table)")
    print("\n| binary COPY | seconds | rows/s | each run, s |\n|---|---:|---:|---|")
    for label, load in (("floor: psycopg 3 write_row, rows built beforehand", floor),
                        ("copy_frame_binary, from the frame", ours)):
        print(f"| {label} | {seconds[load]:.2f} | {args.rows / seconds[load]:,.0f} | "
              f"{', '.join(f'{t:.2f}' for t in times[load])} |")
    print(f"| **ratio, copy_frame_binary / floor** | **{seconds[ours] / seconds[floor]:.2f}×** | | |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
