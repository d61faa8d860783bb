"""Asset checks of the insight assets, evaluated on the rows each materialization wrote."""

import math
import os

import dagster as dg
import pandas as pd

from mushroom_pipeline.settings import ConfigurationError
from mushroom_pipeline.warehouse.tables import markdown_preview

THRESHOLD_VARIABLE = "MUSHROOM_COMPLIANCE_THRESHOLD"
DEFAULT_THRESHOLD = 0.8


def resolve_threshold(configured: float | None = None) -> float:
    """The share in band under which setpoint_compliance warns: the run's config
    (`share_threshold`), else MUSHROOM_COMPLIANCE_THRESHOLD, else 0.8. Read when the run starts,
    so a changed variable applies to the next run without reloading the code location."""
    where, text = "share_threshold", configured
    if configured is None:
        where, text = THRESHOLD_VARIABLE, os.environ.get(THRESHOLD_VARIABLE, "").strip()
        if not text:
            return DEFAULT_THRESHOLD
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ConfigurationError(f"{where}={text!r}: use a share between 0 and 1, e.g. 0.8")
    return value


share_in_band_spec = dg.AssetCheckSpec(
    "share_in_band_above_threshold",
    asset="setpoint_compliance",
    description="Every room holds each mapped setpoint: per (day, room, metric, device, point) "
    f"with readings, share_in_band is at least the threshold ({THRESHOLD_VARIABLE}, default "
    f"{DEFAULT_THRESHOLD}; the run config's share_threshold wins).",
)
compliance_counts_spec = dg.AssetCheckSpec(
    "compliance_counts_add_up",
    asset="setpoint_compliance",
    description="Each row's n = in_band + readings_above + readings_below, and share_in_band is "
    "NULL exactly when n = 0.",
)
responses_unique_spec = dg.AssetCheckSpec(
    "one_response_per_change",
    asset="change_responses",
    description="At most one row per (room, device, point, changed_at, metric).",
)


def check_share_in_band(rows: pd.DataFrame, threshold: float) -> dg.AssetCheckResult:
    judged = rows[rows["n"] > 0]
    low = judged[judged["share_in_band"] < threshold].sort_values(["day", "room", "metric"])
    rooms = sorted(low["room"].unique())
    return dg.AssetCheckResult(
        check_name=share_in_band_spec.name,
        passed=low.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if low.empty else (
            f"Room(s) {', '.join(rooms)} held a setpoint for less than {threshold:.0%} of "
            "their readings."
        ),
        metadata={
            "threshold": threshold,
            "rooms_below": dg.MetadataValue.json(rooms),
            "rows_below": len(low),
            "lowest_share": float(judged["share_in_band"].min()) if len(judged) else 1.0,
            "below_threshold": markdown_preview(
                low[["day", "room", "metric", "device", "point", "n", "share_in_band",
                     "mean_error", "readings_above", "readings_below"]].round(3), 20
            ),
        },
    )


def check_compliance_counts(rows: pd.DataFrame) -> dg.AssetCheckResult:
    wrong_sum = rows["n"] != rows["in_band"] + rows["readings_above"] + rows["readings_below"]
    wrong_null = rows["share_in_band"].isna() != (rows["n"] == 0)
    bad = rows[wrong_sum | wrong_null]
    return dg.AssetCheckResult(
        check_name=compliance_counts_spec.name,
        passed=bad.empty,
        metadata={"rows_not_adding_up": len(bad), "examples": markdown_preview(bad, 20)},
    )


def check_responses_unique(responses: pd.DataFrame) -> dg.AssetCheckResult:
    key = ["room", "device", "point", "changed_at", "metric"]
    duplicated = responses[responses.duplicated(key, keep=False)]
    return dg.AssetCheckResult(
        check_name=responses_unique_spec.name,
        passed=duplicated.empty,
        metadata={"duplicate_rows": len(duplicated), "examples": markdown_preview(duplicated, 20)},
    )
