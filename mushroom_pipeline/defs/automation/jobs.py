"""Asset jobs, the units that schedules, sensors and the demo run."""

import dagster as dg

from mushroom_pipeline.partitions import daily_partitions

environment_job = dg.define_asset_job(
    "environment_job",
    selection=dg.AssetSelection.groups("environment"),
    partitions_def=daily_partitions,
    description="Readings → validated readings → daily stats, for one day or a range.",
)

setpoints_job = dg.define_asset_job(
    "setpoints_job",
    selection=dg.AssetSelection.groups("setpoints", "batches"),
    partitions_def=daily_partitions,
    description="Setpoint snapshots → change events → switching statistics; the rooms' batches "
    "and growth days (read from the same snapshots).",
)

farm_daily_job = dg.define_asset_job(
    "farm_daily_job",
    selection=dg.AssetSelection.all(),
    partitions_def=daily_partitions,
    description="Every asset of the farm for one day: the main job.",
)

vision_job = dg.define_asset_job(
    "vision_job",
    selection=dg.AssetSelection.groups("vision"),
    partitions_def=daily_partitions,
    description="Camera images → manifest → CLIP embeddings, descriptions and fused vectors.",
)

insights_job = dg.define_asset_job(
    "insights_job",
    # the charts wait for the night's images: their own job (defs/insights/charts.py)
    selection=dg.AssetSelection.groups("insights") - dg.AssetSelection.assets("room_daily_charts"),
    partitions_def=daily_partitions,
    description="Did the rooms hold their setpoints, did a change work: compliance and change "
    "responses.",
)
