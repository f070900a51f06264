"""Command line: ``python -m backend serve`` and ``python -m backend download-weights``.

    python -m backend serve [--host 127.0.0.1] [--port $PORT or 5000] [--model-type vit_b] [--checkpoint FILE]
    python -m backend download-weights --model-type vit_b [--dest DIR]
    python -m backend config-table
    python -m backend nginx-config [--listen 0.0.0.0:8080] [--upstream 127.0.0.1:$PORT] [--prefix DIR]
    python -m backend deploy-encoder --ray-address ADDR [--replicas N | --autoscale MIN:MAX] [--gpus-per-replica G]
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

    front = commands.add_parser("nginx-config", help="print the nginx.conf of the buffering front (docs/deploy.md)")
    front.add_argument("--listen", default="0.0.0.0:8080", help="address:port nginx listens on")
    front.add_argument("--upstream", default=None, help="gunicorn's address (default 127.0.0.1:$PORT)")
    front.add_argument("--prefix", default="/var/lib/sam-web/nginx", help="directory for nginx's pid, logs, temp files")
    deploy = commands.add_parser("deploy-encoder", help="deploy the image encoder on a Ray cluster (Ray Serve)")
    deploy.add_argument("--ray-address", required=True, help="the cluster, e.g. ray://head:10001 or head:6379")
    scale = deploy.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=None, help="a fixed number of replicas (default 1)")
    scale.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="autoscale between MIN and MAX replicas")
    deploy.add_argument(
        "--gpus-per-replica", type=float, default=None, help="default: 1 if the cluster has GPUs, else 0"
    )
    deploy.add_argument("--threads", type=int, default=1, help="CPU threads (and Ray CPUs) per replica (default 1)")
    deploy.add_argument("--model-type", choices=MODEL_TYPES, default=None, help="overrides SAM_MODEL_TYPE")
    deploy.add_argument("--checkpoint", default=None, help="a checkpoint path that every replica's node can read")

    from .cluster.batch_amg import add_arguments as add_amg_arguments

    add_amg_arguments(commands.add_parser("amg", help="label images in everything mode (scripts/amg.py outputs)"))

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "deploy-encoder":
            return _deploy_encoder(args)
        if args.command == "amg":
            from .cluster.batch_amg import main as amg_main

            return amg_main(args)
        if args.command == "config-table":
            print(config_table(), end="")
            return 0
        if args.command == "nginx-config":
            from .server.front import nginx_config

            print(
                nginx_config(Config.from_env(), listen=args.listen, upstream=args.upstream, prefix=args.prefix), end=""
            )
            return 0
        return _download(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    from .server.app import create_app

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


def _deploy_encoder(args: argparse.Namespace) -> int:
    try:
        from .cluster import serve_encoder
    except ImportError:
        print("error: deploy-encoder needs Ray Serve: pip install '.[cluster]'", file=sys.stderr)
        return 2
    import ray

    overrides = {}
    if args.model_type:
        overrides["model_type"] = args.model_type
    if args.checkpoint:
        overrides["checkpoint"] = args.checkpoint
    config = Config.from_env(overrides=overrides)
    autoscale = None
    if args.autoscale:
        try:
            low, high = (int(v) for v in args.autoscale.split(":"))
        except ValueError:
            low = high = -1
        if not 0 <= low <= high or high < 1:
            raise ConfigError(f"--autoscale must be MIN:MAX with 0 <= MIN <= MAX and MAX >= 1, got {args.autoscale!r}")
        autoscale = (low, high)
    replicas = args.replicas if args.replicas is not None else 1
    if replicas < 1 or args.threads < 1:
        raise ConfigError("--replicas and --threads must be at least 1")
    try:
        ray.init(address=args.ray_address, namespace="sam", log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        print(f"error: cannot connect to the Ray cluster at {args.ray_address}: {error}", file=sys.stderr)
        return 1
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    app = serve_encoder.build_app(
        serve_encoder.replica_settings(config),
        replicas=replicas,
        autoscale=autoscale,
        gpus_per_replica=gpus,
        threads=args.threads,
        max_queued=config.queue_size,
    )
    identity = serve_encoder.deploy(args.ray_address, app)
    scaling = f"autoscaling {autoscale[0]}..{autoscale[1]}" if autoscale else f"{replicas} replica(s)"
    print(
        f"deployed {serve_encoder.APP_NAME}: {scaling}, {gpus:g} GPU and {args.threads} thread(s) each; "
        f"{identity['weights_id']} on {identity['device']} in {identity['precision']}. "
        f"Web hosts: SAM_RAY_ADDRESS={args.ray_address}",
        flush=True,
    )
    return 0


def _download(args: argparse.Namespace) -> int:
    from .services.weights import CHECKPOINTS, WeightsError, download

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
