"""`mushroom-pipeline search` that knows the farm: day ranges, environment filters on the
readings at capture time, a distance cutoff, near-duplicates collapsed, and each hit's context
(readings, recent setpoint changes), as markdown or JSON. Real Postgres + pgvector, the tiny
CLIP of test_vision, the assets run through Dagster."""

import contextlib
import json
import types

import numpy as np
import pandas as pd
import pytest

from mushroom_pipeline import cli
from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.defs.environment.assets import env_readings
from mushroom_pipeline.defs.setpoints.assets import (
    setpoint_change_events,
    setpoint_snapshots,
)
from mushroom_pipeline.defs.vision.embeddings import image_embeddings
from mushroom_pipeline.defs.vision.manifest import image_manifest
from mushroom_pipeline.images import search
from mushroom_pipeline.images.search import Condition, nearest, parse_condition
from mushroom_pipeline.warehouse.frames import register_vectors
from mushroom_pipeline.warehouse.tables import ensure_vector_extension

from .helpers import insert_readings, insert_setpoints, query
from .test_vision import markdown_rows, photo, resources, run, tiny_clip  # noqa: F401

DAYS = ["2025-12-22", "2025-12-23", "2025-12-24"]
ROOMS = ["601", "612"]
HOURS = [10, 12, 14]
DUPLICATE = "601/20251224/dupb_20251224160000.jpg"  # the same bytes as dupa's


def image_key(room: str, day: str, name: str, hour: int) -> str:
    compact = day.replace("-", "")
    return f"{room}/{compact}/{name}_{compact}{hour:02d}0000.jpg"


def at(day: str, hour: int, minutes: float = 0) -> pd.Timestamp:
    return pd.Timestamp(f"{day} {hour:02d}:00", tz="UTC") + pd.Timedelta(minutes=minutes)


@pytest.fixture
def farm(warehouse, tmp_path, tiny_clip):  # noqa: F811
    """Two rooms × three days × three captures (10:00, 12:00, 14:00), plus one frame sent
    twice (601, last day, 16:00). Humidity readings around each capture: a nearest one at a few
    minutes, sometimes a farther one within the window that would pass where the nearest does
    not, sometimes none within ±15 minutes; a temperature at each capture. Setpoint changes in
    601 on the last day: temp_set at 10:00 (2 h before the 12:00 capture), the fan's mode at
    05:00 (7 h before it)."""
    config, (checkpoint, _) = tiny_clip
    res = resources(tmp_path, config, checkpoint)
    store = res["object_store"]
    images = []  # (key, room, day, captured_at)
    for d, day in enumerate(DAYS):
        for r, room in enumerate(ROOMS):
            for n, hour in enumerate(HOURS):
                k = image_key(room, day, f"cam{n}", hour)
                store.put(k, photo(1000 + 100 * d + 10 * r + n))
                images.append((k, room, day, at(day, hour)))
    twice = photo(7)
    for name in ("dupa", "dupb"):
        k = image_key("601", DAYS[2], name, 16)
        store.put(k, twice)
        images.append((k, "601", DAYS[2], at(DAYS[2], 16)))
    readings = []  # (room, metric, value, measured_at)
    for i, (k, room, _, captured) in enumerate(images):
        if k == DUPLICATE:
            continue  # the room's readings at 16:00 are there already
        humidity = 84.0 + (i * 7) % 13  # 84 … 96
        if i % 6 == 5:  # nothing within ±15 minutes: only a reading 20 minutes after
            readings.append((room, "humidity_pct", 99.0, captured + pd.Timedelta(minutes=20)))
        else:
            readings.append((room, "humidity_pct", humidity, captured + pd.Timedelta(minutes=i % 7 - 3)))
            if i % 4 == 1:  # farther but within the window: passes where the nearest may not
                readings.append((room, "humidity_pct", 99.0 if humidity < 90 else 80.0,
                                 captured - pd.Timedelta(minutes=14)))
        readings.append((room, "temperature", 15.0 + i % 5, captured))  # an alias: folded
    insert_readings(warehouse, [(room, metric, value, t.isoformat()) for room, metric, value, t in readings])
    last = DAYS[2]
    insert_setpoints(warehouse, [
        ("601", "fresh_air_fan_1", "mode", 1.0, f"{last} 04:00"),
        ("601", "fresh_air_fan_1", "mode", 2.0, f"{last} 05:00"),
        ("601", "air_cooler_1", "temp_set", 18.0, f"{last} 08:00"),
        ("601", "air_cooler_1", "temp_set", 16.5, f"{last} 10:00"),
    ])
    for day in DAYS:
        run(res, day, assets=[env_readings, setpoint_snapshots, setpoint_change_events,
                              image_manifest, image_embeddings])
    frame = pd.DataFrame(images, columns=["object_key", "room", "day", "captured_at"])
    stored = query(warehouse, "SELECT object_key, embedding::text AS v FROM mushroom.image_embeddings")
    vectors = {k: np.array(v[1:-1].split(","), dtype=np.float32) for k, v in stored.values}
    frame["vector"] = frame["object_key"].map(vectors)
    readings = pd.DataFrame(readings, columns=["room", "metric", "value", "measured_at"])
    readings["metric"] = readings["metric"].replace({"temperature": "temperature_c"})
    return types.SimpleNamespace(res=res, images=frame, readings=readings,
                                 model=res["clip_encoder"].model_id())


