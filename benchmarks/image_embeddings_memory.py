"""Benchmark: memory and time of image_embeddings by the size of the day.

    .venv/bin/python benchmarks/image_embeddings_memory.py [--sizes 1000,10000,100000]

One day per size (2025-06-01, 2025-06-02, ...) of tiny JPEGs (48×40 noise) in the local object
store, embedded with a tiny open_clip config (the tests' `TINY`; checkpoint from seed 0), so it
runs on a CPU in minutes. For each day image_manifest is materialized first (not measured); then
the image_embeddings step alone runs in a fresh child process on the same embedded Postgres and
object store, so that its peak RSS is the step's own:

- seconds: around `dg.materialize([image_embeddings], ...)` (fetch, decode, image tower, context,
  text tower, chunks committed to the pending table, the day's swap);
- CPU seconds: the child's user + system time over the same run (the Postgres server's work is
  not in it); less disturbed than wall time when the machine is shared;
- baseline RSS: the child's VmRSS after imports and the model load, before the run;
- peak RSS: the child's high-water mark at the end, /proc/self/status VmHWM. Not
  `getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries the high-water mark of the address space
  that exec replaced into it, and subprocess forks with vfork, so a child's ru_maxrss is at least
  the parent's peak at spawn time (the parent holds the 100k-row manifest frame: 1036 MiB
  ru_maxrss against 933 MiB VmHWM in a first run). Both are printed for each day.

Goals (from the issue): flat memory, peak(largest) / peak(smallest) ≤ 1.2; linear time, seconds
per image (largest / smallest) ≈ 1, judged as ≤ 1.2 (below 1 the run's fixed cost, about a
second, is spread over more images). The cost per added image between successive sizes is
printed too. Each day's line gives the RSS peak in each quarter of its run (sampled every
0.2 s): memory growing within a day shows there.
"""

import argparse
import datetime as dt
import io
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHILD = "--child" in sys.argv
if not CHILD:
    # The parent owns the run: a fresh MUSHROOM_HOME and embedded Postgres (stopped at exit).
    # The child must not import it: it would pick another home; it inherits the parent's.
    from _common import RESOURCES  # noqa: F401

import dagster as dg
import numpy as np

from mushroom_pipeline.definitions import database_resources
from mushroom_pipeline.defs.vision.embeddings import image_embeddings
from mushroom_pipeline.defs.vision.manifest import image_manifest
from mushroom_pipeline.images.describer import DescriberResource
from mushroom_pipeline.images.encoder import ClipEncoderResource
from mushroom_pipeline.objectstore import LocalObjectStore

