"""The camera images' object store: MinIO / any S3 server, or a local folder (the embedded default).

Both backends answer the same two questions: which objects lie under a prefix (key, etag, size,
last-modified), and what bytes an object holds. Image keys follow the contract:
`<room>/<YYYYMMDD>/<file>.<jpg|jpeg|png>`; other keys are ignored and counted.
"""

import datetime as dt
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
from pydantic import Field, PrivateAttr

from mushroom_pipeline.retries import UnavailableError

IMAGE_KEY = re.compile(
    r"^(?P<room>[^/]+)/(?P<day>\d{8})/(?P<file>[^/]+?)\.(?P<ext>jpe?g|png)$", re.IGNORECASE
)
CAPTURE_TIME = re.compile(r"_(\d{14})$")


class ObjectStoreUnavailableError(UnavailableError):
    """The object store cannot be reached or read; the message names the variable to fix."""


class ObjectMissingError(KeyError):
    """The object was listed but is gone (deleted or renamed since)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int
    last_modified: dt.datetime


@dataclass(frozen=True)
class ImageObject:
    key: str
    etag: str
    size: int
    room: str
    day: dt.date
    captured_at: dt.datetime


def parse_image_key(info: ObjectInfo, tz: ZoneInfo) -> ImageObject | None:
    """The contract's reading of a key, or None for a key outside the layout."""
    match = IMAGE_KEY.match(info.key)
    if not match:
        return None
    try:
        day = dt.datetime.strptime(match["day"], "%Y%m%d").date()
    except ValueError:
        return None
    captured_at = info.last_modified.astimezone(tz)
    stamp = CAPTURE_TIME.search(match["file"])
    if stamp:
        try:
            # fold=0 (PEP 495), stated so it stays: a time in the hour repeated when clocks go
            # back is its first occurrence (still daylight time); a time in the hour skipped when
            # they go forward takes the offset in force before the change (02:30 → 03:30 DST).
            captured_at = dt.datetime.strptime(stamp[1], "%Y%m%d%H%M%S").replace(tzinfo=tz, fold=0)
        except ValueError:
            pass  # not a time after all: the object's last-modified time stands
    return ImageObject(info.key, info.etag, info.size, match["room"], day, captured_at)


def safe_key(key: str) -> PurePosixPath:
    """A key as a relative path that cannot leave the store's folder."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\\" in key:
        raise ValueError(f"object key {key!r} is not a plain relative key")
    return path


class ObjectStore(dg.ConfigurableResource, ABC):
    """Camera images: one interface, two implementations (a local folder, an S3 bucket), as
    Dagster's project_fully_featured puts its HNClient behind one. Assets ask for `ObjectStore`;
    the code location picks the implementation from MUSHROOM_MINIO_ENDPOINT."""

    bucket: str = Field(default="mushroom-images", description="MUSHROOM_IMAGE_BUCKET")

    @abstractmethod
    def objects(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Objects under `prefix` in key order, only keys after `start_after` (as S3 lists)."""

    @abstractmethod
    def rooms(self) -> list[str]:
        """The top-level folders: one per room."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; ObjectMissingError when it is gone."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...


class LocalObjectStore(ObjectStore):
    """Objects as files under `home`/objects/`bucket` (the embedded default). The etag is a
    change marker, `<size>-<mtime ns>` in hex: listing reads no file's bytes (a sensor lists the
    store every few minutes)."""

    home: str = Field(default=".mushroom", description="MUSHROOM_HOME")

    @property
    def root(self) -> Path:
        return Path(self.home).absolute() / "objects" / self.bucket

    def objects(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Only the keys after `start_after` are stat'ed."""
        root = self.root
        if not root.is_dir():
            return
        base = root / safe_key(prefix) if prefix else root
        keys = []
        for folder, _, files in os.walk(base):
            relative = Path(folder).relative_to(root).as_posix()
            keys.extend(name if relative == "." else f"{relative}/{name}" for name in files)
        for key in sorted(k for k in keys if start_after is None or k > start_after):
            path = root / key
            if path.is_symlink():
                continue
            stat = path.stat()
            yield ObjectInfo(
                key=key,
                etag=f"{stat.st_size:x}-{stat.st_mtime_ns:x}",
                size=stat.st_size,
                last_modified=dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC),
            )

    def rooms(self) -> list[str]:
        root = self.root
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink())

    def get(self, key: str) -> bytes:
        try:
            return (self.root / safe_key(key)).read_bytes()
        except FileNotFoundError:
            raise ObjectMissingError(key) from None

    def put(self, key: str, data: bytes) -> None:
        path = self.root / safe_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class S3ObjectStore(ObjectStore):
    """Objects in a bucket of MinIO or any S3 server, through the `minio` client. The client is
    made, and the bucket checked, on first use: a store that cannot be reached fails the step
    at once, naming the variables to fix."""

    endpoint: str = Field(description="host:port (MUSHROOM_MINIO_ENDPOINT)")
    access_key: str | None = None
    secret_key: str | None = None
    secure: bool = False
    timeout_s: float = 5.0
    _client: Any = PrivateAttr(default=None)

    @property
    def client(self):
        if self._client is None:
            self._client = self._connected_client()
        return self._client

    def _connected_client(self):
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.timeout_s, read=max(30.0, self.timeout_s)),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        )
        client = Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key,
                       secure=self.secure, http_client=http)
        try:
            exists = client.bucket_exists(self.bucket)
        except Exception as err:  # connection refused, timeout, TLS, credentials
            raise ObjectStoreUnavailableError(
                f"Cannot reach the object store at {self.endpoint} (bucket {self.bucket!r}): "
                f"{type(err).__name__}: {err}. Check the server, or fix MUSHROOM_MINIO_ENDPOINT "
                "(and MUSHROOM_MINIO_ACCESS_KEY / _SECRET_KEY / _SECURE)."
            ) from None
        if not exists:
            raise ObjectStoreUnavailableError(
                f"The object store at {self.endpoint} has no bucket {self.bucket!r}: "
                "fix MUSHROOM_IMAGE_BUCKET."
            )
        return client

    def objects(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """The server skips the keys up to `start_after` (S3's start-after)."""
        for item in self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True,
                                             start_after=start_after):
            if not item.is_dir:
                yield ObjectInfo(item.object_name, (item.etag or "").strip('"'), item.size or 0,
                                 item.last_modified)

    def rooms(self) -> list[str]:
        return sorted(
            item.object_name.rstrip("/")
            for item in self.client.list_objects(self.bucket, recursive=False)
            if item.is_dir
        )

    def get(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as err:
            if err.code == "NoSuchKey":
                raise ObjectMissingError(key) from None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def put(self, key: str, data: bytes) -> None:
        import io

        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))
