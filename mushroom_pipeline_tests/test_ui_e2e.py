"""The Dagster UI's own API end to end: dagster-webserver and dagster-daemon as separate
processes on the embedded Postgres (dagster-postgres storage), a backfill by date range launched
through GraphQL and run by the daemon, partition statuses, lineage, schedule and sensor ticks."""

import base64
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import TEST_HOME
from .helpers import free_port, insert_readings, query

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAYS = ["2026-01-10", "2026-01-11", "2026-01-12"]
LOCATION = "mushroom_e2e"


def graphql(url: str, document: str, **variables) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": document, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    assert "errors" not in answer, answer["errors"]
    return answer["data"]


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory):
    """Webserver + daemon, as `make ui` runs them but as two processes, sharing Postgres storage."""
    dagster_home = tmp_path_factory.mktemp("dagster-home")
    # The project's instance config; the "join the community" dialog off, so screenshots show pages.
    (dagster_home / "dagster.yaml").write_text(
        (REPO / "dagster.yaml").read_text() + "\nnux:\n  enabled: false\n")
    workspace = dagster_home / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: mushroom_pipeline_tests.e2e_location\n"
        f"      location_name: {LOCATION}\n      working_directory: {REPO}\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "MUSHROOM_HOME": str(TEST_HOME)}
    port = free_port()
    logs = {name: open(dagster_home / f"{name}.log", "w") for name in ("webserver", "daemon")}
    processes = [
        # Own process groups: stopping them also stops their code servers and run workers.
        subprocess.Popen([BIN / "dagster-webserver", "-w", workspace, "-h", "127.0.0.1", "-p", str(port)],
                         env=env, cwd=REPO, stdout=logs["webserver"], stderr=subprocess.STDOUT,
                         start_new_session=True),
        subprocess.Popen([BIN / "dagster-daemon", "run", "-w", workspace],
                         env=env, cwd=REPO, stdout=logs["daemon"], stderr=subprocess.STDOUT,
                         start_new_session=True),
    ]
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                return True
        except OSError:
            assert all(p.poll() is None for p in processes), (dagster_home / "webserver.log").read_text()[-3000:]
            return False

    try:
        wait_for(up, 120, "the webserver")
        yield url, dagster_home
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for log in logs.values():
            log.close()


