"""image_manifest → image_embeddings through Dagster on the real Postgres + pgvector, with a tiny
open_clip model built here (nothing can be downloaded): vectors equal open_clip's own forward
pass, bad images become failure rows, re-runs skip, a model change embeds again, search."""

import datetime as dt
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import numpy as np
import open_clip
import pytest
import sqlalchemy as sa
import torch
from PIL import Image

from mushroom_pipeline import cli
from mushroom_pipeline.definitions import database_resources
from mushroom_pipeline.defs.batches.assets import room_batches
from mushroom_pipeline.defs.environment.assets import env_readings
from mushroom_pipeline.defs.setpoints.assets import setpoint_snapshots
from mushroom_pipeline.defs.vision.checks import check_failure_rate
from mushroom_pipeline.defs.vision.embeddings import image_embeddings, prefetched
from mushroom_pipeline.defs.vision.manifest import image_manifest
from mushroom_pipeline.defs.vision.sensors import new_images_sensor
from mushroom_pipeline.images.decode import ImageRejected, decode_image
from mushroom_pipeline.images.describer import DescriberResource
from mushroom_pipeline.images.encoder import ClipEncoderResource
from mushroom_pipeline.images.search import nearest, stored_vector
from mushroom_pipeline.objectstore import LocalObjectStore, S3ObjectStore

from .helpers import (
    insert_readings,
    insert_setpoints,
    query,
    sensor_tick,
    sleeping_writers,
    wait_until,
)

