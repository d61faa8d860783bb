"""`mushroom-pipeline`: set up the embedded services, run the demo, open the UI."""

import argparse
import os
import shutil
import sys
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


def cmd_search(settings: Settings, args) -> None:
    from mushroom_pipeline.definitions import resources_outside_a_run
    from mushroom_pipeline.vision.search import nearest, stored_vector

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
                from mushroom_pipeline.vision.decode import decode_image

                decoded = decode_image(Path(args.image).read_bytes(), encoder.image_size)
                vector = encoder.encode_images(encoder.preprocess(decoded.image)[None])[0]
            if encoder.random_weights:
                print("WARNING: untrained (random) CLIP weights: distances carry no meaning",
                      file=sys.stderr)
        hits = nearest(warehouse, vector, model, room=args.room, day=args.day,
                       other_days_than=other_days_than, limit=args.limit)
    print(hits.to_markdown(index=False, floatfmt=".4f") if len(hits) else "no images")


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
    search = commands.add_parser("search", help="nearest images to a text, an image, or a stored image")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a description, embedded by CLIP's text tower")
    query.add_argument("--image", help="an image file")
    query.add_argument("--similar", metavar="OBJECT_KEY",
                       help="similar historical cases: an embedded image's nearest from other days")
    search.add_argument("--room")
    search.add_argument("--day", help="YYYY-MM-DD")
    search.add_argument("--limit", type=int, default=10)
    args = parser.parse_args(argv)
    handler = {"env": cmd_env, "db": cmd_db, "demo": cmd_demo, "ui": cmd_ui,
               "search": cmd_search}[args.command]
    handler(load_settings(), args)


if __name__ == "__main__":
    main()
