"""`pipeline-up`: validate a topology, then run it under the supervisor."""

from __future__ import annotations

import argparse
import math
import sys

from pipeline.config import ConfigError, input_files, load_config
from pipeline.outputs import first_problem

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pipeline-up",
        description="Run a capture -> preprocess -> inference pipeline described by a TOML topology.")
    ap.add_argument("config", help="topology file, e.g. configs/demo.toml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (repeatable), e.g. --set source.path=clip.mp4")
    ap.add_argument("--name", help="pipeline name (same as --set name=NAME)")
    ap.add_argument("--duration", type=float, metavar="SECONDS",
                    help="stop after this many seconds of running (default: until Ctrl-C or end of input)")
    ap.add_argument("--record", metavar="FILE", help="write every result as one JSON object per line")
    ap.add_argument("--summary-json", metavar="FILE", help="write the exit summary as JSON")
    ap.add_argument("--quiet", action="store_true", help="no per-second status lines")
    ap.add_argument("--metrics-port", type=int, metavar="PORT",
                    help="serve Prometheus metrics on http://HOST:PORT/metrics (0: any free port)")
    ap.add_argument("--host", metavar="NAME",
                    help="run only the stages placed on host NAME by the topology (default: all)")
    ap.add_argument("--metrics-host", default="127.0.0.1",
                    help="address for --metrics-port (default 127.0.0.1: this machine only)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        print(f"pipeline-up: --metrics-port must be 0-65535, got {args.metrics_port}", file=sys.stderr)
        return EXIT_CONFIG
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        print(f"pipeline-up: --duration must be a positive number of seconds, got {args.duration}",
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(args.config, overrides, host=args.host)
    except ConfigError as e:
        print(f"pipeline-up: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    outputs = {"--record": args.record, "--summary-json": args.summary_json,
               **{f"consumers[{i}].out": c.out for i, c in enumerate(config.consumers)
                  if c.out and c.out != "-"}}
    problem = first_problem(outputs, input_files(config, args.config))
    if problem:
        print(f"pipeline-up: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    from pipeline.supervisor.supervisor import Supervisor  # after validation: bad input starts nothing
    from pipeline.transport.rundir import RuntimeDirError

    try:
        return Supervisor(config, duration=args.duration, record=args.record,
                          summary_json=args.summary_json, quiet=args.quiet,
                          metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                          host=args.host).run()
    except RuntimeDirError as e:  # raised before anything starts
        print(f"pipeline-up: {e}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
