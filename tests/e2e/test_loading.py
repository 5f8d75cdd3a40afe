"""What starting processes costs a pipeline: workers load in waves no wider than their cores, a
pipeline stopped while they load is gone within seconds, and a consumer attaching to a running
pipeline leaves the model's cores before it imports anything heavy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.cli.common import CONSUMER_NICE
from tests.support.assets import ROOT
from tests.support.processes import stage_pids
from tests.support.topologies import up, write_config


def _workers_of(proc: subprocess.Popen) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "workers.stage --stage inference"], capture_output=True,
                         text=True).stdout
    return [p for p in map(int, out.split()) if _parent(p) == proc.pid]


def _parent(pid: int) -> int:
    try:
        args = open(f"/proc/{pid}/cmdline").read().split("\0")
    except FileNotFoundError:
        return -1
    return int(args[args.index("--parent") + 1])


def _read_until(proc: subprocess.Popen, text: str) -> list[str]:
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"pipeline-up ended before printing {text!r}: {''.join(seen)}")


needs_two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                     reason="needs 2 cores: inference on one, the rest on the other")


@needs_two_cores
def test_stop_while_workers_load(tmp_path, clean_machine):
    """Four torch workers on one inference core: one loads at a time, and SIGINT while they
    load stops everything within 5 s, exit 130, one line saying why, nothing left behind."""
    config = write_config(tmp_path / "c.toml", [{"kind": "synthetic", "width": 320, "height": 240,
                                                "fps": 30}],
                          name="loading", model={"runtime": "torch"},
                          inference={"workers": 4, "cores": [1]}, capture={"cores": [0]},
                          preprocess={"cores": [0]})
    proc = up(config)
    try:
        _read_until(proc, "starting")
        assert len(_workers_of(proc)) == 1, "more workers loading at once than inference cores"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert took < 5.0, f"stopping while loading took {took:.1f} s"
    assert "stopped by SIGINT before every stage was ready" in err
    assert "Traceback" not in err
    assert not {p for p in stage_pids() if _parent(p) == proc.pid}


HEAVY = ("numpy", "zmq", "pydantic", "cv2", "msgpack")
# Records this process's cores at the first import of each heavy module, then attaches.
WATCH_IMPORTS = textwrap.dedent("""
    import json, os, sys
    cores = {}
    def hook(event, args):
        if event == "import" and args[0] in HEAVY and args[0] not in cores:
            cores[args[0]] = [sorted(os.sched_getaffinity(0)), os.nice(0)]
    HEAVY = set(sys.argv[1].split(","))
    sys.addaudithook(hook)
    from pipeline.cli.attach import main
    code = main(["--name", "pinned", "--count", "3"])
    print(json.dumps(cores))
    sys.exit(code)
""")


@needs_two_cores
def test_consumer_leaves_model_cores_before_heavy_imports(tmp_path, clean_machine):
    """30 consumers attaching at once must not take the model's core: each moves off it, and
    below the stages' priority, before importing pydantic, numpy, ZeroMQ or OpenCV (checked at
    each first import)."""
    config = write_config(tmp_path / "c.toml", [{"kind": "synthetic", "width": 320, "height": 240,
                                                "fps": 30}],
                          name="pinned", model={"runtime": "onnxruntime"}, inference={"cores": [1]},
                          capture={"cores": [0]}, preprocess={"cores": [0]})
    proc = up(config)
    try:
        _read_until(proc, "running:")
        out = subprocess.run([sys.executable, "-c", WATCH_IMPORTS, ",".join(HEAVY)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert out.returncode == 0, out.stderr
    cores = json.loads(out.stdout.splitlines()[-1])
    assert {"numpy", "zmq", "pydantic"} <= set(cores), cores
    on_model_core = {m: c for m, (c, _) in cores.items() if 1 in c}
    assert not on_model_core, f"imported while still on the model's core: {on_model_core}"
    # ... and below the stages' priority on the cores it shares with capture and preprocess
    assert all(nice >= CONSUMER_NICE for _, nice in cores.values()), cores


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare to give the pipeline a small /dev/shm of its own")
def test_shm_filled_between_preflight_and_start(tmp_path, clean_machine):
    """/dev/shm passes the start-up check, then fills before the stages make their rings: one
    line naming the ring and the cause, exit 1, no traceback. A private mount namespace gives the
    run a 40 MiB /dev/shm; a filler takes it as soon as the run directory appears."""
    config = write_config(tmp_path / "c.toml", [{"kind": "synthetic", "width": 640, "height": 480,
                                                "fps": 30}],
                          name="filled", model={"runtime": "onnxruntime"})
    runtime = Path(tempfile.mkdtemp(prefix="ep-", dir="/tmp"))  # socket paths: 107 bytes at most
    script = f"""
        mount -t tmpfs -o size=40m tmpfs /dev/shm
        (until ls {runtime}/edge-pipeline-*/ 2>/dev/null | grep -q filled-; do sleep 0.002; done
         fallocate -l 39m /dev/shm/filler) &
        exec {sys.executable} -m pipeline.cli.up {config} --duration 5
    """
    try:
        out = subprocess.run(["unshare", "-m", "bash", "-c", script], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)))
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline-up: stage ") and "No space left on device" in last, last


def test_runtime_dir_too_long_for_sockets(tmp_path, clean_machine):
    """A runtime directory whose socket paths cannot fit a unix socket address is refused before
    anything starts: one line, exit 2, nothing made in it."""
    config = write_config(tmp_path / "c.toml", [{"kind": "synthetic", "width": 320, "height": 240}],
                          name="long", model={"runtime": "onnxruntime"})
    runtime = tmp_path / ("d" * 90)
    runtime.mkdir()
    out = subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(config), "--duration", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)))
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "more than the 107 a unix socket allows" in out.stderr
    assert not list(runtime.glob("edge-pipeline-*/long-*")), "a run directory was left behind"