TINY = {  # as mushroom_pipeline_tests/test_vision.py
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
ROOMS = ("607", "608", "611", "612")
FIRST_DAY = dt.date(2025, 6, 1)
DISTINCT_JPEGS = 64  # re-used bytes, each under its own key: decoding cost is what matters
RESULT = "RESULT "  # the child's last line on stdout: its figures as JSON


def vm_kib(field: str) -> int:
    """VmRSS / VmHWM of this process, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tiny_model(folder: Path) -> tuple[Path, Path]:
    """The tiny config as a .json file and a checkpoint of it (seed 0)."""
    import open_clip
    import torch

    config = folder / "mushroom-tiny.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    checkpoint = folder / "tiny-0.pt"
    torch.save(open_clip.create_model("mushroom-tiny").state_dict(), checkpoint)
    return config, checkpoint


def jpeg(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def fill_day(store, day: dt.date, count: int, blobs: list[bytes]) -> None:
    """`count` images over the rooms, capture times spread evenly across the day."""
    for n in range(count):
        room = ROOMS[n % len(ROOMS)]
        second = n * 86400 // count
        stamp = f"{day:%Y%m%d}{second // 3600:02d}{second // 60 % 60:02d}{second % 60:02d}"
        store.put(f"{room}/{day:%Y%m%d}/cam1-{n:06d}_{stamp}.jpg", blobs[n % len(blobs)])


def resources(home: str, config: Path, checkpoint: Path) -> dict:
    return {
        **database_resources(),
        "object_store": LocalObjectStore(home=home),
        "clip_encoder": ClipEncoderResource(architecture=str(config), pretrained=str(checkpoint),
                                            device="cpu", batch_size=32, decode_threads=2),
        "describer": DescriberResource(model=None, device="cpu"),
    }


def child(day: str, config: Path, checkpoint: Path) -> None:
    """The measured step, alone in this process: the model is loaded before the baseline (a
    long-lived worker loads it once; load_encoder caches it for the run)."""
    res = resources(os.environ["MUSHROOM_HOME"], config, checkpoint)
    res["clip_encoder"].encoder()
    baseline = vm_kib("VmRSS")
    # RSS sampled through the run: growth within the day shows as a rising profile
    samples, stop = [], threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            samples.append(vm_kib("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu_began = cpu_seconds()
    began = time.perf_counter()
    result = dg.materialize([image_embeddings], partition_key=day, resources=res,
                            raise_on_error=False)
    seconds = time.perf_counter() - began
    cpu = cpu_seconds() - cpu_began
    stop.set()
    sampler.join()
    if not result.success:
        raise SystemExit([e.message for e in result.all_events if e.is_failure])
    metadata = result.asset_materializations_for_node("image_embeddings")[0].metadata
    print(RESULT + json.dumps({
        "seconds": seconds,
        "cpu_seconds": cpu,
        "embedded": metadata["embedded"].value,
        "loop_images_per_s": metadata["images_per_s"].value,
        "baseline_kib": baseline,
        "hwm_kib": vm_kib("VmHWM"),  # this address space's peak: the step's own
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # KiB; see the docstring
        # the largest sample in each quarter of the run
        "rss_by_quarter_mib": [round(max(q, default=0) / 1024) for q in np.array_split(samples, 4)],
    }), flush=True)


def measure(day: str, config: Path, checkpoint: Path) -> dict:
    # The same script as a fresh process: the parent's imports and earlier days stay out of
    # its peak; MUSHROOM_HOME (set by _common) travels in the environment.
    command = [sys.executable, __file__, "--child", "--day", day, "--config", str(config),
               "--checkpoint", str(checkpoint)]
    done = subprocess.run(command, env={**os.environ}, capture_output=True, text=True,
                          check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit(f"child for {day} failed (exit {done.returncode})")
    return json.loads(lines[-1][len(RESULT):])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--day", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.day, args.config, args.checkpoint)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    home = os.environ["MUSHROOM_HOME"]
    config, checkpoint = tiny_model(Path(tempfile.mkdtemp(prefix="tiny-clip-", dir=home)))
    res = resources(home, config, checkpoint)
    store = res["object_store"]
    blobs = [jpeg(seed) for seed in range(DISTINCT_JPEGS)]
    print(f"tiny open_clip ({TINY['embed_dim']}-d, {TINY['vision_cfg']['image_size']} px), "
          f"48×40 JPEGs ({np.mean([len(b) for b in blobs]):.0f} bytes), batch 32, decode "
          f"threads 2, chunk {res['clip_encoder'].chunk_images} images, {os.cpu_count()} CPUs",
          flush=True)

    rows = []
    for offset, size in enumerate(sizes):
        day = FIRST_DAY + dt.timedelta(days=offset)  # a day per size: no carried-over rows
        began = time.perf_counter()
        fill_day(store, day, size, blobs)
        assert dg.materialize([image_manifest], partition_key=str(day), resources=res).success
        print(f"{day}: {size} images written and listed in {time.perf_counter() - began:.1f} s; "
              "embedding ...", flush=True)
        figures = measure(str(day), config, checkpoint)
        assert figures["embedded"] == size, figures
        rows.append((size, figures))
        loop_s = size / figures["loop_images_per_s"]
        print(f"  {figures['seconds']:.1f} s (CPU {figures['cpu_seconds']:.1f} s): embedding loop "
              f"{loop_s:.1f} s, the rest (run, counts, swap) {figures['seconds'] - loop_s:.1f} s; "
              f"RSS MiB: {figures['baseline_kib'] // 1024} before the run, peak by quarter of the "
              f"run {figures['rss_by_quarter_mib']}, VmHWM {figures['hwm_kib'] // 1024}, "
              f"ru_maxrss {figures['maxrss_kib'] // 1024}", flush=True)

    mib = lambda kib: kib / 1024
    print("\n| images | seconds | images/s | CPU s (child) | baseline RSS MiB | peak RSS MiB "
          "| peak − baseline MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size, f in rows:
        print(f"| {size:,} | {f['seconds']:.1f} | {size / f['seconds']:.0f} | "
              f"{f['cpu_seconds']:.1f} | {mib(f['baseline_kib']):.0f} | {mib(f['hwm_kib']):.0f} | "
              f"{mib(f['hwm_kib'] - f['baseline_kib']):.0f} |")
    (small, fs), (large, fl) = rows[0], rows[-1]
    peak_ratio = fl["hwm_kib"] / fs["hwm_kib"]
    print(f"\npeak RSS {large:,} / {small:,}: {peak_ratio:.2f}× "
          f"({'PASS' if peak_ratio <= 1.2 else 'FAIL'}: goal ≤ 1.2×)")
    for label, key in (("wall", "seconds"), ("child CPU", "cpu_seconds")):
        ratio = (fl[key] / large) / (fs[key] / small)
        slopes = ", ".join(f"{a:,}→{b:,} {1000 * (fb[key] - fa[key]) / (b - a):.2f}"
                           for (a, fa), (b, fb) in itertools.pairwise(rows))
        print(f"{label} seconds per image {large:,} / {small:,}: {ratio:.2f}× "
              f"({'PASS' if ratio <= 1.2 else 'FAIL'}: linear ≈ 1×, goal ≤ 1.2×); "
              f"ms per added image: {slopes or '-'}")
    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")


if __name__ == "__main__":
    main()
