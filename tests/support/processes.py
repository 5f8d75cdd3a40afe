"""Running `pipeline-up` and its consumers for real, and checking what they leave behind."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .assets import ROOT
from .topologies import finish, up

# The model's cores where a test chooses them: the last two this process may use, or the one there
# is (the shipped configs' core 1 may not exist: a 1-core machine, taskset).
WORKER_CORES = sorted(os.sched_getaffinity(0))[-2:]
MODEL_CORE = f"inference.cores=[{WORKER_CORES[-1]}]"
TOP = [sys.executable, "-m", "pipeline.cli.top"]


def shm_segments() -> set[str]:
    return set(glob.glob("/dev/shm/edge-pipeline-*"))


def stage_pids() -> set[int]:
    """Stage processes of any pipeline on this machine."""
    out = subprocess.run(["pgrep", "-f", "workers.stage --stage"], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def owner(segment: str) -> int:
    """Supervisor pid in a segment name edge-pipeline-NAME-PID-START.EDGE (-1 if not one)."""
    from pipeline.supervisor.shm import SEGMENT

    m = SEGMENT.match(os.path.basename(segment))
    return int(m["pid"]) if m else -1


def parent_of(stage_pid: int) -> int:
    try:
        args = open(f"/proc/{stage_pid}/cmdline").read().split("\0")
    except FileNotFoundError:
        return -1
    return int(args[args.index("--parent") + 1]) if "--parent" in args else -1


def stage_pid(supervisor: int, stage: str) -> int:
    """The one stage process of kind `stage` that `supervisor` started."""
    out = subprocess.run(["pgrep", "-P", str(supervisor), "-f", f"workers.stage --stage {stage} "],
                         capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def pipeline_cmd(config: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli.up", str(ROOT / "configs" / config), *args]


def start(config: str, *args: str) -> subprocess.Popen:
    """`pipeline-up` on a shipped config, stdout and stderr piped, not waited for."""
    return subprocess.Popen(pipeline_cmd(config, *args), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_running(proc: subprocess.Popen, timeout: float = 120) -> list[str]:
    """Read stderr until the supervisor says the pipeline runs."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("running:"):
            return lines
    proc.kill()
    raise AssertionError("pipeline did not start:\n" + "".join(lines))


def launch(cmd: list[str], **popen: object) -> subprocess.Popen:
    """Start `pipeline-up` (stdout and stderr piped) and return once it says `running:`."""
    proc = subprocess.Popen(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.startswith("running:") or not line:
            break
    assert proc.poll() is None, proc.stderr.read()
    return proc


def run_pipeline(config: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(pipeline_cmd(config, *args), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def running(config: Path):
    """Yield a quiet pipeline-up on `config` once it runs; then stop it and check that it exited
    cleanly and left no segment and no stage behind."""
    proc = up(config, "--quiet")
    try:
        wait_running(proc)
        yield proc
    finally:
        _, err = finish(proc)
        assert proc.returncode == 0, err
        assert not [s for s in shm_segments() if f"-{proc.pid}-" in s]
        assert not [p for p in stage_pids() if parent_of(p) == proc.pid]


def snapshot(name: str) -> dict:
    """One `pipeline-top --once --json` of the running pipeline `name`."""
    p = subprocess.run([*TOP, "--name", name, "--once", "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
