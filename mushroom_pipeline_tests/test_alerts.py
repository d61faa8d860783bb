"""Alerts for failed runs and failed asset checks: JSON POSTed to a webhook (a local HTTP
server here), or only logged when no webhook is set; a webhook that is down fails nothing."""

import threading

import dagster as dg
import pytest

from mushroom_pipeline.defs.automation import alerts
from mushroom_pipeline.defs.automation.alerts import (
    AlertWebhookResource,
    failed_check_alert,
    run_failure_alert,
)
from mushroom_pipeline.definitions import defs
from mushroom_pipeline.retries import TRANSIENT_RETRY

from .helpers import free_port


@dg.asset
def always_fails():
    raise RuntimeError("the humidifier exploded")


@dg.asset(check_specs=[dg.AssetCheckSpec("coverage", asset="checked")])
def checked():
    yield dg.Output(1)
    yield dg.AssetCheckResult(check_name="coverage", passed=False,
                              severity=dg.AssetCheckSeverity.ERROR, description="room 612: 40%")


@dg.asset(check_specs=[dg.AssetCheckSpec("coverage", asset="passing")])
def passing():
    yield dg.Output(1)
    yield dg.AssetCheckResult(check_name="coverage", passed=True)


def tick(sensor, instance, cursor, url=None, timeout_s=5.0):
    """One evaluation of an alert sensor; returns (cursor after, skip message)."""
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, repository_def=defs().get_repository_def(),
        resources={"alert_webhook": AlertWebhookResource(url=url, timeout_s=timeout_s)},
    ) as context:
        result = sensor.evaluate_tick(context)
        return context.cursor, result.skip_message


def test_a_failed_run_posts_an_alert_and_the_first_tick_replays_no_history(webhook):
    url, received = webhook
    instance = dg.DagsterInstance.ephemeral()
    dg.materialize([always_fails], instance=instance, raise_on_error=False)  # before the sensor
    cursor, message = tick(run_failure_alert, instance, None, url)
    assert received == [] and "history is not replayed" in message
    result = dg.materialize([always_fails], instance=instance, raise_on_error=False)
    cursor, _ = tick(run_failure_alert, instance, cursor, url)
    assert [(a["kind"], a["run_id"]) for a in received] == [("run_failure", result.run_id)]
    assert "always_fails" in received[0]["message"]
    tick(run_failure_alert, instance, cursor, url)
    assert len(received) == 1  # the cursor moved past it: no second alert


def test_a_failed_check_posts_once_and_a_passing_one_not(webhook):
    url, received = webhook
    instance = dg.DagsterInstance.ephemeral()
    cursor, _ = tick(failed_check_alert, instance, None, url)
    assert dg.materialize([checked], instance=instance).success
    assert dg.materialize([passing], instance=instance).success
    cursor, _ = tick(failed_check_alert, instance, cursor, url)
    assert [(a["kind"], a["asset"], a["check"], a["severity"], a["description"]) for a in received] == [
        ("asset_check_failed", "checked", "coverage", "ERROR", "room 612: 40%")]
    tick(failed_check_alert, instance, cursor, url)
    assert len(received) == 1


def test_alerts_a_dead_webhook_could_not_take_are_sent_on_a_later_tick(webhook, capfd):
    url, received = webhook
    instance = dg.DagsterInstance.ephemeral()
    cursor, _ = tick(failed_check_alert, instance, None, url)
    for _ in range(3):
        assert dg.materialize([checked], instance=instance).success
    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
    cursor, message = tick(failed_check_alert, instance, cursor, dead, timeout_s=2)
    assert "0 alert(s) sent" in message
    logged = capfd.readouterr().err
    assert "not delivered" in logged and "nobody-listens" not in logged  # no URL (tokens) in logs
    tick(failed_check_alert, instance, cursor, url)
    assert len(received) == 3


def test_a_tick_sends_at_most_its_share_and_the_rest_follow(webhook, monkeypatch):
    monkeypatch.setattr(alerts, "MAX_ALERTS_PER_TICK", 2)
    url, received = webhook
    instance = dg.DagsterInstance.ephemeral()
    cursor, _ = tick(failed_check_alert, instance, None, url)
    for _ in range(5):
        assert dg.materialize([checked], instance=instance).success
    counts = []
    for _ in range(4):
        cursor, _ = tick(failed_check_alert, instance, cursor, url)
        counts.append(len(received))
    assert counts == [2, 4, 5, 5]


@pytest.mark.parametrize("url", ["hooks.example.com/T0KEN", "ftp://hooks.example.com/T0KEN",
                                 "https:///T0KEN"])
def test_a_bad_webhook_url_fails_the_code_location_without_echoing_it(monkeypatch, url):
    from mushroom_pipeline.definitions import alert_webhook_resource
    from mushroom_pipeline.settings import ConfigurationError

    monkeypatch.setenv("MUSHROOM_ALERT_WEBHOOK_URL", url)
    with pytest.raises(ConfigurationError, match="MUSHROOM_ALERT_WEBHOOK_URL") as raised:
        alert_webhook_resource()
    assert "T0KEN" not in str(raised.value)


@pytest.mark.parametrize("url", ["hooks.example.com/T0KEN", "http://[::1/T0KEN"])
def test_every_send_error_is_caught_and_logged_without_the_url(url, caplog):
    delivered = AlertWebhookResource(url=url).send({"kind": "test"}, dg.get_dagster_logger())
    assert delivered is False
    logged = caplog.text
    assert "not delivered" in logged and "T0KEN" not in logged


def test_a_webhook_answering_garbage_is_a_failed_send(caplog):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer_garbage():
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(b"this is not HTTP\r\n\r\n")
        connection.close()

    threading.Thread(target=answer_garbage, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/T0KEN"
    assert AlertWebhookResource(url=url).send({"kind": "test"}, dg.get_dagster_logger()) is False
    listener.close()
    assert "not delivered" in caplog.text and "T0KEN" not in caplog.text


def test_without_a_webhook_alerts_are_logged(capfd):
    instance = dg.DagsterInstance.ephemeral()
    cursor, _ = tick(failed_check_alert, instance, None)
    assert dg.materialize([checked], instance=instance).success
    tick(failed_check_alert, instance, cursor)
    assert capfd.readouterr().err.count("ALERT {") == 1


def test_every_asset_retries_transient_errors_and_the_heavy_steps_share_pools():
    for key in ("env_readings", "env_daily_stats", "setpoint_snapshots", "setpoint_change_events",
                "switch_daily_stats", "room_batches", "image_manifest", "image_embeddings",
                "setpoint_compliance", "change_responses"):
        assets_def = defs().resolve_assets_def(key)
        assert next(iter(assets_def.node_def.retry_policy and [assets_def.node_def.retry_policy])) == TRANSIENT_RETRY
    assert defs().resolve_assets_def("image_embeddings").node_def.pool == "clip"
    assert defs().resolve_assets_def("env_readings").node_def.pool == "postgres_heavy"
    assert defs().resolve_assets_def("setpoint_snapshots").node_def.pool == "postgres_heavy"
