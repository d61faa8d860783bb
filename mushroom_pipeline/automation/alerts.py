"""Alerts: failed runs and failed asset checks, POSTed as JSON to MUSHROOM_ALERT_WEBHOOK_URL.

Without a webhook the alert is only logged (the sensor's tick log in the UI). A webhook that is
down never fails the sensor: the alert is logged with the delivery error instead.
"""

import json
import urllib.error
import urllib.request

import dagster as dg
from dagster._core.events import DagsterEventType
from pydantic import Field

MAX_CHECK_EVENTS_PER_TICK = 100


class AlertWebhookResource(dg.ConfigurableResource):
    url: str | None = Field(default=None, description="MUSHROOM_ALERT_WEBHOOK_URL; unset → log only")
    timeout_s: float = 5.0

    def send(self, alert: dict, log) -> bool:
        """Posts `alert`; True when delivered. Always logs it."""
        log.warning(f"ALERT {json.dumps(alert, default=str)}")
        if not self.url:
            return False
        request = urllib.request.Request(
            self.url, data=json.dumps(alert, default=str).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "mushroom-pipeline"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
            return True
        except (urllib.error.URLError, OSError) as err:
            log.error(f"alert not delivered to MUSHROOM_ALERT_WEBHOOK_URL: {err}")
            return False


@dg.run_failure_sensor(
    name="run_failure_alert",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every failed run of this code location → an alert (webhook or log).",
)
def run_failure_alert(context: dg.RunFailureSensorContext, alert_webhook: AlertWebhookResource):
    run = context.dagster_run
    error = context.failure_event.event_specific_data
    alert_webhook.send(
        {
            "kind": "run_failure",
            "job": run.job_name,
            "run_id": run.run_id,
            "partition": run.tags.get("dagster/partition")
            or "...".join(filter(None, (run.tags.get("dagster/asset_partition_range_start"),
                                        run.tags.get("dagster/asset_partition_range_end")))) or None,
            "message": context.failure_event.message,
            "error": getattr(getattr(error, "error", None), "message", None),
        },
        context.log,
    )


@dg.sensor(
    name="failed_check_alert",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every asset check that did not pass (image failure rate, coverage, ...) → an "
    "alert (webhook or log), once.",
)
def failed_check_alert(context: dg.SensorEvaluationContext, alert_webhook: AlertWebhookResource):
    after = int(context.cursor) if context.cursor else None
    records = context.instance.get_event_records(
        dg.EventRecordsFilter(DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after),
        limit=MAX_CHECK_EVENTS_PER_TICK,
        ascending=True,
    )
    sent = 0
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if not evaluation.passed:
            alert_webhook.send(
                {
                    "kind": "asset_check_failed",
                    "asset": evaluation.asset_key.to_user_string(),
                    "check": evaluation.check_name,
                    "severity": evaluation.severity.value,
                    "partition": evaluation.partition,
                    "description": evaluation.description,
                    "run_id": record.run_id,
                },
                context.log,
            )
            sent += 1
    if records:
        context.update_cursor(str(records[-1].storage_id))
    return dg.SkipReason(f"{len(records)} check evaluation(s), {sent} failed: alerted")
