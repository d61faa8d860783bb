"""env_readings → env_daily_stats on real and hostile data, through Dagster, on the real Postgres."""

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.definitions import database_resources
from mushroom_pipeline.defs.environment.assets import env_daily_stats, env_readings

from .conftest import DATA
from .helpers import failure_text, insert_readings, query, range_tags

ASSETS = [env_readings, env_daily_stats]
CONTRACT_COLUMNS = ["n", "mean", "min", "max", "std", "p05", "p25", "p50", "p75", "p95"]
UCI_METRICS = {
    "Temperature": "temperature_c",
    "Humidity": "humidity_pct",
    "CO2": "co2_ppm",
    "Light": "light_lux",
}


def run(partition_key=None, start=None, end=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        partition_key=partition_key,
        tags=range_tags(start, end) if start else None,
        resources=database_resources(),
    )


def stats(warehouse) -> pd.DataFrame:
    return query(warehouse, "SELECT * FROM mushroom.env_daily_stats ORDER BY day, room, metric")


def check_results(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def uci_readings() -> pd.DataFrame:
    folder = DATA / "uci-occupancy"
    if not folder.exists():
        pytest.fail(f"the UCI readings are missing: expected {folder} (../shared beside the repo)")
    raw = pd.concat(
        [pd.read_csv(folder / name) for name in ("datatest.txt", "datatraining.txt", "datatest2.txt")]
    )
    raw["measured_at"] = pd.to_datetime(raw["Date"]).dt.tz_localize("UTC")
    long = raw.melt(
        id_vars="measured_at", value_vars=list(UCI_METRICS), var_name="column", value_name="value"
    )
    long["metric"] = long["column"].map(UCI_METRICS)
    long["room"] = "uci office"
    return long[["room", "metric", "value", "measured_at"]]


def independent_stats(readings: pd.DataFrame) -> pd.DataFrame:
    """The contract's statistics with NumPy, from the rows as read from the files."""
    folded = readings.groupby(["room", "metric", "measured_at"], as_index=False)["value"].mean()
    folded["day"] = folded["measured_at"].dt.date
    rows = []
    for (day, room, metric), group in folded.groupby(["day", "room", "metric"]):
        values = group["value"].to_numpy()
        gaps = np.diff(np.sort(group["measured_at"].to_numpy())).astype("timedelta64[us]").astype(float) / 1e6
        cadence = float(np.median(gaps)) if len(gaps) else math.nan
        rows.append(
            {
                "day": day, "room": room, "metric": metric, "n": len(values),
                "mean": values.mean(), "min": values.min(), "max": values.max(),
                "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                **dict(zip(["p05", "p25", "p50", "p75", "p95"],
                           np.percentile(values, [5, 25, 50, 75, 95]))),
                "cadence_s": cadence,
                "coverage": min(1.0, len(values) * cadence / 86400),
            }
        )
    return pd.DataFrame(rows)


def test_stats_of_the_uci_readings_match_an_independent_computation(warehouse):
    readings = uci_readings()
    insert_readings(warehouse, readings.itertuples(index=False))
    result = run(start="2015-02-02", end="2015-02-18")
    assert result.success
    assert len(result.get_step_success_events()) == 2  # the 17 days ran as one step per asset

    actual = stats(warehouse)
    expected = independent_stats(readings)
    assert len(actual) == len(expected) == 17 * 4
    merged = expected.merge(actual, on=["day", "room", "metric"], suffixes=("_expected", ""))
    assert len(merged) == len(expected)
    for column in CONTRACT_COLUMNS + ["cadence_s", "coverage"]:
        np.testing.assert_allclose(
            merged[column].astype(float), merged[f"{column}_expected"].astype(float),
            rtol=1e-9, atol=1e-9, err_msg=column,
        )
    assert (actual["n_invalid"] == 0).all()
    partial_first_day = actual[actual["day"].astype(str) == "2015-02-02"]
    assert (partial_first_day["coverage"] < 0.5).all()  # the data starts at 14:19
    assert not check_results(result)["coverage_per_room"].passed