DAY = "2025-12-24"
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A model config file and two checkpoints (two 'models') of a tiny CLIP."""
    folder = tmp_path_factory.mktemp("clip")
    config = folder / "mushroom-tiny.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    checkpoints = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        checkpoint = folder / f"tiny-{seed}.pt"
        torch.save(open_clip.create_model("mushroom-tiny").state_dict(), checkpoint)
        checkpoints.append(checkpoint)
    return config, checkpoints


def photo(seed: int, size=(48, 40), mode="RGB", fmt="JPEG", **save) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def key(room: str, name: str, day: str = DAY, ext: str = "jpg") -> str:
    return f"{room}/{day.replace('-', '')}/{name}_{day.replace('-', '')}120000.{ext}"


def resources(home, config, checkpoint, describer=None, **encoder) -> dict:
    return {
        **database_resources(),
        "object_store": LocalObjectStore(home=str(home)),
        "clip_encoder": ClipEncoderResource(architecture=str(config), pretrained=str(checkpoint),
                                            device="cpu", **{"batch_size": 3, "decode_threads": 2, **encoder}),
        "describer": DescriberResource(model=describer, device="cpu"),
    }


def run(res: dict, day: str = DAY, assets=(image_manifest, image_embeddings)):
    result = dg.materialize(list(assets), partition_key=day, resources=res, raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def materialized(result) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node("image_embeddings")[0].metadata.items()}


def check_result(result):
    return result.get_asset_check_evaluations()[0]


def stored(warehouse, model_like="%"):
    frame = query(warehouse, "SELECT object_key, model, embedding::text AS v, fused_embedding::text AS f, "
                             "context, description, source_mode, embedded_at FROM mushroom.image_embeddings "
                             "WHERE model LIKE %(m)s ORDER BY object_key", m=model_like)
    frame["v"] = frame["v"].map(lambda t: np.array(t[1:-1].split(","), dtype=np.float32))
    frame["f"] = frame["f"].map(lambda t: np.array(t[1:-1].split(","), dtype=np.float32))
    return frame.set_index("object_key")


def direct_forward(checkpoint, images: list[Image.Image]) -> np.ndarray:
    model, _, preprocess = open_clip.create_model_and_transforms("mushroom-tiny", pretrained=str(checkpoint))
    model.eval()
    with torch.no_grad():
        features = model.encode_image(torch.stack([preprocess(i) for i in images]))
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def test_embeddings_equal_open_clips_own_forward_pass(warehouse, tmp_path, tiny_clip):
    config, (checkpoint, _) = tiny_clip
    res = resources(tmp_path, config, checkpoint)
    store = res["object_store"]
    images = {key(room, f"cam{n}"): photo(10 * n + int(room)) for room in ("601", "612") for n in range(4)}
    images[key("612", "still", ext="png")] = photo(99, fmt="PNG")
    for k, data in images.items():
        store.put(k, data)

    result = run(res)
    rows = stored(warehouse)
    assert sorted(rows.index) == sorted(images)
    expected = direct_forward(checkpoint, [Image.open(io.BytesIO(images[k])).convert("RGB") for k in rows.index])
    np.testing.assert_allclose(np.stack(rows["v"]), expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(np.stack(rows["v"]), axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(np.stack(rows["f"]), axis=1), 1, atol=1e-5)
    assert rows["model"].str.match(r"^mushroom-tiny/file:tiny-1\.pt@[0-9a-f]{12}$").all()

    columns = dict(query(warehouse, "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                    "WHERE attrelid = 'mushroom.image_embeddings'::regclass AND attnum > 0")
                   .values.tolist())
    assert columns["embedding"] == "vector(16)" and columns["fused_embedding"] == "vector(16)"
    indexes = " ".join(query(warehouse, "SELECT indexdef FROM pg_indexes WHERE tablename = 'image_embeddings'")["indexdef"])
    assert "UNIQUE INDEX" in indexes and "(object_key, model)" in indexes
    assert "USING hnsw (embedding vector_cosine_ops)" in indexes
    assert "image_embeddings_model_room_day ON mushroom.image_embeddings USING btree (model, room, day)" in indexes
    meta = materialized(result)
    assert (meta["embedded"], meta["failed"], meta["weights"]) == (9, 0, "pretrained")
    # one context sentence per room (all shots at 12:00): the text tower ran twice, not 9 times
    assert meta["texts_encoded"] == 2
    sizes = query(warehouse, "SELECT DISTINCT width, height FROM mushroom.image_embeddings")
    assert sizes.values.tolist() == [[48, 40]]
    assert check_result(result).passed


def test_bad_images_become_failure_rows_never_a_crash_nor_a_silent_drop(warehouse, tmp_path, tiny_clip):
    config, (checkpoint, _) = tiny_clip
    res = resources(tmp_path, config, checkpoint)
    store = res["object_store"]
    good = photo(1)
    header = good[:len(good) // 2]
    huge = bytearray(photo(2, fmt="PNG"))  # a PNG whose header claims 20000 × 20000 pixels
    ihdr = huge.index(b"IHDR")
    huge[ihdr + 4:ihdr + 12] = struct.pack(">II", 20000, 20000)
    huge[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(huge[ihdr:ihdr + 17])))
    rotated = Image.open(io.BytesIO(photo(3, size=(60, 30))))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    bad = {
        key("601", "zero"): b"",
        key("601", "garbage"): b"this is not an image at all",
        key("601", "truncated"): header,
        key("601", "bomb", ext="png"): bytes(huge),
    }
    handled = {
        key("602", "cmyk"): photo(4, mode="CMYK"),
        key("602", "gray"): photo(5, mode="L"),
        key("602", "sixteen", ext="png"): _sixteen_bit_png(),
        key("602", "alpha", ext="png"): photo(6, mode="RGBA", fmt="PNG"),
        key("602", "palette", ext="png"): photo(7, mode="P", fmt="PNG"),
        key("602", "exif"): _save_jpeg(rotated, exif=exif),
        key("602", "plain"): good,
    }
    for k, data in {**bad, **handled}.items():
        store.put(k, data)

    result = run(res)
    rows = stored(warehouse)
    failures = query(warehouse, "SELECT object_key, reason, detail FROM mushroom.image_failures").set_index("object_key")
    assert set(rows.index) == set(handled)
    assert failures["reason"].to_dict() == {
        key("601", "zero"): "empty",
        key("601", "garbage"): "not_an_image",
        key("601", "truncated"): "truncated",
        key("601", "bomb", ext="png"): "too_large",
    }
    assert rows.loc[key("602", "cmyk"), "source_mode"] == "CMYK"
    assert rows.loc[key("602", "sixteen", ext="png"), "source_mode"].startswith("I")
    # EXIF orientation honoured: the vector is the upright image's.
    upright = Image.open(io.BytesIO(handled[key("602", "exif")])).transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_allclose(rows.loc[key("602", "exif"), "v"], direct_forward(checkpoint, [upright.convert("RGB")])[0], atol=1e-5)
    # 16-bit: scaled to 8 bits, not clipped to white
    assert np.std(rows.loc[key("602", "sixteen", ext="png"), "v"]) > 0

    meta = materialized(result)
    assert meta["failure_reasons"] == {"empty": 1, "not_an_image": 1, "truncated": 1, "too_large": 1}
    check = check_result(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "truncated" in check.description and "36%" in check.description  # 4 of 11


def _sixteen_bit_png() -> bytes:
    ramp = (np.linspace(0, 65535, 48 * 40).reshape(40, 48)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, "PNG")  # uint16 → mode I;16
    return buffer.getvalue()


def _save_jpeg(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **save)
    return buffer.getvalue()


def test_the_failure_rate_check_fires_above_ten_percent():
    assert not check_failure_rate({DAY: 100}, {DAY: {"corrupt": 11}}).passed
    assert check_failure_rate({DAY: 100}, {DAY: {"corrupt": 9}}).passed
    fired = check_failure_rate({DAY: 100, "2025-12-25": 10}, {DAY: {"corrupt": 1}, "2025-12-25": {"empty": 2}})
    assert not fired.passed and "2025-12-25: 20% failed" in fired.description and "empty × 2" in fired.description


def test_a_rerun_skips_unchanged_images_and_a_model_change_embeds_again(warehouse, tmp_path, tiny_clip):
    config, (first, second) = tiny_clip
    res = resources(tmp_path, config, first)
    store = res["object_store"]
    for n in range(4):
        store.put(key("601", f"cam{n}"), photo(n))
    run(res)
    before = stored(warehouse)

    again = materialized(run(res))
    assert (again["embedded"], again["skipped_unchanged"]) == (0, 4)
    after = stored(warehouse)
    assert after["embedded_at"].equals(before["embedded_at"])  # carried over, not recomputed

    store.put(key("601", "cam0"), photo(100))  # new bytes, new etag
    changed = materialized(run(res))
    assert (changed["embedded"], changed["skipped_unchanged"]) == (1, 3)

    other = materialized(run(resources(tmp_path, config, second)))
    assert (other["embedded"], other["other_model_rows"]) == (4, 4)
    both = query(warehouse, "SELECT model, count(*) AS n FROM mushroom.image_embeddings GROUP BY model")
    assert sorted(both["n"]) == [4, 4]
    assert stored(warehouse, "%tiny-1%")["embedded_at"].loc[key("601", "cam1")] == before["embedded_at"].loc[key("601", "cam1")]


def test_search_finds_an_image_first_for_its_own_vector(warehouse, tmp_path, tiny_clip):
    config, (checkpoint, _) = tiny_clip
    res = resources(tmp_path, config, checkpoint)
    store = res["object_store"]
    for day in (DAY, "2025-12-25"):
        for n in range(5):
            store.put(key("601", f"cam{n}", day), photo(n + (0 if day == DAY else 50)))
        run(res, day)
    model = res["clip_encoder"].model_id()
    for n in range(5):
        target = key("601", f"cam{n}")
        vector, day = stored_vector(warehouse, target, model)
        hits = nearest(warehouse, vector, model, limit=3)
        assert hits["object_key"].iloc[0] == target and hits["distance"].iloc[0] < 1e-5
        history = nearest(warehouse, vector, model, other_days_than=day, limit=3)
        assert len(history) == 3 and (history["day"].astype(str) != DAY).all()
    only_room = nearest(warehouse, vector, model, room="612")
    assert only_room.empty


def test_trimmed_text_encoding_equals_open_clips_encode_text(tiny_clip):
    config, (checkpoint, _) = tiny_clip
    encoder = ClipEncoderResource(architecture=str(config), pretrained=str(checkpoint), device="cpu").encoder()
    texts = ["Mushroom growing room 601 at 2025-12-24 12:00: humidity 91.0 %.", "white caps!", ""]  # '!' is token 0, as padding is
    with torch.no_grad():
        expected = encoder.model.encode_text(encoder.tokenizer(texts), normalize=True).numpy()
    np.testing.assert_allclose(encoder.encode_texts(texts), expected, atol=1e-5)


def test_random_weights_are_flagged(warehouse, tmp_path, tiny_clip):
    config, _ = tiny_clip
    res = resources(tmp_path, config, "random")
    res["object_store"].put(key("601", "cam"), photo(1))
    meta = materialized(run(res))
    assert meta["model"] == "mushroom-tiny/random" and meta["weights"].startswith("RANDOM")


def test_the_describer_and_environment_context_feed_the_fused_vector(warehouse, tmp_path, tiny_clip):
    config, (checkpoint, _) = tiny_clip
    describer_path = _tiny_describer(tmp_path / "describer")
    res = resources(tmp_path, config, checkpoint, describer=str(describer_path))
    insert_readings(warehouse, [  # the image below is captured at 12:00 (its file name)
        ("601", "temperature_c", 17.5, f"{DAY} 11:58:00+00"),
        ("601", "humidity_pct", 91.0, f"{DAY} 12:05:00+00"),
        ("601", "co2_ppm", 1200.0, f"{DAY} 13:00:00+00"),  # an hour away: not this image's
        ("602", "temperature_c", 25.0, f"{DAY} 12:00:00+00"),  # another room
    ])
    run(res, assets=[env_readings])
    data = photo(8)
    res["object_store"].put(key("601", "cam"), data)
    result = run(res)

    row = stored(warehouse).iloc[0]
    assert row["context"] == "Mushroom growing room 601 at 2025-12-24 12:00: temperature 17.5 °C, humidity 91.0 % RH."
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageTextToText,
        AutoTokenizer,
    )

    model = AutoModelForImageTextToText.from_pretrained(describer_path).eval()
    pixels = AutoImageProcessor.from_pretrained(describer_path)(
        images=[Image.open(io.BytesIO(data)).convert("RGB")], return_tensors="pt")["pixel_values"]
    tokens = model.generate(pixel_values=pixels, max_new_tokens=30)
    expected = AutoTokenizer.from_pretrained(describer_path).batch_decode(tokens, skip_special_tokens=True)[0].strip()
    assert row["description"] == expected and expected

    encoder = res["clip_encoder"].encoder()
    text = encoder.encode_texts([f"{row['context']} {row['description']}"])[0]
    fused = 0.7 * row["v"] + 0.3 * text
    np.testing.assert_allclose(row["f"], fused / np.linalg.norm(fused), atol=1e-5)
    assert materialized(result)["describer"] == str(describer_path)


def batch_info(room: str, at: str, entered: dt.date, growth_day: int | None = None) -> list[tuple]:
    """A snapshot of mushroom_info_<room>: the batch's entry date, bags, growth day if given."""
    values = {"in_year": entered.year, "in_month": entered.month, "in_day": entered.day,
              "in_num": 400, "in_day_num": growth_day}
    return [(room, f"mushroom_info_{room}", point, float(value), at)
            for point, value in values.items() if value is not None]


