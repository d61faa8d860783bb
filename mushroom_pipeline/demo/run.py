"""`make demo`: seed the demo farm, materialize every asset for its days through Dagster, report."""

import datetime as dt
import os
import socket

import dagster as dg
import pandas as pd

from mushroom_pipeline.demo.farm import (
    OPERATOR_CHANGES,
    ROOMS,
    TURNOVER_ROOM,
    days_ending,
    demo_week,
    seed_env_readings,
    seed_images,
    seed_setpoints,
)
from mushroom_pipeline.settings import Settings, persist_choices

WEIGHTS_HOST = ("huggingface.co", 443)  # where open_clip downloads pretrained weights from

SUMMARY_SQL = """
WITH src AS (SELECT measured_at::date AS day, count(*) AS source_rows FROM iot.env_readings
             WHERE measured_at::date = ANY(%(days)s) GROUP BY 1),
     inv AS (SELECT measured_at::date AS day, count(*) AS invalid FROM mushroom.env_readings_quarantine
             WHERE measured_at::date = ANY(%(days)s) GROUP BY 1),
     rd AS (SELECT measured_at::date AS day, count(*) AS readings FROM mushroom.env_readings
            WHERE measured_at::date = ANY(%(days)s) GROUP BY 1),
     st AS (SELECT day, count(*) AS stats_rows, round(avg(coverage)::numeric, 3) AS mean_coverage
            FROM mushroom.env_daily_stats WHERE day = ANY(%(days)s) GROUP BY 1),
     ev AS (SELECT day, count(*) AS setpoint_events,
                   count(*) FILTER (WHERE change_kind = 'changed') AS setpoint_changes
            FROM mushroom.setpoint_change_events WHERE day = ANY(%(days)s) GROUP BY 1),
     sw AS (SELECT day, sum(switch_ons) AS switch_ons,
                   round(avg(minutes_on)::numeric, 1) AS mean_minutes_on
            FROM mushroom.switch_daily_stats WHERE day = ANY(%(days)s) GROUP BY 1),
     im AS (SELECT day, count(*) AS images FROM mushroom.image_manifest
            WHERE day = ANY(%(days)s) GROUP BY 1),
     em AS (SELECT day, count(*) AS embedded FROM mushroom.image_embeddings
            WHERE day = ANY(%(days)s) AND model = %(model)s GROUP BY 1),
     fa AS (SELECT day, count(*) AS image_failures FROM mushroom.image_failures
            WHERE day = ANY(%(days)s) AND model = %(model)s GROUP BY 1)
SELECT day, source_rows, invalid, readings, stats_rows, mean_coverage,
       setpoint_events, setpoint_changes, switch_ons, mean_minutes_on,
       images, embedded, coalesce(image_failures, 0) AS image_failures
FROM src LEFT JOIN inv USING (day) LEFT JOIN rd USING (day) LEFT JOIN st USING (day)
     LEFT JOIN ev USING (day) LEFT JOIN sw USING (day) LEFT JOIN im USING (day)
     LEFT JOIN em USING (day) LEFT JOIN fa USING (day) ORDER BY day
"""
# The story day's answers to a grower's questions: did the rooms hold their setpoints, did the
# change work, is a sensor or a camera broken.
INSIGHTS_SQL = {
    "compliance": """
        SELECT room, metric, point, n, round(share_in_band::numeric, 3) AS share_in_band,
               round(mean_abs_error::numeric, 2) AS mean_abs_error
        FROM mushroom.setpoint_compliance WHERE day = %(day)s AND n > 0
        ORDER BY share_in_band, room, metric LIMIT 5""",
    "responses": """
        SELECT room, device, point, old_value, new_value, round(before_mean::numeric, 2) AS before,
               round(after_60m_mean::numeric, 2) AS after_60m, minutes_to_reach
        FROM mushroom.change_responses WHERE day = %(day)s AND metric = 'temperature_c'
        ORDER BY changed_at""",
    "sensors": """
        SELECT room, metric, round(longest_gap_min::numeric) AS longest_gap_min, longest_gap_start,
               round(longest_flatline_min::numeric) AS longest_flatline_min
        FROM mushroom.sensor_health WHERE day = %(day)s
          AND (longest_gap_min >= 180 OR longest_flatline_min >= 360) ORDER BY room, metric""",
    "cameras": """
        SELECT room, images, identical_frame_share, near_duplicate_share,
               round(mean_luminance::numeric, 1) AS mean_luminance
        FROM mushroom.camera_health WHERE day = %(day)s AND model = %(model)s
        ORDER BY identical_frame_share DESC NULLS LAST, room""",
    "charts": "SELECT room, path FROM mushroom.room_daily_charts WHERE day = %(day)s ORDER BY room",
}
# A batch is new when it replaced one the room reported before (on its first day every room's
# batch is new to room_batches).
BATCHES_SQL = """
SELECT room, batch, entry_date, max(bags) AS bags, min(growth_day) AS first_growth_day,
       max(growth_day) AS last_growth_day,
       max(previous_entry_date) FILTER (WHERE new_batch) AS replaced_entry_date
FROM mushroom.room_batches WHERE day = ANY(%(days)s) AND batch IS NOT NULL
GROUP BY room, batch, entry_date ORDER BY room, entry_date
"""
CHANGES_SQL = """
SELECT changed_at, device, point, old_value, new_value, old_label, new_label
FROM mushroom.setpoint_change_events WHERE day = ANY(%(days)s) AND change_kind = 'changed'
ORDER BY changed_at, device, point
"""


