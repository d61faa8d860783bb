"""The farm's sources, upstream of every asset: external assets, which Dagster shows in the
lineage but never materializes. The sensors that count their rows and list their objects record
what they saw as observations, so the UI shows when a source last changed and how much arrived."""

import hashlib
import json

import dagster as dg

OWNER = "team:farm-data"

IOT_ENV_READINGS = dg.AssetSpec(
    key=["iot", "env_readings"],
    description="The IoT platform's environment readings (room, metric, value, measured_at).",
    group_name="sources",
    kinds={"postgres"},
    owners=[OWNER],
    tags={"layer": "source"},
    metadata={"table": "iot.env_readings", "variable": "MUSHROOM_SOURCE_DATABASE_URL"},
)
IOT_DEVICE_SETPOINTS = dg.AssetSpec(
    key=["iot", "device_setpoints"],
    description="The IoT platform's periodic snapshots of every device point.",
    group_name="sources",
    kinds={"postgres"},
    owners=[OWNER],
    tags={"layer": "source"},
    metadata={"table": "iot.device_setpoints", "variable": "MUSHROOM_SOURCE_DATABASE_URL"},
)
CAMERA_IMAGES = dg.AssetSpec(
    key=["camera_images"],
    description="The cameras' photos in the object store, `<room>/<YYYYMMDD>/<file>`.",
    group_name="sources",
    kinds={"s3"},
    owners=[OWNER],
    tags={"layer": "source"},
    metadata={"variable": "MUSHROOM_IMAGE_BUCKET"},
)
SOURCES = [IOT_ENV_READINGS, IOT_DEVICE_SETPOINTS, CAMERA_IMAGES]


def observation(context: dg.SensorEvaluationContext, source: dg.AssetSpec,
                **seen: object) -> list[dg.AssetObservation]:
    """What a sensor saw of `source` (JSON-able values), as an observation when it differs from
    the last one recorded: the event log grows with changes, not with ticks."""
    fingerprint = hashlib.sha256(json.dumps(seen, sort_keys=True, default=str).encode()).hexdigest()[:16]
    last = context.instance.fetch_observations(source.key, limit=1).records
    if last and last[0].asset_observation.metadata.get("fingerprint") == dg.MetadataValue.text(fingerprint):
        return []
    metadata = {name: dg.MetadataValue.json(value) if isinstance(value, dict) else value
                for name, value in seen.items()}
    return [dg.AssetObservation(asset_key=source.key, metadata={**metadata, "fingerprint": fingerprint})]
