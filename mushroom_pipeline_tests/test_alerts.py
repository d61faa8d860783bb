"""Alerts for failed runs and failed asset checks: JSON POSTed to a webhook (a local HTTP
server here), or only logged when no webhook is set; a webhook that is down fails nothing."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest

from mushroom_pipeline.automation.alerts import (
    AlertWebhookResource,
    failed_check_alert,
    run_failure_alert,
)
from mushroom_pipeline.definitions import defs
from mushroom_pipeline.retries import TRANSIENT_RETRY

from .helpers import free_port


@pytest.fixture
def webhook():
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


@dg.asset
def always_fails():
    raise RuntimeError("the humidifier exploded")


@dg.asset(check_specs=[dg.AssetCheckSpec("coverage", asset="checked")])
def checked():
    yield dg.Output(1)
    yield dg.AssetCheckResult(check_name="coverage", passed=False,
                              severity=dg.AssetCheckSeverity.ERROR, description="room 612: 40%")


def test_a_failed_run_posts_an_alert(webhook):
    url, received = webhook
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([always_fails], instance=instance, raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_run_failure)
    with dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert", dagster_event=failure, dagster_instance=instance,
        dagster_run=result.dagster_run, resources={"alert_webhook": AlertWebhookResource(url=url)},
    ) as context:
        run_failure_alert(context.for_run_failure())
    assert len(received) == 1
    alert = received[0]
    assert alert["kind"] == "run_failure" and alert["run_id"] == result.run_id
    assert "always_fails" in alert["message"]


def test_a_failed_check_posts_once_and_a_passing_one_not(webhook):
    url, received = webhook
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([checked], instance=instance).success

    def tick(cursor=None, target=url):
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, repository_def=defs.get_repository_def(),
            resources={"alert_webhook": AlertWebhookResource(url=target)},
        ) as context:
            failed_check_alert.evaluate_tick(context)
            return context.cursor

    cursor = tick()
    assert [(a["kind"], a["asset"], a["check"], a["severity"], a["description"]) for a in received] == [
        ("asset_check_failed", "checked", "coverage", "ERROR", "room 612: 40%")]
    tick(cursor)
    assert len(received) == 1  # the cursor moved past it: no second alert


def test_without_a_webhook_alerts_are_logged_and_a_dead_webhook_fails_nothing(capfd):
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([checked], instance=instance).success
    for target in (None, f"http://127.0.0.1:{free_port()}/nobody-listens"):
        with dg.build_sensor_context(
            instance=instance, repository_def=defs.get_repository_def(),
            resources={"alert_webhook": AlertWebhookResource(url=target, timeout_s=2)},
        ) as context:
            failed_check_alert.evaluate_tick(context)
    logged = capfd.readouterr().err
    assert logged.count("ALERT {") == 2
    assert "not delivered" in logged


def test_every_asset_retries_transient_errors_and_the_heavy_steps_share_pools():
    for key in ("env_readings", "env_daily_stats", "setpoint_snapshots", "setpoint_change_events",
                "switch_daily_stats", "image_manifest", "image_embeddings"):
        assets_def = defs.resolve_assets_def(key)
        assert next(iter(assets_def.node_def.retry_policy and [assets_def.node_def.retry_policy])) == TRANSIENT_RETRY
    assert defs.resolve_assets_def("image_embeddings").node_def.pool == "clip"
    assert defs.resolve_assets_def("env_readings").node_def.pool == "postgres_heavy"
    assert defs.resolve_assets_def("setpoint_snapshots").node_def.pool == "postgres_heavy"
