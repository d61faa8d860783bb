"""The camera images' object store: MinIO / any S3 server, or a local folder (the embedded default).

Both backends answer the same two questions: which objects lie under a prefix (key, etag, size,
last-modified), and what bytes an object holds. Image keys follow the contract:
`<room>/<YYYYMMDD>/<file>.<jpg|jpeg|png>`; other keys are ignored and counted.
"""

import datetime as dt
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from zoneinfo import ZoneInfo

import dagster as dg
from pydantic import Field

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


class LocalFolderStore:
    """Objects as files under `root`. The etag is a change marker, `<size>-<mtime ns>` in hex:
    listing reads no file's bytes (a sensor lists the store every few minutes)."""

    def __init__(self, root: Path):
        self.root = root

    def objects(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Files under `prefix` in key order, only keys after `start_after` (as S3 lists); only
        those are stat'ed."""
        if not self.root.is_dir():
            return
        base = self.root / safe_key(prefix) if prefix else self.root
        keys = []
        for folder, _, files in os.walk(base):
            relative = Path(folder).relative_to(self.root).as_posix()
            keys.extend(name if relative == "." else f"{relative}/{name}" for name in files)
        for key in sorted(k for k in keys if start_after is None or k > start_after):
            path = self.root / key
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
        """The top-level folders: one per room."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.is_symlink())

    def get(self, key: str) -> bytes:
        try:
            return (self.root / safe_key(key)).read_bytes()
        except FileNotFoundError:
            raise ObjectMissingError(key) from None

    def put(self, key: str, data: bytes) -> None:
        path = self.root / safe_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class MinioStore:
    """Objects in a bucket of MinIO or any S3 server, through the `minio` client."""

    def __init__(self, endpoint: str, access_key: str | None, secret_key: str | None,
                 secure: bool, bucket: str, timeout_s: float):
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=max(30.0, timeout_s)),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        )
        self.endpoint, self.bucket = endpoint, bucket
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key,
                            secure=secure, http_client=http)
        try:
            exists = self.client.bucket_exists(bucket)
        except Exception as err:  # connection refused, timeout, TLS, credentials
            raise ObjectStoreUnavailableError(
                f"Cannot reach the object store at {endpoint} (bucket {bucket!r}): "
                f"{type(err).__name__}: {err}. Check the server, or fix MUSHROOM_MINIO_ENDPOINT "
                "(and MUSHROOM_MINIO_ACCESS_KEY / _SECRET_KEY / _SECURE)."
            ) from None
        if not exists:
            raise ObjectStoreUnavailableError(
                f"The object store at {endpoint} has no bucket {bucket!r}: "
                "fix MUSHROOM_IMAGE_BUCKET."
            )

    def objects(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Objects under `prefix` in key order, only keys after `start_after` (S3's start-after:
        the server skips the rest)."""
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


class ObjectStoreResource(dg.ConfigurableResource):
    """Camera images. With no `endpoint`, the folder `home`/objects/`bucket`."""

    endpoint: str | None = Field(default=None, description="host:port; unset → local folder")
    access_key: str | None = None
    secret_key: str | None = None
    secure: bool = False
    bucket: str = "mushroom-images"
    home: str = ".mushroom"
    timeout_s: float = 5.0

    def store(self) -> LocalFolderStore | MinioStore:
        if self.endpoint:
            return MinioStore(self.endpoint, self.access_key, self.secret_key, self.secure,
                              self.bucket, self.timeout_s)
        return LocalFolderStore(Path(self.home).absolute() / "objects" / self.bucket)
