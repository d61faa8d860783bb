"""The user's own Postgres, as a first-class configuration, driven the way a user drives it: by
the commands (`dagster asset materialize`, `mushroom-pipeline ...`) in subprocesses, with only
MUSHROOM_* variables.

A second Postgres server (`own_postgres.py`) runs beside the suite's embedded one, set up the way
a real one is, not the way the embedded one is:
- pgvector is installed but not created in the warehouse database, and not trusted: the
  warehouse's owner cannot create it;
- the warehouse role `farm` owns its database but is no superuser and may not create databases
  (Dagster's storage is a database the DBA created for it: MUSHROOM_DAGSTER_STORAGE_URL);
- the farm's source is another database (`farm_iot`), read through a read-only role;
- the server's default timezone (Pacific/Kiritimati, UTC+14) is 22 hours from the farm's
  (America/Los_Angeles);
- URLs are plain `postgresql://role@/db?host=<socket>`, as a user writes them.

What it proves:
1. every asset materializes there; without the extension, image_embeddings fails naming the
   `CREATE EXTENSION` a DBA must run and the other assets succeed; once created, all succeed;
2. rows at 23:50 and 00:10 farm time land in the farm's day, whatever the server's timezone,
   as an independent pandas computation says (stats, readings, setpoint events, switch time,
   images);
3. a superuser URL to a fresh database (the pgvector image's shape) gets the extension created;
4. every CLI command (`search --text/--image/--similar`, `env`, `db start|stop`) resolves the
   MUSHROOM_* variables outside a run (database, S3 object store, bucket, webhook, CLIP);
5. `mushroom-pipeline demo` runs against an external database (warehouse = source), with the
   images in an S3 bucket.
"""

import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mushroom_pipeline_tests.own_postgres import (
    DAGSTER,
    OWNER_ROLE,
    READER_ROLE,
    SERVER_TIMEZONE,
    SOURCE,
    WAREHOUSE,
    OwnServer,
    create_database,
    seed_source,
    start_farm_server,
)

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
FARM_TIMEZONE = "America/Los_Angeles"
FARM = ZoneInfo(FARM_TIMEZONE)
D0, D1, D2, D3 = (dt.date(2025, 11, 11) + dt.timedelta(days=n) for n in range(4))
DAYS = [D1, D2]  # the partitions materialized
START_DATE = "2025-11-08"
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
RANGES = {"temperature_c": (-20, 60), "humidity_pct": (0, 100), "co2_ppm": (0, 50000)}


def local(day: dt.date, hour: int, minute: int) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=FARM)


# ---------------------------------------------------------------- the farm's data


def farm_readings() -> list[tuple]:
    """Readings around two local midnights (23:50 / 00:10), a duplicate, two invalid rows."""
    times = [local(D0, 23, 50), local(D1, 0, 10), local(D1, 6, 0), local(D1, 12, 0),
             local(D1, 23, 50), local(D2, 0, 10), local(D2, 12, 0), local(D2, 23, 50),
             local(D3, 0, 10)]
    base = {"temperature_c": 16.0, "humidity_pct": 90.0, "co2_ppm": 1000.0}
    rows = []
    for r, room in enumerate(("607", "608")):
        for m, (metric, value) in enumerate(base.items()):
            for t, at in enumerate(times):
                rows.append((room, metric, value + 0.37 * t + 1.3 * r - 0.11 * m * t, at))
    rows.append(("607", "temperature_c", 18.9, local(D1, 23, 50)))  # a duplicate: folded (mean)
    rows.append(("607", "co2_ppm", float("nan"), local(D1, 6, 30)))  # invalid: NaN
    rows.append(("608", "humidity_pct", 150.0, local(D2, 0, 10)))  # invalid: out of range
    return rows


def farm_setpoints() -> list[tuple]:
    """Snapshots at 23:50 and 00:10 local: changes at 00:10 belong to the day that starts."""
    rows = []
    for at, on, target in [(local(D0, 23, 50), 0, 16.5), (local(D1, 0, 10), 1, 16.5),
                           (local(D1, 23, 50), 1, 16.5), (local(D2, 0, 10), 0, 17.0),
                           (local(D2, 23, 50), 0, 17.0), (local(D3, 0, 10), 1, 17.0)]:
        rows.append(("607", "air_cooler_607", "on_off", float(on), at))
        rows.append(("607", "air_cooler_607", "temperature_setpoint", target, at))
    rows.append(("608", "fresh_air_fan_608", "mode", 1.0, local(D1, 23, 50)))  # first-ever: no change
    rows.append(("608", "fresh_air_fan_608", "mode", 2.0, local(D2, 0, 10)))
    return rows