def reading_at_capture(farm, metric: str) -> pd.Series:
    """Per image: the value of the reading of `metric` nearest its capture time within ±15
    minutes, NaN without one (computed here in pandas, apart from the SQL)."""
    values = {}
    for image in farm.images.itertuples():
        own = farm.readings[(farm.readings["room"] == image.room) & (farm.readings["metric"] == metric)]
        gap = (own["measured_at"] - image.captured_at).abs()
        near = own[gap <= pd.Timedelta(minutes=15)].assign(gap=gap).sort_values("gap")
        values[image.object_key] = near["value"].iloc[0] if len(near) else np.nan
    return pd.Series(values)


def distances(farm, vector: np.ndarray) -> pd.Series:
    stacked, vector = np.stack(farm.images["vector"]).astype(np.float64), vector.astype(np.float64)
    cosine = stacked @ vector / (np.linalg.norm(stacked, axis=1) * np.linalg.norm(vector))
    return pd.Series(1 - cosine, index=farm.images["object_key"])


@pytest.fixture
def cli_search(farm, monkeypatch, capsys):
    """`mushroom-pipeline search …` in process, on the test's database and tiny CLIP; returns
    its standard output."""
    @contextlib.contextmanager
    def test_resources(*keys):
        yield types.SimpleNamespace(**farm.res)

    monkeypatch.setattr("mushroom_pipeline.definitions.resources_outside_a_run", test_resources)

    def search_command(*args: str) -> str:
        capsys.readouterr()
        cli.main(["search", *args])
        return capsys.readouterr().out

    return search_command


def test_environment_filters_pass_exactly_the_images_whose_nearest_reading_passes(farm, cli_search):
    humidity = reading_at_capture(farm, "humidity_pct")
    temperature = reading_at_capture(farm, "temperature_c")
    assert humidity.isna().sum() == 3  # images without a reading within ±15 minutes
    humid = set(humidity[humidity >= 90].index)
    assert 0 < len(humid) < len(farm.images)
    # the farther reading would pass some images the nearest one does not
    decoys = farm.readings[farm.readings["value"] == 99.0]
    assert len(decoys) > 3

    similar = farm.images["object_key"].iloc[0]
    found = json.loads(cli_search("--similar", similar, "--where", "humidity_pct>=90",
                                  "--limit", "50", "--json"))
    # --similar searches other days than its image's: the expectation too
    other_days = set(farm.images.loc[farm.images["day"] != DAYS[0], "object_key"])
    assert {hit["object_key"] for hit in found} == humid & other_days

    vector = farm.images["vector"].iloc[0]
    both = nearest(farm.res["warehouse"], vector, farm.model, limit=50, where=[
        Condition("humidity_pct", ">=", 90), Condition("temperature_c", "<", 17)])
    assert set(both["object_key"]) == humid & set(temperature[temperature < 17].index)
    not_90 = nearest(farm.res["warehouse"], vector, farm.model, limit=50,
                     where=[Condition("humidity_pct", "!=", 90)])
    assert set(not_90["object_key"]) == set(humidity[humidity.notna() & (humidity != 90)].index)

    # fewer than the filter passes: the nearest of them, as numpy ranks them
    top = nearest(farm.res["warehouse"], vector, farm.model, limit=3,
                  where=[Condition("humidity_pct", ">=", 90)])
    expected = distances(farm, vector)[sorted(humid)].sort_values()
    assert list(top["object_key"]) == list(expected.index[:3])
    np.testing.assert_allclose(top["distance"], expected.iloc[:3], atol=1e-5)


