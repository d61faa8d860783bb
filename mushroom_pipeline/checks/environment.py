"""Asset checks of the environment assets: evaluated on the rows each materialization wrote."""

import dagster as dg
import pandas as pd

from mushroom_pipeline.io.postgres import markdown_preview

INVALID_SHARE_LIMIT = 0.05
COVERAGE_LIMIT = 0.9

invalid_share_spec = dg.AssetCheckSpec(
    "invalid_share",
    asset="env_readings",
    description=f"At most {INVALID_SHARE_LIMIT:.0%} of the source rows are invalid.",
)
coverage_spec = dg.AssetCheckSpec(
    "coverage_per_room",
    asset="env_daily_stats",
    description=(
        f"Every (day, room, metric) has at least {COVERAGE_LIMIT:.0%} of the readings its "
        "usual cadence (median gap between readings) gives for the whole day."
    ),
)
complete_spec = dg.AssetCheckSpec(
    "stats_for_every_room_metric",
    asset="env_daily_stats",
    description="Every (day, room, metric) seen in the source that day has a stats row.",
)


def check_invalid_share(source_rows: int, by_reason: dict[str, int]) -> dg.AssetCheckResult:
    invalid = sum(by_reason.values())
    share = invalid / source_rows if source_rows else 0.0
    return dg.AssetCheckResult(
        check_name=invalid_share_spec.name,
        passed=share <= INVALID_SHARE_LIMIT,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "invalid_share": share,
            "invalid_rows": invalid,
            "by_reason": dg.MetadataValue.json(by_reason),
        },
    )


def check_coverage(stats: pd.DataFrame) -> dg.AssetCheckResult:
    low = stats[stats["coverage"].fillna(0) < COVERAGE_LIMIT]  # NULL: a single reading
    return dg.AssetCheckResult(
        check_name=coverage_spec.name,
        passed=low.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "groups_below_limit": len(low),
            "below_limit": markdown_preview(
                low[["day", "room", "metric", "n", "cadence_s", "coverage"]], 20
            ),
        },
    )


def check_complete(stats: pd.DataFrame, seen: pd.DataFrame) -> dg.AssetCheckResult:
    """`seen`: (day, room, metric) groups of the source rows that need a stats row."""
    key = ["day", "room", "metric"]
    merged = seen[key].drop_duplicates().merge(stats[key], how="left", on=key, indicator=True)
    missing = merged[merged["_merge"] == "left_only"][key]
    return dg.AssetCheckResult(
        check_name=complete_spec.name,
        passed=missing.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            None if missing.empty else "Groups whose every reading was invalid have no stats row."
        ),
        metadata={
            "groups_without_stats": len(missing),
            "missing": markdown_preview(missing, 20),
        },
    )