BAD_DAY = [
    ("room A", "temperature_c", 20.0, "2026-01-13 00:00"),
    ("room A", "temperature_c", 21.0, "2026-01-13 00:01"),
    ("room A", "temperature_c", float("nan"), "2026-01-13 00:02"),
    ("room A", "temperature_c", None, "2026-01-13 00:03"),
    ("room A", "temperature_c", 75.0, "2026-01-13 00:04"),
    ("room A", "temperature_c", 22.0, "2026-01-13 00:05"),  # the same reading twice,
    ("room A", "temperature_c", 24.0, "2026-01-13 00:05"),  # with different values
    ("room A", "temperature_c", float("nan"), "2026-01-13 00:05"),  # and once broken
    ("room A", "humidity_pct", -0.5, "2026-01-13 00:00"),
    ("room A", "humidity_pct", 100.0, "2026-01-13 00:01"),
    ("room A", "humidity_pct", 0.0, "2026-01-13 00:02"),
    ("room A", "co2_ppm", 50000.5, "2026-01-13 00:00"),
    ("room A", "co2_ppm", 50000.0, "2026-01-13 00:01"),
    ("room A", "light_lux", 1e9, "2026-01-13 00:00"),  # unknown metric: no range
    ("room A", "light_lux", float("inf"), "2026-01-13 00:01"),
    ('O\'Brien "north" room', "temperature_c", 18.0, "2026-01-13 12:00"),
    ("", "temperature_c", 18.0, "2026-01-13 12:00"),
    ("room A", "temperature_c", -20.0, "2026-01-12 23:59:59.999999"),  # the day before
    ("room A", "temperature_c", 60.0, "2026-01-14 00:00"),  # the day after
]


def test_bad_readings_are_quarantined_with_their_reason_and_nothing_is_lost(warehouse):
    insert_readings(warehouse, BAD_DAY)
    result = run("2026-01-13")
    assert result.success

    quarantine = query(warehouse, "SELECT room, metric, reason FROM mushroom.env_readings_quarantine")
    assert sorted(quarantine["reason"]) == sorted(
        ["nan_value", "null_value", "out_of_range", "nan_value", "out_of_range",
         "out_of_range", "infinite_value", "blank_room"]
    )
    readings = query(warehouse, "SELECT * FROM mushroom.env_readings")
    # every source row of the day is a reading, part of a folded reading, or quarantined
    assert readings["source_rows"].sum() + len(quarantine) == len(BAD_DAY) - 2

    table = stats(warehouse).set_index(["room", "metric"])
    temperature = table.loc[("room A", "temperature_c")]
    values = np.array([20.0, 21.0, 23.0])  # 22 and 24 at 00:05 are one reading of 23
    assert temperature["n"] == 3 and temperature["duplicate_rows"] == 1
    assert temperature["mean"] == pytest.approx(values.mean())
    assert temperature["std"] == pytest.approx(values.std(ddof=1))
    assert temperature["p25"] == pytest.approx(np.percentile(values, 25))
    assert temperature["n_invalid"] == 4
    assert table.loc[("room A", "humidity_pct"), "n"] == 2
    assert table.loc[("room A", "co2_ppm"), "max"] == 50000.0
    assert table.loc[("room A", "light_lux"), "max"] == 1e9
    quoted = table.loc[('O\'Brien "north" room', "temperature_c")]
    assert quoted["n"] == 1 and pd.isna(quoted["std"]) and quoted["p95"] == 18.0
    assert "" not in table.index.get_level_values("room")

    materialization = result.asset_materializations_for_node("env_readings")[0]
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["source_rows"] == len(BAD_DAY) - 2
    assert metadata["invalid_rows"] == 8
    assert metadata["invalid_by_reason"]["out_of_range"] == 3
    stats_materialization = result.asset_materializations_for_node("env_daily_stats")[0]
    assert stats_materialization.metadata["metrics_without_range"].value == ["light_lux"]
    assert stats_materialization.metadata["duplicate_rows_folded"].value == 1
    checks = check_results(result)
    assert not checks["invalid_share"].passed  # 8 of 17 rows
    completeness = checks["stats_for_every_room_metric"]  # the blank room's only row is invalid
    assert not completeness.passed and completeness.metadata["groups_without_stats"].value == 1


def test_a_room_metric_with_only_invalid_readings_fails_the_completeness_check(warehouse):
    insert_readings(warehouse, [
        ("room A", "temperature_c", 18.0, "2026-01-13 00:00"),
        ("room B", "humidity_pct", 130.0, "2026-01-13 00:00"),
    ])
    result = run("2026-01-13")
    assert result.success
    check = check_results(result)["stats_for_every_room_metric"]
    assert not check.passed and check.metadata["groups_without_stats"].value == 1


def test_a_day_without_data_materializes_empty_and_a_room_may_appear_mid_range(warehouse):
    insert_readings(warehouse, [
        ("room A", "temperature_c", 18.0, "2026-01-13 10:00"),
        ("room A", "temperature_c", 19.0, "2026-01-15 10:00"),
        ("room B", "temperature_c", 17.0, "2026-01-15 10:00"),
    ])
    assert run("2026-01-14").success
    assert stats(warehouse).empty
    result = run(start="2026-01-13", end="2026-01-15")
    assert result.success
    table = stats(warehouse)
    assert [(str(d), r) for d, r in zip(table["day"], table["room"])] == [
        ("2026-01-13", "room A"), ("2026-01-15", "room A"), ("2026-01-15", "room B"),
    ]


