"""Dagster's own storage (runs, event logs, schedules) on dagster-postgres, found from the
project's settings, so every Dagster process (CLI, webserver, daemon, run workers) shares it
without extra variables:

1. MUSHROOM_DAGSTER_STORAGE_URL, when set;
2. else database `dagster` on MUSHROOM_DATABASE_URL's server (created when missing);
3. else database `dagster` on the embedded server under MUSHROOM_HOME.
"""

import os

import dagster as dg
import sqlalchemy as sa
from dagster_postgres import DagsterPostgresStorage

from mushroom_pipeline import embedded
from mushroom_pipeline.settings import Settings, load_settings


def dagster_storage_url(settings: Settings) -> str:
    explicit = os.environ.get("MUSHROOM_DAGSTER_STORAGE_URL", "").strip()
    if explicit:
        return explicit
    if settings.database_url is None:
        return embedded.server_url(settings.home, embedded.DAGSTER_DATABASE)
    warehouse = sa.make_url(settings.database_url).set(drivername="postgresql+psycopg2")
    admin = sa.create_engine(
        warehouse,
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": 5},
    )
    with admin.connect() as conn:
        name = embedded.DAGSTER_DATABASE
        if not conn.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).first():
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    # dagster-postgres needs the explicit psycopg2 driver: SQLAlchemy 2.1 would pick psycopg 3.
    return warehouse.set(database=embedded.DAGSTER_DATABASE).render_as_string(hide_password=False)


class MushroomPostgresStorage(DagsterPostgresStorage):
    @classmethod
    def config_type(cls):
        return {"postgres_url": dg.Field(dg.StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        url = config_value.get("postgres_url") or dagster_storage_url(load_settings())
        return cls(postgres_url=url, inst_data=inst_data)
