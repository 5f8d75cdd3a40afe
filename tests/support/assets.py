"""Where the tests' real data is: shipped with the package, or the large assets beside the project.

The pretrained weights and one sample clip ship with the package, so every clone has them; the 200
labelled photos and the other videos are in `../shared/assets` and tests that need them skip,
saying so, where they are absent."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT.parent / "shared" / "assets"
ASSETS_README = ("the large test assets (../shared/assets beside the project; docs/test-assets.md says "
                 "what they are and where they come from)")
# The shipped pretrained weights: byte-identical to the shared assets' copy.
WEIGHTS = ROOT / "workers" / "inference" / "model_files" / "mobilenet_v2_qnnpack_imagenet1k.pth"
BOTTLE = ROOT / "pipeline" / "samples" / "bottle-detection.mp4"
IMAGES = ASSETS / "images"
CAR = ASSETS / "video" / "car-detection.mp4"  # its index (moov) comes first: a cut copy still opens
ZOO_ONNX = ASSETS / "weights" / "mobilenetv2-12-int8.onnx"  # the ONNX Model Zoo's, a foreign model

# 4 of the 200 images: the preprocessing is torchvision's to within one grey level (0.865 against
# 0.865 torch, 0.870 onnxruntime measured), the rest is another runtime's or CPU's int8 rounding.
ACCURACY_MARGIN = 0.02

MISSING_ASSET = "test asset missing"


def need(path: Path) -> Path:
    """`path`, or skip the test naming the missing asset."""
    if not path.exists():
        pytest.skip(f"{MISSING_ASSET}: {path} (part of {ASSETS_README})")
    return path
