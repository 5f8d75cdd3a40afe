"""Soak test: run a pipeline for a long time the way an unattended camera box runs, with
consumers attaching and detaching, and watch for slow leaks.

    .venv/bin/python -m tools.bench.soak --minutes 20 [--json soak.json] [--plot soak.png]

Plays the bottle clip as a live 30 fps camera (loop, every stage on restart = "always").
Every few seconds a consumer (print, jsonl, video or preview, in turn) attaches for a few seconds
and detaches. Every `--every` seconds it samples RSS and open file descriptors of the supervisor
and each stage, /dev/shm usage, drops and restarts; it prints a line per sample and, at the end,
the growth between the first sample after warm-up and the last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from tools.assets import CONFIGS, ROOT, WEIGHTS, default_video, missing

VIDEO = default_video()
CONSUMERS = (["--consumer", "print"], ["--format", "jsonl", "--out", os.devnull],
             ["--consumer", "video", "--out", "{tmp}/soak.mp4"], ["--consumer", "preview", "--port", "0"])


def shm_bytes(pid: int, shm_dir: str = "/dev/shm") -> tuple[int, int]:
    """(bytes of this pipeline's segments, bytes used in `shm_dir` overall)."""
    mine = sum(os.stat(f"{shm_dir}/{n}").st_blocks * 512 for n in os.listdir(shm_dir)
               if f"-{pid}-" in n and n.startswith("edge-pipeline-"))
    st = os.statvfs(shm_dir)
    return mine, (st.f_blocks - st.f_bfree) * st.f_frsize


def sample(supervisor: psutil.Process, status: dict[str, Any] | None, t: float,
           shm_dir: str = "/dev/shm", others: dict[str, psutil.Process] | None = None) -> dict[str, Any]:
    """RSS and fds of the supervisor, its stages and `others` (consumers), shared memory in
    `shm_dir` (seen from here), and the status's counts."""
    procs = {"supervisor": supervisor, **(others or {})}
    for child in supervisor.children():
        try:
            cmd = child.cmdline()
        except psutil.Error:  # ended meanwhile (a stage being restarted)
            continue
        if "--stage" in cmd:
            procs[cmd[cmd.index("--stage") + 1]] = child
    row: dict[str, Any] = {"t": round(t, 1), "rss_mb": {}, "fds": {}}
    for name, p in procs.items():
        try:
            row["rss_mb"][name] = round(p.memory_info().rss / 2**20, 1)
            row["fds"][name] = p.num_fds()
        except psutil.Error:
            pass
    row["shm_mine_mb"], row["shm_used_mb"] = (round(b / 2**20, 1)
                                              for b in shm_bytes(supervisor.pid, shm_dir))
    if status:
        tot = status["totals"]
        row.update(results=tot["results"], restarts=sum(tot["restarts"].values()),
                   dropped=sum(sum(r.values()) for r in tot["drops"].values()),
                   latency_p99=status["latency_ms"].get("p99"))
    return row


def run(minutes: float, every: float, warmup: float, name: str = "soak") -> list[dict[str, Any]]:
    from pipeline import attach
    from pipeline.transport.rundir import NotRunning

    sets = [f"source.path={VIDEO}", f"model.weights={WEIGHTS}", "source.loop=true",
            "capture.restart=always", "preprocess.restart=always", "inference.restart=always"]
    cmd = [sys.executable, "-m", "pipeline.cli.up", str(CONFIGS / "video.toml"), "--name", name,
           "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        supervisor = psutil.Process(proc.pid)
        try:
            while True:
                try:
                    sub = attach(name, status=True)
                    break
                except NotRunning:
                    time.sleep(0.2)
            with sub:
                sub.receive(timeout=120)
                start = time.monotonic()
                next_sample = start
                next_consumer = start + 2
                consumer: subprocess.Popen | None = None
                kinds = itertools.cycle(CONSUMERS)
                while (now := time.monotonic()) - start < minutes * 60:
                    sub.receive(timeout=0.2)
                    if now >= next_consumer:  # attach one for ~4 s, detach, repeat
                        if consumer is None:
                            args = [a.format(tmp=tmp) for a in next(kinds)]
                            consumer = subprocess.Popen(
                                [sys.executable, "-m", "pipeline.cli.attach", "--name", name, *args],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                            next_consumer = now + 4
                        else:
                            consumer.send_signal(signal.SIGINT)
                            consumer.wait(timeout=10)
                            consumer = None
                            next_consumer = now + 2
                    if now >= next_sample:
                        next_sample += every
                        row = sample(supervisor, sub.last_status, now - start)
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
                if consumer is not None:
                    consumer.send_signal(signal.SIGINT)
                    consumer.wait(timeout=10)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    return rows


def growth(rows: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """Change from the first sample after warm-up to the last one."""
    base = next(r for r in rows if r["t"] >= warmup)
    last = rows[-1]
    return {
        "from_s": base["t"], "to_s": last["t"],
        "rss_mb": {k: round(last["rss_mb"].get(k, 0) - v, 1) for k, v in base["rss_mb"].items()},
        "rss_max_mb": {k: max(r["rss_mb"].get(k, 0) for r in rows) for k in base["rss_mb"]},
        "fds": {k: last["fds"].get(k, 0) - v for k, v in base["fds"].items()},
        "shm_mine_mb": round(last["shm_mine_mb"] - base["shm_mine_mb"], 1),
        "results": last.get("results"), "dropped": last.get("dropped"),
        "restarts": last.get("restarts"),
    }


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] / 60 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), dpi=100)
    for name in rows[-1]["rss_mb"]:
        axes[0].plot(t, [r["rss_mb"].get(name) for r in rows], label=name)
        axes[1].plot(t, [r["fds"].get(name) for r in rows], label=name)
    axes[0].set(title="Resident memory per process", xlabel="time (min)", ylabel="RSS (MiB)")
    axes[1].set(title="Open file descriptors", xlabel="time (min)", ylabel="descriptors")
    axes[2].plot(t, [r["shm_mine_mb"] for r in rows], label="this pipeline's rings")
    axes[2].plot(t, [r["shm_used_mb"] for r in rows], label="/dev/shm used (all)")
    axes[2].set(title="Shared memory", xlabel="time (min)", ylabel="MiB")
    for ax in axes:
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"Soak: {VIDEO.name} at 30 fps, consumers attaching and detaching")
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds before the baseline sample")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    for p in missing(VIDEO):
        print(f"tools.bench.soak: missing asset {p}", file=sys.stderr)
        return 2
    rows = run(args.minutes, args.every, args.warmup)
    g = growth(rows, min(args.warmup, rows[-1]["t"]))
    print(json.dumps(g, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": rows, "growth": g}, indent=1) + "\n")
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