def choose_clip_weights() -> bool:
    """Pretrained weights when they can be downloaded; otherwise (no network, as on the build
    machines) untrained ones, said loudly. Returns whether the weights are random."""
    if os.environ.get("MUSHROOM_CLIP_PRETRAINED", "").strip():
        return os.environ["MUSHROOM_CLIP_PRETRAINED"].strip() == "random"
    try:
        socket.create_connection(WEIGHTS_HOST, timeout=3).close()
        return False
    except OSError:
        os.environ["MUSHROOM_CLIP_PRETRAINED"] = "random"
        return True


RANDOM_BANNER = """
********************************************************************************
*  CLIP WEIGHTS: RANDOM (untrained). No pretrained weights could be downloaded, *
*  so the demo runs with MUSHROOM_CLIP_PRETRAINED=random: the pipeline is real, *
*  the vectors carry no meaning. Every materialization says so in its metadata. *
********************************************************************************"""


def run_demo(settings: Settings, days: int) -> None:
    if settings.source_database_url:
        # The demo's rooms are the farm's own: seeding them would overwrite the farm's data.
        raise SystemExit(f"MUSHROOM_SOURCE_DATABASE_URL is set: the demo would overwrite rooms "
                         f"{', '.join(ROOMS)} of the farm's IoT database. Unset it: the demo "
                         "keeps its source tables in the warehouse database.")
    random_weights = choose_clip_weights()
    if random_weights:
        print(RANDOM_BANNER)
    # `make ui` and the CLI on this home then read the data with the same model and timezone.
    print(f"Demo choices kept in {persist_choices(settings.home)}")
    # Imported here: the partitions take the timezone and start date persisted above.
    from mushroom_pipeline.definitions import defs, resources_outside_a_run

    with resources_outside_a_run("warehouse", "source_database", "object_store",
                                 "clip_encoder") as resources:
        materialize_demo(defs(), resources, settings, days, random_weights)


