"""Shared test helpers: where the real test assets are, and running `pipeline-up` for real."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
WEIGHTS = ASSETS / "weights" / "mobilenet_v2_qnnpack_imagenet1k.pth"
BOTTLE = ASSETS / "video" / "bottle-detection.mp4"
IMAGES = ASSETS / "images"
# The model's cores where a test chooses them: the last two this process may use, or the one there
# is (the shipped configs' core 1 may not exist: a 1-core machine, taskset).
WORKER_CORES = sorted(os.sched_getaffinity(0))[-2:]
MODEL_CORE = f"inference.cores=[{WORKER_CORES[-1]}]"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test asset missing: {path} (see shared/assets/README.md)")
    return path


def shm_segments() -> set[str]:
    return set(glob.glob("/dev/shm/edge-pipeline-*"))


def stage_pids() -> set[int]:
    """Stage processes of any pipeline on this machine."""
    out = subprocess.run(["pgrep", "-f", "workers.stage --stage"], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _owner(segment: str) -> int:
    """Supervisor pid in a segment name edge-pipeline-NAME-PID-START.EDGE (-1 if not one)."""
    from pipeline.supervisor.shm import SEGMENT

    m = SEGMENT.match(os.path.basename(segment))
    return int(m["pid"]) if m else -1


def _parent_of(stage_pid: int) -> int:
    try:
        args = open(f"/proc/{stage_pid}/cmdline").read().split("\0")
    except FileNotFoundError:
        return -1
    return int(args[args.index("--parent") + 1]) if "--parent" in args else -1


def pipeline_cmd(config: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli.up", str(ROOT / "configs" / config), *args]


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


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def clean_machine():
    """Asserts the test leaves no stage process and no shared-memory segment behind.

    Only leftovers of supervisors that have exited count, so pipelines running beside the
    tests (a benchmark, a demo) do not make them fail."""
    before_shm, before_pids = shm_segments(), stage_pids()
    yield
    time.sleep(0.2)
    leaked = {s for s in shm_segments() - before_shm if not _alive(_owner(s))}
    assert not leaked, f"leaked /dev/shm segments: {leaked}"
    strays = {p for p in stage_pids() - before_pids if not _alive(_parent_of(p))}
    assert not strays, f"stage processes left running: {strays}"


# 4 of the 200 images: the preprocessing is torchvision's to within one grey level (0.865 against
# 0.865 torch, 0.870 onnxruntime measured), the rest is another runtime's or CPU's int8 rounding.
ACCURACY_MARGIN = 0.02


@pytest.fixture(scope="session")
def reference_accuracy() -> float:
    """Top-1 on the 200 labelled images of the pretrained weights with torchvision's own eval
    transform (PIL: Resize 256, CenterCrop 224, Normalize), measured here on these assets: what
    the pipeline's accuracy is held to, rather than a figure measured once elsewhere."""
    import torch
    from PIL import Image
    from torchvision import transforms
    from torchvision.models.quantization import mobilenet_v2

    need(WEIGHTS)
    with open(need(IMAGES) / "labels.csv") as f:
        labels = {row["file"]: int(row["class_index"]) for row in csv.DictReader(f)}
    torch.backends.quantized.engine = "qnnpack"
    model = mobilenet_v2(weights=None, quantize=True)
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    model.eval()
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        correct = sum(int(model(tf(Image.open(IMAGES / name).convert("RGB"))[None]).argmax()) == index
                      for name, index in labels.items())
    return correct / len(labels)
