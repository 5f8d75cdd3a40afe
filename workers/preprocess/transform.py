"""The preprocessing itself: raw BGR frame -> normalised RGB CHW model input.

`Preprocessor` is torchvision's eval transform on a PIL image: Resize(256) on the shorter side
(PIL's antialiased bilinear), CenterCrop(224) (or a direct "squash" resize), ToTensor() and
Normalize(ImageNet mean/std). The model was trained and calibrated on exactly that picture; an
area or plain bilinear resize gives a slightly different one and measurably fewer right answers.

Only the crop is computed: PIL resizes a box of the frame (its region of interest, then the part
the crop needs) straight to 224 x 224 with the full resize's scale and pixel centres, which costs
less than OpenCV's area resize of the whole frame. The frame's BGR bytes are handed to PIL as if
RGB (resizing treats channels alike); the swap happens in the normalisation, fused into one
multiply-add per channel written straight into the destination (a shared-memory slot).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from workers.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalizer

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels


class Preprocessor(Normalizer):
    """Resizes and crops frames as torchvision's eval transform does, and normalises them."""

    def __init__(self, resize: str = "crop", resize_size: int = 256, crop_size: int = 224,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__(mean, std)
        self.resize = resize
        self.resize_size = resize_size
        self.crop_size = crop_size
        self._boxes: dict[tuple[int, int, Box | None], tuple[float, float, float, float]] = {}

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (3, self.crop_size, self.crop_size)

    def geometry(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(resized_h, resized_w, crop_top, crop_left), computed as torchvision computes them."""
        s = self.crop_size
        if self.resize == "squash":
            return s, s, 0, 0
        r = self.resize_size
        if w <= h:
            rh, rw = int(r * h / w), r
        else:
            rh, rw = r, int(r * w / h)
        return rh, rw, int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))

    def crop(self, frame: np.ndarray, region: Box | None = None) -> np.ndarray:
        """The resized, center-cropped BGR uint8 crop_size x crop_size picture of the frame, or of
        its `region` (x0, y0, x1, y1). The frame is fully read when this returns, so the caller
        can then check its shared-memory slot was not overwritten meanwhile."""
        h, w = frame.shape[:2]
        key = (h, w, region)
        box = self._boxes.get(key)
        if box is None:
            box = self._boxes[key] = self._source_box(h, w, region)
            if len(self._boxes) > 32:
                self._boxes = {key: box}
        if not frame.flags.c_contiguous:  # a view (a region sliced by the caller): PIL needs rows
            frame = np.ascontiguousarray(frame)
        image = Image.frombuffer("RGB", (w, h), frame, "raw", "RGB", 0, 1)
        s = self.crop_size
        return np.asarray(image.resize((s, s), Image.Resampling.BILINEAR, box=box))

    def _source_box(self, h: int, w: int, region: Box | None) -> tuple[float, float, float, float]:
        """Where in the frame the crop lies: PIL resizing that box to crop_size pixels uses the
        same scale, pixel centres and filter support as resizing the whole region, then
        cropping."""
        x0, y0, x1, y1 = region or (0, 0, w, h)
        rh, rw, top, left = self.geometry(y1 - y0, x1 - x0)
        sx, sy, s = (x1 - x0) / rw, (y1 - y0) / rh, self.crop_size
        return (x0 + left * sx, y0 + top * sy, x0 + (left + s) * sx, y0 + (top + s) * sy)

    def __call__(self, frame: np.ndarray, out: np.ndarray, region: Box | None = None) -> None:
        self.normalize(self.crop(frame, region), out)