def test_the_context_sentence_carries_the_rooms_growth_day(warehouse, tmp_path, tiny_clip):
    config, (checkpoint, _) = tiny_clip
    res = resources(tmp_path, config, checkpoint)
    insert_setpoints(warehouse, batch_info("601", f"{DAY} 06:00", dt.date(2025, 12, 12), 12))
    insert_readings(warehouse, [("601", "temperature_c", 17.46, f"{DAY} 12:01:00+00")])
    run(res, assets=[env_readings, setpoint_snapshots, room_batches])
    store = res["object_store"]
    store.put(key("601", "cam"), photo(1))
    store.put(key("612", "cam"), photo(2))  # no batch device, no readings
    run(res)
    contexts = stored(warehouse)["context"].to_dict()
    assert contexts == {
        key("601", "cam"): "Mushroom growing room 601, growth day 12 (batch entered 2025-12-12), "
                           "at 2025-12-24 12:00: temperature 17.5 °C.",
        key("612", "cam"): "Mushroom growing room 612 at 2025-12-24 12:00: no environment readings.",
    }


D2 = "2025-12-25"


@pytest.fixture
def batch_history(warehouse, tmp_path, tiny_clip):
    """Room 601: a batch at growth day 10 on DAY, then a new batch (day 0) on D2; room 612 at
    day 2 on DAY (derived: no in_day_num). Images embedded on both days; returns the keys by
    (room, day) and the resources."""
    config, (checkpoint, _) = tiny_clip
    res = resources(tmp_path, config, checkpoint)
    insert_setpoints(warehouse, [
        *batch_info("601", f"{DAY} 06:00", dt.date(2025, 12, 14), 10),
        *batch_info("612", f"{DAY} 06:00", dt.date(2025, 12, 22)),
        *batch_info("601", f"{D2} 09:00", dt.date(2025, 12, 25), 0),
    ])
    images = {("601", DAY): 5, ("612", DAY): 2, ("601", D2): 3}
    keys = {}
    store = res["object_store"]
    for (room, day), count in images.items():
        keys[room, day] = [key(room, f"cam{n}", day) for n in range(count)]
        for n, k in enumerate(keys[room, day]):
            store.put(k, photo(100 * int(room) + 10 * n + int(day[-1])))
    for day in (DAY, D2):
        run(res, day, assets=[setpoint_snapshots, room_batches, image_manifest, image_embeddings])
    return keys, res


