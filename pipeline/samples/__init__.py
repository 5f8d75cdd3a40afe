"""The sample clip the package ships, so `configs/video.toml` runs on a fresh clone and every install
has one real video to test with: `bottle-detection.mp4`, by Intel Corporation, CC BY 4.0 (credit in
CREDITS.md, licence text in LICENSE-CC-BY-4.0.txt)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def sample_clip() -> Path:
    """The shipped clip: 640x360, 29.83 fps, 1189 frames of water bottles (ImageNet 898)."""
    return HERE / "bottle-detection.mp4"
