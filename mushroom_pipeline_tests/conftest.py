"""Tests run against a real embedded Postgres + pgvector under a temporary MUSHROOM_HOME."""

import json
import os
import shutil
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

# The test session's variables. Of these only the farm's calendar is read at import (it shapes
# the partitions, see mushroom_pipeline.partitions); the rest when a test builds its resources.
TEST_HOME = Path(tempfile.mkdtemp(prefix="mushroom-test-"))
SESSION_VARIABLES = {
    "MUSHROOM_HOME": str(TEST_HOME),
    "MUSHROOM_TIMEZONE": "UTC",
    "MUSHROOM_START_DATE": "2015-01-01",  # the UCI readings are from February 2015
}
os.environ.update(SESSION_VARIABLES)

import pytest  # noqa: E402

from mushroom_pipeline import embedded  # noqa: E402
from mushroom_pipeline.demo.farm import SETPOINT_DDL, SOURCE_DDL  # noqa: E402
from mushroom_pipeline.resources import PostgresResource  # noqa: E402
from mushroom_pipeline_tests.helpers import free_port  # noqa: E402


def _shared_data() -> Path:
    """../shared/data beside this checkout, or beside the local repository it was cloned from
    (a clone in a scratch folder for a clean-clone check)."""
    repo = Path(__file__).resolve().parents[1]
    candidates = [repo.parent / "shared" / "data"]
    origin = subprocess.run(
        ["git", "-C", str(repo), "config", "--get", "remote.origin.url"],
        capture_output=True, text=True,
    ).stdout.strip()
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), candidates[0])


DATA = _shared_data()


@pytest.fixture(autouse=True)
def only_the_sessions_variables(monkeypatch):
    """A developer's own MUSHROOM_DATABASE_URL, DAGSTER_HOME… never reach a test (they are read
    at run time, so clearing them before each test is enough); a test sets what it needs."""
    for name in list(os.environ):
        if (name.startswith("MUSHROOM_") or name == "DAGSTER_HOME") and name not in SESSION_VARIABLES:
            monkeypatch.delenv(name)
    for name, value in SESSION_VARIABLES.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session", autouse=True)
def embedded_server():
    url = embedded.server_url(TEST_HOME)
    yield url
    embedded.stop(TEST_HOME)
    shutil.rmtree(TEST_HOME, ignore_errors=True)  # a session's server holds ~150 MB


@pytest.fixture
def warehouse() -> PostgresResource:
    """The warehouse (= source) database, emptied of the project's schemas."""
    resource = PostgresResource(home=str(TEST_HOME))
    with resource.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS mushroom CASCADE; DROP SCHEMA IF EXISTS iot CASCADE")
        conn.exec_driver_sql(SOURCE_DDL + SETPOINT_DDL)
    return resource


@pytest.fixture(scope="module")
def s3_endpoint():
    from minio import Minio
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"127.0.0.1:{port}"
    client = Minio(endpoint, access_key="test", secret_key="test", secure=False)
    client.make_bucket("mushroom-images")
    yield endpoint
    server.stop()


@pytest.fixture
def webhook():
    """A local HTTP endpoint recording the JSON alerts POSTed to it: (url, received)."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the http.server API)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", received
    server.shutdown()
