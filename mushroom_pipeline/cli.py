"""`mushroom-pipeline`: set up the embedded services, run the demo, open the UI."""

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mushroom_pipeline import embedded
from mushroom_pipeline.settings import Settings, load_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def prepare_dagster_home(settings: Settings) -> dict[str, str]:
    """DAGSTER_HOME under MUSHROOM_HOME with the project's dagster.yaml; returns the variables
    for Dagster processes, and sets them in this one."""
    home = settings.home / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    variables = {
        "MUSHROOM_HOME": str(settings.home),
        "DAGSTER_HOME": str(home),
    }
    os.environ.update(variables)
    return variables


def cmd_env(settings: Settings, args) -> None:
    for name, value in prepare_dagster_home(settings).items():
        print(f"export {name}='{value}'")


def cmd_db(settings: Settings, args) -> None:
    if args.action == "repair-storage":
        # Dagster's storage: repair alembic_version, create what is missing, migrate (as
        # `dagster instance migrate`), under the storage's lock; the one-shot migrate step too
        from mushroom_pipeline.dagster_storage import BrokenStorageError, repair_storage

        try:
            repair_storage(settings)
        except BrokenStorageError as err:
            sys.exit(str(err))
    elif args.action == "stop":
        print("stopped" if embedded.stop(settings.home) else "not running")
    elif settings.database_url:
        print("MUSHROOM_DATABASE_URL is set: no embedded server to manage", file=sys.stderr)
    else:
        print(embedded.server_url(settings.home))


def cmd_demo(settings: Settings, args) -> None:
    from mushroom_pipeline.demo.run import run_demo

    prepare_dagster_home(settings)
    run_demo(settings, days=args.days)


UI_STOP_GRACE_S = 7  # then the stragglers are killed: Ctrl-C returns the terminal within 10 s


