"""The code location as the UI shows it: every asset owned, tagged and described; every table the
pipeline writes an asset downstream of the step that writes it; side tables materialized per
partition by the run that wrote them."""

import dagster as dg

from mushroom_pipeline.definitions import database_resources, defs
from mushroom_pipeline.defs.environment.assets import env_daily_stats, env_readings

from .helpers import insert_readings, range_tags

# table → the asset whose step writes it
SIDE_TABLES = {
    "env_readings_quarantine": "env_readings",
    "setpoint_snapshots_quarantine": "setpoint_snapshots",
    "setpoint_deadband_references": "setpoint_change_events",
    "image_failures": "image_embeddings",
}


def test_every_asset_has_owners_tags_a_description_and_a_group():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert node.owners and all(o.startswith("team:") for o in node.owners), name
        assert node.tags.get("layer"), name
        assert node.description and node.description.strip(), name
        assert node.group_name != "default", name
        if node.group_name != "sources":
            assert node.tags.get("domain") == node.group_name, name


def test_every_table_the_pipeline_writes_is_an_asset_downstream_of_its_writer():
    graph = defs.resolve_asset_graph()
    for table, writer in SIDE_TABLES.items():
        node = graph.get(dg.AssetKey(table))
        assert dg.AssetKey(writer) in node.parent_keys, table
        assert node.metadata["dagster/table_name"] == f"mushroom.{table}"
        assert node.partitions_def is not None
    # env_daily_stats reads the quarantine's invalid counts: a dependency the graph now shows
    assert dg.AssetKey("env_readings_quarantine") in graph.get(dg.AssetKey("env_daily_stats")).parent_keys


def test_the_writing_run_reports_each_side_table_partition_with_its_row_count(warehouse):
    insert_readings(warehouse, [
        ("607", "temperature", 16.5, "2026-02-01 08:00"),
        ("607", "temperature", 99.0, "2026-02-01 09:00"),  # out of range: quarantined
        ("607", "temperature", -80.0, "2026-02-01 10:00"),
        ("607", "temperature", 16.7, "2026-02-02 08:00"),
    ])
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([env_readings, env_daily_stats], instance=instance,
                            resources=database_resources(),
                            tags=range_tags("2026-02-01", "2026-02-02"))
    assert result.success
    quarantine = dg.AssetKey("env_readings_quarantine")
    records = instance.fetch_materializations(quarantine, limit=10).records
    counts = {r.partition_key: r.asset_materialization.metadata["dagster/row_count"].value
              for r in records}
    assert counts == {"2026-02-01": 2, "2026-02-02": 0}