IMAGE_TIMES = [("607", "cam1", local(D1, 0, 10)), ("607", "cam1", local(D1, 23, 50)),
               ("608", "cam1", local(D1, 12, 0)), ("607", "cam1", local(D2, 0, 10)),
               ("608", "cam1", local(D2, 23, 50)), ("608", "cam2", local(D2, 12, 0))]


def image_key(room: str, name: str, at: dt.datetime) -> str:
    return f"{room}/{at:%Y%m%d}/{name}_{at:%Y%m%d%H%M%S}.jpg"


def photo(seed: int, size=(48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def put_images(home: Path, images: dict[str, bytes], bucket: str = "mushroom-images") -> None:
    """The local folder store: $MUSHROOM_HOME/objects/<bucket>/<key>."""
    for key, data in images.items():
        path = home / "objects" / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# ---------------------------------------------------------------- independent expectations


def frame(rows, columns) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=columns)
    out["value"] = out["value"].astype(float)
    time = columns[-1]
    out[time] = pd.to_datetime(out[time], utc=True)
    out["day"] = out[time].dt.tz_convert(FARM_TIMEZONE).dt.date
    return out


def expected_readings() -> pd.DataFrame:
    """Valid readings, duplicates folded into their mean, of the materialized days."""
    f = frame(farm_readings(), ["room", "metric", "value", "measured_at"])
    low = f["metric"].map(lambda m: RANGES[m][0])
    high = f["metric"].map(lambda m: RANGES[m][1])
    valid = f[np.isfinite(f["value"]) & (f["value"] >= low) & (f["value"] <= high)]
    folded = (valid.groupby(["day", "room", "metric", "measured_at"])["value"]
              .agg(value="mean", source_rows="count").reset_index())
    return folded[folded["day"].isin(DAYS)].reset_index(drop=True)


def expected_stats() -> pd.DataFrame:
    readings = expected_readings()
    groups = readings.groupby(["day", "room", "metric"])["value"]
    stats = groups.agg(n="count", mean="mean", min="min", max="max",
                       std=lambda s: s.std(ddof=1))
    for q in (5, 25, 50, 75, 95):
        stats[f"p{q:02d}"] = groups.quantile(q / 100)
    return stats.reset_index()


def expected_events() -> pd.DataFrame:
    s = frame(farm_setpoints(), ["room", "device", "point", "value", "recorded_at"])
    s = s.sort_values(["room", "device", "point", "recorded_at"])
    s["old_value"] = s.groupby(["room", "device", "point"])["value"].shift()
    changes = s[s["old_value"].notna() & (s["value"] != s["old_value"])].copy()
    changes = changes.rename(columns={"recorded_at": "changed_at", "value": "new_value"})
    switch = (changes["point"] == "on_off") | changes["point"].str.endswith("_on_off")
    changes["change_kind"] = np.where(
        switch, np.where(changes["new_value"] == 1, "switched_on", "switched_off"), "changed")
    changes = changes[changes["day"].isin(DAYS)]
    return changes[["day", "room", "device", "point", "changed_at", "old_value", "new_value",
                    "change_kind"]].sort_values(["day", "room", "device", "point"]).reset_index(drop=True)


def expected_switch_minutes() -> dict[dt.date, tuple[float, float]]:
    """(minutes ON, minutes OFF) of air_cooler_607/on_off per local day: the state holds from
    each snapshot to the next; the day starts with the last state before it."""
    s = frame(farm_setpoints(), ["room", "device", "point", "value", "recorded_at"])
    s = s[s["point"] == "on_off"].sort_values("recorded_at")
    out = {}
    for day in DAYS:
        start = pd.Timestamp(local(day, 0, 0))
        end = pd.Timestamp(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=FARM))
        before = s[s["recorded_at"] < start]
        state, t, minutes = before["value"].iloc[-1], start, {0.0: 0.0, 1.0: 0.0}
        for at, value in s[(s["recorded_at"] >= start) & (s["recorded_at"] < end)][
                ["recorded_at", "value"]].itertuples(index=False):
            minutes[state] += (at - t).total_seconds() / 60
            state, t = value, at
        minutes[state] += (end - t).total_seconds() / 60
        out[day] = (minutes[1.0], minutes[0.0])
    return out


