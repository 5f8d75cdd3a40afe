"""Shared-memory hygiene and hostile input: preflight, orphans of a SIGKILLed supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from pipeline.config import load_config
from pipeline.shm import free_bytes, preflight

from .conftest import ROOT, pipeline_cmd, run_pipeline, shm_segments
from .test_pipeline import start, wait_running


def test_preflight_names_what_is_needed_what_is_free_and_what_to_shrink():
    cfg = load_config(None, ["model.weights=none", "edges.frames.slots=8"])
    assert preflight(cfg, 640 * 480 * 3, free=10 * 2**30) is None
    msg = preflight(cfg, 640 * 480 * 3, free=5 * 2**20)
    assert msg.startswith("not enough shared memory: the rings need 9.3 MiB")
    assert "frames ring 8 x 0.9 MiB" in msg and "has 5.0 MiB free" in msg
    assert "edges.frames.slots" in msg and "source.width/height" in msg


def test_pipeline_up_refuses_rings_larger_than_dev_shm():
    slot = 7680 * 4320 * 3
    if 256 * slot < free_bytes():
        import pytest

        pytest.skip("/dev/shm is larger than the biggest ring the config allows")
    before = shm_segments()
    p = run_pipeline("demo.toml", "--set", "model.weights=none", "--set", "edges.frames.slots=256",
                     "--set", "source.width=7680", "--set", "source.height=4320")
    assert p.returncode == 2 and "not enough shared memory" in p.stderr
    assert "Traceback" not in p.stderr and shm_segments() == before


def test_orphans_of_a_killed_supervisor_are_cleaned_and_live_pipelines_untouched():
    live = start("demo.toml", "--name", "survivor", "--set", "model.weights=none", "--quiet")
    victim = start("demo.toml", "--name", "victim", "--set", "model.weights=none", "--quiet")
    try:
        wait_running(live)
        wait_running(victim)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        deadline = time.monotonic() + 10  # its stages die with it (parent-death signal)
        while time.monotonic() < deadline and subprocess.run(
                ["pgrep", "-f", f"pipeline.stage .*--parent {victim.pid}"]).returncode == 0:
            time.sleep(0.2)
        orphans = {s for s in shm_segments() if f"-{victim.pid}-" in s}
        kept = {s for s in shm_segments() if f"-{live.pid}-" in s}
        assert len(orphans) == 2 and len(kept) == 2
        assert subprocess.run(["pgrep", "-f", f"pipeline.stage .*--parent {victim.pid}"]).returncode == 1
        p = subprocess.run([sys.executable, "-m", "pipeline.clean"], cwd=ROOT, capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 0
        assert all(f"/dev/shm/{os.path.basename(o)}" in p.stdout for o in orphans)
        assert not orphans & shm_segments() and kept <= shm_segments()
        assert live.poll() is None
    finally:
        for proc in (live, victim):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.communicate(timeout=15)


def test_next_start_removes_orphans_itself():
    victim = start("demo.toml", "--name", "victim2", "--set", "model.weights=none", "--quiet")
    wait_running(victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    time.sleep(3)
    assert {s for s in shm_segments() if f"-{victim.pid}-" in s}
    p = subprocess.run(pipeline_cmd("demo.toml", "--set", "model.weights=none", "--quiet",
                                    "--duration", "1"), cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "left by a killed pipeline" in p.stderr
    assert not {s for s in shm_segments() if f"-{victim.pid}-" in s}