def materialize_demo(defs: dg.Definitions, resources, settings: Settings, days: int, random_weights: bool) -> None:
    warehouse, source = resources.warehouse, resources.source_database
    yesterday = dt.datetime.now(settings.tz).date() - dt.timedelta(days=1)
    demo_days = days_ending(yesterday, days)
    readings = seed_env_readings(source.get_engine(), demo_days, settings.tz)
    snapshots = seed_setpoints(source.get_engine(), demo_days, settings.tz)
    images, corrupt = seed_images(resources.object_store, demo_days)
    print(f"Demo farm: {readings} readings, {snapshots} setpoint snapshots, {images} camera "
          f"images (+{corrupt} corrupt upload) for {demo_days[0]} … {demo_days[-1]} "
          f"({settings.timezone})")
    changes = ", ".join(f"{point} of {device}_{room}" for room, device, point in OPERATOR_CHANGES)
    print(f"  on {demo_week(demo_days).story}: a new batch enters room {TURNOVER_ROOM}; "
          f"operators change {changes}")

    instance = dg.DagsterInstance.get()
    job = defs.resolve_job_def("farm_daily_job")
    for day in demo_days:
        result = job.execute_in_process(
            partition_key=day.isoformat(),
            instance=instance,
            tags={"mushroom/trigger": "demo"},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        print(f"  {day}: run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'}")
        if not result.success:
            raise SystemExit(f"the run for {day} failed; see `make ui` → Runs")

    with warehouse.begin() as conn:
        model = resources.clip_encoder.model_id()
        summary = pd.read_sql_query(SUMMARY_SQL, conn, params={"days": demo_days, "model": model})
        batches = pd.read_sql_query(BATCHES_SQL, conn, params={"days": demo_days})
        changes = pd.read_sql_query(CHANGES_SQL, conn, params={"days": demo_days})
    print()
    print(summary.to_markdown(index=False))
    # Not markdown: the summary stays the only pipe table of the output, for scripts reading it.
    print("\nBatches (mushroom.room_batches):")
    print(batch_table(batches).to_markdown(index=False, tablefmt="simple", disable_numparse=True))
    print("\nSetpoint changes (switches aside; read noise within the deadbands is no change):")
    print(change_table(changes, settings).to_markdown(index=False, tablefmt="simple",
                                                      disable_numparse=True))
    story = demo_week(demo_days).story
    with warehouse.begin() as conn:
        insights = {name: pd.read_sql_query(sql, conn, params={"day": story, "model": model})
                    for name, sql in INSIGHTS_SQL.items()}
    for title, name in ((f"Insights of {story}: the least compliant (room, metric)", "compliance"),
                        ("Did the cooler's change work (change_responses)", "responses"),
                        ("Silent (gap ≥ 3 h) or stuck (≥ 6 h) sensors (sensor_health)", "sensors"),
                        ("Cameras (camera_health: identical frames ≥ 0.5 = frozen; with random weights "
                         "the CLIP near-duplicate share says nothing)", "cameras"),
                        ("A picture of the day per room (room_daily_charts)", "charts")):
        print(f"\n{title}:")
        print(insights[name].to_markdown(index=False, tablefmt="simple", disable_numparse=True)
              if len(insights[name]) else "(none)")
    print(f"\nCLIP model: {model}" + (RANDOM_BANNER if random_weights else ""))
    print(
        "\nOutput tables (schema mushroom): env_readings, env_readings_quarantine, "
        "env_daily_stats (with batch and growth day: the view env_daily_stats_by_batch), "
        "setpoint_snapshots, setpoint_snapshots_quarantine, setpoint_change_events, "
        "setpoint_deadband_references, switch_daily_stats, room_batches, image_manifest, "
        "image_embeddings, image_failures, setpoint_compliance, change_responses, sensor_health, "
        "camera_health, room_daily_charts (PNGs under $MUSHROOM_HOME/charts).\n"
        "Search them: `mushroom-pipeline search --text 'young white caps'`.\n"
        "Open the Dagster UI on the same data with `make ui` (http://127.0.0.1:3000)."
    )


def batch_table(batches: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "room": batches["room"],
        "batch": batches["batch"],
        "entry date": batches["entry_date"],
        "bags": batches["bags"],
        "growth days": [f"{first} … {last}" for first, last in
                        zip(batches["first_growth_day"], batches["last_growth_day"])],
        "new": [f"new, replaced {room}/{replaced}" if pd.notna(replaced) else ""
                for room, replaced in zip(batches["room"], batches["replaced_entry_date"])],
    })


def change_table(changes: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    def shown(value: float, label: str | None) -> str:
        return f"{label} ({value:g})" if pd.notna(label) else f"{value:g}"

    values = changes[["old_value", "old_label", "new_value", "new_label"]].itertuples(index=False)
    return pd.DataFrame({
        "changed at": pd.to_datetime(changes["changed_at"], utc=True)
        .dt.tz_convert(settings.tz).dt.strftime("%Y-%m-%d %H:%M"),
        "device": changes["device"],
        "point": changes["point"],
        "change": [f"{shown(old, old_label)} → {shown(new, new_label)}"
                   for old, old_label, new, new_label in values],
    })
