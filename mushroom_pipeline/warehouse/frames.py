"""Frames in and out of Postgres by psycopg 3's COPY: CSV for plain columns, binary rows for
vectors (float4 bytes through pgvector's adapter, no decimal text), and typed frames back from
a query."""

import csv
import io
from collections.abc import Mapping

import numpy as np
import pandas as pd
import sqlalchemy as sa
from pgvector import Vector
from pgvector.psycopg import register_vector

from mushroom_pipeline.warehouse.sql import quote_ident

NULL = r"\N"  # COPY's NULL marker: keeps NULL apart from an empty string in text columns


def driver_cursor(connection: sa.Connection):
    """A cursor of the psycopg connection under `connection`, in its transaction."""
    return connection.connection.driver_connection.cursor()


def register_vectors(connection: sa.Connection) -> sa.Connection:
    """pgvector's psycopg adapter: numpy arrays go in as vectors, vectors come out as
    `pgvector.Vector`. Registering looks the type's oid up, so once per DBAPI connection (the
    pool keeps `info` with it); it changes that connection's adapters only."""
    if "pgvector" not in connection.info:
        register_vector(connection.connection.driver_connection)
        connection.info["pgvector"] = True
    return connection


def _csv_column(series: pd.Series, pg_type: str) -> pd.Series:
    """One column as COPY text; vectorized for the big ones (timestamps)."""
    if pg_type.startswith("timestamp"):
        values = pd.to_datetime(series, utc=True)
        text = np.datetime_as_string(
            values.dt.tz_localize(None).to_numpy().astype("datetime64[us]"), unit="us"
        )
        return pd.Series(np.char.add(text, "+00"), index=series.index).where(values.notna(), NULL)
    if pg_type == "date":
        return pd.to_datetime(series).dt.strftime("%Y-%m-%d")
    if pg_type in ("double precision", "real") and series.dtype == object:
        # An object column keeps NULL (None) apart from NaN (float nan), as the source may.
        return series.map(lambda v: NULL if v is None else "NaN" if v != v else repr(float(v)))
    return series


def _columns(frame: pd.DataFrame) -> str:
    return ", ".join(quote_ident(c) for c in frame.columns)


def copy_frame(connection: sa.Connection, table: str, frame: pd.DataFrame, types: Mapping[str, str]):
    buffer = io.StringIO()
    pd.DataFrame({name: _csv_column(frame[name], types[name]) for name in frame.columns}).to_csv(
        buffer, index=False, header=False, na_rep=NULL, quoting=csv.QUOTE_MINIMAL
    )
    with driver_cursor(connection).copy(
        f"COPY {table} ({_columns(frame)}) FROM STDIN WITH (FORMAT csv, NULL '{NULL}')"
    ) as copy:
        copy.write(buffer.getvalue())


def _missing(value) -> bool:
    """None, NaN, NA or NaT (what pandas holds for NULL), but never a vector."""
    return value is None or (np.ndim(value) == 0 and pd.isna(value))


def _binary_values(series: pd.Series, pg_type: str) -> list:
    """One column as Python values for psycopg's binary dumpers, None for NULL (NaN included)."""
    if pg_type.startswith("vector"):
        return [None if _missing(v) else np.asarray(v, dtype=np.float32) for v in series]
    if pg_type.startswith("timestamp"):
        series = pd.to_datetime(series, utc=True)
    elif pg_type == "date":
        series = pd.to_datetime(series).dt.date
    elif pg_type == "text":
        series = series.map(str, na_action="ignore")
    return series.astype(object).where(series.notna(), None).tolist()


def copy_frame_binary(connection: sa.Connection, table: str, frame: pd.DataFrame,
                      types: Mapping[str, str]):
    """COPY in binary, row by row through psycopg's dumpers: vectors travel as float4 bytes,
    not as decimal text to parse."""
    register_vectors(connection)
    pg_types = [types[c].split("(")[0] for c in frame.columns]  # vector(512) → vector
    with driver_cursor(connection).copy(
        f"COPY {table} ({_columns(frame)}) FROM STDIN WITH (FORMAT binary)"
    ) as copy:
        copy.set_types(pg_types)
        for row in zip(*(_binary_values(frame[c], types[c]) for c in frame.columns)):
            copy.write_row(row)


INTEGER_TYPES = ("bigint", "integer", "smallint")


def read_frame(connection: sa.Connection, query: str, types: Mapping[str, str]) -> pd.DataFrame:
    """Runs `query` (whose columns have the Postgres `types`) through COPY into a typed frame."""
    selects = []
    for name, pg_type in types.items():
        if pg_type.startswith("timestamp"):
            # Integer microseconds since the epoch: exact, and fast to parse.
            selects.append(
                f"(extract(epoch FROM {quote_ident(name)}) * 1000000)::bigint AS {quote_ident(name)}"
            )
        elif pg_type.startswith("vector"):
            # pgvector's binary form (float4 bytes) as hex, decoded by pgvector-python: exact, no
            # decimal text to parse, and in the one CSV COPY that pandas' C parser reads (a
            # binary COPY out would decode row by row in Python).
            selects.append(f"encode(vector_send({quote_ident(name)}), 'hex') AS {quote_ident(name)}")
        else:
            selects.append(quote_ident(name))
    buffer = io.BytesIO()
    with driver_cursor(connection).copy(
        f"COPY (SELECT {', '.join(selects)} FROM ({query}) q) TO STDOUT "
        f"WITH (FORMAT csv, HEADER, NULL '{NULL}')"
    ) as copy:
        for block in copy:
            buffer.write(block)
    buffer.seek(0)
    floats = {n for n, t in types.items() if t in ("double precision", "real")}
    frame = pd.read_csv(
        buffer,
        dtype={n: "float64" if n in floats else "Int64" if t in INTEGER_TYPES else str
               for n, t in types.items()
               if n in floats or t in ("text", "date", "boolean", *INTEGER_TYPES)
               or t.startswith("vector")},
        keep_default_na=False,
        # Postgres writes NaN as 'NaN'; with NULL as \N the two stay apart everywhere else.
        na_values={n: [NULL, "NaN"] if n in floats else [NULL] for n in types},
    )
    zone = connection.exec_driver_sql("SHOW timezone").scalar()  # the farm's, set per session
    for name, pg_type in types.items():
        column = frame[name]
        if pg_type.startswith("timestamp"):
            frame[name] = pd.to_datetime(column, unit="us", utc=True).dt.tz_convert(zone)
        elif pg_type == "date":
            frame[name] = pd.to_datetime(column).dt.date
        elif pg_type == "boolean":
            frame[name] = column.map({"t": True, "f": False})
        elif pg_type.startswith("vector"):
            frame[name] = column.map(
                lambda v: Vector.from_binary(bytes.fromhex(v)).to_numpy(), na_action="ignore"
            )
    return frame
