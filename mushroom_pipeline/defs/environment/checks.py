"""Asset checks of the environment assets: evaluated on the rows each materialization wrote."""

import dagster as dg
import pandas as pd

from mushroom_pipeline.warehouse.tables import markdown_preview

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


SILENCE_LIMIT = pd.Timedelta(hours=3)
RECENT_DAYS = 7
silence_spec = dg.AssetCheckSpec(
    "sensors_reporting",
    asset="env_daily_stats",
    description=f"Every (room, metric) that reported in the {RECENT_DAYS} days before still "
    f"reports: none silent for {SILENCE_LIMIT.components.hours} h or more at the day's end (or "
    "now, today). A sensor reporting bad values is not silent: the quarantine counts it.",
)


def check_silence(stats: pd.DataFrame, quarantined: pd.DataFrame, recent: pd.DataFrame,
                  days: list, now: pd.Timestamp) -> dg.AssetCheckResult:
    """`recent`: (room, metric) with stats in the days before the window; `quarantined`: (day,
    room, metric) with invalid rows only. Names each silent sensor with its last reading."""
    expected = pd.concat([recent, stats[["room", "metric"]]]).drop_duplicates()
    silent = []
    for day in days:
        end = min(pd.Timestamp(day, tz=now.tz) + pd.Timedelta(days=1), now)
        of_day = stats[stats["day"] == day].set_index(["room", "metric"])["last_at"]
        invalid = set(map(tuple, quarantined[quarantined["day"] == day][["room", "metric"]].values))
        for room, metric in expected.itertuples(index=False):
            last = of_day.get((room, metric))
            if last is None and (room, metric) not in invalid:
                silent.append((day, room, metric, None, "no readings"))
            elif last is not None and end - last >= SILENCE_LIMIT:
                silent.append((day, room, metric, last, f"silent for {(end - last).round('min')}"))
    frame = pd.DataFrame(silent, columns=["day", "room", "metric", "last_reading", "silence"])
    return dg.AssetCheckResult(
        check_name=silence_spec.name,
        passed=frame.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if frame.empty else "Sensors stopped reporting: "
        + ", ".join(sorted({f"{r} {m}" for r, m in zip(frame["room"], frame["metric"])})),
        metadata={"silent_sensors": len(frame), "silent": markdown_preview(frame, 20)},
    )
