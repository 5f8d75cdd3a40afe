"""Where the tools find their input, in one place: the project's sample clip and shipped model,
and the real test data kept beside the project (`../shared/assets`, see its README), which a
user's clone may lack (the tools that need it say so and stop)."""

from __future__ import annotations

from pathlib import Path

from pipeline.samples import sample_clip
from workers.inference.model_files import builtin_onnx, builtin_weights

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
ASSETS = ROOT.parent / "shared" / "assets"
VIDEOS = ASSETS / "video"
IMAGES = ASSETS / "images"  # 200 labelled photos (labels.csv)
SAMPLE_VIDEO = sample_clip()  # shipped: every clone has it
BOTTLE_VIDEO = VIDEOS / "bottle-detection.mp4"
SCALE_VIDEOS = [VIDEOS / name for name in ("bottle-detection.mp4", "car-detection.mp4",
                                           "one-by-one-person-detection.mp4", "vtest.avi")]
WEIGHTS = builtin_weights()  # the shipped int8 MobileNetV2 state dict (torch)
ONNX = builtin_onnx()  # its ONNX export (onnxruntime)


def default_video() -> Path:
    """The clip the benchmarks play: the one shipped with the project, else the test data's."""
    return SAMPLE_VIDEO if SAMPLE_VIDEO.is_file() else BOTTLE_VIDEO


def missing(*paths: Path) -> list[Path]:
    """The inputs of a run that are not there, for a clear message before it starts."""
    return [p for p in paths if not p.exists()]
