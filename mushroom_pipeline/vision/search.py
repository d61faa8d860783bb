"""Nearest images by cosine distance through the HNSW index of mushroom.image_embeddings."""

import numpy as np
import pandas as pd

from mushroom_pipeline.resources import PostgresResource

TABLE = "mushroom.image_embeddings"
# recall@10 ≥ 0.95 on 100 k clustered 512-d vectors at about half the exact scan's latency
# (benchmarks/search.py); pgvector's default of 40 gave less recall there.
EF_SEARCH = 100


def vector_literal(vector: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def nearest(
    warehouse: PostgresResource,
    vector: np.ndarray,
    model: str,
    *,
    room: str | None = None,
    day: str | None = None,
    other_days_than: str | None = None,
    limit: int = 10,
    ef_search: int = EF_SEARCH,
) -> pd.DataFrame:
    """The `limit` nearest images of `model` (key, room, day, captured_at, distance).

    Filters run inside the index scan: pgvector's iterative scan keeps walking the graph until
    `limit` rows pass them, so a filter never leaves the answer short.
    """
    filters, params = ["model = %(model)s"], {"model": model, "limit": limit}
    if room:
        filters.append("room = %(room)s")
        params["room"] = room
    if day:
        filters.append("day = %(day)s")
        params["day"] = day
    if other_days_than:
        filters.append("day <> %(other)s")
        params["other"] = other_days_than
    params["vector"] = vector_literal(vector)
    sql = f"""
        WITH hits AS MATERIALIZED (
            SELECT object_key, room, day, captured_at, embedding <=> %(vector)s::vector AS distance
            FROM {TABLE} WHERE {' AND '.join(filters)}
            ORDER BY embedding <=> %(vector)s::vector LIMIT %(limit)s
        )
        SELECT * FROM hits ORDER BY distance
    """
    with warehouse.begin() as conn:
        conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
        conn.exec_driver_sql("SET LOCAL hnsw.iterative_scan = relaxed_order")
        result = conn.exec_driver_sql(sql, params)
        return pd.DataFrame(result.all(), columns=list(result.keys()))


def stored_vector(warehouse: PostgresResource, object_key: str, model: str) -> tuple[np.ndarray, str]:
    """An embedded image's vector and day, for "similar historical cases"."""
    with warehouse.begin() as conn:
        row = conn.exec_driver_sql(
            f"SELECT embedding::text, day FROM {TABLE} WHERE object_key = %s AND model = %s",
            (object_key, model),
        ).first()
    if row is None:
        raise LookupError(f"{object_key} has no embedding by {model}: materialize its day first")
    return np.array(row[0][1:-1].split(","), dtype=np.float32), row[1].isoformat()
