"""`mushroom-pipeline`: set up the embedded services, run the demo, open the UI."""

import argparse
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
    from mushroom_pipeline.images.search import nearest, stored_vector

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
                           other_days_than=other_days_than, growth_days=args.growth_day,
                           limit=args.limit)
        except LookupError as err:
            sys.exit(str(err))
    shown = hits.astype(object).where(hits.notna(), "")  # an image without a batch: blank
    print(shown.to_markdown(index=False, floatfmt=".4f") if len(hits) else "no images")


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
    search.add_argument("--day", help="YYYY-MM-DD")
    search.add_argument("--growth-day", type=growth_day_range, metavar="A..B",
                        help="only images whose room's batch was at a growth day in A..B "
                             "(or at day A) on their day, from any batch (mushroom.room_batches)")
    search.add_argument("--limit", type=int, default=10)
    args = parser.parse_args(argv)
    handler = {"env": cmd_env, "db": cmd_db, "demo": cmd_demo, "ui": cmd_ui,
               "search": cmd_search}[args.command]
    handler(load_settings(), args)


if __name__ == "__main__":
    main()
