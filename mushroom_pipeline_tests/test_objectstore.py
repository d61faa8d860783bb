"""Both object-store backends behind one interface: the real `minio` client against moto's S3
server mode, and the local folder; the contract's key layout; keys that try to escape."""

import datetime as dt
import hashlib
import time
from zoneinfo import ZoneInfo

import pytest

from mushroom_pipeline.objectstore import (
    LocalObjectStore,
    ObjectInfo,
    ObjectStoreUnavailableError,
    S3ObjectStore,
    parse_image_key,
)
from mushroom_pipeline_tests.helpers import free_port

SHANGHAI = ZoneInfo("Asia/Shanghai")
OBJECTS = {
    "612/20251224/612_1921681235_20251218_20251224160000.jpg": b"jpeg bytes",
    "612/20251224/no_time.png": b"png bytes",
    "601/20251224/sub/deeper.jpg": b"not in the layout",
    "601/notes.txt": b"not an image",
}


@pytest.fixture(params=["minio", "local"])
def store(request, tmp_path):
    if request.param == "minio":
        backend = S3ObjectStore(
            endpoint=request.getfixturevalue("s3_endpoint"), access_key="test", secret_key="test"
        )
    else:
        backend = LocalObjectStore(home=str(tmp_path))
    for key, data in OBJECTS.items():
        backend.put(key, data)
    return backend


def test_list_and_get_through_either_backend(store):
    listed = {info.key: info for info in store.objects()}
    assert set(listed) >= set(OBJECTS)
    info = listed["612/20251224/no_time.png"]
    assert info.size == len(b"png bytes")
    if isinstance(store, LocalObjectStore):  # a change marker, no bytes read
        stat = (store.root / "612/20251224/no_time.png").stat()
        assert info.etag == f"{stat.st_size:x}-{stat.st_mtime_ns:x}"
    else:
        assert info.etag == hashlib.md5(b"png bytes").hexdigest()  # S3's etag of a simple upload
    assert store.get("612/20251224/no_time.png") == b"png bytes"
    day = {k for k in OBJECTS if k.startswith("612/20251224/")}
    assert {i.key for i in store.objects("612/20251224/")} == day
    # start-after, as S3 lists: only the keys sorting after it
    first = min(day)
    assert [i.key for i in store.objects("612/20251224/", start_after=first)] == sorted(day - {first})


def test_keys_follow_the_contract_layout():
    modified = dt.datetime(2025, 12, 24, 9, 30, tzinfo=dt.timezone.utc)
    parsed = {
        key: parse_image_key(ObjectInfo(key, "e", 1, modified), SHANGHAI) for key in OBJECTS
    }
    stamped = parsed["612/20251224/612_1921681235_20251218_20251224160000.jpg"]
    assert (stamped.room, stamped.day) == ("612", dt.date(2025, 12, 24))
    assert stamped.captured_at == dt.datetime(2025, 12, 24, 16, 0, tzinfo=SHANGHAI)  # farm time
    assert parsed["612/20251224/no_time.png"].captured_at == modified  # last-modified instead
    assert parsed["601/20251224/sub/deeper.jpg"] is None
    assert parsed["601/notes.txt"] is None
    assert parse_image_key(ObjectInfo("612/20251399/x.jpg", "e", 1, modified), SHANGHAI) is None


@pytest.mark.parametrize(("stamp", "utc"), [
    ("20261101013000", "2026-11-01T05:30:00+00:00"),  # repeated hour: the first 01:30 (EDT)
    ("20260308023000", "2026-03-08T07:30:00+00:00"),  # skipped hour: read with EST (= 03:30 EDT)
    ("20260308033000", "2026-03-08T07:30:00+00:00"),
])
def test_capture_times_in_the_dst_hours_resolve_one_documented_way(stamp, utc):
    farm = ZoneInfo("America/New_York")
    info = ObjectInfo(f"612/{stamp[:8]}/cam_{stamp}.jpg", "e", 1, dt.datetime.now(dt.timezone.utc))
    captured = parse_image_key(info, farm).captured_at
    assert captured.astimezone(dt.timezone.utc).isoformat() == utc
    assert captured.date().isoformat().replace("-", "") == stamp[:8]  # its folder's day


@pytest.mark.parametrize("key", ["../outside.jpg", "/etc/passwd", "612/../../x.jpg", "a\\..\\b.jpg", ""])
def test_a_key_cannot_escape_the_local_folder(tmp_path, key):
    backend = LocalObjectStore(home=str(tmp_path / "home"))
    with pytest.raises(ValueError, match="not a plain relative key"):
        backend.get(key)
    with pytest.raises(ValueError):
        backend.put(key, b"x")
    assert not (tmp_path / "outside.jpg").exists()


def test_an_unreachable_object_store_fails_fast_naming_the_variable():
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailableError, match="MUSHROOM_MINIO_ENDPOINT"):
        S3ObjectStore(endpoint=f"127.0.0.1:{free_port()}", timeout_s=2).rooms()
    assert time.monotonic() - started < 10


def test_a_missing_bucket_names_its_variable(s3_endpoint):
    with pytest.raises(ObjectStoreUnavailableError, match="MUSHROOM_IMAGE_BUCKET"):
        S3ObjectStore(endpoint=s3_endpoint, access_key="test", secret_key="test",
                      bucket="no-such-bucket").rooms()


def test_image_manifest_lists_the_days_images_and_counts_the_rest(store, warehouse):
    import dagster as dg

    from mushroom_pipeline.definitions import database_resources
    from mushroom_pipeline.defs.vision.manifest import image_manifest

    from .helpers import query

    store.put("612/20251225/next_day.jpg", b"another day")
    result = dg.materialize(
        [image_manifest],
        partition_key="2025-12-24",
        resources={**database_resources(), "object_store": store},
    )
    assert result.success
    manifest = query(warehouse, "SELECT * FROM mushroom.image_manifest ORDER BY object_key")
    assert manifest["object_key"].tolist() == [
        "612/20251224/612_1921681235_20251218_20251224160000.jpg",
        "612/20251224/no_time.png",
    ]
    assert manifest["room"].tolist() == ["612", "612"]
    assert manifest["size"].tolist() == [len(b"jpeg bytes"), len(b"png bytes")]
    if isinstance(store, LocalObjectStore):  # a change marker: size and mtime, no bytes read
        stats = [(store.root / k).stat() for k in manifest["object_key"]]
        assert manifest["etag"].tolist() == [f"{s.st_size:x}-{s.st_mtime_ns:x}" for s in stats]
    else:  # S3's etag of a simple upload: the MD5 of the bytes
        assert manifest["etag"].str.fullmatch("[0-9a-f]{32}").all()
    metadata = result.asset_materializations_for_node("image_manifest")[0].metadata
    assert metadata["ignored_keys"].value == 1  # 601/20251224/sub/deeper.jpg
