"""Frames in and out of Postgres by COPY: CSV for plain columns, binary for vectors (float4
bytes, no decimal text), and typed frames back from a query."""

import csv
import io
import struct
from collections.abc import Mapping

import numpy as np
import pandas as pd
import sqlalchemy as sa
from pgvector import Vector

from mushroom_pipeline.warehouse.sql import quote_ident

NULL = r"\N"  # COPY's NULL marker: keeps NULL apart from an empty string in text columns


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


def copy_frame(connection: sa.Connection, table: str, frame: pd.DataFrame, types: Mapping[str, str]):
    buffer = io.StringIO()
    pd.DataFrame({name: _csv_column(frame[name], types[name]) for name in frame.columns}).to_csv(
        buffer, index=False, header=False, na_rep=NULL, quoting=csv.QUOTE_MINIMAL
    )
    buffer.seek(0)
    columns = ", ".join(quote_ident(c) for c in frame.columns)
    cursor = connection.connection.dbapi_connection.cursor()
    cursor.copy_expert(
        f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv, NULL '{NULL}')", buffer
    )


PG_EPOCH = pd.Timestamp("2000-01-01", tz="UTC")
BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_FIXED_WIDTH = {"double precision": ">f8", "real": ">f4", "bigint": ">i8", "integer": ">i4",
                "smallint": ">i2", "boolean": "?"}


def _missing(value) -> bool:
    """None, NaN, NA or NaT (what pandas holds for NULL), but never a vector."""
    return value is None or (np.ndim(value) == 0 and pd.isna(value))


def _binary_fields(series: pd.Series, pg_type: str) -> list[bytes | None]:
    """One column in COPY's binary format, field by field (None: NULL)."""
    if pg_type.startswith("vector"):
        return [
            None if _missing(v) else struct.pack(">HH", len(v), 0) + np.asarray(v, ">f4").tobytes()
            for v in series
        ]
    if pg_type == "text":
        return [None if _missing(v) else str(v).encode() for v in series]
    if pg_type.startswith("timestamp"):
        values = pd.to_datetime(series, utc=True)
        micros = ((values - PG_EPOCH) // pd.Timedelta(microseconds=1)).astype("Int64")
        return [None if m is pd.NA else struct.pack(">q", m) for m in micros]
    if pg_type == "date":
        days = pd.to_datetime(series).dt.normalize()
        offsets = ((days - PG_EPOCH.tz_localize(None)) // pd.Timedelta(days=1)).astype("Int64")
        return [None if d is pd.NA else struct.pack(">i", d) for d in offsets]
    if pg_type in _FIXED_WIDTH:
        nulls = series.isna().to_numpy()  # NaN goes in as NULL on this path
        kind = {"boolean": "bool", "double precision": "float64", "real": "float64"}.get(pg_type, "int64")
        filled = series.astype(object).where(~nulls, 0).astype(kind)
        # Sliced from the array's bytes: numpy scalars would give them in native byte order.
        packed = filled.to_numpy().astype(_FIXED_WIDTH[pg_type]).tobytes()
        width = np.dtype(_FIXED_WIDTH[pg_type]).itemsize
        return [None if null else packed[i * width:(i + 1) * width] for i, null in enumerate(nulls)]
    raise ValueError(f"no binary COPY encoding for column {series.name!r} of type {pg_type}")


def copy_frame_binary(connection: sa.Connection, table: str, frame: pd.DataFrame,
                      types: Mapping[str, str]):
    """COPY in binary: vectors travel as float4 bytes, not as decimal text to parse."""
    buffer = io.BytesIO()
    buffer.write(BINARY_HEADER)
    row_head = struct.pack(">h", frame.shape[1])
    for fields in zip(*(_binary_fields(frame[c], types[c]) for c in frame.columns)):
        buffer.write(row_head)
        for field in fields:
            buffer.write(b"\xff\xff\xff\xff" if field is None else struct.pack(">i", len(field)) + field)
    buffer.write(struct.pack(">h", -1))
    buffer.seek(0)
    columns = ", ".join(quote_ident(c) for c in frame.columns)
    connection.connection.dbapi_connection.cursor().copy_expert(
        f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT binary)", buffer
    )


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
            # decimal text to parse, and in the one CSV COPY (binary COPY out would need a
            # decoder for every other type too: psycopg2 has none).
            selects.append(f"encode(vector_send({quote_ident(name)}), 'hex') AS {quote_ident(name)}")
        else:
            selects.append(quote_ident(name))
    buffer = io.StringIO()
    cursor = connection.connection.dbapi_connection.cursor()
    cursor.copy_expert(
        f"COPY (SELECT {', '.join(selects)} FROM ({query}) q) TO STDOUT "
        f"WITH (FORMAT csv, HEADER, NULL '{NULL}')",
        buffer,
    )
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
