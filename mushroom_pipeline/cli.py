"""`mushroom-pipeline`: set up the embedded services, run the demo, open the UI."""

import argparse
import os
import shutil
import sys
from pathlib import Path

import sqlalchemy as sa

from mushroom_pipeline import embedded
from mushroom_pipeline.settings import Settings, load_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def dagster_storage_url(settings: Settings) -> str:
    """Dagster's own storage: MUSHROOM_DAGSTER_STORAGE_URL, else database `dagster` beside the
    warehouse (created if missing)."""
    explicit = os.environ.get("MUSHROOM_DAGSTER_STORAGE_URL", "").strip()
    if explicit:
        return explicit
    if settings.database_url is None:
        return embedded.server_url(settings.home, embedded.DAGSTER_DATABASE)
    warehouse = sa.make_url(settings.database_url).set(drivername="postgresql+psycopg2")
    admin = sa.create_engine(warehouse, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        name = embedded.DAGSTER_DATABASE
        if not conn.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).first():
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    # dagster-postgres needs the explicit psycopg2 driver: SQLAlchemy 2.1 would pick psycopg 3.
    return warehouse.set(database=embedded.DAGSTER_DATABASE).render_as_string(hide_password=False)


def prepare_dagster_home(settings: Settings) -> dict[str, str]:
    """DAGSTER_HOME under MUSHROOM_HOME with the project's dagster.yaml; returns the variables
    every Dagster process needs, and sets them in this one."""
    home = settings.home / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    variables = {
        "MUSHROOM_HOME": str(settings.home),
        "DAGSTER_HOME": str(home),
        "MUSHROOM_DAGSTER_STORAGE_URL": dagster_storage_url(settings),
    }
    os.environ.update(variables)
    return variables


def cmd_env(settings: Settings, args) -> None:
    for name, value in prepare_dagster_home(settings).items():
        print(f"export {name}='{value}'")


def cmd_db(settings: Settings, args) -> None:
    if args.action == "stop":
        print("stopped" if embedded.stop(settings.home) else "not running")
    elif settings.database_url:
        print("MUSHROOM_DATABASE_URL is set: no embedded server to manage", file=sys.stderr)
    else:
        print(embedded.server_url(settings.home))


def cmd_demo(settings: Settings, args) -> None:
    from mushroom_pipeline.demo.run import run_demo

    prepare_dagster_home(settings)
    run_demo(settings, days=args.days)


def cmd_ui(settings: Settings, args) -> None:
    variables = prepare_dagster_home(settings)
    print(f"Dagster UI: http://{args.host}:{args.port}  (DAGSTER_HOME={variables['DAGSTER_HOME']})")
    os.execvpe(
        sys.executable,
        [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
         "-h", args.host, "-p", str(args.port)],
        os.environ,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mushroom-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help="print the Dagster variables (eval \"$(... env)\")")
    db = commands.add_parser("db", help="the embedded Postgres: start (prints its URL) or stop")
    db.add_argument("action", choices=["start", "stop"])
    demo = commands.add_parser("demo", help="seed a demo farm and materialize every asset")
    demo.add_argument("--days", type=int, default=7)
    ui = commands.add_parser("ui", help="the Dagster UI (webserver + daemon)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    handler = {"env": cmd_env, "db": cmd_db, "demo": cmd_demo, "ui": cmd_ui}[args.command]
    handler(load_settings(), args)


if __name__ == "__main__":
    main()