def test_search_by_growth_day_finds_past_batches_and_fills_its_limit(warehouse, batch_history, monkeypatch):
    keys, res = batch_history
    model = res["clip_encoder"].model_id()
    vector, _ = stored_vector(warehouse, keys["601", D2][0], model)
    tenth = nearest(warehouse, vector, model, growth_days=(10, 10), limit=3)
    assert len(tenth) == 3 and set(tenth["object_key"]) <= set(keys["601", DAY])
    assert set(tenth["batch"]) == {"601/2025-12-14"} and set(tenth["growth_day"]) == {10}
    young = nearest(warehouse, vector, model, growth_days=(0, 2))
    assert sorted(young["object_key"]) == sorted(keys["601", D2] + keys["612", DAY])
    assert young.set_index("object_key")["batch"].to_dict() == {
        **{k: "601/2025-12-25" for k in keys["601", D2]},
        **{k: "612/2025-12-22" for k in keys["612", DAY]},
    }
    assert nearest(warehouse, vector, model, growth_days=(3, 9)).empty
    everything = nearest(warehouse, vector, model, limit=20)
    assert len(everything) == 10 and everything["growth_day"].notna().all()

    # An index scan that gives up early (as hnsw.max_scan_tuples makes it on a big table with a
    # rare growth day) still leaves no answer short: the filtered rows are scanned exactly.
    with warehouse.begin() as conn:  # crowds of near neighbours from a day without a batch
        conn.exec_driver_sql(
            "INSERT INTO mushroom.image_embeddings (day, room, object_key, model, embedding) "
            "SELECT '2025-12-01', '601', 'filler' || n, %(model)s, v.embedding "
            "FROM generate_series(1, 500) n, LATERAL ("
            "  SELECT array_agg(x + (random() - 0.5) / 100 ORDER BY i)::vector AS embedding "
            "  FROM unnest(%(near)s::real[]) WITH ORDINALITY u(x, i) WHERE n > 0) v",
            {"model": model, "near": [float(x) for x in vector]})

    def starved(conn):
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off; "
                             "SET LOCAL hnsw.max_scan_tuples = 1")  # the HNSW scan, starved

    engine = warehouse.get_engine()
    sa.event.listen(engine, "begin", starved)
    # the HNSW path, as on a table where more rows than EXACT_SCAN_MAX_ROWS pass the filters
    monkeypatch.setattr("mushroom_pipeline.images.search.EXACT_SCAN_MAX_ROWS", 0)
    try:
        few = nearest(warehouse, vector, model, growth_days=(10, 10), limit=5, ef_search=1)
    finally:
        sa.event.remove(engine, "begin", starved)
    assert sorted(few["object_key"]) == sorted(keys["601", DAY])
    assert few.attrs["strategy"] == "hnsw+exact"  # the short answer's exact fallback


