"""`pipeline-deploy`: switch a running pipeline to another model file without stopping it (a
model from pipeline-train, any ONNX classifier, a state dict, or "builtin"). With `--config`, the
model the config names (what `systemctl reload` runs for a pipeline installed as a service)."""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.cli.describe import description
from pipeline.client.deploy import DEPLOY_TIMEOUT_S, request_deploy
from pipeline.config import WEIGHTS_SPECIAL, ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pipeline-deploy", description=description(__doc__))
    ap.add_argument("model", nargs="?",
                    help="the model file (.onnx, or a state dict), or \"builtin\" for the shipped model")
    ap.add_argument("--name", help="the pipeline (default: the only one running)")
    ap.add_argument("--labels", default="",
                    help="class names, one per line, for an ONNX file whose metadata has none")
    ap.add_argument("--config", metavar="FILE",
                    help="deploy the model.weights (and model.labels) this config names, after "
                         "its --set overrides; the pipeline is the config's name unless --name")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="with --config: override a config key, as for pipeline-up")
    ap.add_argument("--timeout", type=float, default=DEPLOY_TIMEOUT_S,
                    help="seconds to wait for the switch (default %(default).0f)")
    return ap


def _request(args: argparse.Namespace) -> tuple[str | None, dict[str, str]] | str:
    """(pipeline name, request), or the problem."""
    if args.config:
        if args.model or args.labels:
            return "give either a model file or --config, not both"
        try:
            config = load_config(args.config, args.overrides)
        except ConfigError as e:
            return str(e)
        return args.name or config.name, {"weights": config.model.weights, "labels": config.model.labels}
    if not args.model:
        return "name the model file to deploy (or --config FILE)"
    if args.overrides:
        return "--set goes with --config"
    weights = args.model
    if weights not in WEIGHTS_SPECIAL:
        if not os.path.isfile(weights):
            return f"no such model file: {weights}"
        weights = os.path.abspath(weights)
    labels = ""
    if args.labels:
        if not os.path.isfile(args.labels):
            return f"--labels: no such file: {args.labels}"
        labels = os.path.abspath(args.labels)
    return args.name, {"weights": weights, "labels": labels}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    made = _request(args)
    if isinstance(made, str):
        print(f"pipeline-deploy: {made}", file=sys.stderr)
        return 2
    name, request = made
    ok, message = request_deploy(name, request["weights"], request["labels"], args.timeout)
    if not ok:
        print(f"pipeline-deploy: {message}", file=sys.stderr)
        return 1
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