def test_from_and_to_bound_the_days_inclusively(farm, cli_search):
    vector = farm.images["vector"].iloc[0]
    hits = nearest(farm.res["warehouse"], vector, farm.model, limit=50,
                   day_from=DAYS[1], day_to=DAYS[2], room="612")
    expected = farm.images[(farm.images["day"] >= DAYS[1]) & (farm.images["room"] == "612")]
    assert sorted(hits["object_key"]) == sorted(expected["object_key"])
    rows = markdown_rows(cli_search("--similar", farm.images["object_key"].iloc[0],
                                    "--from", DAYS[1], "--to", DAYS[1], "--limit", "50"))
    assert sorted(r["object_key"] for r in rows) == sorted(
        farm.images.loc[farm.images["day"] == DAYS[1], "object_key"])
    one_day = markdown_rows(cli_search("--similar", farm.images["object_key"].iloc[0],
                                       "--day", DAYS[2], "--room", "601", "--limit", "50"))
    assert {r["object_key"] for r in one_day} == set(
        farm.images.loc[(farm.images["day"] == DAYS[2]) & (farm.images["room"] == "601"), "object_key"])


def test_max_distance_cuts_the_ranked_hits(farm):
    vector = farm.images["vector"].iloc[3]
    ranked = distances(farm, vector).sort_values()
    cutoff = float((ranked.iloc[5] + ranked.iloc[6]) / 2)
    hits = nearest(farm.res["warehouse"], vector, farm.model, limit=50, max_distance=cutoff)
    assert list(hits["object_key"]) == list(ranked.index[:6])
    assert (hits["distance"] <= cutoff).all()
    assert len(nearest(farm.res["warehouse"], vector, farm.model, limit=3, max_distance=cutoff)) == 3
    assert nearest(farm.res["warehouse"], vector, farm.model, limit=50, max_distance=1e-6).shape[0] == 1


def greedy_distinct(farm, vector: np.ndarray, day_other_than: str | None = None) -> list[str]:
    """The ranked keys less those within cosine distance 0.005 of a better-ranked one kept in
    their room (numpy, apart from the SQL)."""
    ranked = distances(farm, vector).sort_values(kind="stable")
    images = farm.images.set_index("object_key")
    ranked = ranked[images.loc[ranked.index, "day"] != day_other_than]
    kept: list[str] = []
    for k in ranked.index:
        v = images.loc[k, "vector"].astype(np.float64)
        if not any(images.loc[o, "room"] == images.loc[k, "room"]
                   and 1 - v @ images.loc[o, "vector"] / np.linalg.norm(v)
                   / np.linalg.norm(images.loc[o, "vector"]) <= 0.005 for o in kept):
            kept.append(k)
    return kept


