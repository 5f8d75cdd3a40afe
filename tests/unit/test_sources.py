"""Frame sources on real files: synthetic, video, images (grayscale, EXIF, tiny, corrupt), camera."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.config import load_config
from tests.support.assets import BOTTLE, IMAGES, need
from workers.capture.source_base import SourceError
from workers.capture.sources import Camera, Images, Synthetic, Video, open_source


class Buffers:
    """Stands in for the capture stage: hands out one reusable buffer per shape."""

    def __init__(self):
        self.by_shape: dict[tuple, np.ndarray] = {}

    def __call__(self, shape):
        return self.by_shape.setdefault(tuple(shape), np.empty(shape, np.uint8))


def source_cfg(*overrides):
    return load_config(None, ["model.weights=none", *overrides]).source


def test_synthetic_moves_and_stops_at_frame_limit():
    src = Synthetic(source_cfg("source.width=320", "source.height=240", "source.frames=3"))
    buf = Buffers()
    frames = []
    for _ in range(3):
        assert src.read(buf) is not None
        frames.append(buf((240, 320, 3)).copy())
    assert src.read(buf) is None
    assert not np.array_equal(frames[0], frames[1])  # the pattern moves
    assert src.max_frame_bytes == 240 * 320 * 3 and src.fps == 30


def test_video_decodes_every_frame_in_place_and_loops():
    path = need(BOTTLE)
    src = Video(source_cfg("source.kind=video", f"source.path={path}", "source.realtime=false"))
    assert src.shape == (360, 640, 3) and src.fps == 0
    buf = Buffers()
    n = 0
    while src.read(buf) is not None:
        n += 1
    assert n == 1189
    assert len(buf.by_shape) == 1 and buf((360, 640, 3)).mean() > 10
    src.close()
    loop = Video(source_cfg("source.kind=video", f"source.path={path}", "source.loop=true"))
    assert abs(loop.fps - 29.83) < 0.01  # realtime: the file's own rate
    for _ in range(1200):
        meta = loop.read(buf)
    assert meta["frame"] == 1200 - 1189 - 1  # wrapped around to the start
    loop.close()


def test_video_that_is_not_a_video_is_a_clear_error(tmp_path):
    fake = tmp_path / "clip.mp4"
    fake.write_text("not a video")
    with pytest.raises(SourceError, match="cannot open video"):
        Video(source_cfg("source.kind=video", f"source.path={fake}"))


def test_images_grayscale_tiny_exif_and_corrupt(tmp_path, caplog):
    need(IMAGES)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("n02692877_airship.JPEG", "n02356798_fox_squirrel.JPEG", "n01440764_tench.JPEG"):
        shutil.copy(IMAGES / name, folder / name)  # grayscale, 86x108, ordinary
    tench = Image.open(IMAGES / "n01440764_tench.JPEG")
    exif = tench.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    tench.save(folder / "rotated.jpg", exif=exif, quality=95)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.txt").write_text("not an image")

    src = Images(source_cfg("source.kind=images", f"source.path={folder}", "source.loop=true"))
    assert len(src.files) == 5  # .txt ignored
    got = {}
    with caplog.at_level(logging.WARNING, logger="capture"):
        for _ in range(2 * 5):  # twice round the loop
            frame = {}
            meta = src.read(lambda shape: frame.setdefault("a", np.empty(shape, np.uint8)))
            got[meta["item"]] = frame["a"]
    assert set(got) == {"n02692877_airship.JPEG", "n02356798_fox_squirrel.JPEG",
                        "n01440764_tench.JPEG", "rotated.jpg"}
    assert src.corrupt == 1
    assert sum("broken.jpg" in r.message for r in caplog.records) == 1  # logged once
    assert got["n02692877_airship.JPEG"].shape == (156, 350, 3)
    assert got["n02356798_fox_squirrel.JPEG"].shape == (108, 86, 3)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(folder / "rotated.jpg")))[:, :, ::-1]
    assert got["rotated.jpg"].shape == upright.shape != got["n01440764_tench.JPEG"].shape
    assert np.abs(got["rotated.jpg"].astype(int) - upright).mean() < 2


def test_images_that_vanish_or_cannot_be_read_are_skipped_and_counted(tmp_path, caplog):
    need(IMAGES)
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ("n02692877_airship.JPEG", "n02356798_fox_squirrel.JPEG", "n01440764_tench.JPEG")
    for name in names:
        shutil.copy(IMAGES / name, folder / name)
    src = Images(source_cfg("source.kind=images", f"source.path={folder}", "source.loop=true"))

    def read_items(n: int) -> list[str]:
        return [src.read(lambda shape: np.empty(shape, np.uint8))["item"] for _ in range(n)]

    assert read_items(3) == sorted(names)
    (folder / names[0]).unlink()  # deleted while the pipeline runs
    (folder / names[1]).unlink()
    (folder / names[1]).mkdir()  # unreadable as a file, even for root
    with caplog.at_level(logging.WARNING, logger="capture"):
        assert read_items(3) == [names[2]] * 3
    assert src.corrupt == 2
    assert sorted(r.message.rsplit("/", 1)[1] for r in caplog.records) == sorted(names[:2])


def test_images_without_loop_end():
    src = open_source(source_cfg("source.kind=images", f"source.path={need(IMAGES)}/*.JPEG"))
    n = sum(1 for _ in iter(lambda: src.read(Buffers()), None))
    assert n == 200 and src.corrupt == 0


def test_camera_v4l2_on_something_that_is_not_a_camera():
    cfg = source_cfg("source.kind=camera", "source.device='/dev/null'")
    with pytest.raises(SourceError, match="cannot open camera /dev/null"):
        Camera(cfg)


def test_camera_read_loop_through_opencv_any_backend():
    """The camera code path (open, request size, probe, read in place) on a stream OpenCV's
    FFmpeg backend can open, as with an RTSP or HTTP camera URL."""
    cfg = source_cfg("source.kind=camera", f"source.device='{need(BOTTLE)}'", "source.backend=any")
    cam = Camera(cfg)
    assert cam.shape == (360, 640, 3)
    buf = Buffers()
    for i in range(10):
        assert cam.read(buf)["frame"] == i
    cam.close()
