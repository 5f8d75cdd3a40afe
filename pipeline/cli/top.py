"""`pipeline-top`: a live table of a running pipeline, refreshed every second.

It subscribes to the supervisor's status socket (one small message a second), so watching never
slows the pipeline. `--once --json` prints one status snapshot for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import termios
import time
import tty
from contextlib import contextmanager
from typing import Any, Iterator

import msgpack
import zmq
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeline.cli.common import join
from pipeline.cli.describe import description
from pipeline.observe.stats import written_slots
from pipeline.transport.rundir import supervisor_alive


def _ms(d: dict[str, Any], key: str) -> str:
    return f"{d[key]:.1f}" if d and d.get(key) is not None else "-"


def render(st: dict[str, Any], silent_for: float = 0.0, live: bool = True) -> Group:
    """The table for one status message; fits 80 columns. `live`: refreshed until q is pressed
    (not a snapshot)."""
    lat, age, tot = st["latency_ms"], st["frame_age_ms"], st["totals"]
    head = Text(f"{st['pipeline']}  up {st['elapsed_s']:.0f} s", style="bold")
    if silent_for > 3:
        head.append(f"   no status for {silent_for:.0f} s", style="bold red")
    lines = [
        head,
        _stage_table(st),
        Text(f"end-to-end ms p50 {_ms(lat, 'p50')} p90 {_ms(lat, 'p90')} p99 {_ms(lat, 'p99')} "
             f"max {_ms(lat, 'max')}  frame age p50 {_ms(age, 'p50')} ms"),
        Text(f"capture jitter {st['capture_jitter_ms'] if st['capture_jitter_ms'] is not None else '-'}"
             f" ms   frames {tot['captured']} captured, {tot['classified']} classified, "
             f"{sum(sum(r.values()) for r in tot['drops'].values())} dropped"),
        *_detail_lines(st),
        *([Text("q quits", style="dim")] if live else []),
    ]
    return Group(*lines)


def _stage_table(st: dict[str, Any]) -> Table:
    """A row per stage process."""
    table = Table(box=None, padding=(0, 1), header_style="bold", expand=False)
    for col, justify in (("stage", "left"), ("state", "left"), ("fps", "right"),
                         ("svc p50/p99", "right"), ("queue", "right"), ("slots", "right"),
                         ("drops", "left"), ("cpu%", "right"), ("MB", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for stage, m in st["stages"].items():
        kind = stage.split(".")[0]
        state = m["state"]
        style = {"running": "", "starting": "yellow", "reconnecting": "bold yellow",
                 "stalled": "bold red"}.get(state, "red")
        svc = m["service_ms"]
        service = f"{_ms(svc, 'p50')}/{_ms(svc, 'p99')}" if svc else "-"
        if kind == "capture" and m["interval_ms"]:
            service = f"every {_ms(m['interval_ms'], 'p50')}"
        q = m["queue"]
        queue = f"{q.get('max', 0):.0f} ({m['queue_hwm']})" if kind != "capture" else "-"
        slots = str(next(iter(written_slots(stage, m).values()), "-"))
        drops = str(sum(n for edge in m["drops"].values() for n in edge.values()))
        cpu = f"{m['cpu_percent']:.0f}" if m["cpu_percent"] is not None else "-"
        rss = f"{m['rss_mb']:.0f}" if m["rss_mb"] is not None else "-"
        table.add_row(stage, Text(state, style=style), f"{m['fps_out']:.1f}", service, queue, slots,
                      drops, cpu, rss, style=style if state == "stalled" else None)
    return table


def _detail_lines(st: dict[str, Any]) -> list[Text]:
    """Drops by reason, restarts, pinning, per-source figures and the current label."""
    tot, lines = st["totals"], []
    detail = "; ".join(f"{edge} " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()) if n)
                       for edge, reasons in sorted(tot["drops"].items()) if any(reasons.values()))
    if detail:
        lines.append(Text(f"drops: {detail}"))
    for stage, m in st["stages"].items():
        if m["state"] == "restarting" and m.get("last_failure"):
            lines.append(Text(f"{stage} restarting: {m['last_failure']}", style="bold yellow"))
    restarts = {s: m["restarts"] for s, m in st["stages"].items() if m.get("restarts")}
    if restarts:
        lines.append(Text("restarts: " + ", ".join(f"{s} {n}" for s, n in restarts.items()),
                          style="yellow"))
    pins = ", ".join(f"{s} {m['cores']}x{m['threads']}" for s, m in st["stages"].items()
                     if m.get("cores") is not None)
    if pins:
        lines.append(Text(f"cores x threads: {pins}", style="dim"))
    if len(st.get("sources", {})) > 1:
        lines.append(Text("per source: " + "; ".join(
            f"{src} {m['fps']:.1f} fps p99 {_ms(m['latency_ms'], 'p99')} ms"
            for src, m in st["sources"].items())))
    machine = _machine(st.get("health") or {})
    if machine:
        hot = bool((st.get("health") or {}).get("throttled_now"))
        lines.append(Text(f"machine: {machine}", style="bold red" if hot else "dim"))
    if st.get("top"):
        lines.append(Text(f"now: {st['top']['label']} {st['top']['prob']:.2f}", style="green"))
    model = st.get("model")
    if model:
        lines.append(Text(f"model: {model['name']} (id {model['id']}) on {model['runtime']}", style="dim"))
    return lines


def _machine(h: dict[str, Any]) -> str:
    """CPU temperature, clock and throttling, where the machine tells them."""
    parts = [f"{h['cpu_temperature_c']:.1f} °C" if "cpu_temperature_c" in h else "",
             f"{h['cpu_frequency_mhz']:.0f} MHz" if "cpu_frequency_mhz" in h else ""]
    if "throttled" in h:
        parts.append(f"throttled now: {', '.join(h['throttled_now'])}" if h["throttled_now"] else
                     "not throttled" + (f" (since boot: {', '.join(h['throttled_since_boot'])})"
                                        if h["throttled_since_boot"] else ""))
    return ", ".join(p for p in parts if p)


@contextmanager
def _keys() -> Iterator[Any]:
    """Single key presses from the terminal, without echo (nothing when stdin is no terminal)."""
    if not sys.stdin.isatty():
        yield lambda: None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield lambda: os.read(fd, 1).decode(errors="ignore") if select.select([fd], [], [], 0)[0] else None
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pipeline-top", description=description(__doc__))
    ap.add_argument("--name", help="pipeline name (default: the only one running)")
    ap.add_argument("--once", action="store_true", help="print one snapshot and exit")
    ap.add_argument("--json", action="store_true", help="with --once: the snapshot as JSON")
    ap.add_argument("--timeout", type=float, default=10.0, help="--once: seconds to wait (10)")
    args = ap.parse_args(argv)
    joined = join("pipeline-top", args.name, off_model_cores=False)
    if joined is None:
        return 1
    info = joined[0]
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 4)
    sub.setsockopt(zmq.MAXMSGSIZE, 1 << 20)  # a status is a few KiB
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(info["endpoints"]["status"])
    try:
        if args.once:
            if not sub.poll(args.timeout * 1000):
                print(f"pipeline-top: no status from '{info['name']}' within {args.timeout:.0f} s",
                      file=sys.stderr)
                return 1
            st = msgpack.unpackb(sub.recv(), raw=False)
            if args.json:
                print(json.dumps(st, indent=1))
            else:
                Console(width=80).print(render(st, live=False))
            return 0
        return _live(sub, info)
    except KeyboardInterrupt:
        return 0
    finally:
        ctx.destroy(0)


def _live(sub: zmq.Socket, info: dict[str, Any]) -> int:
    console = Console()
    st: dict[str, Any] | None = None
    last = time.monotonic()
    with _keys() as key, Live(Text(f"waiting for {info['name']} ..."), console=console,
                              auto_refresh=False) as live:
        while True:
            if sub.poll(200):
                st = msgpack.unpackb(sub.recv(), raw=False)
                last = time.monotonic()
                live.update(render(st), refresh=True)
            elif st is not None and time.monotonic() - last > 3:
                if not supervisor_alive(info["pid"], info.get("start")):
                    live.update(Text(f"{info['name']} has stopped", style="bold"), refresh=True)
                    return 0
                live.update(render(st, time.monotonic() - last), refresh=True)
            if key() in ("q", "Q"):
                return 0


if __name__ == "__main__":
    sys.exit(main())