def test_distinct_drops_a_duplicate_frame_and_still_fills_the_limit(farm, cli_search):
    original = image_key("601", DAYS[2], "dupa", 16)
    vector = farm.images.set_index("object_key").loc[original, "vector"]
    plain = nearest(farm.res["warehouse"], vector, farm.model, limit=4)
    assert set(plain["object_key"][:2]) == {original, DUPLICATE}  # the same frame, twice
    expected = greedy_distinct(farm, vector)
    assert len({original, DUPLICATE} & set(expected)) == 1
    # the tiny untrained CLIP puts photos close: some fall within 0.005 of another as well,
    # but most are kept, in both rooms
    assert len(farm.images) - 1 > len(expected) > len(farm.images) / 2
    distinct = nearest(farm.res["warehouse"], vector, farm.model, limit=4, distinct=True)
    assert len(distinct) == 4  # filled: more candidates than the limit were fetched
    assert list(distinct["object_key"])[1:] == expected[1:4]
    assert distinct["object_key"][0] in {original, DUPLICATE}
    everything = nearest(farm.res["warehouse"], vector, farm.model, limit=50, distinct=True)
    assert set(everything["object_key"]) - {original, DUPLICATE} == set(expected) - {original, DUPLICATE}
    assert len(everything) == len(expected)
    # --limit 9 from 4 × 9 candidates: the collapsed ones replaced from further down
    assert len(expected) >= 9
    rows = markdown_rows(cli_search("--similar", original, "--distinct", "--limit", "9"))
    assert [r["object_key"] for r in rows] == greedy_distinct(farm, vector, DAYS[2])[:9]


def test_json_gives_each_hit_its_readings_and_recent_changes(farm, cli_search):
    noon = image_key("601", DAYS[2], "cam1", 12)
    found = json.loads(cli_search("--similar", noon, "--from", DAYS[2], "--to", DAYS[2],
                                  "--room", "601", "--json", "--limit", "50"))
    # --similar looks at other days: the noon frame's own day asked for gives nothing
    assert found == []
    ten = image_key("601", DAYS[1], "cam0", 10)
    found = json.loads(cli_search("--similar", ten, "--day", DAYS[2], "--room", "601",
                                  "--json", "--limit", "50"))
    by_key = {hit["object_key"]: hit for hit in found}
    assert set(by_key) == set(farm.images.loc[(farm.images["day"] == DAYS[2])
                                              & (farm.images["room"] == "601"), "object_key"])
    hit = by_key[noon]
    assert set(hit) == {"object_key", "room", "day", "captured_at", "distance", "batch",
                        "growth_day", "readings", "recent_changes"}
    assert (hit["room"], hit["day"], hit["batch"], hit["growth_day"]) == ("601", DAYS[2], None, None)
    assert pd.Timestamp(hit["captured_at"]) == at(DAYS[2], 12)
    assert hit["distance"] == pytest.approx(
        distances(farm, farm.images.set_index("object_key").loc[ten, "vector"])[noon], abs=1e-5)
    humidity, temperature = (reading_at_capture(farm, m)[noon] for m in ("humidity_pct", "temperature_c"))
    expected = {"temperature_c": temperature}
    if not np.isnan(humidity):
        expected["humidity_pct"] = humidity
    assert hit["readings"] == pytest.approx(expected)
    # temp_set 2 h before: listed; the fan's mode 7 h before: not
    assert [(c["device"], c["point"], c["old_value"], c["new_value"], c["change_kind"])
            for c in hit["recent_changes"]] == [("air_cooler_1", "temp_set", 18.0, 16.5, "changed")]
    assert pd.Timestamp(hit["recent_changes"][0]["changed_at"]) == at(DAYS[2], 10)
    # the 10:00 capture: the fan's change 5 h before is listed, with the catalog's labels
    morning = by_key[image_key("601", DAYS[2], "cam0", 10)]["recent_changes"]
    assert [(c["point"], c["old_label"], c["new_label"]) for c in morning] == [
        ("mode", "auto", "manual"), ("temp_set", None, None)]
    assert by_key[image_key("601", DAYS[2], "cam2", 14)]["recent_changes"][0]["point"] == "temp_set"