def cli_search(res: dict, *args: str) -> subprocess.CompletedProcess:
    """`mushroom-pipeline search` in its own process, on the test's database and tiny CLIP."""
    clip = res["clip_encoder"]
    env = {**os.environ, "MUSHROOM_CLIP_MODEL": clip.architecture,
           "MUSHROOM_CLIP_PRETRAINED": clip.pretrained, "MUSHROOM_CLIP_DEVICE": "cpu"}
    return subprocess.run([sys.executable, "-m", "mushroom_pipeline.cli", "search", *args],
                          env=env, capture_output=True, text=True, timeout=300)


def markdown_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def test_the_search_command_filters_by_growth_day(batch_history, capsys):
    keys, res = batch_history
    found = cli_search(res, "--text", "white caps", "--growth-day", "9..11", "--limit", "4")
    assert found.returncode == 0, found.stderr[-3000:]
    rows = markdown_rows(found.stdout)
    assert len(rows) == 4 and {r["object_key"] for r in rows} <= set(keys["601", DAY])
    assert {(r["batch"], r["growth_day"]) for r in rows} == {("601/2025-12-14", "10")}
    assert cli.growth_day_range("2") == (2, 2) and cli.growth_day_range(" 0 .. 12") == (0, 12)

    for wrong in ("14..10", "ten", "3..", "-1", "1.5"):  # refused before anything is loaded
        with pytest.raises(SystemExit) as refused:
            cli.main(["search", "--text", "white caps", "--growth-day", wrong])
        error = capsys.readouterr().err
        assert refused.value.code == 2 and f"--growth-day: {wrong!r}" in error, error
        assert "a range of them (10..14)" in error


