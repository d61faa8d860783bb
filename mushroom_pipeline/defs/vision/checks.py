"""Asset checks of the image assets."""

import dagster as dg

FAILURE_RATE_LIMIT = 0.10

failure_rate_spec = dg.AssetCheckSpec(
    "image_failure_rate",
    asset="image_embeddings",
    description=f"At most {FAILURE_RATE_LIMIT:.0%} of the images of each day fail to embed "
    "(the old system's alert threshold). Fails with ERROR severity, naming the reasons.",
)


def check_failure_rate(images_by_day: dict[str, int], failures_by_day: dict[str, dict[str, int]]
                       ) -> dg.AssetCheckResult:
    """`images_by_day`: images listed per day; `failures_by_day`: {day: {reason: count}}."""
    rates = {
        day: sum(failures_by_day.get(day, {}).values()) / total
        for day, total in images_by_day.items() if total
    }
    over = {day: rate for day, rate in rates.items() if rate > FAILURE_RATE_LIMIT}
    reasons: dict[str, int] = {}
    for day in over:
        for reason, count in failures_by_day[day].items():
            reasons[reason] = reasons.get(reason, 0) + count
    description = (
        "; ".join(f"{day}: {rate:.0%} failed" for day, rate in sorted(over.items()))
        + f" (reasons: {', '.join(f'{r} × {n}' for r, n in sorted(reasons.items()))})"
        if over else None
    )
    return dg.AssetCheckResult(
        check_name=failure_rate_spec.name,
        passed=not over,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "worst_failure_rate": max(rates.values(), default=0.0),
            "days_over_limit": dg.MetadataValue.json(sorted(over)),
            "reasons": dg.MetadataValue.json(reasons),
        },
    )