def test_markdown_shows_the_context_as_text(farm, cli_search):
    ten = image_key("601", DAYS[1], "cam0", 10)
    text = cli_search("--similar", ten, "--day", DAYS[2], "--room", "601", "--limit", "50")
    header = next(line for line in text.splitlines() if line.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "object_key", "room", "day", "captured_at", "distance", "batch", "growth_day",
        "readings", "recent_changes"]
    rows = {r["object_key"]: r for r in markdown_rows(text)}
    noon = rows[image_key("601", DAYS[2], "cam1", 12)]
    assert noon["recent_changes"] == "10:00 air_cooler_1 temp_set 18→16.5"
    assert "temperature_c=" in noon["readings"]
    assert rows[image_key("601", DAYS[2], "cam0", 10)]["recent_changes"] == (
        "05:00 fresh_air_fan_1 mode auto→manual; 10:00 air_cooler_1 temp_set 18→16.5")
    assert cli_search("--similar", ten, "--day", DAYS[2], "--room", "699").strip() == "no images"


@pytest.mark.parametrize("wrong, problem", [
    ("humidity_pct>>90", "'>90' is not a number"),
    ("humidity_pct>abc", "'abc' is not a number"),
    ("humidity_pct>=90; DROP TABLE x", "'90; DROP TABLE x' is not a number"),
    ("humidity_pct>nan", "'nan' is not a number"),
    ("humidity_pct>1_0", "'1_0' is not a number"),
    ("humidity_pct>1e999", "'1e999' is not a finite number"),
    (">=90", "give <metric><op><number>"),
    ("humidity_pct 90", "give <metric><op><number>"),
    ("unknown_metric>1", ("unknown metric 'unknown_metric'; the metrics are temperature_c "
                          "(temperature), humidity_pct (humidity), co2_ppm (co2)")),
    ("humidity' OR 'x<5", "unknown metric \"humidity' OR 'x\""),
])
def test_a_bad_where_is_an_argparse_error_naming_the_problem(wrong, problem, capsys, monkeypatch):
    @contextlib.contextmanager
    def catalog_only(*keys):
        assert keys == ("farm_catalog",), "refused before the model or database"
        yield types.SimpleNamespace(farm_catalog=FarmCatalogResource())

    monkeypatch.setattr("mushroom_pipeline.definitions.resources_outside_a_run", catalog_only)
    with pytest.raises(SystemExit) as refused:
        cli.main(["search", "--text", "white caps", "--where", "humidity_pct>=1", "--where", wrong])
    error = capsys.readouterr().err
    assert refused.value.code == 2 and "argument --where" in error and problem in error, error


def test_conditions_parse_into_bound_values_and_whitelisted_operators():
    assert parse_condition("humidity_pct>=90") == ("humidity_pct", ">=", 90.0)
    assert parse_condition(" Temperature < -1.5e0 ") == ("Temperature", "<", -1.5)
    assert parse_condition("co2!=.5") == ("co2", "!=", 0.5)
    params = {}
    sql = search._condition_sql(Condition("humidity_pct", "!=", 90), 0, params)
    assert params["metric_0"] == "humidity_pct" and params["value_0"] == 90.0
    assert "humidity_pct" not in sql and "90" not in sql and "<> %(value_0)s" in sql
    with pytest.raises(ValueError):
        Condition("humidity_pct", ">= 0 OR true", 1.0)
    with pytest.raises(ValueError):
        Condition("humidity_pct", ">", float("inf"))
    for wrong in (["--day", "2025-12-24", "--from", "2025-12-23"], ["--from", "2025-12-24", "--to", "2025-12-23"],
                  ["--from", "24.12.2025"], ["--max-distance", "-1"], ["--limit", "0"]):
        with pytest.raises(SystemExit):
            cli.main(["search", "--text", "x", *wrong])


NOISE_DIM, NOISE_CLUSTERS, NOISE_ROOMS = 128, 800, 10


