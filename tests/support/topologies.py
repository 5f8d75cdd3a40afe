"""Helpers for tests that run whole topologies: write a config, start `pipeline-up`, stop it,
wait for something to happen."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .assets import ROOT

WATER_BOTTLE = 898  # the ImageNet class the bottle video is mostly classified as


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(v) -> str:
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def write_config(path: Path, sources: list[dict], **sections: dict) -> Path:
    lines = [f'name = "{sections.pop("name", "scale")}"']
    for src in sources:
        lines.append("[[sources]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in src.items()]
    for section, keys in sections.items():
        lines.append(f"[{section.replace('__', '.')}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def up(config: Path, *args: str, group: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli.up", str(config), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=group)


def finish(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.communicate(timeout=timeout)


def wait_for(predicate, timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def lines(path: Path) -> int:
    try:
        return sum(1 for _ in open(path))
    except FileNotFoundError:
        return 0



def model_ms(config: Path) -> float:
    """The model's time a frame on this machine, as `pipeline-up CONFIG --check` measures it (with
    the config's runtime and threads)."""
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(config), "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return float(re.search(r"([0-9.]+) ms a frame here", p.stdout)[1])


def busy_delay_ms(model: float, frame_interval_ms: float) -> float:
    """An `inference.delay_ms` that makes a worker spend three frame intervals on each frame, the
    model's measured time included (two at least, however wrong the measurement): one worker
    cannot keep up with the frames whatever this machine's speed."""
    return round(max(2 * frame_interval_ms, 3 * frame_interval_ms - model), 1)
