"""The commands users type: the demo (twice: same tables) and `dagster asset materialize`
with a partition range against a Postgres given by MUSHROOM_DATABASE_URL."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest
import sqlalchemy as sa

from mushroom_pipeline import embedded

from .helpers import free_port
from .test_ui_e2e import _ticks, wait_for

REPO = Path(__file__).resolve().parents[1]

BIN = Path(sys.executable).parent
TABLES = ["iot.env_readings", "mushroom.env_readings", "mushroom.env_readings_quarantine",
          "mushroom.env_daily_stats", "mushroom.image_embeddings"]


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo-home")
    yield home
    embedded.stop(home)


def run(args, env, timeout=300) -> str:
    completed = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parents[1]
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


def snapshot(url: str) -> dict[str, pd.DataFrame]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        # ordered by whole rows: two values at one instant (a conflicting duplicate) tie on any
        # shorter key, and their order then changes from run to run
        return {t: pd.read_sql_query(f"SELECT * FROM {t} r ORDER BY 1, 2, 3, 4, r::text", conn)
                for t in TABLES}


def test_the_demo_runs_twice_to_the_same_tables(demo_home):
    # No network here: the demo would pick random weights itself; said explicitly, it need not probe.
    env = {**os.environ, "MUSHROOM_HOME": str(demo_home), "MUSHROOM_CLIP_PRETRAINED": "random"}
    first_output = run([BIN / "mushroom-pipeline", "demo", "--days", "2"], env)
    assert "succeeded" in first_output and "stats_rows" in first_output
    assert "CLIP WEIGHTS: RANDOM" in first_output and "ViT-B-32/random" in first_output
    url = embedded.server_url(demo_home)
    first = snapshot(url)
    assert len(first["mushroom.env_daily_stats"]) == 2 * 4 * 3  # days × rooms × metrics
    assert len(first["mushroom.env_readings_quarantine"]) > 0
    assert len(first["mushroom.image_embeddings"]) == 2 * 4 * 3  # days × rooms × shots
    check_the_farms_language(url, first_output)
    run([BIN / "mushroom-pipeline", "demo", "--days", "2"], env)
    second = snapshot(url)
    for table in TABLES:
        pd.testing.assert_frame_equal(first[table], second[table], obj=table)
    # the runs went to Dagster's Postgres storage, where the UI will find them
    dagster_db = sa.create_engine(embedded.server_url(demo_home, embedded.DAGSTER_DATABASE))
    with dagster_db.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM runs").scalar() == 4
    dagster_db.dispose()


def check_the_farms_language(url: str, output: str) -> None:
    """The demo farm speaks as the farm's platform does (CONTRACTS.md, "The farm's catalog"), and
    the pipeline reads it with the catalog: aliases, deadbands, labels, batches. A 2-day demo's
    story is on its second day."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def rows(sql: str) -> list[tuple]:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql(sql)]

    days = [day for (day,) in rows("SELECT DISTINCT day FROM mushroom.env_daily_stats ORDER BY 1")]
    assert len(days) == 2
    story = days[1]
    rooms = {"607", "608", "611", "612"}
    assert {r for (r,) in rows("SELECT DISTINCT room FROM iot.env_readings")} == rooms
    assert {r for (r,) in rows("SELECT DISTINCT room FROM iot.device_setpoints")} == rooms
    assert {r for (r,) in rows("SELECT DISTINCT room FROM mushroom.env_daily_stats")} == rooms
    assert {m for (m,) in rows("SELECT DISTINCT metric FROM iot.env_readings")} == {
        "temperature", "humidity", "co2"}
    assert {m for (m,) in rows("SELECT DISTINCT metric FROM mushroom.env_daily_stats")} == {
        "temperature_c", "humidity_pct", "co2_ppm"}

    events = "mushroom.setpoint_change_events"
    assert rows(f"SELECT count(*) FROM {events} WHERE device ~ '^mushroom_info_'") == [(0,)]
    # ±20 ppm of read noise on every CO2 snapshot, under the 50 ppm deadband: only the real change
    co2 = rows(f"SELECT day, device, point, old_value - new_value FROM {events} "
               "WHERE point IN ('co2_on', 'co2_off')")
    assert len(co2) == 1 and co2[0][:3] == (story, "fresh_air_fan_612", "co2_on"), co2
    assert 60 <= co2[0][3] <= 140, co2  # 1200 → 1100, each ± 20
    assert rows(f"SELECT device, old_label, new_label FROM {events} WHERE point = 'control'") == [
        ("fresh_air_fan_611", "CO2 control", "timer")]
    assert rows(f"SELECT day, device, old_value, new_value FROM {events} WHERE point = 'temp_set'") \
        == [(story, "air_cooler_607", 16.5, 17.0)]
    # the humidifiers' ±0.3 % RH of noise is under their 1.0 deadband
    assert rows(f"SELECT count(*) FROM {events} WHERE device ~ '_humidifier_'") == [(0,)]
    light = rows(f"SELECT point, change_kind, min(new_label), max(new_label) FROM {events} "
                 "WHERE device ~ '^grow_light_' GROUP BY 1, 2 ORDER BY 1, 2")
    assert light == [(f"on_off{c}", kind, label, label) for c in range(1, 5)
                     for kind, label in (("switched_off", "off"), ("switched_on", "auto"))]

    # room 608's batch leaves and a new one enters on the story day: growth day 0
    new = rows("SELECT room, day, entry_date, growth_day, previous_entry_date < entry_date "
               "FROM mushroom.room_batches WHERE new_batch AND previous_entry_date IS NOT NULL")
    assert new == [("608", story, story, 0, True)], new
    assert rows("SELECT count(DISTINCT batch) FROM mushroom.room_batches WHERE room = '608'") == [(2,)]
    assert rows("SELECT count(*), count(problem) FROM mushroom.room_batches") == [(2 * 4, 0)]
    assert rows("SELECT count(*) FROM mushroom.env_daily_stats_by_batch WHERE growth_day IS NULL") \
        == [(0,)]
    assert "Batches (mushroom.room_batches)" in output and f"608/{story}" in output
    assert "new, replaced 608/" in output and "CO2 control (1) → timer (0)" in output

    # the insight story: 612's humidity sensor silent 09:00-12:00, 611's camera frozen, the
    # cooler's target change answered, a chart per room
    silent = rows("SELECT room, metric, longest_gap_min >= 180 FROM mushroom.sensor_health "
                  f"WHERE day = '{story}' AND longest_gap_min >= 170")
    assert ("612", "humidity_pct", True) in silent, silent
    frozen = rows("SELECT room FROM mushroom.camera_health "
                  f"WHERE day = '{story}' AND identical_frame_share >= 0.5")
    assert frozen == [("611",)], frozen
    assert rows("SELECT room, point, new_value FROM mushroom.change_responses "
                f"WHERE day = '{story}' AND metric = 'temperature_c'") == [("607", "temp_set", 17.0)]
    assert rows(f"SELECT count(*) FROM mushroom.room_daily_charts WHERE day = '{story}'") == [(4,)]
    assert "Silent (gap ≥ 3 h)" in output and "room_daily_charts" in output


