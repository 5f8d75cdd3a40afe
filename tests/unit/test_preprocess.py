"""Preprocessing is torchvision's eval transform on a PIL image: same geometry, same numbers
(within one grey level, from floating-point rounding at filter-window edges)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torchvision import transforms
from torchvision.transforms import functional as F

from tests.support.assets import IMAGES, need
from workers.preprocess.transform import IMAGENET_MEAN, IMAGENET_STD, Preprocessor

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

def test_equals_torchvision_full_eval_transform_on_real_photos():
    """The whole transform is torchvision's eval transform on the PIL image (antialiased
    bilinear Resize(256), CenterCrop(224)): at most one grey level apart, where a pixel's filter
    window starts exactly on a source pixel's edge and the last bit of a float decides (for some
    frame sizes a whole row or column in every few)."""
    from PIL import Image

    resize_crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    full = transforms.Compose([resize_crop, TO_TENSOR_NORMALIZE])
    prep = Preprocessor()
    out = np.empty(prep.output_shape, np.float32)
    for bgr in sample_images(12):
        pil = Image.fromarray(bgr[:, :, ::-1])
        expected = np.asarray(resize_crop(pil)).astype(np.int16)
        ours = prep.crop(bgr)[:, :, ::-1].astype(np.int16)
        assert np.abs(ours - expected).max() <= 1
        assert np.abs(ours - expected).mean() < 0.25
        prep(bgr, out)
        assert np.abs(out - full(pil).numpy()).max() <= 1 / 255 / min(IMAGENET_STD) + 1e-5


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


@pytest.mark.parametrize("shape", [(360, 640), (720, 1280), (480, 640), (500, 375), (224, 224),
                                   (300, 200), (100, 150), (257, 1000), (1080, 1920)])
@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_only_the_crop_is_computed_yet_equals_resizing_the_whole_frame(shape, resize):
    """Resizing only the box the crop needs gives the crop of the whole frame resized (shrunk
    or enlarged), to within one grey level, whatever the size."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (*shape, 3), dtype=np.uint8), (5, 5), 0)
    prep = Preprocessor(resize)
    rh, rw, top, left = prep.geometry(*shape)
    whole = np.asarray(Image.fromarray(img).resize((rw, rh), Image.Resampling.BILINEAR))
    expected = whole[top:top + 224, left:left + 224].astype(np.int16)
    assert np.abs(prep.crop(img).astype(np.int16) - expected).max() <= 1


def test_a_region_is_the_same_as_cropping_it_out_first():
    rng = np.random.default_rng(1)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (360, 640, 3), dtype=np.uint8), (5, 5), 0)
    prep = Preprocessor()
    for x0, y0, x1, y1 in ((300, 0, 640, 360), (10, 20, 410, 220), (0, 0, 100, 300)):
        cut = np.ascontiguousarray(frame[y0:y1, x0:x1])
        a, b = prep.crop(frame, (x0, y0, x1, y1)), prep.crop(cut)
        assert np.abs(a.astype(np.int16) - b).max() <= 1
        assert np.array_equal(prep.crop(frame[y0:y1, x0:x1]), b)  # a view works too
