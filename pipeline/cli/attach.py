"""`pipeline-attach`: list running pipelines, or attach a result consumer to one."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time

from pipeline.cli.common import join
from pipeline.outputs import check_folder, first_problem
from pipeline.strings import control_problem
from pipeline.transport.rundir import RuntimeDirError, running_pipelines


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pipeline-attach",
        description="Attach a result consumer to a running pipeline (found by name).")
    ap.add_argument("--name", help="pipeline name (default: the only one running)")
    ap.add_argument("--list", action="store_true", help="list running pipelines and exit")
    ap.add_argument("--consumer", default="print",
                    help="print (default), jsonl, video, preview, mqtt, collect, or MODULE:NAME / "
                         "FILE.py:NAME")
    ap.add_argument("--format", choices=["text", "jsonl"],
                    help="shorthand: text = --consumer print, jsonl = --consumer jsonl")
    ap.add_argument("--out", help="output file (jsonl: default stdout; video: required .mp4); "
                                  "collect: the dataset folder")
    ap.add_argument("--count", type=int, help="stop after this many results")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument("--port", type=int, default=8080, help="preview: HTTP port (default 8080)")
    ap.add_argument("--host", default="127.0.0.1", help="preview: address (default 127.0.0.1)")
    ap.add_argument("--allow-host", dest="allow_hosts", action="append", default=[], metavar="NAME",
                    help="preview: also answer requests addressed to host NAME (repeatable; by "
                         "default only this machine's names and any address are answered)")
    te = ap.add_argument_group("preview consumer: the labelling page, /teach (with --dataset)")
    te.add_argument("--dataset", metavar="DIR",
                    help="the dataset folder (a subfolder per class, unlabelled/) the page labels")
    te.add_argument("--token", help="the page's write token (default: a random one, printed at start)")
    te.add_argument("--review-below", type=float, metavar="P",
                    help="save results below this top-1 probability into DIR/unlabelled for review "
                         "(default 0.6; 0: none)")
    te.add_argument("--models", metavar="DIR",
                    help="where models trained from the page go (default DATASET/../<dataset name>-models)")
    ap.add_argument("--fps", type=float, help="video: frame rate of the file (default: the source's)")
    ap.add_argument("--frames", action="store_true", help="give custom consumers the frames too")
    mq = ap.add_argument_group("mqtt consumer (credentials: MQTT_USERNAME, MQTT_PASSWORD in the "
                               "environment)")
    mq.add_argument("--broker", default="mqtt://localhost:1883", metavar="URL",
                    help="mqtt://HOST[:PORT], or mqtts://HOST[:PORT] for TLS (default "
                         "mqtt://localhost:1883)")
    mq.add_argument("--topic-prefix", metavar="PREFIX",
                    help="topics start with this (default edge-pipeline/<hostname>/<pipeline name>)")
    mq.add_argument("--client-id", metavar="ID", help="MQTT client id (default: unique per process)")
    mq.add_argument("--qos", type=int, default=1, choices=(0, 1, 2), help="QoS of every message (default 1)")
    mq.add_argument("--discovery", action="store_true",
                    help="announce the sources to Home Assistant (MQTT discovery, retained)")
    mq.add_argument("--discovery-prefix", default="homeassistant", metavar="PREFIX",
                    help="Home Assistant's discovery prefix (default homeassistant)")
    mq.add_argument("--snapshots", action="store_true",
                    help="publish a JPEG of the frame behind each state change")
    mq.add_argument("--stats-interval", type=float, default=5.0, metavar="SECONDS",
                    help="seconds between stats messages and state refreshes (default 5)")
    mq.add_argument("--ca", metavar="FILE", help="mqtts: CA certificate file (default: the system's)")
    co = ap.add_argument_group("collect consumer (examples to train on, in --out FOLDER/unlabelled)")
    co.add_argument("--quality", type=int, help="JPEG quality 1-100 (default 90)")
    co.add_argument("--min-interval", type=float, metavar="SECONDS",
                    help="per source, at most one frame per this much capture time is considered "
                         "(default 1)")
    co.add_argument("--min-difference", type=float, metavar="D",
                    help="keep a frame only if its thumbnail differs from every kept one's by this "
                         "(0-2, default 0.1)")
    co.add_argument("--max-examples", type=int, metavar="N",
                    help="save at most this many examples of each source in one run (default 200)")
    co.add_argument("--verbose", action="store_true", help="a line for each example saved")
    ap.add_argument("--max-age", type=float, metavar="SECONDS",
                    help="skip results older than this when read (default: 2 for print, video and "
                         "preview, off for jsonl and custom consumers)")
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
    for flag in ("count", "duration", "fps", "max_age", "stats_interval"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            return f"--{flag.replace('_', '-')} must be a positive number, got {value}"
    if not 0 <= args.port <= 65535:
        return f"--port must be 0-65535, got {args.port}"
    for flag in ("out", "host", "ca", "broker", "topic_prefix", "discovery_prefix", "client_id",
                 "dataset", "token", "models"):
        problem = getattr(args, flag) and control_problem(f"--{flag.replace('_', '-')}",
                                                          getattr(args, flag))
        if problem:
            return problem
    for host in args.allow_hosts:
        problem = control_problem("--allow-host", host)
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
    joined = join("pipeline-attach", args.name)
    if joined is None:
        return 1
    info, inputs = joined
    out = args.out if args.out != "-" and consumer_spec != "collect" else None  # (collect's: a folder)
    problem = first_problem({"--out": out}, inputs)
    if problem:
        print(f"pipeline-attach: {problem}", file=sys.stderr)
        return 2
    from pipeline.client.consumers import load, run
    from pipeline.client.subscription import Subscription
    from pipeline.errors import UserError

    try:
        consumer = load(consumer_spec, out=args.out, port=args.port, host=args.host,
                        allow_hosts=args.allow_hosts,
                        fps=args.fps or _source_fps(info), name=info["name"], config=info["config"],
                        broker=args.broker, topic_prefix=args.topic_prefix,
                        client_id=args.client_id, qos=args.qos, discovery=args.discovery,
                        discovery_prefix=args.discovery_prefix, snapshots=args.snapshots,
                        stats_interval=args.stats_interval, ca=args.ca, quality=args.quality,
                        min_interval=args.min_interval, min_difference=args.min_difference,
                        max_examples=args.max_examples, verbose=args.verbose, dataset=args.dataset,
                        token=args.token, review_below=args.review_below, models=args.models)
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
    print(f"attach: {sub.received} results, {sub.missed} missed (this consumer fell behind), "
          f"{sub.dropped} dropped or delayed by the pipeline"
          + (f", {sub.malformed} malformed messages ignored" if sub.malformed else "")
          + (f", {sub.frames_missed} without frame" if sub.frames else "") + gone,
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
