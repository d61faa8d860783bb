"""A missing or unreachable database fails within seconds and names the variable to fix."""

import socket
import threading
import time

import dagster as dg
import pytest

from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.defs.environment.assets import env_daily_stats, env_readings
from mushroom_pipeline.resources import DatabaseUnavailableError, PostgresResource
from mushroom_pipeline.warehouse.io_manager import PostgresPandasIOManager

from .helpers import failure_text


@pytest.fixture
def silent_server():
    """A TCP port on loopback that accepts connections and never answers (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once it is closed


@pytest.mark.parametrize("server", ["refused", "silent"])
def test_unreachable_database_fails_fast_naming_the_variable(server, request):
    port = closed_port() if server == "refused" else request.getfixturevalue("silent_server")
    resource = PostgresResource(
        url=f"postgresql://farm:secret@127.0.0.1:{port}/farm", connect_timeout_s=3
    )
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as error:
        resource.get_engine()
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "MUSHROOM_DATABASE_URL" in message and f"127.0.0.1:{port}" in message
    assert "secret" not in message


def test_a_run_against_an_unreachable_source_fails_fast_with_the_message():
    source = PostgresResource(
        url=f"postgresql://farm@127.0.0.1:{closed_port()}/farm",
        url_variable="MUSHROOM_SOURCE_DATABASE_URL",
    )
    started = time.monotonic()
    result = dg.materialize(
        [env_readings, env_daily_stats],
        partition_key="2026-01-13",
        resources={
            "source_database": source,
            "warehouse": source,
            "io_manager": PostgresPandasIOManager(database=source),
            "farm_catalog": FarmCatalogResource(),
        },
        raise_on_error=False,
    )
    assert not result.success
    assert time.monotonic() - started < 10
    assert "MUSHROOM_SOURCE_DATABASE_URL" in failure_text(result)


def test_a_bad_timezone_names_its_variable(monkeypatch):
    from mushroom_pipeline.settings import ConfigurationError, load_settings

    monkeypatch.setenv("MUSHROOM_TIMEZONE", "Mars/Olympus_Mons")
    with pytest.raises(ConfigurationError, match="MUSHROOM_TIMEZONE"):
        load_settings()
