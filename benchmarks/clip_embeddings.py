"""Benchmark: images → CLIP embeddings, end to end against the model's forward pass alone.

    .venv/bin/python benchmarks/clip_embeddings.py [--images 240] [--batch-size 20] [--repeats 3]
                                                   [--model ViT-B-32] [--width 1920 --height 1080]

1. End to end: image_manifest + image_embeddings through Dagster (in process) on `images`
   camera-sized JPEGs in the local object store: list → fetch → decode → preprocess → image tower
   → environment context → text tower (fused vector) → binary COPY into pgvector. The model is
   loaded before timing (a long-lived process loads it once).
   Bare minimum: the image tower alone on the same images, decoded and preprocessed beforehand,
   same batch size. Also the text tower alone, since the fused vector needs it per image, and
   decoding + preprocessing alone: on a CPU the image tower keeps busy, end to end costs at
   least the tower plus that work spread over the cores.
2. Forward-pass variants against plain fp32 eager on the same batches: torch thread count,
   channels-last, bf16 autocast, int8 dynamic quantization of the Linear layers; each with its
   cosine similarity to fp32 (kept only where ≥ 0.99).

Weights are random (no network here); speed does not depend on the weights' values.
"""

import argparse
import copy
import io
import os
import statistics
import sys
import time

os.environ["MUSHROOM_CLIP_PRETRAINED"] = "random"

import dagster as dg  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESOURCES  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from mushroom_pipeline.definitions import model_resources, object_store_resource  # noqa: E402
from mushroom_pipeline.defs.vision.embeddings import image_embeddings  # noqa: E402
from mushroom_pipeline.defs.vision.manifest import image_manifest  # noqa: E402
from mushroom_pipeline.images.decode import decode_image  # noqa: E402
from mushroom_pipeline.images.encoder import ClipEncoderResource  # noqa: E402

DAY = "2025-06-01"


