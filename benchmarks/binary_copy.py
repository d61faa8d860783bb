"""Benchmark: our hand-encoded binary COPY against psycopg 3's, for image_embeddings chunks.

    .venv/bin/python benchmarks/binary_copy.py [--rows 20000] [--dim 512] [--repeats 3]

A frame shaped like a chunk of image_embeddings (all of EMBEDDINGS_SCHEMA: date, texts,
timestamptz, two float32 vectors of `dim`, integers, a description and missing_since all NULL),
loaded into the same UNLOGGED table, emptied before each load, both ways on the same server in
the same run, alternating:

(a) `copy_frame_binary` (warehouse/frames.py) through psycopg2, the project's driver: the frame
    encoded column by column into COPY's binary format by hand, one `copy_expert`.
(b) psycopg 3: `cursor.copy("COPY … FROM STDIN (FORMAT BINARY)")` with `set_types` and
    `write_row` per row, vectors dumped by pgvector-python's psycopg 3 adapter
    (`register_vector`); the frame turned into rows of Python values (None for NULL) is timed too,
    as (a) times its encoding.

Each: from the frame to the committed rows. Reported: median seconds, rows/s, and the ratio.
Decision rule: psycopg 3's COPY would replace the hand-encoded one only if it is as fast or
faster. It is (1.03-1.71x the rows/s over five runs of 20,000 rows on a busy 2-core machine),
but it needs psycopg 3 as the driver (the project's is psycopg2): not taken, this only measures.
psycopg 3 is not a project dependency: `pip install "psycopg[binary]"` to run this.
"""

import argparse
import datetime as dt
import statistics
import sys
import time

import numpy as np
import pandas as pd
import psycopg
from _common import RESOURCES
from pgvector.psycopg import register_vector

from mushroom_pipeline.defs.vision.embeddings import EMBEDDINGS_SCHEMA
from mushroom_pipeline.warehouse.frames import copy_frame_binary
from mushroom_pipeline.warehouse.sql import quote_ident
from mushroom_pipeline.warehouse.tables import column_types

TABLE = "bench_binary_copy"
# COPY's binary format needs each column's exact type: psycopg 3's names for ours.
PSYCOPG_TYPES = {"integer": "int4", "bigint": "int8"}


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
    """Rows of Python values, None for NULL, as psycopg 3 dumps them."""
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
    url = warehouse.get_engine().url.set(drivername="postgresql").render_as_string(hide_password=False)
    pg3 = psycopg.connect(url, autocommit=True)  # transaction() then commits each load
    register_vector(pg3)
    columns = ", ".join(quote_ident(c) for c in frame.columns)
    pg3_types = [PSYCOPG_TYPES.get(t, t.split("(")[0]) for t in types.values()]

    def ours():
        with warehouse.begin() as conn:
            copy_frame_binary(conn, TABLE, frame, types)

    def psycopg3():
        with (pg3.transaction(), pg3.cursor() as cursor,
              cursor.copy(f"COPY {TABLE} ({columns}) FROM STDIN (FORMAT BINARY)") as copy):
            copy.set_types(pg3_types)
            for row in python_rows(frame):
                copy.write_row(row)

    def loaded() -> str:
        """The table's contents as one digest, to check that both load the same rows."""
        with warehouse.begin() as conn:
            return conn.exec_driver_sql(
                f"SELECT count(*) || ' ' || md5(string_agg(t::text, '' ORDER BY object_key)) FROM {TABLE} t"
            ).scalar()

    times, digests = {ours: [], psycopg3: []}, {}
    for _ in range(args.repeats):
        for load in (ours, psycopg3):
            with warehouse.begin() as conn:
                conn.exec_driver_sql(f"TRUNCATE {TABLE}")
            began = time.perf_counter()
            load()
            times[load].append(time.perf_counter() - began)
            digests[load] = loaded()
    pg3.close()
    with warehouse.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {TABLE}")
    assert digests[ours] == digests[psycopg3] and digests[ours].startswith(f"{args.rows} "), digests

    seconds = {load: statistics.median(t) for load, t in times.items()}
    print(f"{args.rows:,} rows, {len(types)} columns, two vector({args.dim}); median of "
          f"{args.repeats}; same rows loaded both ways (count + md5 of the table)")
    print("\n| binary COPY | seconds | rows/s | each run, s |\n|---|---:|---:|---|")
    for label, load in (("copy_frame_binary, psycopg2 (hand-encoded)", ours),
                        ("psycopg 3 copy.write_row + pgvector adapter", psycopg3)):
        print(f"| {label} | {seconds[load]:.2f} | {args.rows / seconds[load]:,.0f} | "
              f"{', '.join(f'{t:.2f}' for t in times[load])} |")
    print(f"| **rows/s ratio, psycopg 3 / copy_frame_binary** | "
          f"**{seconds[ours] / seconds[psycopg3]:.2f}×** | | |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