def test_rerunning_a_day_changes_nothing(warehouse):
    insert_readings(warehouse, BAD_DAY)
    assert run("2026-01-13").success
    first = (stats(warehouse), query(warehouse, "SELECT * FROM mushroom.env_readings ORDER BY 1,2,3"))
    assert run("2026-01-13").success
    second = (stats(warehouse), query(warehouse, "SELECT * FROM mushroom.env_readings ORDER BY 1,2,3"))
    pd.testing.assert_frame_equal(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])


def test_a_missing_source_table_is_a_clear_failure(warehouse):
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA iot CASCADE")
    result = dg.materialize(ASSETS, partition_key="2026-01-13", resources=database_resources(),
                            raise_on_error=False)
    assert not result.success
    assert "no table iot.env_readings" in failure_text(result)


def test_a_separate_source_database_is_staged_and_cleaned_up(warehouse, embedded_server):
    import sqlalchemy as sa

    from mushroom_pipeline.demo.farm import SOURCE_DDL
    from mushroom_pipeline.resources import PostgresResource
    from mushroom_pipeline.warehouse.io_manager import PostgresPandasIOManager

    admin = sa.create_engine(embedded_server.replace("/mushroom?", "/postgres?"),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("DROP DATABASE IF EXISTS farm_source")
        conn.exec_driver_sql("CREATE DATABASE farm_source")
    admin.dispose()
    source = PostgresResource(url=embedded_server.replace("/mushroom?", "/farm_source?"),
                              url_variable="MUSHROOM_SOURCE_DATABASE_URL")
    with source.begin() as conn:
        conn.exec_driver_sql(SOURCE_DDL)
    insert_readings(source, BAD_DAY)
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA iot CASCADE")  # the warehouse has no source rows
    result = dg.materialize(ASSETS, partition_key="2026-01-13", resources={
        "source_database": source, "warehouse": warehouse,
        "io_manager": PostgresPandasIOManager(database=warehouse), "farm_catalog": FarmCatalogResource(),
    })
    assert result.success
    table = stats(warehouse).set_index(["room", "metric"])
    assert table.loc[("room A", "temperature_c"), "n"] == 3
    assert len(query(warehouse, "SELECT * FROM mushroom.env_readings_quarantine")) == 8
    leftovers = query(warehouse, "SELECT tablename FROM pg_tables WHERE schemaname = 'mushroom_staging'")
    assert leftovers.empty


# The farm's platform reports `temperature`, `humidity`, `co2`: aliases of the contract's names.
ALIASED_DAY = [
    ("607", "temperature", 16.0, "2026-01-13 00:00"),
    ("607", "temperature", 75.0, "2026-01-13 00:01"),  # outside temperature_c's range
    ("607", "temperature_c", 18.0, "2026-01-13 00:02"),  # the canonical name, the same day
    ("607", " Humidity ", 90.0, "2026-01-13 00:00"),  # case and blanks do not matter
    ("607", "humidity", -1.0, "2026-01-13 00:01"),
    ("607", "co2", 1000.0, "2026-01-13 00:00"),  # one reading under two names at one instant:
    ("607", "co2_ppm", 1100.0, "2026-01-13 00:00"),  # a duplicate, folded into its mean
    ("607", "co2", 50000.5, "2026-01-13 00:05"),
    ("607", "light", 250.0, "2026-01-13 00:00"),  # not in the catalog: its own name, no range
    ("607", "light", 1e9, "2026-01-13 00:01"),
]


def test_aliases_are_validated_and_aggregated_as_one_canonical_metric(warehouse):
    insert_readings(warehouse, ALIASED_DAY)
    result = run("2026-01-13")
    assert result.success
    table = stats(warehouse).set_index("metric")
    assert sorted(table.index) == ["co2_ppm", "humidity_pct", "light", "temperature_c"]  # one row each
    assert table.loc["temperature_c", "n"] == 2
    assert table.loc["temperature_c", "mean"] == 17.0
    assert table.loc["temperature_c", "source_metrics"] == "temperature, temperature_c"
    assert table.loc["humidity_pct", "source_metrics"] == " Humidity "
    assert table.loc["co2_ppm", "n"] == 1 and table.loc["co2_ppm", "mean"] == 1050.0
    assert table.loc["co2_ppm", "duplicate_rows"] == 1
    assert table.loc["light", "n"] == 2  # no range: 1e9 is a valid reading of an unknown metric
    reading = query(warehouse, "SELECT source_rows, source_metrics FROM mushroom.env_readings "
                               "WHERE metric = 'co2_ppm'").iloc[0]
    assert reading["source_rows"] == 2 and list(reading["source_metrics"]) == ["co2", "co2_ppm"]
    quarantine = query(warehouse, "SELECT metric, source_metric, value, reason FROM "
                                  "mushroom.env_readings_quarantine ORDER BY metric")
    assert quarantine.values.tolist() == [
        ["co2_ppm", "co2", 50000.5, "out_of_range"],
        ["humidity_pct", "humidity", -1.0, "out_of_range"],
        ["temperature_c", "temperature", 75.0, "out_of_range"],
    ]
    metadata = result.asset_materializations_for_node("env_daily_stats")[0].metadata
    assert metadata["metrics_without_range"].value == ["light"]
    assert metadata["source_metric_names"].value["temperature_c"] == ["temperature", "temperature_c"]
    assert metadata["mean_temperature_c"].value == 17.0


def test_a_farm_replaces_the_metric_catalog_through_its_variable(warehouse, tmp_path, monkeypatch):
    catalog = tmp_path / "metrics.yaml"
    catalog.write_text(
        "metrics:\n"
        "  temperature_c: {unit: °C, range: [-20, 60], aliases: [temp]}\n"
        "  humidity_pct: {unit: '%', range: [0, 100], aliases: [humidity]}\n"
        "  co2_ppm: {unit: ppm, range: [0, 50000], aliases: [co2]}\n"
        "  light_lux: {unit: lx, range: [0, 100000], aliases: [light]}\n"
    )
    monkeypatch.setenv("MUSHROOM_METRIC_CATALOG", str(catalog))
    insert_readings(warehouse, ALIASED_DAY + [("607", "temp", 17.0, "2026-01-13 00:03")])
    assert run("2026-01-13").success
    table = stats(warehouse).set_index("metric")
    # `temperature` is no name of this catalog: a metric of its own, without range
    assert sorted(table.index) == ["co2_ppm", "humidity_pct", "light_lux", "temperature",
                                   "temperature_c"]
    assert table.loc["temperature_c", "source_metrics"] == "temp, temperature_c"
    assert table.loc["light_lux", "n"] == 1  # 1e9 is outside this catalog's range
    assert query(warehouse, "SELECT reason FROM mushroom.env_readings_quarantine "
                            "WHERE metric = 'light_lux'")["reason"].tolist() == ["out_of_range"]


@pytest.mark.parametrize("content, message", [
    ("metrics: {temperature_c: {range: [60, -20]}}", "is empty"),
    ("metrics: {temperature_c: {range: [-20, 60], aliases: [co2]}, co2_ppm: {range: [0, 1], aliases: [CO2]}}",
     "belongs to"),
    ("metrics: [temperature_c]", "no `metrics:` mapping"),
])
def test_a_broken_metric_catalog_stops_the_code_location_naming_file_and_variable(
        tmp_path, monkeypatch, content, message):
    from mushroom_pipeline.catalog.points import CatalogError
    from mushroom_pipeline.definitions import farm_catalog_resource

    catalog = tmp_path / "metrics.yaml"
    catalog.write_text(content)
    monkeypatch.setenv("MUSHROOM_METRIC_CATALOG", str(catalog))
    with pytest.raises(CatalogError, match=message) as raised:
        farm_catalog_resource()
    assert str(catalog) in str(raised.value)
    monkeypatch.setenv("MUSHROOM_METRIC_CATALOG", str(tmp_path / "missing.yaml"))
    with pytest.raises(CatalogError, match="MUSHROOM_METRIC_CATALOG: cannot read"):
        farm_catalog_resource()


def test_the_silence_check_names_sensors_that_stopped_reporting_not_those_reporting_bad_values(
        warehouse):
    def hourly(day: str, room: str, metric: str, value: float, hours=range(24)) -> list[tuple]:
        return [(room, metric, value, f"{day} {h:02d}:00") for h in hours]

    insert_readings(warehouse, hourly("2026-01-12", "607", "temperature", 16.0)
                    + hourly("2026-01-12", "607", "humidity", 90.0)
                    + hourly("2026-01-12", "608", "temperature", 17.0))
    first = run("2026-01-12")
    assert check_results(first)["sensors_reporting"].passed
    insert_readings(warehouse, hourly("2026-01-13", "607", "temperature", 16.0, range(11))  # stops
                    + hourly("2026-01-13", "607", "humidity", 150.0))  # reports, out of range
    evaluation = check_results(run("2026-01-13"))["sensors_reporting"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.description == "Sensors stopped reporting: 607 temperature_c, 608 temperature_c"
    assert evaluation.metadata["silent_sensors"].value == 2
    silent = evaluation.metadata["silent"].value
    assert "no readings" in silent and "silent for 0 days 14:00:00" in silent