def _tiny_describer(folder) -> object:
    """A VisionEncoderDecoder captioner (tiny ViT + GPT-2) with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GPT2Config,
        PreTrainedTokenizerFast,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    words = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "mushroom", "cap", "white", "brown", "young",
             "mature", "cluster", "stem"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    encoder = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, image_size=32, patch_size=16)
    decoder = GPT2Config(vocab_size=len(words), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    torch.manual_seed(3)
    model = VisionEncoderDecoderModel(config=config)
    generation = model.generation_config
    generation.decoder_start_token_id, generation.pad_token_id, generation.eos_token_id = 1, 0, 2
    generation.min_new_tokens, generation.bad_words_ids = 3, [[0], [1], [3]]  # a caption of words
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", bos_token="[BOS]",
                            eos_token="[EOS]", unk_token="[UNK]").save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_the_new_images_sensor_requests_days_with_images_not_yet_embedded(warehouse, tmp_path, tiny_clip):
    config, (checkpoint, _) = tiny_clip
    res = resources(tmp_path, config, checkpoint)
    store = res["object_store"]
    today = dt.datetime.now(dt.timezone.utc).date()
    days = [(today - dt.timedelta(days=n)).isoformat() for n in (2, 1)]
    for day in days:
        store.put(key("601", "cam", day), photo(1))
    run(res, days[0])
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor=None):
        return sensor_tick(new_images_sensor, instance, cursor, **{
            k: res[k] for k in ("object_store", "warehouse", "clip_encoder")})

    first = tick()
    assert [r.partition_key for r in first.run_requests] == [days[1]]
    assert first.run_requests[0].run_key.startswith(f"new_images:{days[1]}:")
    # the new images only: camera_health re-reads the whole day, at night
    assert [k.to_user_string() for k in first.run_requests[0].asset_selection] == [
        "image_manifest", "image_embeddings"]
    assert not tick(first.cursor).run_requests  # requested already
    store.put(key("601", "later", days[1]), photo(2))  # another image arrives: a new batch
    second = tick(first.cursor)
    assert [r.partition_key for r in second.run_requests] == [days[1]]
    assert second.run_requests[0].run_key != first.run_requests[0].run_key
    run(res, days[1])
    assert not tick().run_requests  # all embedded


def test_the_minio_backend_feeds_the_embeddings(warehouse, tmp_path, tiny_clip, s3_endpoint):
    config, (checkpoint, _) = tiny_clip
    from minio import Minio

    # moto keeps one S3 state per process: a bucket of its own keeps other tests' objects out.
    Minio(s3_endpoint, access_key="test", secret_key="test", secure=False).make_bucket("vision")
    res = resources(tmp_path, config, checkpoint)
    res["object_store"] = S3ObjectStore(endpoint=s3_endpoint, access_key="test",
                                              secret_key="test", bucket="vision")
    store = res["object_store"]
    store.put(key("611", "cam"), photo(1))
    store.put(key("611", "broken"), b"\xff\xd8 not really a jpeg")
    meta = materialized(run(res))
    assert (meta["embedded"], meta["failed"]) == (1, 1)


def test_a_model_of_another_dimension_fails_clearly(warehouse, tmp_path, tiny_clip):
    config, (checkpoint, _) = tiny_clip
    res = resources(tmp_path, config, checkpoint)
    res["object_store"].put(key("601", "cam"), photo(1))
    run(res)
    wide = tmp_path / "mushroom-wide.json"
    wide.write_text(json.dumps({**TINY, "embed_dim": 24}))
    res["clip_encoder"] = ClipEncoderResource(architecture=str(wide), pretrained="random", device="cpu")
    result = dg.materialize([image_manifest, image_embeddings], partition_key=DAY, resources=res,
                            raise_on_error=False)
    assert not result.success
    assert "vector(16)" in str(result.all_events) and "vector(24)" in str(result.all_events)


KILLED_EMBEDDING = """
import sys
import dagster as dg
from mushroom_pipeline_tests.test_vision import DAY, image_embeddings, resources
home, config, checkpoint = sys.argv[1:4]
dg.materialize([image_embeddings], partition_key=DAY,
               resources=resources(home, config, checkpoint, batch_size=2, chunk_images=4))
