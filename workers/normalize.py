"""ImageNet normalisation in numpy alone, shared by the preprocess stage and by an inference worker
that reads a uint8 ring (which must not need OpenCV or torch for it).

out[c] = (rgb[c] / 255 - mean[c]) / std[c], fused into one multiply-add per channel written
straight into the destination (a shared-memory slot or the model's input buffer).
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalizer:
    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        std_arr = np.asarray(std, np.float64)
        self.scale = (1.0 / (255.0 * std_arr)).astype(np.float32)
        self.offset = (-np.asarray(mean, np.float64) / std_arr).astype(np.float32)

    def normalize(self, crop_bgr: np.ndarray, out: np.ndarray) -> None:
        """BGR HWC uint8 -> normalised RGB CHW float32."""
        for c in range(3):
            np.multiply(crop_bgr[:, :, 2 - c], self.scale[c], out=out[c])
            np.add(out[c], self.offset[c], out=out[c])

    def to_rgb_chw(self, crop_bgr: np.ndarray, out: np.ndarray) -> None:
        """out[c] = rgb[c] as uint8, for a uint8 model input ring."""
        for c in range(3):
            np.copyto(out[c], crop_bgr[:, :, 2 - c])

    def normalize_chw(self, rgb_chw: np.ndarray, out: np.ndarray) -> None:
        """The second half of `normalize`, for input that is already RGB CHW uint8."""
        for c in range(3):
            np.multiply(rgb_chw[c], self.scale[c], out=out[c])
            np.add(out[c], self.offset[c], out=out[c])
