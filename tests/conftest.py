"""Fixtures every test may use, the `e2e` marker, and the closing line on skipped assets.

Tests under tests/e2e/ run the pipeline's own processes (`pipeline-up`, stages, consumers) and
are marked `e2e`: `pytest -m "not e2e"` runs the unit tests alone in a few seconds."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from tests.support.assets import ASSETS, ASSETS_README, IMAGES, MISSING_ASSET, WEIGHTS, need
from tests.support.processes import alive, owner, parent_of, shm_segments, stage_pids

E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Last line of the run: how many tests were skipped for want of the large assets, and where
    those come from (after pytest's own summary, so that it is what a reader sees last)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    missing = sum(1 for r in skipped if MISSING_ASSET in str(r.longrepr))
    if missing:
        reporter.write_line(f"{missing} of {len(skipped)} skipped tests need {ASSETS_README}: "
                            f"not found at {ASSETS}; every other test ran.")
    elif skipped:
        reporter.write_line(f"{len(skipped)} skipped (see -rs), none for missing assets.")


@pytest.fixture
def clean_machine():
    """Asserts the test leaves no stage process and no shared-memory segment behind.

    Only leftovers of supervisors that have exited count, so pipelines running beside the
    tests (a benchmark, a demo) do not make them fail."""
    before_shm, before_pids = shm_segments(), stage_pids()
    yield
    time.sleep(0.2)
    leaked = {s for s in shm_segments() - before_shm if not alive(owner(s))}
    assert not leaked, f"leaked /dev/shm segments: {leaked}"
    strays = {p for p in stage_pids() - before_pids if not alive(parent_of(p))}
    assert not strays, f"stage processes left running: {strays}"


@pytest.fixture(scope="session")
def reference_accuracy() -> float:
    """Top-1 on the 200 labelled images of the pretrained weights with torchvision's own eval
    transform (PIL: Resize 256, CenterCrop 224, Normalize), measured here on these assets: what
    the pipeline's accuracy is held to, rather than a figure measured once elsewhere."""
    import torch
    from PIL import Image
    from torchvision import transforms
    from torchvision.models.quantization import mobilenet_v2

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
