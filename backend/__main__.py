"""Command line: ``python -m backend serve`` and ``python -m backend download-weights``.

    python -m backend serve [--host 127.0.0.1] [--port $PORT or 5000] [--model-type vit_b] [--checkpoint FILE]
    python -m backend download-weights --model-type vit_b [--dest DIR]
    python -m backend config-table
    python -m backend amg --checkpoint C --model-type T --input IMAGE_OR_DIR --output DIR [...]  (batch_amg.py)

Every other setting comes from the environment (see backend/config.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .config import MODEL_TYPES, Config, ConfigError, config_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend", description="Segment Anything web app")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the web app (development server, threaded)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: $PORT, else 5000)")
    serve.add_argument("--model-type", choices=MODEL_TYPES, default=None, help="overrides SAM_MODEL_TYPE")
    serve.add_argument("--checkpoint", default=None, help="checkpoint file for the model type (SAM_CHECKPOINT)")

    fetch = commands.add_parser("download-weights", help="download an official checkpoint into the weights dir")
    fetch.add_argument("--model-type", choices=MODEL_TYPES, default=None, help="default: SAM_MODEL_TYPE or vit_b")
    fetch.add_argument("--dest", default=None, help="directory (default: SAM_WEIGHTS_DIR or $SAM_DATA_DIR/weights)")
    fetch.add_argument("--url", default=None, help=argparse.SUPPRESS)  # A mirror; also used by the tests.

    commands.add_parser("config-table", help="print the settings table (markdown) that the README shows")

    from .batch_amg import add_arguments as add_amg_arguments

    add_amg_arguments(commands.add_parser("amg", help="label images in everything mode (scripts/amg.py outputs)"))

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "amg":
            from .batch_amg import main as amg_main

            return amg_main(args)
        if args.command == "config-table":
            print(config_table(), end="")
            return 0
        return _download(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    from .app import create_app

    overrides = {}
    if args.model_type:
        overrides["model_type"] = args.model_type
    if args.checkpoint:
        overrides["checkpoint"] = args.checkpoint
    port = args.port if args.port is not None else int(os.environ.get("PORT") or 5000)
    app = create_app(overrides)
    print(f"Segment Anything is running at http://{args.host}:{port}/", flush=True)
    app.run(host=args.host, port=port, threaded=True, use_reloader=False)
    return 0


def _download(args: argparse.Namespace) -> int:
    from .weights import CHECKPOINTS, WeightsError, download

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = Config.from_env(overrides={"model_type": args.model_type} if args.model_type else None)
    checkpoint = CHECKPOINTS[config.canonical_model_type]
    destination_dir = args.dest or str(config.resolved_weights_dir)
    destination = os.path.join(destination_dir, checkpoint.filename)
    url = args.url or checkpoint.url
    print(f"downloading {url}\n       to {destination}", flush=True)
    try:
        path = download(url, destination, checkpoint.size, timeout_s=30.0)
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"done: {path}; start the server with SAM_MODEL_TYPE={config.canonical_model_type}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
