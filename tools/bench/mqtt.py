"""Does the mqtt consumer cost the pipeline anything, with the broker up, down, or hung?

    .venv/bin/python -m tools.bench.mqtt [--duration 15] [--rounds 3] [--json out.json]

Each run plays the bottle clip as fast as it goes (loop, onnxruntime, shipped model)
through configs/video.toml for `--duration` seconds, watching for water bottles, with:
- `none`: no consumer (the baseline);
- `up`: an mqtt consumer (with snapshots) on a mosquitto started here on loopback;
- `down`: an mqtt consumer whose broker port has no listener (it reconnects with back-off);
- `hung`: an mqtt consumer whose broker is stopped (SIGSTOP) 3 s into the run: the TCP
  connection stays open, nothing is acknowledged, the consumer's queue fills.
Conditions alternate within each round (the machine is shared and noisy); the table gives the
median fps per condition, its ratio to `none`, and what the consumer said it published and
dropped. Needs Debian's mosquitto (`apt-get install mosquitto`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tools.assets import CONFIGS, ROOT, default_video
from tools.bench.kit.common import child_env, progress

DEFAULT_VIDEO = default_video()

CONDITIONS = ("none", "up", "down", "hung")
COUNTS = re.compile(r"mqtt: (\d+) messages published \((\d+) acknowledged by the broker\), "
                    r"(\d+) dropped")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    sys.exit("tools.bench.mqtt: mosquitto did not start")


def run(condition: str, duration: float, folder: Path) -> dict:
    broker, port = (None, free_port())
    if condition in ("up", "hung"):
        broker, port = start_broker(folder)
    summary = folder / f"{condition}.json"
    sets = [f"source.path={DEFAULT_VIDEO}", "source.loop=true", "source.realtime=false",
            "model.runtime=onnxruntime", 'source.state={watch=["water bottle"], min_prob=0.3}']
    if condition != "none":
        sets.append(f'consumers=[{{kind="mqtt", broker="mqtt://127.0.0.1:{port}", snapshots=true, '
                    f'stats_interval=1.0}}]')
    cmd = [sys.executable, "-m", "pipeline.cli.up", str(CONFIGS / "video.toml"), "--name",
           f"benchmqtt{condition}", "--quiet", "--duration", str(duration), "--summary-json",
           str(summary)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=child_env())
    if condition == "hung":
        timer = threading.Timer(3.0, broker.send_signal, (signal.SIGSTOP,))
        timer.start()
    _, err = proc.communicate()
    if broker is not None:
        broker.send_signal(signal.SIGCONT)
        broker.terminate()
        broker.wait(10)
    if proc.returncode != 0:
        sys.exit(f"tools.bench.mqtt: pipeline failed ({condition}): {err.strip().splitlines()[-1]}")
    s = json.loads(summary.read_text())
    counts = COUNTS.findall(err)
    published, acked, dropped = (int(n) for n in counts[-1]) if counts else (None, None, None)
    return {"condition": condition, "fps": s["fps"], "results": s["results_received"],
            "published": published, "acknowledged": acked, "dropped": dropped}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per run (default 15)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all conditions (default 3)")
    ap.add_argument("--json", help="write every run's figures here")
    args = ap.parse_args()
    if not DEFAULT_VIDEO.exists():
        print(f"tools.bench.mqtt: missing asset {DEFAULT_VIDEO}", file=sys.stderr)
        return 2
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        print("tools.bench.mqtt: needs mosquitto (apt-get install mosquitto)", file=sys.stderr)
        return 2
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for condition in CONDITIONS:
                progress(f"round {i + 1}/{args.rounds}: {condition} ...")
                runs.append(run(condition, args.duration, Path(tmp)))
    base = statistics.median(r["fps"] for r in runs if r["condition"] == "none")
    print(f"{'mqtt consumer':<14} {'fps (median)':>12} {'vs none':>8} {'published':>10} "
          f"{'acked':>6} {'dropped':>8}")
    for condition in CONDITIONS:
        rows = [r for r in runs if r["condition"] == condition]
        fps = statistics.median(r["fps"] for r in rows)
        counts = ["-" if rows[0][k] is None else str(int(statistics.median(r[k] for r in rows)))
                  for k in ("published", "acknowledged", "dropped")]
        print(f"{condition:<14} {fps:12.1f} {fps / base:8.3f} {counts[0]:>10} {counts[1]:>6} "
              f"{counts[2]:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
