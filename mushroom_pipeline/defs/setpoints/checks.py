"""Asset checks of the setpoint change events, evaluated on the events each run wrote."""

import dagster as dg
import numpy as np
import pandas as pd

from mushroom_pipeline.warehouse.tables import markdown_preview

UNCONFIGURED_SHARE_LIMIT = 0.2

no_duplicates_spec = dg.AssetCheckSpec(
    "no_duplicate_events",
    asset="setpoint_change_events",
    description="At most one event per (room, device, point, changed_at).",
)
chain_spec = dg.AssetCheckSpec(
    "event_chain_has_no_gaps",
    asset="setpoint_change_events",
    description="Per point, each event's old_value is the previous event's new_value.",
)
unconfigured_spec = dg.AssetCheckSpec(
    "unconfigured_points",
    asset="setpoint_change_events",
    description=f"At most {UNCONFIGURED_SHARE_LIMIT:.0%} of the points match no rule of the "
    "point configuration (they are tracked by the contract's default).",
)
KEY = ["room", "device", "point"]


def check_no_duplicates(events: pd.DataFrame) -> dg.AssetCheckResult:
    duplicated = events[events.duplicated(KEY + ["changed_at"], keep=False)]
    return dg.AssetCheckResult(
        check_name=no_duplicates_spec.name,
        passed=duplicated.empty,
        metadata={"duplicate_events": len(duplicated), "examples": markdown_preview(duplicated, 20)},
    )


def check_chain(events: pd.DataFrame) -> dg.AssetCheckResult:
    ordered = events.sort_values(KEY + ["changed_at"])
    previous = ordered.groupby(KEY)["new_value"].shift()
    broken = ordered[previous.notna() & ~np.isclose(ordered["old_value"], previous)]
    return dg.AssetCheckResult(
        check_name=chain_spec.name,
        passed=broken.empty,
        metadata={"broken_links": len(broken), "examples": markdown_preview(broken, 20)},
    )


def check_unconfigured(treatments: pd.DataFrame) -> dg.AssetCheckResult:
    unconfigured = treatments[~treatments["configured"]]
    share = len(unconfigured) / len(treatments) if len(treatments) else 0.0
    return dg.AssetCheckResult(
        check_name=unconfigured_spec.name,
        passed=share <= UNCONFIGURED_SHARE_LIMIT,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "unconfigured_share": share,
            "unconfigured_points": dg.MetadataValue.json(sorted(set(unconfigured["point"]))),
        },
    )