"""


def test_a_run_killed_mid_day_keeps_its_vectors_and_the_retry_embeds_only_the_rest(
        warehouse, tmp_path, tiny_clip):
    config, (checkpoint, _) = tiny_clip
    res = resources(tmp_path, config, checkpoint, batch_size=2, chunk_images=4)
    run(res, "2025-12-20")  # a day without images: the tables exist, the trigger can go on them
    store = res["object_store"]
    images = {key("607", f"cam{n:02d}"): photo(n) for n in range(20)}
    for k, data in images.items():
        store.put(k, data)
    run(res, assets=(image_manifest,))
    # The third chunk's commit stalls: that is when the process is killed (kill -9).
    with warehouse.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION mushroom.stall() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF (SELECT count(*) FROM mushroom.image_embeddings_pending) >= 8 THEN "
            "PERFORM pg_sleep(60); END IF; RETURN NULL; END $$; "
            "CREATE TRIGGER stall BEFORE INSERT ON mushroom.image_embeddings_pending "
            "FOR EACH STATEMENT EXECUTE FUNCTION mushroom.stall()")
    killed = subprocess.Popen(
        [sys.executable, "-c", KILLED_EMBEDDING, str(tmp_path), str(config), str(checkpoint)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: sleeping_writers(warehouse) > 0, 120, "the third chunk's commit")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER stall ON mushroom.image_embeddings_pending")
    pending = query(warehouse, "SELECT object_key FROM mushroom.image_embeddings_pending")
    assert len(pending) == 8  # two chunks committed before the kill
    assert query(warehouse, "SELECT count(*) AS n FROM mushroom.image_embeddings "
                            "WHERE day = %(d)s", d=DAY)["n"][0] == 0  # the day not swapped in

    meta = materialized(run(res, assets=(image_embeddings,)))
    assert (meta["resumed_from_earlier_attempt"], meta["embedded"]) == (8, 12)
    rows = stored(warehouse)
    assert sorted(rows.index) == sorted(images)
    expected = direct_forward(checkpoint, [Image.open(io.BytesIO(images[k])).convert("RGB")
                                           for k in rows.index])
    np.testing.assert_allclose(np.stack(rows["v"]), expected, atol=1e-5)  # resumed ones too
    assert query(warehouse, "SELECT count(*) AS n FROM mushroom.image_embeddings_pending")["n"][0] == 0
    # the killed run's failures staging table went with the next staging
    assert query(warehouse, "SELECT count(*) AS n FROM pg_tables "
                            "WHERE schemaname = 'mushroom_staging'")["n"][0] == 0


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_limits_apply_before_the_work(warehouse, tmp_path, tiny_clip):
    config, (checkpoint, _) = tiny_clip
    res = resources(tmp_path, config, checkpoint, max_image_mb=1)
    store = res["object_store"]
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (800, 1000, 3), dtype=np.uint8))
    big = _encoded(noise, "PNG")
    assert len(big) > 2**20  # a real PNG the decoder would read: rejected by its size alone
    small = Image.fromarray(np.full((40, 48, 3), 120, np.uint8))
    store.put(key("607", "big", ext="png"), big)
    store.put(key("607", "gif"), _encoded(small, "GIF"))  # named .jpg, as a reconfigured camera
    store.put(key("607", "webp"), _encoded(small, "WEBP"))
    store.put(key("607", "ok"), photo(1))

    meta = materialized(run(res))
    failures = query(warehouse, "SELECT object_key, reason, detail FROM mushroom.image_failures"
                     ).set_index("object_key")
    assert failures["reason"].to_dict() == {
        key("607", "big", ext="png"): "too_large",
        key("607", "gif"): "unsupported_format",
        key("607", "webp"): "unsupported_format",
    }
    assert f"{len(big):,} bytes" in failures.loc[key("607", "big", ext="png"), "detail"]
    assert "MUSHROOM_MAX_IMAGE_MB" in failures.loc[key("607", "big", ext="png"), "detail"]
    assert failures.loc[key("607", "webp"), "detail"].startswith("WebP")
    assert (meta["embedded"], meta["failed"]) == (1, 3)


def test_prefetching_stays_within_its_byte_budget():
    sizes = [30, 30, 30, 100, 10, 10, 10, 10, 50, 5, 20, 20]
    lock, started, consumed, peaks = threading.Lock(), set(), set(), []

    def prepare(i):
        with lock:
            started.add(i)
            held = started - consumed
            peaks.append((sum(sizes[j] for j in held), len(held)))
        time.sleep(0.01)
        return i * i

    results = []
    for item, value in prefetched(range(len(sizes)), prepare, threads=4, ahead=8, max_bytes=60,
                                  size=sizes.__getitem__):
        results.append((item, value))
        with lock:
            consumed.add(item)
    assert results == [(i, i * i) for i in range(len(sizes))]
    over = [(held, n) for held, n in peaks if held > 60]
    assert over == [(100, 1)]  # only the item larger than the budget, alone
    assert max(n for _, n in peaks) >= 3  # it does fetch ahead


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, on the bomb
def test_decoding_in_threads_leaves_the_warning_filters_alone():
    bomb = bytearray(photo(2, fmt="PNG"))  # 10000 × 10000: over Pillow's limit, under twice it
    ihdr = bomb.index(b"IHDR")
    bomb[ihdr + 4:ihdr + 12] = struct.pack(">II", 10000, 10000)
    bomb[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(bomb[ihdr:ihdr + 17])))
    good = photo(3)

    def reason(data: bytes) -> str:
        try:
            return f"ok {decode_image(data, 32).width}"
        except ImageRejected as rejected:
            return rejected.reason

    before = list(warnings.filters)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(reason, [bytes(bomb), good] * 100))
    assert results == ["too_large", "ok 48"] * 100
    assert warnings.filters == before
