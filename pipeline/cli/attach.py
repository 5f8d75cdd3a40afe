"""`pipeline-attach`: list running pipelines, or attach a result consumer to one."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time

from pipeline.cli.common import join, leave_model_cores
from pipeline.outputs import check_folder, first_problem
from pipeline.strings import control_problem
from pipeline.transport.rundir import RuntimeDirError, running_pipelines


def build_parser() -> argparse.ArgumentParser:
    # The options' declarations are pydantic fields: imported here, not at the top, so that
    # main() leaves the model's cores before pydantic loads.
    from pipeline.cli.consumer_args import OneLineParser, add_consumer_options
    from pipeline.config.consumers import BUILTIN_CONSUMERS

    ap = OneLineParser(
        prog="pipeline-attach",
        description="Attach a result consumer to a running pipeline (found by name).")
    ap.add_argument("--name", help="pipeline name (default: the only one running)")
    ap.add_argument("--list", action="store_true", help="list running pipelines and exit")
    ap.add_argument("--consumer", default="print", metavar="CONSUMER",
                    help=f"{', '.join(BUILTIN_CONSUMERS)}, or MODULE:NAME / FILE.py:NAME (default print)")
    ap.add_argument("--format", choices=["text", "jsonl"],
                    help="shorthand: text = --consumer print, jsonl = --consumer jsonl")
    ap.add_argument("--count", type=int, help="stop after this many results")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument("--max-age", type=float, metavar="SECONDS",
                    help="skip results older than this when read (default: 2 for print, video and "
                         "preview, off for jsonl and custom consumers)")
    ap.add_argument("--label", metavar="NAME",
                    help="name this consumer in its closing line (pipeline-up names each of a "
                         "config's [[consumers]] by kind and number, e.g. jsonl#2)")
    add_consumer_options(ap)
    return ap


def list_pipelines() -> int:
    running = running_pipelines()
    if not running:
        print("no pipeline is running")
        return 0
    print(f"{'NAME':<14} {'PID':>7} {'UP':>8}  {'SOURCE':<10} RESULTS ENDPOINT")
    for info in running:
        up = time.time() - info["started_at"]
        sources = info["config"].get("sources") or [info["config"]["source"]]
        kind = sources[0]["kind"] if len(sources) == 1 else f"{len(sources)} sources"
        results = info["endpoints"].get("results") or f"(none: host {info.get('host')} runs capture only)"
        print(f"{info['name']:<14} {info['pid']:>7} {up:7.0f}s  {kind:<10} {results}")
        print(f"{'':<14} {'':>7} {'':>8}  stages: {', '.join(info['stages'])}; "
              f"status: {info['endpoints']['status']}")
    return 0




def _source_fps(info: dict) -> float | None:
    src = info["config"]["source"]
    return src.get("fps") or None


def _bad_option(args: argparse.Namespace) -> str | None:
    """One line on the first option that cannot work, checked before anything starts."""
    from pipeline.config.consumers import BUILTIN_CONSUMERS, flag_of, options, unknown_kind

    if args.consumer not in BUILTIN_CONSUMERS and ":" not in args.consumer:
        return f"--consumer {unknown_kind(args.consumer)}"
    for flag in ("count", "duration", "fps", "max_age", "stats_interval"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            return f"--{flag.replace('_', '-')} must be a positive number, got {value}"
    if not 0 <= args.port <= 65535:
        return f"--port must be 0-65535, got {args.port}"
    for name in options():  # every string a consumer hands on to the system
        value = getattr(args, name)
        for item in value if isinstance(value, list) else [value]:
            problem = isinstance(item, str) and control_problem(flag_of(name), item)
            if problem:
                return problem
    if args.consumer == "collect":
        return check_folder(args.out, "--out") if args.out else "the collect consumer needs --out FOLDER"
    return first_problem({"--out": args.out if args.out != "-" else None})


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(*_: object) -> None:
    """The first stop signal ends the run like Ctrl-C (the video file gets closed); the shutdown
    it starts runs to its end, deaf to any further one."""
    _ignore_stop_signals()
    raise KeyboardInterrupt


def _ignore_stop_signals() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    leave_model_cores(argv)  # before the option declarations load pydantic
    args = build_parser().parse_args(argv)
    if args.list:
        try:
            return list_pipelines()
        except RuntimeDirError as e:
            print(f"pipeline-attach: {e}", file=sys.stderr)
            return 1
    problem = _bad_option(args)
    if problem:
        print(f"pipeline-attach: {problem}", file=sys.stderr)
        return 2
    consumer_spec = {"text": "print", "jsonl": "jsonl"}.get(args.format or "", args.consumer)
    joined = join("pipeline-attach", args.name, off_model_cores=False)
    if joined is None:
        return 1
    info, inputs = joined
    out = args.out if args.out != "-" and consumer_spec != "collect" else None  # (collect's: a folder)
    problem = first_problem({"--out": out}, inputs)
    if problem:
        print(f"pipeline-attach: {problem}", file=sys.stderr)
        return 2
    from pipeline.cli.consumer_args import consumer_options
    from pipeline.client.consumers import load, run
    from pipeline.client.subscription import Subscription
    from pipeline.errors import UserError

    try:
        consumer = load(consumer_spec, **{**consumer_options(args), "fps": args.fps or _source_fps(info)},
                        name=info["name"], config=info["config"])
    except (UserError, ValueError, OSError) as e:
        print(f"pipeline-attach: {e}", file=sys.stderr)
        return 2
    sub = Subscription(info["name"], frames=args.frames or getattr(consumer, "frames", False),
                       status=getattr(consumer, "status", False),
                       max_age=args.max_age or getattr(consumer, "max_age", None))
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    try:
        run(consumer, sub, count=args.count, duration=args.duration)
    except KeyboardInterrupt:
        pass
    except UserError as e:  # the consumer found it cannot go on (a broker that refuses it)
        print(f"pipeline-attach: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        return 0
    finally:
        _ignore_stop_signals()  # the run is over: nothing left to interrupt
        sub.close()
    gone = f"; stream ended: {sub.ended}" if sub.ended else ""
    who = f"consumer {args.label}" if args.label else "attach"
    print(f"{who}: {sub.received} results, {sub.missed} missed (this consumer fell behind), "
          f"{sub.dropped} dropped or delayed by the pipeline"
          + (f", {sub.malformed} malformed messages ignored" if sub.malformed else "")
          + (f", {sub.frames_missed} without frame" if sub.frames else "") + gone,
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
