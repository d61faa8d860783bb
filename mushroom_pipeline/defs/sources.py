"""The farm's sources, upstream of every asset: external assets, which Dagster shows in the
lineage but never materializes. The sensors that count their rows and list their objects record
what they saw as observations, so the UI shows when a source last changed and how much arrived."""

import hashlib
import json

import dagster as dg

OWNER = "team:farm-data"


def _source(key: list[str], description: str, kind: str, **metadata: str) -> dg.AssetSpec:
    return dg.AssetSpec(key=key, description=description, group_name="sources", kinds={kind},
                        owners=[OWNER], tags={"layer": "source"}, metadata=metadata)


IOT_ENV_READINGS = _source(
    ["iot", "env_readings"], "The IoT platform's environment readings (room, metric, value, "
    "measured_at).", "postgres", table="iot.env_readings", variable="MUSHROOM_SOURCE_DATABASE_URL")
IOT_DEVICE_SETPOINTS = _source(
    ["iot", "device_setpoints"], "The IoT platform's periodic snapshots of every device point.",
    "postgres", table="iot.device_setpoints", variable="MUSHROOM_SOURCE_DATABASE_URL")
CAMERA_IMAGES = _source(
    ["camera_images"], "The cameras' photos in the object store, `<room>/<YYYYMMDD>/<file>`.",
    "s3", variable="MUSHROOM_IMAGE_BUCKET")

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
