"""The embedded server across restarts: a postmaster.pid left by a container restart whose PID
now belongs to another process, and a server that crashed under a running process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mushroom_pipeline import embedded
from mushroom_pipeline.resources import PostgresResource


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    yield home
    embedded.stop(home)


@pytest.fixture
def stranger():
    """A live process that is not a postmaster (what a restarted container gives a stale PID)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def stale_pid_file(home: Path, pid: int) -> None:
    """A postmaster.pid as Postgres writes it, naming `pid`."""
    pgdata = home / "pgdata"
    (pgdata / "postmaster.pid").write_text(
        f"{pid}\n{pgdata}\n{int(time.time()) - 3600}\n5432\n/tmp\nlocalhost\n  1234  5678\nready   \n"
    )


def query_one(home: Path) -> int:
    with PostgresResource(home=str(home)).begin() as conn:
        return conn.exec_driver_sql("SELECT 1").scalar()


def test_a_stale_pid_file_naming_another_process_is_not_a_running_server(home, stranger):
    assert query_one(home) == 1
    assert embedded.stop(home)
    stale_pid_file(home, stranger.pid)
    assert embedded.our_postmaster(home / "pgdata") is None
    # `db stop` signals nothing that is not our postmaster
    assert embedded.stop(home) is False
    assert stranger.poll() is None
    # and the next use starts the server instead of trusting the file
    stale_pid_file(home, stranger.pid)
    assert query_one(home) == 1
    postmaster = embedded.our_postmaster(home / "pgdata")
    assert postmaster is not None and postmaster.pid != stranger.pid
    assert stranger.poll() is None


def test_a_server_that_crashed_is_started_again_on_next_use(home):
    assert query_one(home) == 1
    crashed = embedded.our_postmaster(home / "pgdata")
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.wait(10)
    assert query_one(home) == 1  # the same process, the same cached engine
    assert embedded.our_postmaster(home / "pgdata").pid != crashed.pid


def test_a_live_servers_pid_file_read_while_rewritten_is_never_taken_for_stale(home):
    """Postgres rewrites postmaster.pid in place: a reader may find it empty for a moment.
    Removing a live server's file makes it shut itself down, so an empty read is read again."""
    import threading

    assert query_one(home) == 1
    pgdata = home / "pgdata"
    pid_file = pgdata / "postmaster.pid"
    content = pid_file.read_text()
    pid_file.write_text("")  # caught mid-rewrite
    threading.Timer(0.1, pid_file.write_text, (content,)).start()
    assert embedded._pid_file_is_stale(pgdata) is False
    embedded._remove_stale_pid_file(pgdata)
    assert pid_file.read_text() == content
    assert query_one(home) == 1
    # a file that stays unreadable names no writer: stale
    pid_file.write_text("")
    assert embedded._pid_file_is_stale(pgdata) is True
    pid_file.write_text(content)
