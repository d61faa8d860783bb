"""One tick of new_images_sensor on a bucket of 15 days × N images (local store), against the
former design (every tick lists the whole lookback and reads every file for its MD5) on the
same files in the same run. Also the tick's peak Python memory with the lookback filled for 3
and for 15 days: it must not grow with the bucket.

    .venv/bin/python benchmarks/new_images_tick.py --images-per-day 10000
"""

import argparse
import datetime as dt
import hashlib
import time
import tracemalloc

import dagster as dg
from _common import RESOURCES, median_seconds  # noqa: I001 (sets MUSHROOM_HOME first)

from mushroom_pipeline.defs.automation.requests import LOOKBACK_DAYS
from mushroom_pipeline.defs.vision.manifest import image_manifest
from mushroom_pipeline.defs.vision.sensors import (
    RESCAN_EVERY_S,
    days_with_new_images,
)
from mushroom_pipeline.objectstore import LocalObjectStore, ObjectStore
from mushroom_pipeline.settings import load_settings

ROOMS = ("607", "608", "611", "612")
MODEL = "ViT-B-32/random"


def fill(resource: ObjectStore, days: list[dt.date], per_day: int) -> None:
    store = resource
    for day in days:
        for n in range(per_day):
            room = ROOMS[n % len(ROOMS)]
            second = n // len(ROOMS)
            stamp = f"{day:%Y%m%d}{second // 3600 % 24:02d}{second // 60 % 60:02d}{second % 60:02d}"
            store.put(f"{room}/{day:%Y%m%d}/{room}_cam1_{stamp}_{n}.jpg", b"jpeg bytes %d" % n)


def former_tick(resource: ObjectStore, days: list[dt.date]) -> int:
    """The former sensor's listing: every room and day of the lookback, each file's MD5."""
    store, count = resource, 0
    for room in store.rooms():
        for day in days:
            for path in sorted((store.root / room / f"{day:%Y%m%d}").glob("*")):
                hashlib.md5(path.read_bytes()).hexdigest()
                count += 1
    return count


def seconds(function) -> float:
    began = time.perf_counter()
    function()
    return time.perf_counter() - began


def peak_mib(function) -> float:
    tracemalloc.start()
    function()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images-per-day", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    home = load_settings().home
    # a tick whose day listed in full is today, a filled day in both runs: comparable peaks
    now = dt.datetime.combine(dt.date.today(), dt.time(12), dt.UTC)
    while int(now.timestamp() // RESCAN_EVERY_S) % (LOOKBACK_DAYS + 1):
        now += dt.timedelta(seconds=RESCAN_EVERY_S)
    days = [now.date() - dt.timedelta(days=n) for n in range(LOOKBACK_DAYS + 1)]
    warehouse = RESOURCES["warehouse"]
    peaks = {}
    for filled in (3, len(days)):
        resource = LocalObjectStore(home=str(home), bucket=f"bench-{filled}-days")
        began = time.perf_counter()
        fill(resource, days[:filled], args.images_per_day)
        result = dg.materialize([image_manifest], resources={**RESOURCES, "object_store": resource},
                                tags={"dagster/asset_partition_range_start": days[filled - 1].isoformat(),
                                      "dagster/asset_partition_range_end": days[0].isoformat()})
        assert result.success
        print(f"{filled} days × {args.images_per_day} images written and in the manifest in "
              f"{time.perf_counter() - began:.1f} s")
        resource.put(f"607/{days[0]:%Y%m%d}/607_cam1_{days[0]:%Y%m%d}235959_new.jpg", b"new")
        tick = lambda: days_with_new_images(resource, warehouse, MODEL, now)  # noqa: E731
        peaks[filled] = peak_mib(tick)
        if filled == len(days):
            new_s = median_seconds(lambda: seconds(tick), args.repeats)
            former_s = median_seconds(lambda: seconds(lambda: former_tick(resource, days)),
                                      args.repeats)
    print(f"\n| path | seconds |\n|---|---:|\n| former tick (15 days listed, every file hashed) | "
          f"{former_s:.2f} |\n| tick (start-after per folder + one day in full) | {new_s:.2f} |\n"
          f"| **ratio, former / tick** | **{former_s / new_s:.1f}×** |")
    print(f"\npeak Python memory of a tick: lookback filled for 3 days {peaks[3]:.1f} MiB, for "
          f"15 days {peaks[len(days)]:.1f} MiB (ratio {peaks[len(days)] / peaks[3]:.2f})")
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS mushroom CASCADE")


if __name__ == "__main__":
    main()
