"""`pipeline-trace`: record per-frame, per-stage timestamps of a running pipeline for N seconds,
as Chrome trace-event JSON (Perfetto, chrome://tracing) and as a PNG plot.

Every result already carries its frame's timestamps at each stage and the queue depth each stage
saw, so tracing is just one more subscriber: the pipeline does no extra work for it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from pipeline.cli.common import join
from pipeline.cli.describe import description
from pipeline.observe.trace import chrome_trace, plot
from pipeline.outputs import first_problem, replacing, write_whole


def record(name: str | None, seconds: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Results received for `seconds` (raw maps) and the pipeline's discovery entry."""
    from pipeline.client.subscription import Subscription

    rows = []
    with Subscription(name, status=True, hwm=100000) as sub:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            r = sub.receive(timeout=left)
            if r is None and sub.ended:
                break
            if r is not None:
                rows.append(r.raw)
        pids = {s: m.get("pid") for s, m in (sub.last_status or {}).get("stages", {}).items()}
        info = dict(sub.info, stage_pids=pids, missed=sub.missed)
    return info, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pipeline-trace", description=description(__doc__))
    ap.add_argument("--name", help="pipeline name (default: the only one running)")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to record (10)")
    ap.add_argument("--out", default="trace.json", help="trace-event JSON file (trace.json)")
    ap.add_argument("--plot", metavar="PNG", help="also write a PNG plot here")
    args = ap.parse_args(argv)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        print(f"pipeline-trace: --seconds must be a positive number, got {args.seconds}", file=sys.stderr)
        return 2
    outputs = {"--out": args.out, "--plot": args.plot}
    problem = first_problem(outputs)  # before waiting for anything
    if problem:
        print(f"pipeline-trace: {problem}", file=sys.stderr)
        return 2
    joined = join("pipeline-trace", args.name)
    if joined is None:
        return 1
    problem = first_problem(outputs, joined[1])
    if problem:
        print(f"pipeline-trace: {problem}", file=sys.stderr)
        return 2
    print(f"pipeline-trace: recording {args.seconds:g} s ...", file=sys.stderr, flush=True)
    info, rows = record(args.name, args.seconds)
    write_whole(args.out, json.dumps(chrome_trace(info, rows)))
    print(f"pipeline-trace: {len(rows)} frames -> {args.out}"
          + (f" ({info['missed']} results missed)" if info["missed"] else ""), file=sys.stderr)
    if args.plot:
        with replacing(args.plot) as tmp:
            plot(rows, tmp, f"pipeline {info['name']}")
        print(f"pipeline-trace: plot -> {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
