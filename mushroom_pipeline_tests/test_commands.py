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
        return {t: pd.read_sql_query(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4", conn) for t in TABLES}


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
    run([BIN / "mushroom-pipeline", "demo", "--days", "2"], env)
    second = snapshot(url)
    for table in TABLES:
        pd.testing.assert_frame_equal(first[table], second[table], obj=table)
    # the runs went to Dagster's Postgres storage, where the UI will find them
    dagster_db = sa.create_engine(embedded.server_url(demo_home, embedded.DAGSTER_DATABASE))
    with dagster_db.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM runs").scalar() == 4
    dagster_db.dispose()


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
        if process.poll() is None:
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
