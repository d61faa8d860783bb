"""Validation of raw environment readings, as ../shared/CONTRACTS.md defines it."""

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Physical ranges of the known metrics (inclusive); other metrics are free text without a range.
KNOWN_RANGES: dict[str, tuple[float, float]] = {
    "temperature_c": (-20.0, 60.0),
    "humidity_pct": (0.0, 100.0),
    "co2_ppm": (0.0, 50000.0),
}
KEY = ["room", "metric", "measured_at"]


@dataclass(frozen=True)
class ValidatedReadings:
    readings: pd.DataFrame  # room, metric, measured_at, value, source_rows (one row per reading)
    quarantine: pd.DataFrame  # room, metric, measured_at, value, reason (one row per source row)
    duplicate_rows: int  # source rows folded into another row of the same reading


def invalid_reasons(raw: pd.DataFrame) -> pd.Series:
    """The first reason each row is invalid, or None; `raw` has value_is_null beside value."""
    value = raw["value"].to_numpy(dtype=float)
    checks = [
        (raw["room"].fillna("").str.strip() == "", "blank_room"),
        (raw["metric"].fillna("").str.strip() == "", "blank_metric"),
        (raw["value_is_null"].to_numpy(dtype=bool), "null_value"),
        (np.isnan(value), "nan_value"),
        (np.isinf(value), "infinite_value"),
    ]
    for metric, (low, high) in KNOWN_RANGES.items():
        checks.append(
            ((raw["metric"] == metric).to_numpy() & ~((value >= low) & (value <= high)), "out_of_range")
        )
    reasons = np.full(len(raw), None, dtype=object)
    for mask, reason in reversed(checks):  # earlier checks win
        reasons[np.asarray(mask, dtype=bool)] = reason
    return pd.Series(reasons, index=raw.index, dtype=object)


def validate_readings(raw: pd.DataFrame) -> ValidatedReadings:
    """Splits source rows into readings and quarantined rows.

    Rows sharing (room, metric, measured_at) are one reading whose value is their mean; only
    valid rows take part, so one bad duplicate does not spoil a good one.
    """
    reasons = invalid_reasons(raw)
    invalid = reasons.notna()
    quarantine = raw.loc[invalid, KEY + ["value"]].assign(reason=reasons[invalid])
    valid = raw.loc[~invalid, KEY + ["value"]]
    repeated = valid.duplicated(KEY, keep=False)
    if repeated.any():
        folded = (
            valid[repeated]
            .groupby(KEY, sort=False)
            .agg(value=("value", "mean"), source_rows=("value", "size"))
            .reset_index()
        )
        readings = pd.concat(
            [valid[~repeated].assign(source_rows=1), folded], ignore_index=True
        )
    else:
        readings = valid.assign(source_rows=1)
    readings["source_rows"] = readings["source_rows"].astype("int64")
    return ValidatedReadings(
        readings=readings.reset_index(drop=True),
        quarantine=quarantine.reset_index(drop=True),
        duplicate_rows=int(repeated.sum()) - len(folded) if repeated.any() else 0,
    )
