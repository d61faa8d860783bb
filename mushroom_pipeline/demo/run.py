"""`make demo`: seed the demo farm, materialize every asset for its days through Dagster, report."""

import datetime as dt

import dagster as dg
import pandas as pd

from mushroom_pipeline.demo.farm import days_ending, seed_env_readings, seed_setpoints
from mushroom_pipeline.settings import Settings

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
            FROM mushroom.switch_daily_stats WHERE day = ANY(%(days)s) GROUP BY 1)
SELECT day, source_rows, invalid, readings, stats_rows, mean_coverage,
       setpoint_events, setpoint_changes, switch_ons, mean_minutes_on
FROM src LEFT JOIN inv USING (day) LEFT JOIN rd USING (day) LEFT JOIN st USING (day)
     LEFT JOIN ev USING (day) LEFT JOIN sw USING (day) ORDER BY day
"""


def run_demo(settings: Settings, days: int) -> None:
    # Imported here: the definitions read the environment that prepare_dagster_home sets.
    from mushroom_pipeline.definitions import defs

    warehouse = defs.resources["warehouse"]
    source = defs.resources["source_database"]
    yesterday = dt.datetime.now(settings.tz).date() - dt.timedelta(days=1)
    demo_days = days_ending(yesterday, days)
    readings = seed_env_readings(source.get_engine(), demo_days, settings.tz)
    snapshots = seed_setpoints(source.get_engine(), demo_days, settings.tz)
    print(f"Demo farm: {readings} readings and {snapshots} setpoint snapshots for "
          f"{demo_days[0]} … {demo_days[-1]} ({settings.timezone})")

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
        summary = pd.read_sql_query(SUMMARY_SQL, conn, params={"days": demo_days})
    print()
    print(summary.to_markdown(index=False))
    print(
        "\nOutput tables (schema mushroom): env_readings, env_readings_quarantine, "
        "env_daily_stats, setpoint_snapshots, setpoint_snapshots_quarantine, "
        "setpoint_change_events, switch_daily_stats.\nOpen the Dagster UI on the same data with `make ui` "
        "(http://127.0.0.1:3000)."
    )