def camera_jpeg(seed: int, width: int, height: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(2)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def batches(tensors: list, size: int):
    for start in range(0, len(tensors), size):
        yield torch.stack(tensors[start:start + size])


def seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    args = parser.parse_args()

    clip = ClipEncoderResource(architecture=args.model, pretrained="random", device="cpu",
                               batch_size=args.batch_size,
                               decode_threads=model_resources()["clip_encoder"].decode_threads)
    resources = {**RESOURCES, "object_store": object_store_resource(), "clip_encoder": clip,
                 "describer": model_resources()["describer"]}
    store = resources["object_store"]
    blobs = [camera_jpeg(n, args.width, args.height) for n in range(args.images)]
    for n, data in enumerate(blobs):
        store.put(f"{601 + n % 4}/{DAY.replace('-', '')}/cam_{n:05d}.jpg", data)
    encoder = clip.encoder()  # loaded once, before timing
    print(f"{args.images} JPEGs {args.width}x{args.height} ({sum(map(len, blobs)) / 2**20:.0f} MiB), "
          f"{args.model}, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"decode threads {clip.decode_threads}, {os.cpu_count()} CPUs")

    def end_to_end():
        with RESOURCES["warehouse"].begin() as conn:  # nothing to skip: embed every image
            conn.exec_driver_sql("DROP TABLE IF EXISTS mushroom.image_embeddings")
        result = dg.materialize([image_manifest, image_embeddings], partition_key=DAY, resources=resources)
        assert result.success

    tensors = [encoder.preprocess(decode_image(b, encoder.image_size).image) for b in blobs]
    contexts = [f"Mushroom growing room {601 + n % 4} at {DAY} 12:00: humidity 91.0 %, "
                f"temperature 17.5 °C, CO2 1200 ppm." for n in range(args.images)]

    def image_tower():
        for batch in batches(tensors, args.batch_size):
            encoder.encode_images(batch)

    def text_tower():
        for start in range(0, len(contexts), args.batch_size):
            encoder.encode_texts(contexts[start:start + args.batch_size])

    def decode_and_preprocess():  # the CPU work end to end adds before the image tower
        for data in blobs:
            encoder.preprocess(decode_image(data, encoder.image_size).image)

    image_tower()  # warm-up
    e2e = seconds(end_to_end, args.repeats)
    image_only = seconds(image_tower, args.repeats)
    text_only = seconds(text_tower, args.repeats)
    decoding = seconds(decode_and_preprocess, args.repeats)
    rate = lambda s: args.images / s  # noqa: E731
    print("\n| path | seconds | images/s |\n|---|---:|---:|")
    print(f"| image tower alone, pre-decoded tensors (bare minimum) | {image_only:.2f} | {rate(image_only):.1f} |")
    print(f"| text tower alone (context sentences) | {text_only:.2f} | {rate(text_only):.1f} |")
    print(f"| image + text towers | {image_only + text_only:.2f} | {rate(image_only + text_only):.1f} |")
    print(f"| end to end through Dagster | {e2e:.2f} | {rate(e2e):.1f} |")
    print(f"| **images/s ratio, end to end / image tower alone** | **{image_only / e2e:.2f}×** | |")
    print(f"| images/s ratio, end to end / both towers | {(image_only + text_only) / e2e:.2f}× | |")
    # The image tower keeps every core busy (one torch thread: half its speed, see below), so
    # decoding on the same cores adds at least its CPU time spread over them.
    bound = image_only + decoding / os.cpu_count()
    print(f"| decode + preprocess alone, one thread | {decoding:.2f} | {rate(decoding):.1f} |")
    print(f"| end to end at best on {os.cpu_count()} CPUs: image tower + decoding spread over them | "
          f"{bound:.2f} | {rate(bound):.1f} |")
    print(f"| images/s ratio at best, end to end / image tower alone | {image_only / bound:.2f}× | |")

    forward_variants(encoder, tensors, args)


def forward_variants(encoder, tensors: list, args) -> None:
    model = encoder.model
    sample = list(batches(tensors, args.batch_size))
    reference = np.concatenate([encoder.encode_images(b) for b in sample])

    def run(function) -> tuple[float, float]:
        with torch.inference_mode():
            function(sample[0])  # warm-up
            began = time.perf_counter()
            out = np.concatenate([function(b) for b in sample])
            elapsed = time.perf_counter() - began
        out = out / np.linalg.norm(out, axis=1, keepdims=True)
        return elapsed, float(np.min(np.sum(out * reference, axis=1)))

    def fp32(batch):
        return model.encode_image(batch).float().numpy()

    def channels_last(batch):
        return model.encode_image(batch.contiguous(memory_format=torch.channels_last)).float().numpy()

    def bf16(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.encode_image(batch).float().numpy()

    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)

    def int8(batch):
        return quantized.encode_image(batch).float().numpy()

    threads = torch.get_num_threads()
    results = [("fp32 eager (baseline)", *run(fp32))]
    torch.set_num_threads(1)
    results.append(("fp32, 1 torch thread", *run(fp32)))
    torch.set_num_threads(threads)
    model_cl = model.to(memory_format=torch.channels_last)
    results.append(("fp32, channels-last input and weights", *run(channels_last)))
    model_cl.to(memory_format=torch.contiguous_format)
    results.append(("bf16 autocast", *run(bf16)))
    results.append(("int8 dynamic quantization (Linear layers)", *run(int8)))
    base = results[0][1]
    print(f"\nForward pass of the image tower, {args.images} images, batch {args.batch_size}:\n")
    print("| variant | seconds | speed-up | min cosine to fp32 |\n|---|---:|---:|---:|")
    for name, elapsed, cosine in results:
        print(f"| {name} | {elapsed:.2f} | {base / elapsed:.2f}× | {cosine:.4f} |")
    print(f"\ncommand: {' '.join([sys.executable.split('/')[-1], *sys.argv])}")


if __name__ == "__main__":
    main()
