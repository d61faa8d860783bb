"""The code location as the UI shows it: every asset owned, tagged and described; every table the
pipeline writes an asset downstream of the step that writes it; side tables materialized per
partition by the run that wrote them."""

import dagster as dg

from mushroom_pipeline.definitions import database_resources, defs
from mushroom_pipeline.defs.environment.assets import env_daily_stats, env_readings
from mushroom_pipeline.defs.setpoints.assets import setpoint_snapshots

from .helpers import insert_readings, insert_setpoints, query, range_tags

# table → the asset whose step writes it
SIDE_TABLES = {
    "env_readings_quarantine": "env_readings",
    "setpoint_snapshots_quarantine": "setpoint_snapshots",
    "setpoint_deadband_references": "setpoint_change_events",
    "image_failures": "image_embeddings",
}


def test_every_asset_has_owners_tags_a_description_and_a_group():
    graph = defs().resolve_asset_graph()
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
    graph = defs().resolve_asset_graph()
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


def test_the_big_daily_tables_are_partitioned_by_day_in_postgres(warehouse):
    """env_readings and setpoint_snapshots (over a million rows a day each) are Postgres tables
    partitioned by farm day, so a re-run swaps a day instead of deleting its rows."""
    insert_readings(warehouse, [("607", "temperature", 16.5, "2026-02-01 08:00")])
    insert_setpoints(warehouse, [("607", "air_cooler", "temp_set", 16.0, "2026-02-01 08:00")])
    assert dg.materialize([env_readings, setpoint_snapshots], resources=database_resources(),
                          partition_key="2026-02-01").success
    kinds = query(warehouse, "SELECT relname, relkind FROM pg_class WHERE oid IN "
                  "('mushroom.env_readings'::regclass, 'mushroom.setpoint_snapshots'::regclass)")
    assert dict(zip(kinds["relname"], kinds["relkind"])) == {
        "env_readings": "p", "setpoint_snapshots": "p"}
    assert query(warehouse, "SELECT count(*) AS n FROM mushroom.setpoint_snapshots")["n"][0] == 1


READS_AT_IMPORT_AND_AT_LOAD = r"""
import json, os, pkgutil, importlib, sys

class Recording(dict):
    read = set()
    def get(self, key, default=None):
        Recording.read.add(key)
        return super().get(key, default)
    def __getitem__(self, key):
        Recording.read.add(key)
        return super().__getitem__(key)
    def __contains__(self, key):
        Recording.read.add(key)
        return super().__contains__(key)

recording = Recording(os.environ)
os.environ = recording
import mushroom_pipeline
for module in pkgutil.walk_packages(mushroom_pipeline.__path__, "mushroom_pipeline."):
    importlib.import_module(module.name)
at_import = sorted(n for n in Recording.read if n.startswith("MUSHROOM_"))
Recording.read.clear()
from mushroom_pipeline.definitions import defs
try:
    defs()
    error = None
except Exception as err:  # the loader wraps the module's error: keep the chain
    error = ""
    while err is not None:
        error, err = error + str(err) + "\n", err.__cause__ or err.__context__
at_load = sorted(n for n in Recording.read if n.startswith("MUSHROOM_"))
print(json.dumps({"at_import": at_import, "at_load": at_load, "error": error}))
"""


def test_only_the_farms_calendar_is_read_at_import_the_rest_when_the_code_location_loads():
    """Importing every module of the package reads MUSHROOM_HOME (its persisted choices),
    MUSHROOM_TIMEZONE and MUSHROOM_START_DATE, which shape the partitions, and nothing else: a bad
    value elsewhere stops the code location from loading, never an import."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "MUSHROOM_EXECUTOR": "ecs", "MUSHROOM_FRESH_BY_HOUR": "25",
           "MUSHROOM_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    done = subprocess.run([sys.executable, "-c", READS_AT_IMPORT_AND_AT_LOAD], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    reads = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(reads["at_import"]) <= {"MUSHROOM_HOME", "MUSHROOM_TIMEZONE", "MUSHROOM_START_DATE"}
    assert {"MUSHROOM_FRESH_BY_HOUR"} <= set(reads["at_load"])
    assert "MUSHROOM_FRESH_BY_HOUR='25'" in reads["error"]