# ---------------------------------------------------------------- running the commands


def tiny_clip_config(folder: Path) -> Path:
    """An open_clip model config of our own (nothing can be downloaded here); its file name
    names the model."""
    config = folder / "mushroom-tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    return config


def user_env(home: Path, clip_config: Path, **variables: str) -> dict[str, str]:
    """A user's shell: no MUSHROOM_*/DAGSTER_HOME inherited from the test process, a fresh
    MUSHROOM_HOME, DAGSTER_HOME holding the repository's dagster.yaml, the farm's timezone, a
    tiny CLIP with random weights on the CPU."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MUSHROOM_") and k != "DAGSTER_HOME"}
    dagster_home = home / "dagster-home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    env.update(
        MUSHROOM_HOME=str(home),
        DAGSTER_HOME=str(dagster_home),
        MUSHROOM_TIMEZONE=FARM_TIMEZONE,
        MUSHROOM_START_DATE=START_DATE,
        MUSHROOM_CLIP_MODEL=str(clip_config),
        MUSHROOM_CLIP_PRETRAINED="random",
        MUSHROOM_CLIP_DEVICE="cpu",
        PYTHONWARNINGS="ignore",
    )
    env.update(variables)
    return env


def run(args: list, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def output(completed: subprocess.CompletedProcess) -> str:
    return completed.stdout[-6000:] + "\n--- stderr ---\n" + completed.stderr[-6000:]


IN_PROCESS = json.dumps({"execution": {"config": {"in_process": {}}}})


def materialize(env: dict[str, str], day: dt.date, select: str = "*",
                in_process: bool = False) -> subprocess.CompletedProcess:
    """`dagster asset materialize`; Dagster's default executor runs each step in a process of
    its own, `in_process` (a user's `--config-json`) saves those start-ups where the step
    processes themselves are not what a test is about."""
    config = ["--config-json", IN_PROCESS] if in_process else []
    return run([BIN / "dagster", "asset", "materialize", "-m", "mushroom_pipeline.definitions",
                "--select", select, "--partition", day.isoformat(), *config], env)


def step_outcomes(own: OwnServer, database: str, before: set[str]) -> list[dict[str, tuple]]:
    """For each run recorded in Dagster's storage since `before` (run ids), its steps'
    {step_key: (event type, event text)} from the event log."""
    runs = [r for r, in own.execute(database, "SELECT run_id FROM runs ORDER BY id")
            if r not in before]
    outcomes = []
    for run_id in runs:
        rows = own.execute(
            database,
            "SELECT step_key, dagster_event_type, event FROM event_logs WHERE run_id = %s "
            "AND dagster_event_type IN ('STEP_SUCCESS', 'STEP_FAILURE') ORDER BY id",
            (run_id,))
        outcomes.append({step: (kind, text) for step, kind, text in rows})
    return outcomes


def run_ids(own: OwnServer, database: str) -> set[str]:
    if not own.execute(database, "SELECT to_regclass('runs')")[0][0]:
        return set()
    return {r for r, in own.execute(database, "SELECT run_id FROM runs")}


def table(own: OwnServer, database: str, sql: str, params=None) -> pd.DataFrame:
    engine = own.engine(database)
    try:
        with engine.connect() as conn:
            return pd.read_sql_query(sql, conn, params=params)
    finally:
        engine.dispose()


def markdown_rows(text: str) -> pd.DataFrame:
    """The rows of the markdown table a command printed."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) >= 2, text
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return pd.DataFrame(cells[2:], columns=cells[0])


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def own_server():
    server = start_farm_server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clip_config(tmp_path_factory) -> Path:
    return tiny_clip_config(tmp_path_factory.mktemp("own-clip"))


@pytest.fixture(scope="module")
def farm_env(own_server, clip_config, tmp_path_factory) -> dict[str, str]:
    """The farm's source data in farm_iot, its images in a fresh MUSHROOM_HOME, and the
    variables of a user whose warehouse is `farm`@farm_warehouse."""
    seed_source(own_server, SOURCE, farm_readings(), farm_setpoints())
    home = tmp_path_factory.mktemp("own-farm-home")
    put_images(home, {image_key(room, name, at): photo(n) for n, (room, name, at)
                      in enumerate(IMAGE_TIMES)})
    return user_env(
        home, clip_config,
        MUSHROOM_DATABASE_URL=own_server.url(WAREHOUSE, OWNER_ROLE),
        MUSHROOM_SOURCE_DATABASE_URL=own_server.url(SOURCE, READER_ROLE),
        MUSHROOM_DAGSTER_STORAGE_URL=own_server.url(DAGSTER, OWNER_ROLE, driver="postgresql+psycopg2"),
    )


@pytest.fixture(scope="module")
def materialized(own_server, farm_env) -> dict:
    """What a user sees: all assets of D1 without the extension, then (after the DBA creates
    it) D1 again and D2. Each command's result and the steps it ran, in order."""
    assert not own_server.has_vector(WAREHOUSE)
    record = {}
    before = run_ids(own_server, DAGSTER)
    record["without_extension"] = materialize(farm_env, D1)
    record["without_extension_steps"] = step_outcomes(own_server, DAGSTER, before)
    record["extension_after_failure"] = own_server.has_vector(WAREHOUSE)
    own_server.execute(WAREHOUSE, "CREATE EXTENSION vector")  # the DBA, as the message says
    for day in DAYS:
        before = run_ids(own_server, DAGSTER)
        record[day] = materialize(farm_env, day, in_process=day != D1)
        record[(day, "steps")] = step_outcomes(own_server, DAGSTER, before)
    return record


# ---------------------------------------------------------------- the server is what we claim


def test_the_second_server_is_set_up_as_a_real_one(own_server):
    assert own_server.execute("postgres", "SHOW timezone")[0][0] == SERVER_TIMEZONE
    # `farm` owns its warehouse but may not create pgvector there (not a trusted extension)
    owner = own_server.execute(
        "postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (WAREHOUSE,))
    assert owner[0][0] == OWNER_ROLE
    role = own_server.execute(
        "postgres", "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s",
        (OWNER_ROLE,))
    assert tuple(role[0]) == (False, False, False)
    with pytest.raises(Exception, match="permission denied"):
        own_server.execute(WAREHOUSE, "CREATE EXTENSION vector", user=OWNER_ROLE)
    assert not own_server.has_vector(WAREHOUSE)
    # the reader reads iot.* and nothing more
    assert own_server.execute(SOURCE, "SELECT count(*) FROM iot.env_readings", user=READER_ROLE)
    with pytest.raises(Exception, match="read-only transaction"):
        own_server.execute(SOURCE, "CREATE TABLE iot.x (a int)", user=READER_ROLE)
    reader = own_server.engine(SOURCE, READER_ROLE)  # even when it turns read-only off
    with reader.connect() as conn, pytest.raises(Exception, match="permission denied"):
        conn.exec_driver_sql("SET default_transaction_read_only = off")
        conn.exec_driver_sql("CREATE TABLE iot.x (a int)")
    reader.dispose()


# ---------------------------------------------------------------- 1. every asset; the extension


def test_without_the_extension_only_image_embeddings_fails_naming_the_sql(own_server, materialized):
    completed = materialized["without_extension"]
    assert completed.returncode != 0, output(completed)
    (steps,) = materialized["without_extension_steps"]
    failed = {step: text for step, (kind, text) in steps.items() if kind == "STEP_FAILURE"}
    succeeded = {step for step, (kind, _) in steps.items() if kind == "STEP_SUCCESS"}
    assert set(failed) == {"image_embeddings"}, output(completed)
    assert {"env_readings", "env_daily_stats", "setpoint_snapshots", "setpoint_change_events",
            "switch_daily_stats", "image_manifest"} <= succeeded
    # the message names the statement the DBA must run, in the event log and on the terminal
    assert "CREATE EXTENSION" in failed["image_embeddings"]
    assert "VectorExtensionMissingError" in failed["image_embeddings"]
    assert "CREATE EXTENSION" in completed.stdout + completed.stderr
    assert not materialized["extension_after_failure"]  # the role could not, and said so
    day_rows = table(own_server, WAREHOUSE, "SELECT count(*) AS n FROM mushroom.env_daily_stats "
                                            "WHERE day = %(d)s", {"d": D1})
    assert day_rows["n"][0] > 0


def test_once_the_dba_created_the_extension_every_asset_succeeds(own_server, farm_env, materialized):
    for day in DAYS:
        completed = materialized[day]
        assert completed.returncode == 0, output(completed)
        (steps,) = materialized[(day, "steps")]
        assert {kind for kind, _ in steps.values()} == {"STEP_SUCCESS"}
        assert {"env_readings", "env_daily_stats", "setpoint_snapshots", "setpoint_change_events",
                "switch_daily_stats", "image_manifest", "image_embeddings"} <= set(steps)
    embedded = table(own_server, WAREHOUSE, "SELECT count(*) AS n FROM mushroom.image_embeddings")
    assert embedded["n"][0] == len(IMAGE_TIMES)
    # nothing embedded was started: the user's server is the only one
    home = Path(farm_env["MUSHROOM_HOME"])
    assert not list(home.rglob("postmaster.pid")) and not (home / "pgdata").exists()
    # nothing was written to the source database, and no staging table was left in the warehouse
    assert own_server.execute(SOURCE, "SELECT count(*) FROM pg_tables WHERE schemaname <> ALL("
                              "ARRAY['pg_catalog', 'information_schema', 'iot'])")[0][0] == 0


# ---------------------------------------------------------------- 2. the farm's day, not the server's


def test_rows_land_in_the_farms_day_whatever_the_servers_timezone(own_server, materialized):
    assert all(materialized[day].returncode == 0 for day in DAYS), output(materialized[D1])

    readings = table(own_server, WAREHOUSE,
                     "SELECT room, metric, measured_at, value, source_rows FROM mushroom.env_readings")
    readings["day"] = pd.to_datetime(readings["measured_at"], utc=True).dt.tz_convert(FARM_TIMEZONE).dt.date
    readings["measured_at"] = pd.to_datetime(readings["measured_at"], utc=True)
    expected = expected_readings()
    key = ["day", "room", "metric", "measured_at"]
    pd.testing.assert_frame_equal(
        readings[key + ["value", "source_rows"]].sort_values(key).reset_index(drop=True),
        expected[key + ["value", "source_rows"]].sort_values(key).reset_index(drop=True),
        check_dtype=False)
    per_day = readings.groupby("day").size().to_dict()
    assert per_day == expected.groupby("day").size().to_dict()

    stats = table(own_server, WAREHOUSE,
                  "SELECT day, room, metric, n, mean, min, max, std, p05, p25, p50, p75, p95 "
                  "FROM mushroom.env_daily_stats ORDER BY day, room, metric")
    pd.testing.assert_frame_equal(stats, expected_stats(), check_dtype=False, rtol=1e-9)

    events = table(own_server, WAREHOUSE,
                   "SELECT day, room, device, point, changed_at, old_value, new_value, change_kind "
                   "FROM mushroom.setpoint_change_events ORDER BY day, room, device, point")
    events["changed_at"] = pd.to_datetime(events["changed_at"], utc=True)
    pd.testing.assert_frame_equal(events, expected_events(), check_dtype=False)

    switches = table(own_server, WAREHOUSE,
                     "SELECT day, switch_ons, switch_offs, minutes_on, minutes_off "
                     "FROM mushroom.switch_daily_stats WHERE device = 'air_cooler_607' "
                     "AND point = 'on_off' ORDER BY day")
    assert switches["day"].tolist() == DAYS
    assert switches[["switch_ons", "switch_offs"]].values.tolist() == [[1, 0], [0, 1]]
    minutes = expected_switch_minutes()
    assert switches[["minutes_on", "minutes_off"]].values.ravel().tolist() == \
        pytest.approx([m for d in DAYS for m in minutes[d]])

    images = pd.DataFrame([(at.date(), room, image_key(room, name, at), pd.Timestamp(at).tz_convert("UTC"))
                           for room, name, at in IMAGE_TIMES],
                          columns=["day", "room", "object_key", "captured_at"])
    images = images.sort_values("object_key").reset_index(drop=True)
    for name in ("image_manifest", "image_embeddings"):
        got = table(own_server, WAREHOUSE,
                    f"SELECT day, room, object_key, captured_at FROM mushroom.{name} ORDER BY object_key")
        got["captured_at"] = pd.to_datetime(got["captured_at"], utc=True)
        pd.testing.assert_frame_equal(got, images, check_dtype=False, obj=name)


# ---------------------------------------------------------------- 3. the pgvector image's shape


def test_a_superuser_on_a_fresh_database_gets_the_extension_created(own_server, clip_config, tmp_path):
    database = create_database(own_server, "farm_superuser")
    readings = [r for r in farm_readings() if r[3].date() == D1]
    seed_source(own_server, database, readings, [r for r in farm_setpoints() if r[4].date() == D1])
    shots = [s for s in IMAGE_TIMES if s[2].date() == D1][:2]
    put_images(tmp_path, {image_key(room, name, at): photo(100 + n) for n, (room, name, at) in enumerate(shots)})
    env = user_env(tmp_path, clip_config, MUSHROOM_DATABASE_URL=own_server.url(database))
    assert not own_server.has_vector(database)

    completed = materialize(env, D1, in_process=True)
    assert completed.returncode == 0, output(completed)
    assert own_server.has_vector(database)
    got = table(own_server, database, "SELECT object_key FROM mushroom.image_embeddings ORDER BY 1")
    assert got["object_key"].tolist() == sorted(image_key(*s) for s in shots)


# ---------------------------------------------------------------- 4. the CLI outside a run


@pytest.fixture
def cli_env(own_server, farm_env, materialized, s3_endpoint, tmp_path, clip_config) -> dict[str, str]:
    """Every MUSHROOM_* variable a user sets, in a fresh MUSHROOM_HOME: the farm's databases,
    an S3 object store with its own bucket, an alert webhook, CLIP tuning."""
    from minio import Minio

    assert materialized[D2].returncode == 0, output(materialized[D2])
    client = Minio(s3_endpoint, access_key="test", secret_key="test", secure=False)
    if not client.bucket_exists("farm-cams"):
        client.make_bucket("farm-cams")
    return user_env(
        tmp_path, clip_config,
        **{k: farm_env[k] for k in ("MUSHROOM_DATABASE_URL", "MUSHROOM_SOURCE_DATABASE_URL",
                                    "MUSHROOM_DAGSTER_STORAGE_URL")},
        MUSHROOM_MINIO_ENDPOINT=s3_endpoint,
        MUSHROOM_MINIO_ACCESS_KEY="test",
        MUSHROOM_MINIO_SECRET_KEY="test",
        MUSHROOM_MINIO_SECURE="false",
        MUSHROOM_IMAGE_BUCKET="farm-cams",
        MUSHROOM_ALERT_WEBHOOK_URL="http://127.0.0.1:9/alerts",
        MUSHROOM_CLIP_BATCH_SIZE="2",
        MUSHROOM_CLIP_DECODE_THREADS="1",
        MUSHROOM_SETPOINT_CONFIG=str(REPO / "mushroom_pipeline" / "catalog" / "points.yaml"),
        MUSHROOM_METRIC_CATALOG=str(REPO / "mushroom_pipeline" / "catalog" / "metrics.yaml"),
    )


def search(env: dict[str, str], *args: str) -> pd.DataFrame:
    completed = run([BIN / "mushroom-pipeline", "search", *args], env, timeout=120)
    assert completed.returncode == 0, output(completed)
    return markdown_rows(completed.stdout)


ALL_KEYS = sorted(image_key(room, name, at) for room, name, at in IMAGE_TIMES)


def test_search_text(cli_env):
    hits = search(cli_env, "--text", "white caps")
    assert {"object_key", "room", "day", "distance"} <= set(hits.columns)
    assert sorted(hits["object_key"]) == ALL_KEYS
    assert hits["distance"].astype(float).is_monotonic_increasing


def test_search_image(cli_env, farm_env):
    room, name, at = IMAGE_TIMES[4]
    key = image_key(room, name, at)
    file = Path(farm_env["MUSHROOM_HOME"]) / "objects" / "mushroom-images" / key
    hits = search(cli_env, "--image", str(file))
    assert sorted(hits["object_key"]) == ALL_KEYS
    assert hits["object_key"][0] == key and float(hits["distance"][0]) < 1e-3


def test_search_similar_excludes_the_images_own_day(cli_env):
    room, name, at = IMAGE_TIMES[0]  # a D1 image
    hits = search(cli_env, "--similar", image_key(room, name, at))
    assert sorted(hits["object_key"]) == sorted(image_key(*s) for s in IMAGE_TIMES if s[2].date() == D2)
    assert set(hits["day"]) == {D2.isoformat()}


def test_env_prints_the_exports(cli_env):
    completed = run([BIN / "mushroom-pipeline", "env"], cli_env, timeout=60)
    assert completed.returncode == 0, output(completed)
    exports = dict(line.removeprefix("export ").split("=", 1)
                   for line in completed.stdout.splitlines() if line.startswith("export "))
    assert exports["MUSHROOM_HOME"].strip("'") == cli_env["MUSHROOM_HOME"]
    assert (Path(exports["DAGSTER_HOME"].strip("'")) / "dagster.yaml").is_file()
    assert not (Path(cli_env["MUSHROOM_HOME"]) / "pgdata").exists()


def test_db_start_and_stop_leave_the_users_server_alone(cli_env, own_server):
    databases = own_server.databases()
    started = run([BIN / "mushroom-pipeline", "db", "start"], cli_env, timeout=60)
    assert started.returncode == 0, output(started)
    assert "no embedded server to manage" in started.stdout + started.stderr
    stopped = run([BIN / "mushroom-pipeline", "db", "stop"], cli_env, timeout=60)
    assert stopped.returncode == 0, output(stopped)
    assert not (Path(cli_env["MUSHROOM_HOME"]) / "pgdata").exists()
    assert own_server.execute("postgres", "SELECT 1")[0][0] == 1  # still up
    assert own_server.databases() == databases


# ---------------------------------------------------------------- 5. the demo on an external database


def test_the_demo_runs_on_an_external_database_with_s3_images(own_server, clip_config, tmp_path,
                                                              s3_endpoint):
    from minio import Minio

    database = create_database(own_server, "farm_demo", owner=OWNER_ROLE, vector=True)
    storage = create_database(own_server, "farm_demo_dagster", owner=OWNER_ROLE)
    client = Minio(s3_endpoint, access_key="test", secret_key="test", secure=False)
    client.make_bucket("demo-cams")
    today = dt.datetime.now(FARM).date()
    env = user_env(
        tmp_path, clip_config,
        MUSHROOM_START_DATE=(today - dt.timedelta(days=10)).isoformat(),
        MUSHROOM_DATABASE_URL=own_server.url(database, OWNER_ROLE),
        MUSHROOM_DAGSTER_STORAGE_URL=own_server.url(storage, OWNER_ROLE, driver="postgresql+psycopg2"),
        MUSHROOM_MINIO_ENDPOINT=s3_endpoint,
        MUSHROOM_MINIO_ACCESS_KEY="test",
        MUSHROOM_MINIO_SECRET_KEY="test",
        MUSHROOM_IMAGE_BUCKET="demo-cams",
        MUSHROOM_ALERT_WEBHOOK_URL="http://127.0.0.1:9/alerts",
    )
    completed = run([BIN / "mushroom-pipeline", "demo", "--days", "1"], env, timeout=400)
    assert completed.returncode == 0, output(completed)
    yesterday = (today - dt.timedelta(days=1)).isoformat()
    assert f"{yesterday}: run" in completed.stdout and "succeeded" in completed.stdout
    summary = markdown_rows(completed.stdout)
    assert summary["day"].tolist() == [yesterday]
    assert int(summary["stats_rows"][0]) == 4 * 3 and int(summary["embedded"][0]) > 0

    keys = [o.object_name for o in client.list_objects("demo-cams", recursive=True)]
    assert keys and all(k.split("/")[1] == yesterday.replace("-", "") for k in keys)
    embedded = table(own_server, database, "SELECT count(*) AS n, min(day) AS d FROM mushroom.image_embeddings")
    assert embedded["n"][0] == int(summary["embedded"][0]) and embedded["d"][0].isoformat() == yesterday
    assert not (tmp_path / "pgdata").exists()
