"""Preprocessing equals torchvision's eval transform: same geometry, same numbers (< 1e-5)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torchvision import transforms
from torchvision.transforms import functional as F

from workers.preprocess.transform import IMAGENET_MEAN, IMAGENET_STD, Preprocessor

from .conftest import IMAGES, need

TO_TENSOR_NORMALIZE = transforms.Compose([transforms.ToTensor(),
                                          transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def sample_images(n: int = 12) -> list[np.ndarray]:
    files = sorted(need(IMAGES).glob("*.JPEG"))[:: max(1, 200 // n)]
    return [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files]


@pytest.mark.parametrize("size", [(360, 640), (640, 360), (480, 480), (100, 150), (17, 300)])
def test_geometry_matches_torchvision(size):
    h, w = size
    prep = Preprocessor("crop", 256, 224)
    rh, rw, top, left = prep.geometry(h, w)
    assert [rh, rw] == list(F.resize(torch.zeros(3, h, w), 256, antialias=True).shape[1:])
    index = torch.arange(rh * rw).reshape(1, rh, rw)
    ours = index[:, top:top + 224, left:left + 224]
    assert torch.equal(ours, F.center_crop(index, 224))


def test_normalisation_equals_totensor_normalize_on_real_images():
    prep = Preprocessor("crop", 256, 224)
    out = np.empty(prep.output_shape, np.float32)
    worst = 0.0
    for bgr in sample_images():
        prep(bgr, out)
        crop_rgb = np.ascontiguousarray(prep.crop(bgr)[:, :, ::-1])
        expected = TO_TENSOR_NORMALIZE(crop_rgb).numpy()
        worst = max(worst, float(np.abs(out - expected).max()))
    assert worst < 1e-5, worst


def test_squash_resizes_whole_frame():
    prep = Preprocessor("squash", 256, 224)
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[:, :320] = (255, 0, 0)  # left half blue (BGR)
    out = np.empty(prep.output_shape, np.float32)
    prep(frame, out)
    blue = (1.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    assert out[2, :, :100].min() == pytest.approx(blue, abs=1e-5)  # RGB channel 2 = blue
    assert out[2, :, 124:].max() == pytest.approx(-IMAGENET_MEAN[2] / IMAGENET_STD[2], abs=1e-5)


def test_buffers_are_reused_not_reallocated():
    prep = Preprocessor()
    frame = np.random.default_rng(0).integers(0, 255, (360, 640, 3), dtype=np.uint8)
    a = prep.crop(frame)
    b = prep.crop(frame)
    assert a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


def test_close_to_torchvision_full_eval_transform():
    """Whole transform vs torchvision's (PIL antialiased bilinear): the same picture, not bit-equal."""
    from PIL import Image

    full = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                               TO_TENSOR_NORMALIZE])
    prep = Preprocessor()
    out = np.empty(prep.output_shape, np.float32)
    for bgr in sample_images(6):
        prep(bgr, out)
        ref = full(Image.fromarray(bgr[:, :, ::-1])).numpy()
        assert np.abs(out - ref).mean() < 0.05  # ~3 grey levels on average


def test_uint8_ring_then_normalise_equals_float_path():
    """preprocess.dtype = "uint8": the ring holds the RGB crop and inference normalises it; the
    model must see exactly the numbers the float32 path gives."""
    prep = Preprocessor("crop", 256, 224)
    for img in sample_images(6):
        crop = prep.crop(img)
        direct = np.empty((3, 224, 224), np.float32)
        prep.normalize(crop, direct)
        ring = np.empty((3, 224, 224), np.uint8)
        prep.to_rgb_chw(crop, ring)
        assert np.array_equal(ring, crop[:, :, ::-1].transpose(2, 0, 1))
        via_ring = np.empty((3, 224, 224), np.float32)
        prep.normalize_chw(ring, via_ring)
        assert np.array_equal(direct, via_ring)


@pytest.mark.parametrize("shape", [(360, 640), (720, 1280), (480, 640), (432, 768), (500, 375),
                                   (224, 224), (300, 200), (257, 1000), (1080, 1920)])
def test_resizing_only_the_needed_window_gives_the_same_pixels(shape):
    """The crop equals the crop of the whole frame resized, bit for bit, whatever the size."""
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (*shape, 3), dtype=np.uint8), (5, 5), 0)
    prep = Preprocessor()
    rh, rw, top, left = prep.geometry(*shape)
    interp = cv2.INTER_AREA if rh < shape[0] else cv2.INTER_LINEAR
    whole = cv2.resize(img, (rw, rh), interpolation=interp)[top:top + 224, left:left + 224]
    assert np.array_equal(prep.crop(img), whole)
