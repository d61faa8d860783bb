"""Alerts: failed runs and failed asset checks, POSTed as JSON to MUSHROOM_ALERT_WEBHOOK_URL.

Without a webhook the alert is only logged (the sensor's tick log in the UI). An alert is never
lost to a webhook that is down: each sensor reads the event log from its cursor and advances
the cursor only past the events it delivered (or that need no alert), so undelivered alerts are
sent on a later tick. A tick sends at most MAX_ALERTS_PER_TICK within TICK_BUDGET_S. The first
tick of a sensor starts at the end of the event log: it does not replay history.
"""

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

import dagster as dg
from pydantic import Field

from mushroom_pipeline.settings import ConfigurationError

WEBHOOK_VARIABLE = "MUSHROOM_ALERT_WEBHOOK_URL"
MAX_ALERTS_PER_TICK = 20
TICK_BUDGET_S = 30.0  # of Dagster's 60 s per tick: the rest is left for reading the event log
EVENTS_PER_READ = 200


def check_webhook_url(url: str) -> None:
    """An http(s) URL with a host; the message never repeats the URL (it may carry a token)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{WEBHOOK_VARIABLE} is not an http:// or https:// URL with a host "
            f"(scheme {parts.scheme or 'missing'!r}); fix or unset it"
        )


class AlertWebhookResource(dg.ConfigurableResource):
    url: str | None = Field(default=None, description=f"{WEBHOOK_VARIABLE}; unset → log only")
    timeout_s: float = 5.0

    def send(self, alert: dict, log) -> bool:
        """Posts `alert`; True when delivered, or when no webhook is set (logging is the
        delivery). Always logs it. Never raises: every failure is logged without the URL."""
        log.warning(f"ALERT {json.dumps(alert, default=str)}")
        if not self.url:
            return True
        try:
            check_webhook_url(self.url)
            request = urllib.request.Request(
                self.url, data=json.dumps(alert, default=str).encode(), method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "mushroom-pipeline"},
            )
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
            return True
        except (OSError, ValueError, http.client.HTTPException) as err:  # URLError, timeouts too
            reason = str(err).replace(self.url, f"<{WEBHOOK_VARIABLE}>")
            log.error(f"alert not delivered to {WEBHOOK_VARIABLE} ({type(err).__name__}: {reason}); "
                      "it is sent again on the next tick")
            return False


Reader = Callable[[dg.DagsterInstance, int | None, int, bool], list[dg.EventLogRecord]]


def _run_failures(instance, after, limit, ascending) -> list[dg.EventLogRecord]:
    return instance.fetch_run_status_changes(
        dg.RunStatusChangeRecordsFilter(dg.DagsterEventType.RUN_FAILURE, after_storage_id=after),
        limit=limit, ascending=ascending,
    ).records


def _check_evaluations(instance, after, limit, ascending) -> list[dg.EventLogRecord]:
    return instance.get_event_records(
        dg.EventRecordsFilter(dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after),
        limit=limit, ascending=ascending,
    )


def _deliver(
    context: dg.SensorEvaluationContext,
    read: Reader,
    alert_for: Callable[[dg.EventLogRecord], dict | None],
    webhook: AlertWebhookResource,
) -> dg.SkipReason:
    """Reads event records after the cursor; sends an alert for each one `alert_for`
    makes one of; moves the cursor past each record handled, stopping at the first failed send,
    at MAX_ALERTS_PER_TICK sent, or when TICK_BUDGET_S is spent."""
    if context.cursor is None or not context.cursor.isdigit():
        latest = read(context.instance, None, 1, False)
        if context.cursor is not None:
            context.log.warning(f"unreadable cursor {context.cursor[:40]!r}: starting from now")
        context.update_cursor(str(latest[0].storage_id if latest else 0))
        return dg.SkipReason("first tick: alerts start from now, history is not replayed")
    started, sent, cursor = time.monotonic(), 0, int(context.cursor)
    records = read(context.instance, cursor, EVENTS_PER_READ, True)
    for record in records:
        if sent >= MAX_ALERTS_PER_TICK or time.monotonic() - started > TICK_BUDGET_S:
            break
        alert = alert_for(record)
        if alert is not None:
            if not webhook.send(alert, context.log):
                break
            sent += 1
        cursor = record.storage_id
    context.update_cursor(str(cursor))
    waiting = sum(r.storage_id > cursor for r in records)
    return dg.SkipReason(f"{sent} alert(s) sent; {waiting} event(s) wait for the next tick")


def _run_failure_alert(instance: dg.DagsterInstance, record: dg.EventLogRecord) -> dict:
    run = instance.get_run_by_id(record.run_id)
    tags = run.tags if run else {}
    entry = record.event_log_entry
    error = getattr(entry.dagster_event.event_specific_data, "error", None)
    return {
        "kind": "run_failure",
        "job": run.job_name if run else entry.job_name,
        "run_id": record.run_id,
        "partition": tags.get("dagster/partition")
        or "...".join(filter(None, (tags.get("dagster/asset_partition_range_start"),
                                    tags.get("dagster/asset_partition_range_end")))) or None,
        "message": entry.dagster_event.message,
        "error": getattr(error, "message", None),
    }


@dg.sensor(
    name="run_failure_alert",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every failed run → an alert (webhook or log), delivered at least once.",
)
def run_failure_alert(context: dg.SensorEvaluationContext, alert_webhook: AlertWebhookResource):
    return _deliver(context, _run_failures,
                    lambda record: _run_failure_alert(context.instance, record), alert_webhook)


def _check_alert(record: dg.EventLogRecord) -> dict | None:
    evaluation = record.event_log_entry.dagster_event.event_specific_data
    if evaluation.passed:
        return None
    return {
        "kind": "asset_check_failed",
        "asset": evaluation.asset_key.to_user_string(),
        "check": evaluation.check_name,
        "severity": evaluation.severity.value,
        "partition": evaluation.partition,
        "description": evaluation.description,
        "run_id": record.run_id,
    }


@dg.sensor(
    name="failed_check_alert",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every asset check that did not pass (image failure rate, coverage, ...) → an "
    "alert (webhook or log), delivered at least once.",
)
def failed_check_alert(context: dg.SensorEvaluationContext, alert_webhook: AlertWebhookResource):
    return _deliver(context, _check_evaluations, _check_alert, alert_webhook)