def stop_process_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the whole group (webserver, daemon, code servers, run workers), SIGKILL to
    whatever still runs after `grace_s`: `dagster dev` alone can take over 30 s to wind down."""
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            process.poll()  # reaps the leader, so its group can empty
            time.sleep(0.1)


def cmd_ui(settings: Settings, args) -> None:
    variables = prepare_dagster_home(settings)
    print(f"Dagster UI: http://{args.host}:{args.port}  (DAGSTER_HOME={variables['DAGSTER_HOME']})")
    # Its own process group, supervised here: Ctrl-C or SIGTERM stops every process it started.
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
         "-h", args.host, "-p", str(args.port)],
        env=os.environ, start_new_session=True,
    )

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        print("Stopping the Dagster UI (webserver, daemon, code servers)...", file=sys.stderr)
        stop_process_group(process, UI_STOP_GRACE_S)
        code = 0
    raise SystemExit(code)


def cmd_search(settings: Settings, args) -> None:
    from mushroom_pipeline.definitions import resources_outside_a_run
    from mushroom_pipeline.images.search import (
        as_markdown,
        as_records,
        nearest,
        stored_vector,
        with_context,
    )

    if args.where:  # the metrics by the catalog a run reads, before any model or database
        with resources_outside_a_run("farm_catalog") as resources:
            where = environment_conditions(args.search_parser, args.where,
                                           resources.farm_catalog.metrics())
    else:
        where = []
    with resources_outside_a_run("clip_encoder", "warehouse") as resources:
        clip, warehouse = resources.clip_encoder, resources.warehouse
        other_days_than = None
        if args.similar:
            vector, other_days_than = stored_vector(warehouse, args.similar, clip.model_id())
            model = clip.model_id()
        else:
            encoder = clip.encoder()
            model = encoder.model_id
            if args.text:
                vector = encoder.encode_texts([args.text])[0]
            else:
                from mushroom_pipeline.images.decode import decode_image

                decoded = decode_image(Path(args.image).read_bytes(), encoder.image_size)
                vector = encoder.encode_images(encoder.preprocess(decoded.image)[None])[0]
            if encoder.random_weights:
                print("WARNING: untrained (random) CLIP weights: distances carry no meaning",
                      file=sys.stderr)
        try:
            hits = nearest(warehouse, vector, model, room=args.room, day=args.day,
                           day_from=args.day_from, day_to=args.day_to,
                           other_days_than=other_days_than, growth_days=args.growth_day,
                           where=where, max_distance=args.max_distance,
                           distinct=args.distinct, limit=args.limit)
        except LookupError as err:
            sys.exit(str(err))
        hits = with_context(warehouse, hits)
    if args.json:
        print(json.dumps(as_records(hits), indent=2, ensure_ascii=False))
    else:
        print(as_markdown(hits) if len(hits) else "no images")


def environment_conditions(parser: argparse.ArgumentParser, written: list[tuple[str, str, float]],
                           metrics) -> list:
    """--where's (metric as written, op, value) with the metric folded to its catalog name; a
    metric the catalog does not know is an argparse error naming those it knows."""
    from mushroom_pipeline.images.search import Condition

    conditions = []
    for name, op, value in written:
        metric = metrics.get(name)
        if metric is None:
            known = ", ".join(f"{m.name} ({', '.join(m.aliases)})" if m.aliases else m.name
                              for m in metrics.metrics)
            parser.error(f"argument --where: unknown metric {name!r}; the metrics are {known} "
                         f"({metrics.source})")
        conditions.append(Condition(metric.name, op, value))
    return conditions


def where_condition(text: str) -> tuple[str, str, float]:
    """`humidity_pct>=90` → (metric as written, op, value); the metric is checked against the
    catalog once it is read."""
    from mushroom_pipeline.images.search import parse_condition

    try:
        return parse_condition(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def iso_day(text: str) -> str:
    try:
        return dt.date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a day as YYYY-MM-DD") from None


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a cosine distance, a number from 0 (0..2)")
    return value


def positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number from 1")
    return int(text)


def growth_day_range(text: str) -> tuple[int, int]:
    """`12` or `10..14` (inclusive) → (first, last)."""
    first, dots, last = text.partition("..")
    last = last if dots else first
    if not (first.strip().isdigit() and last.strip().isdigit()) or int(first) > int(last):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a growth day (12) or a range of them (10..14), whole numbers from "
            "0, the first not after the last"
        )
    return int(first), int(last)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mushroom-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help="print the Dagster variables (eval \"$(... env)\")")
    db = commands.add_parser("db", help="the embedded Postgres: start (prints its URL) or stop")
    db.add_argument("action", choices=["start", "stop", "repair-storage"],
                    help="start/stop the embedded Postgres; repair-storage: repair and migrate "
                         "Dagster's storage (the one-shot step before webserver and daemon)")
    demo = commands.add_parser("demo", help="seed a demo farm and materialize every asset")
    demo.add_argument("--days", type=int, default=7)
    ui = commands.add_parser("ui", help="the Dagster UI (webserver + daemon)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    search = commands.add_parser("search", help="nearest images to a text, an image, or a stored image")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a description, embedded by CLIP's text tower")
    query.add_argument("--image", help="an image file")
    query.add_argument("--similar", metavar="OBJECT_KEY",
                       help="similar historical cases: an embedded image's nearest from other days")
    search.add_argument("--room")
    search.add_argument("--day", type=iso_day, help="YYYY-MM-DD: one day (--from D --to D)")
    search.add_argument("--from", dest="day_from", type=iso_day, metavar="YYYY-MM-DD",
                        help="images of this day or later")
    search.add_argument("--to", dest="day_to", type=iso_day, metavar="YYYY-MM-DD",
                        help="images of this day or earlier")
    search.add_argument("--growth-day", type=growth_day_range, metavar="A..B",
                        help="only images whose room's batch was at a growth day in A..B "
                             "(or at day A) on their day, from any batch (mushroom.room_batches)")
    search.add_argument("--where", action="append", type=where_condition, default=[],
                        metavar="METRIC<OP>NUMBER",
                        help="repeatable; only images whose room's reading of METRIC (a catalog "
                             "name or alias) nearest the capture time, within ±15 minutes, "
                             "passes: humidity_pct>=90, temperature_c<17; OP one of "
                             ">=, <=, >, <, =, !=; an image without such a reading does not")
    search.add_argument("--max-distance", type=non_negative, metavar="D",
                        help="only hits at most this cosine distance away")
    search.add_argument("--distinct", action="store_true",
                        help="collapse near-duplicate frames: drop a hit within cosine distance "
                             "0.005 of a better one kept from its room")
    search.add_argument("--json", action="store_true",
                        help="a JSON array of the hits with their context, for tools")
    search.add_argument("--limit", type=positive_int, default=10)
    search.set_defaults(search_parser=search)
    args = parser.parse_args(argv)
    if args.command == "search" and args.day and (args.day_from or args.day_to):
        search.error("argument --day: give --day, or --from/--to, not both")
    if args.command == "search" and args.day_from and args.day_to and args.day_from > args.day_to:
        search.error(f"argument --to: {args.day_to} is before --from {args.day_from}")
    handler = {"env": cmd_env, "db": cmd_db, "demo": cmd_demo, "ui": cmd_ui,
               "search": cmd_search}[args.command]
    handler(load_settings(), args)


if __name__ == "__main__":
    main()