def test_a_backfill_by_date_range_runs_through_the_daemon(warehouse, dagster_ui):
    url, home = dagster_ui
    insert_readings(warehouse, [
        (room, metric, value + hour / 10, f"{day} {hour:02d}:00:00+00")
        for day in DAYS for room in ("601", "612")
        for metric, value in (("temperature_c", 16.0), ("humidity_pct", 90.0))
        for hour in range(24)
    ])
    launched = graphql(url, """
        mutation($params: LaunchBackfillParams!) {
          launchPartitionBackfill(backfillParams: $params) {
            __typename
            ... on LaunchBackfillSuccess { backfillId }
            ... on PythonError { message }
            ... on InvalidSubsetError { message }
          }
        }""", params={
            "partitionsByAssets": [
                {"assetKey": {"path": [key]}, "partitions": {"range": {"start": DAYS[0], "end": DAYS[-1]}}}
                for key in ("env_readings", "env_daily_stats")
            ],
            "title": "e2e backfill",
        })["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def finished():
        status = graphql(url, """
            query($id: String!) { partitionBackfillOrError(backfillId: $id) {
              ... on PartitionBackfill { status } } }""", id=backfill_id)["partitionBackfillOrError"]["status"]
        return status if status not in ("REQUESTED", "CANCELING", "FAILING") else None

    status = wait_for(finished, 300, "the daemon to finish the backfill")
    assert status in ("COMPLETED", "COMPLETED_SUCCESS"), (home / "daemon.log").read_text()[-4000:]

    stats = query(warehouse, "SELECT day::text AS day, count(*) AS n FROM mushroom.env_daily_stats GROUP BY 1 ORDER BY 1")
    assert stats.values.tolist() == [[day, 4] for day in DAYS]  # 2 rooms × 2 metrics a day

    nodes = graphql(url, """
        { assetNodes { assetKey { path } dependencyKeys { path } dependedByKeys { path }
            assetPartitionStatuses { ... on TimePartitionStatuses { ranges { status startKey endKey } } } } }
        """)["assetNodes"]
    by_key = {n["assetKey"]["path"][0]: n for n in nodes}
    materialized = [r for r in by_key["env_daily_stats"]["assetPartitionStatuses"]["ranges"]
                    if r["status"] == "MATERIALIZED"]
    # (the every-minute schedule may have materialized yesterday too, meanwhile)
    assert (DAYS[0], DAYS[-1]) in [(r["startKey"], r["endKey"]) for r in materialized]

    def lineage(key, direction):
        return sorted("/".join(k["path"]) for k in by_key[key][direction])

    assert lineage("env_daily_stats", "dependencyKeys") == ["env_readings", "env_readings_quarantine"]
    assert lineage("env_readings", "dependencyKeys") == ["iot/env_readings"]  # the source
    assert lineage("env_readings", "dependedByKeys") == [
        "change_responses", "env_daily_stats", "env_readings_quarantine", "image_embeddings",
        "room_daily_charts", "sensor_health", "setpoint_compliance"]
    # a table the step writes beside its own: an asset downstream of it, upstream of its reader
    assert lineage("env_readings_quarantine", "dependedByKeys") == ["env_daily_stats"]
    assert lineage("image_embeddings", "dependencyKeys") == [
        "env_readings", "image_manifest", "room_batches"]
    assert lineage("setpoint_change_events", "dependencyKeys") == ["setpoint_snapshots"]
    assert {"env_readings", "env_daily_stats", "setpoint_snapshots", "setpoint_change_events",
            "image_manifest", "image_embeddings"} <= set(by_key)


def test_one_rooms_chart_shows_in_the_ui(dagster_ui):
    """The readings the backfill test stored, charted for one day by a run the daemon launches;
    the picture is in the materialization's metadata, which the asset's events page shows."""
    url, home = dagster_ui
    launched = graphql(url, """
        mutation($params: LaunchBackfillParams!) {
          launchPartitionBackfill(backfillParams: $params) {
            __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }
        """, params={"partitionsByAssets": [{"assetKey": {"path": ["room_daily_charts"]},
                                             "partitions": {"range": {"start": DAYS[-1], "end": DAYS[-1]}}}],
                     "title": "e2e chart"})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched

    def charted():
        answer = graphql(url, """
            { assetOrError(assetKey: {path: ["room_daily_charts"]}) { ... on Asset {
                assetMaterializations(limit: 1) { partition metadataEntries {
                  label __typename ... on MarkdownMetadataEntry { mdStr } } } } } }""")
        return answer["assetOrError"].get("assetMaterializations")

    event = wait_for(charted, 300, "the chart run")[0]
    assert event["partition"] == DAYS[-1]
    entries = {e["label"]: e for e in event["metadataEntries"]}
    chart = entries["chart_601"]
    assert chart["__typename"] == "MarkdownMetadataEntry"
    match = re.match(r"!\[room 601[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", chart["mdStr"])
    assert match, chart["mdStr"][:200]
    png = base64.b64decode(match[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] == 960

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "room_601_chart.png").write_bytes(png)  # the picture a grower opens
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        path = "/assets/room_daily_charts?view=events"
        chromium(f"--screenshot={ARTIFACTS / 'room_daily_charts-events.png'}", f"{url}{path}")
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", chromium("--dump-dom", f"{url}{path}")))
        assert "chart_601" in text and "chart_612" in text, text[:2000]


def _ticks(url: str, kind: str, name: str, location: str = LOCATION) -> list[dict]:
    """The ended ticks, newest first: one still in progress (STARTED) has no outcome to judge
    yet (a test once read a sensor's first tick mid-evaluation)."""
    field, selector_type = ("scheduleOrError", "ScheduleSelector") if kind == "schedule" else ("sensorOrError", "SensorSelector")
    name_field = "scheduleName" if kind == "schedule" else "sensorName"
    state = "scheduleState" if kind == "schedule" else "sensorState"
    answer = graphql(url, f"""
        query($selector: {selector_type}!) {{ {field}({kind}Selector: $selector) {{
          ... on {kind.capitalize()} {{ {state} {{ status ticks(limit: 10) {{ status runIds skipReason }} }} }}
          ... on PythonError {{ message }} }} }}""",
        selector={"repositoryLocationName": location, "repositoryName": "__repository__", name_field: name})
    # While the code location still loads, the answer is an error type: no ticks yet.
    ticks = answer[field].get(state, {}).get("ticks", [])
    return [tick for tick in ticks if tick["status"] != "STARTED"]


def test_the_daemon_ticks_schedules_and_sensors(dagster_ui):
    url, home = dagster_ui
    # The sensors run by default: the daemon evaluates each as soon as it starts.
    for sensor in ("late_env_readings_sensor", "new_images_sensor", "failed_check_alert"):
        ticks = wait_for(lambda s=sensor: _ticks(url, "sensor", s), 120, f"a tick of {sensor}")
        assert ticks[0]["status"] in ("SKIPPED", "SUCCESS"), (sensor, ticks)
    # A schedule ticks on its cron minute: the every-minute twin of daily_env_stats.
    ticks = wait_for(lambda: [t for t in _ticks(url, "schedule", "daily_env_stats_every_minute")
                              if t["status"] == "SUCCESS"], 150, "a schedule tick")
    assert len(ticks[0]["runIds"]) == 1


ARTIFACTS = Path(os.environ.get("MUSHROOM_TEST_ARTIFACTS", REPO / "test-artifacts"))


def chromium(*args: str) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    completed = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--window-size=1600,1000", "--virtual-time-budget=25000", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="Chromium is not installed (Debian: apt-get install chromium chromium-driver; .ci/run does)",
)
@pytest.mark.parametrize(("page", "path", "expected"), [
    ("asset-graph", "/asset-groups", ["Global asset lineage", "environment", "setpoints", "vision"]),
    ("environment-group", f"/locations/{LOCATION}/asset-groups/environment",
     ["env_readings", "env_daily_stats"]),
    # the backfilled days (and possibly yesterday, from the every-minute schedule)
    ("env_daily_stats-partitions", "/assets/env_daily_stats?view=partitions",
     ["env_daily_stats", "Partitions", r"Materialized \([34]\)", r"Failed \(0\)"]),
    # the raw sources (a node shows its key's last part and its kind), then env_readings'
    # lineage: the sources group upstream, the quarantine (its name cut short) beside the stats
    ("sources-group", f"/locations/{LOCATION}/asset-groups/sources",
     [r"\benv_readings\b.{0,120}Postgres", r"\bdevice_setpoints\b", r"camera_images.{0,120}S3"]),
    ("env_readings-lineage", "/assets/env_readings?view=lineage",
     [r"\bsources\b", r"env_re\S*_quarantine", "env_daily_stats"]),
    ("env_daily_stats-checks", "/assets/env_daily_stats?view=checks",
     ["yesterday_by_deadline", "coverage_per_room"]),
])
def test_the_browser_shows_the_asset_graph_and_the_partitions(dagster_ui, page, path, expected):
    url, _ = dagster_ui
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / f"{page}.png"
    chromium(f"--screenshot={screenshot}", f"{url}{path}")
    assert screenshot.stat().st_size > 10_000  # a rendered page, not a blank one
    dom = chromium("--dump-dom", f"{url}{path}")
    (ARTIFACTS / f"{page}.html").write_text(dom)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    missing = [pattern for pattern in expected if not re.search(pattern, text)]
    assert not missing, f"{missing} not on {path}; see {ARTIFACTS / (page + '.html')}"