def test_dagster_cli_materializes_a_partition_range_against_a_given_database(demo_home):
    url = embedded.server_url(demo_home)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE mushroom.env_daily_stats")
        days = [d.isoformat() for d in conn.exec_driver_sql(
            "SELECT DISTINCT measured_at::date FROM iot.env_readings ORDER BY 1").scalars()]
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(MUSHROOM_HOME=str(demo_home), MUSHROOM_DATABASE_URL=url.replace("+psycopg2", ""))
    run([BIN / "dagster", "asset", "materialize", "-m", "mushroom_pipeline.definitions",
         "--select", "env_readings,env_daily_stats", "--partition-range", f"{days[0]}...{days[-1]}"],
        env)
    with engine.connect() as conn:
        stats_days = conn.exec_driver_sql(
            "SELECT count(DISTINCT day), count(*) FROM mushroom.env_daily_stats").one()
    assert tuple(stats_days) == (len(days), len(days) * 12)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_the_ui_after_the_demo_launches_no_run_and_stops_within_10_s(demo_home, stop_signal):
    """`make ui` right after `make demo`, with nothing else set: the demo's CLIP weights come
    from its MUSHROOM_HOME, so the sensors find nothing to do; Ctrl-C or SIGTERM then stops the
    webserver, the daemon and their code servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSHROOM_") and k != "DAGSTER_HOME"}
    env["MUSHROOM_HOME"] = str(demo_home)
    dagster_db = sa.create_engine(embedded.server_url(demo_home, embedded.DAGSTER_DATABASE),
                                  poolclass=sa.pool.NullPool)

    def runs() -> int:
        with dagster_db.connect() as conn:
            return conn.exec_driver_sql("SELECT count(*) FROM runs").scalar()

    before = runs()
    port = free_port()
    log = open(demo_home / f"ui-{stop_signal.name}.log", "w")
    process = subprocess.Popen([BIN / "mushroom-pipeline", "ui", "--port", str(port)], env=env,
                               cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url, process), 120, "the webserver")
        for sensor in ("new_images_sensor", "late_env_readings_sensor"):
            ticks = wait_for(lambda s=sensor: _ticks(url, "sensor", s, location="mushroom_pipeline"),
                             120, f"a tick of {sensor}")
            assert ticks[0]["status"] == "SKIPPED" and not ticks[0]["runIds"], (sensor, ticks)
        assert runs() == before
        family = [process.pid, *(c.pid for c in psutil.Process(process.pid).children(recursive=True))]
        assert len(family) >= 4  # dagster dev, webserver, daemon, code server(s)
        process.send_signal(stop_signal)
        started = time.monotonic()
        process.wait(timeout=15)
        wait_for(lambda: not [p for p in family if psutil.pid_exists(p)
                              and psutil.Process(p).status() != psutil.STATUS_ZOMBIE],
                 10 - (time.monotonic() - started), "every UI process to stop", interval_s=0.2)
    finally:
        # The whole family, not only `dagster dev`: a daemon left behind by a failed assertion
        # goes on ticking sensors against the next run's demo home (same path), launching runs.
        if process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
        log.close()
        dagster_db.dispose()


def _up(url: str, process: subprocess.Popen) -> bool:
    assert process.poll() is None, "mushroom-pipeline ui exited"
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=2):
            return True
    except OSError:
        return False
