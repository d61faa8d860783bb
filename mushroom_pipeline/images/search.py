"""Nearest images by cosine distance through the HNSW index of mushroom.image_embeddings."""

import numpy as np
import pandas as pd
import sqlalchemy as sa
from pgvector.psycopg2 import register_vector

from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.warehouse.sql import table_exists

TABLE = "mushroom.image_embeddings"
BATCHES_TABLE = "mushroom.room_batches"
# recall@10 ≥ 0.95 on 100 k clustered 512-d vectors at about half the exact scan's latency
# (benchmarks/search.py); pgvector's default of 40 gave less recall there.
EF_SEARCH = 100


def register_vectors(connection: sa.Connection) -> sa.Connection:
    """pgvector's psycopg2 adapter: numpy arrays go in as vectors, vectors come out as
    `pgvector.Vector`. Registering looks the type's oid up, so once per DBAPI connection (the
    pool keeps `info` with it); the parameter adapter is global in psycopg2 whatever the scope."""
    if "pgvector" not in connection.info:
        register_vector(connection.connection.dbapi_connection)
        connection.info["pgvector"] = True
    return connection


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
) -> pd.DataFrame:
    """The `limit` nearest images of `model` (key, room, day, captured_at, distance, and the
    batch and growth day of the image's room and day, from mushroom.room_batches).

    `growth_days` (first, last): only images whose room's batch was at a growth day in that
    range on their day, from any batch, past ones too.

    Filters run inside the index scan: pgvector's iterative scan keeps walking the graph until
    `limit` rows pass them. It stops after hnsw.max_scan_tuples, so a filter that few images
    pass can still leave the answer short: then an exact scan of the filtered rows answers.
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
    if growth_days:
        filters.append(
            f"(room, day) IN (SELECT room, day FROM {BATCHES_TABLE} "
            "WHERE growth_day BETWEEN %(first_growth_day)s AND %(last_growth_day)s)"
        )
        params["first_growth_day"], params["last_growth_day"] = growth_days
    params["vector"] = vector
    with warehouse.begin() as conn:
        register_vectors(conn)
        batches = table_exists(conn, BATCHES_TABLE)
        if growth_days and not batches:
            raise LookupError(f"{BATCHES_TABLE} does not exist: materialize room_batches first")
        # The image's batch: the farm has one batch device per room (the first one otherwise).
        batch = (
            f"LEFT JOIN LATERAL (SELECT batch, growth_day FROM {BATCHES_TABLE} b "
            "WHERE b.room = h.room AND b.day = h.day ORDER BY device LIMIT 1) b ON true"
            if batches else "CROSS JOIN (SELECT NULL::text AS batch, NULL::bigint AS growth_day) b"
        )
        sql = f"""
            WITH hits AS MATERIALIZED (
                SELECT object_key, room, day, captured_at, embedding <=> %(vector)s::vector AS distance
                FROM {TABLE} WHERE {' AND '.join(filters)}
                ORDER BY embedding <=> %(vector)s::vector LIMIT %(limit)s
            )
            SELECT h.*, b.batch, b.growth_day FROM hits h {batch} ORDER BY distance
        """
        conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
        conn.exec_driver_sql("SET LOCAL hnsw.iterative_scan = relaxed_order")
        rows = conn.exec_driver_sql(sql, params).all()
        if len(rows) < limit:
            conn.exec_driver_sql("SET LOCAL enable_indexscan = off")  # exact: no HNSW
            rows = conn.exec_driver_sql(sql, params).all()
    hits = pd.DataFrame(rows, columns=["object_key", "room", "day", "captured_at", "distance",
                                       "batch", "growth_day"])
    return hits.astype({"growth_day": "Int64"})


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