@pytest.fixture
def noise_floor(warehouse):
    """mushroom.image_embeddings (its real indexes) of 4,000 clustered vectors spread over 10
    rooms and 10 days: a room's filter leaves about one image per cluster, so past the query's
    own cluster its nearest are unrelated images at nearly the same distance (the "noise
    floor" of benchmarks/vector_search.py), where HNSW's walk finds others than numpy's."""
    rng = np.random.default_rng(13)
    centres = rng.normal(size=(NOISE_CLUSTERS, NOISE_DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(count):
        points = centres[rng.integers(0, NOISE_CLUSTERS, count)] + rng.normal(0, 1 / np.sqrt(NOISE_DIM), (count, NOISE_DIM))
        return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)

    count = 8000
    frame = pd.DataFrame({
        "object_key": [f"noise/{n:05d}.jpg" for n in range(count)],
        "room": [str(601 + n) for n in rng.integers(0, NOISE_ROOMS, count)],
        "day": [f"2025-12-{10 + n:02d}" for n in rng.integers(0, 10, count)],
    })
    frame["vector"] = list(draw(count))
    with warehouse.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS mushroom")
        ensure_vector_extension(conn)
        conn.exec_driver_sql(
            "CREATE TABLE mushroom.image_embeddings (day date, room text, object_key text, "
            f"model text, captured_at timestamptz, embedding vector({NOISE_DIM}))")
        conn.exec_driver_sql(
            "INSERT INTO mushroom.image_embeddings (day, room, object_key, model, embedding) "
            "SELECT d, r, k, 'noise', v::vector FROM unnest(%(days)s::date[], %(rooms)s::text[], "
            "%(keys)s::text[], %(vectors)s::text[]) AS u(d, r, k, v)",
            {"days": list(frame["day"]), "rooms": list(frame["room"]), "keys": list(frame["object_key"]),
             "vectors": ["[" + ",".join(f"{x:.7g}" for x in v) + "]" for v in frame["vector"]]})
        for statement in image_embeddings_indexes():
            conn.exec_driver_sql(statement.format(table="mushroom.image_embeddings"))
        conn.exec_driver_sql("ANALYZE mushroom.image_embeddings")
    return types.SimpleNamespace(frame=frame, queries=draw(20))


def image_embeddings_indexes():
    from mushroom_pipeline.defs.vision.embeddings import EMBEDDING_INDEXES

    return EMBEDDING_INDEXES


def numpy_nearest(frame: pd.DataFrame, vector: np.ndarray, k: int) -> list[str]:
    """The exact top k by cosine distance (ties by key), in float64 apart from the SQL."""
    stacked = np.stack(frame["vector"]).astype(np.float64)
    distance = 1 - stacked @ vector / (np.linalg.norm(stacked, axis=1) * np.linalg.norm(vector))
    ranked = pd.DataFrame({"key": frame["object_key"].to_numpy(), "d": distance}).sort_values(["d", "key"])
    return list(ranked["key"][:k])


@contextlib.contextmanager
def index_scans_preferred(warehouse):
    """The planner on a 4,000-row table would sort a sequential scan: the HNSW index is made
    the cheaper plan, as it is on a big table."""
    import sqlalchemy as sa

    def prefer(conn):
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off")

    engine = warehouse.get_engine()
    sa.event.listen(engine, "begin", prefer)
    try:
        yield
    finally:
        sa.event.remove(engine, "begin", prefer)


@pytest.mark.parametrize("room, day_from, day_to", [
    ("601", "2025-12-12", "2025-12-17"),  # about 480 rows
    (None, "2025-12-12", "2025-12-12"),  # one day of every room: about 800 rows
])
def test_a_selective_filter_scans_its_rows_exactly_where_the_hnsw_walk_misses(
        noise_floor, warehouse, room, day_from, day_to):
    frame = noise_floor.frame
    chosen = frame[((frame["room"] == room) if room else True) & frame["day"].between(day_from, day_to)]
    assert len(chosen) <= search.EXACT_SCAN_MAX_ROWS  # selective
    wrong_by_hnsw = 0
    with index_scans_preferred(warehouse):  # the HNSW index as the planner picks it on a big table
        for vector in noise_floor.queries:
            expected = numpy_nearest(chosen, vector, 10)
            hits = nearest(warehouse, vector, "noise", room=room, day_from=day_from, day_to=day_to)
            assert hits.attrs["strategy"] == "exact"
            assert list(hits["object_key"]) == expected
            walked = nearest(warehouse, vector, "noise", room=room, day_from=day_from,
                             day_to=day_to, exact_max_rows=0)  # the HNSW scan alone
            assert walked.attrs["strategy"] == "hnsw"
            wrong_by_hnsw += list(walked["object_key"]) != expected
    # The data is one where the HNSW scan alone (the search before the exact path) goes wrong
    # when the day range is the only filter: the whole graph is walked. A room's walk goes
    # through its bucket's own graph, where a few days of the room are a large share.
    if room is None:
        assert wrong_by_hnsw >= 3


def test_an_unselective_search_walks_the_hnsw_index(noise_floor, warehouse, monkeypatch):
    import sqlalchemy as sa

    # 8,000 rows; the bound lowered so that the model alone is unselective and a room is not
    monkeypatch.setattr(search, "EXACT_SCAN_MAX_ROWS", 2000)
    sent = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "WITH hits" in statement:
            sent.append((statement, parameters))

    engine = warehouse.get_engine()
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with index_scans_preferred(warehouse):
            vector = noise_floor.queries[0]
            everything = nearest(warehouse, vector, "noise")
            one_room = nearest(warehouse, vector, "noise", room="605")
            one_room_walked = nearest(warehouse, vector, "noise", room="605", exact_max_rows=0)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert everything.attrs["strategy"] == "hnsw" and one_room.attrs["strategy"] == "exact"
    assert list(one_room["object_key"]) == numpy_nearest(
        noise_floor.frame[noise_floor.frame["room"] == "605"], vector, 10)
    assert len(set(everything["object_key"]) & set(numpy_nearest(noise_floor.frame, vector, 10))) >= 8

    def plan(statement, parameters, exact):
        with warehouse.begin() as conn:
            register_vectors(conn)
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            conn.exec_driver_sql("SET LOCAL enable_indexscan = off" if exact
                                 else "SET LOCAL hnsw.iterative_scan = relaxed_order")
            return "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))

    walked, scanned = plan(*sent[0], exact=False), plan(*sent[1], exact=True)
    assert "Index Scan using image_embeddings_embedding_idx" in walked
    assert "image_embeddings_embedding_idx" not in scanned
    assert "Bitmap Index Scan on image_embeddings_model_room_day" in scanned
    # a room's walk: its bucket's partial index, the bucket as the server hashes the room
    assert one_room_walked.attrs["strategy"] == "hnsw"
    assert set(one_room_walked["room"]) == {"605"} and len(one_room_walked) == 10
    from mushroom_pipeline.defs.vision.embeddings import ROOM_BUCKETS

    bucket = query(warehouse, f"SELECT hashtext('605') & {ROOM_BUCKETS - 1} AS bucket")["bucket"][0]
    room_walked = plan(*sent[2], exact=False)
    assert f"Index Scan using image_embeddings_room_bucket_{bucket} " in room_walked
    assert "image_embeddings_embedding_idx" not in room_walked


def test_repeated_searches_are_each_planned_for_their_own_values(noise_floor, warehouse):
    """psycopg prepares a statement sent 5 times on one connection, and Postgres may then plan
    it generically, blind to the room's bucket and the day range (it did in the benchmark at
    300k vectors): every search is planned for its own values. Here every transaction starts
    out preferring generic plans, as the server would once it found them no costlier."""
    import sqlalchemy as sa

    def prefer_generic(conn):
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")

    vector = noise_floor.queries[0]
    engine = warehouse.get_engine()
    engine.dispose()  # one pooled connection: the searches' and this test's
    sa.event.listen(engine, "begin", prefer_generic)
    try:
        for n in range(15):
            nearest(warehouse, vector, "noise", room=str(601 + n % NOISE_ROOMS), exact_max_rows=0)
    finally:
        sa.event.remove(engine, "begin", prefer_generic)
    with warehouse.begin() as conn:
        plans = conn.exec_driver_sql(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE '%%WITH hits%%'").all()
    assert plans, "the search's statement was prepared on the pooled connection"
    assert sum(generic for generic, _ in plans) == 0
    assert sum(custom for _, custom in plans) >= 10


def test_the_planner_knows_that_the_room_decides_its_bucket(noise_floor, warehouse):
    """The search's bucket clause is implied by its room filter: the row estimate of both
    together is the room's, not 0.5 % of it (which would make the HNSW walk look costly)."""
    from mushroom_pipeline.defs.vision.embeddings import room_bucket

    rows = int((noise_floor.frame["room"] == "605").sum())
    bucket = room_bucket("'605'")
    plan = query(warehouse, "EXPLAIN (FORMAT JSON) SELECT 1 FROM mushroom.image_embeddings e "
                 f"WHERE e.room = '605' AND {room_bucket('e.room')} = {bucket}")
    estimated = plan.iloc[0, 0][0]["Plan"]["Plan Rows"]
    assert rows / 2 <= estimated <= rows * 2, (estimated, rows)


@pytest.mark.parametrize("room, day_from", [(None, None), ("601", DAYS[1])])
def test_the_exact_path_answers_as_the_hnsw_path_does(farm, monkeypatch, room, day_from):
    """--distinct, --max-distance, candidates and the environment filters give the same answer
    by either path (on the farm's few images both are exact)."""
    warehouse, vector = farm.res["warehouse"], farm.images["vector"].iloc[4]
    cutoff = float(distances(farm, vector).sort_values().iloc[7])
    asks = [{"limit": 5}, {"limit": 4, "distinct": True}, {"limit": 50, "max_distance": cutoff},
            {"limit": 3, "candidates": 12},
            {"limit": 50, "distinct": True, "max_distance": cutoff},
            {"limit": 6, "where": [Condition("humidity_pct", ">=", 90)]}]
    for ask in asks:
        exact = nearest(warehouse, vector, farm.model, room=room, day_from=day_from, **ask)
        walked = nearest(warehouse, vector, farm.model, room=room, day_from=day_from,
                         exact_max_rows=0, **ask)
        assert exact.attrs["strategy"] == "exact" and walked.attrs["strategy"].startswith("hnsw")
        assert len(exact) > 0
        pd.testing.assert_frame_equal(exact.drop(columns="distance"), walked.drop(columns="distance"))
        np.testing.assert_allclose(exact["distance"], walked["distance"], atol=1e-6)


def test_the_filter_index_is_created_on_an_existing_table(farm, warehouse):
    """A warehouse of an earlier version (no (model, room, day) index, no room buckets) gains
    them at its next write."""
    from mushroom_pipeline.defs.vision.embeddings import ROOM_BUCKETS, _prepare_tables

    indexes = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'image_embeddings'"
    buckets = [f"image_embeddings_room_bucket_{bucket}" for bucket in range(ROOM_BUCKETS)]
    assert {"image_embeddings_model_room_day", *buckets} <= set(query(warehouse, indexes)["indexname"])
    with warehouse.begin() as conn:
        for index in ["image_embeddings_model_room_day", *buckets]:
            conn.exec_driver_sql(f"DROP INDEX mushroom.{index}")
    import dagster as dg

    window = dg.TimeWindow(pd.Timestamp(DAYS[0], tz="UTC"), pd.Timestamp(DAYS[1], tz="UTC"))
    _prepare_tables(warehouse, window, 16)
    found = query(warehouse, indexes).set_index("indexname")["indexdef"]
    assert found["image_embeddings_model_room_day"].endswith("USING btree (model, room, day)")
    for bucket, index in enumerate(buckets):
        assert found[index].endswith(
            f"USING hnsw (embedding vector_cosine_ops) WHERE ((hashtext(room) & {ROOM_BUCKETS - 1}) = {bucket})")
