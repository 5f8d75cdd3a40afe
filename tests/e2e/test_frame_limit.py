"""source.max_frame_pixels: a file declaring a huge frame never reserves its shared memory and is
never decoded; an image folder skips such an image, a video or camera that large is refused."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.supervisor.shm import frame_bytes
from tests.support.assets import BOTTLE, IMAGES, ROOT, need
from tests.support.processes import run_pipeline, shm_segments
from workers.capture.source_base import SourceError
from workers.capture.sources import Images

SMALL = ("n01440764_tench.JPEG", "n02356798_fox_squirrel.JPEG")  # 2 real photos
HUGE = 12000  # a 12000x12000 frame: 432 MB decoded, 1.6 GB for a ring of 4 slots


def png(path: Path, width: int, height: int) -> Path:
    """A real, decodable all-black PNG, written row by row: 12000x12000 takes about 420 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, deflate = b"\0" * (1 + 3 * width), zlib.compressobj()  # filter byte 0, then black pixels
    pixels = b"".join([deflate.compress(row * min(100, height - y)) for y in range(0, height, 100)]
                      + [deflate.flush()])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                                       0, 0, 0))
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    return png(tmp_path_factory.mktemp("huge") / "huge.png", HUGE, HUGE)


@pytest.fixture
def folder(tmp_path, huge_png) -> Path:
    """Two real photos and the huge PNG."""
    need(IMAGES)
    d = tmp_path / "imgs"
    d.mkdir()
    for name in SMALL:
        shutil.copy(IMAGES / name, d / name)
    shutil.copy(huge_png, d / "huge.png")
    return d


def largest_small_frame() -> int:
    return max(cv2.imread(str(IMAGES / n)).nbytes for n in SMALL)


def images_cfg(path: Path, *overrides: str):
    return load_config(None, ["model.weights=none", "source.kind=images", f"source.path={path}",
                              *overrides])


def test_the_huge_png_is_small_on_disk_and_the_writer_makes_real_pngs(huge_png, tmp_path):
    assert huge_png.stat().st_size < 1_000_000
    assert cv2.imread(str(png(tmp_path / "small.png", 301, 149))).shape == (149, 301, 3)


def test_an_oversized_image_is_skipped_from_its_header_and_the_ring_fits_the_rest(folder, caplog):
    cfg = images_cfg(folder)
    assert frame_bytes(cfg, None) == [largest_small_frame()]  # what the preflight reserves
    src = Images(cfg.source)
    assert src.max_frame_bytes == largest_small_frame()
    with caplog.at_level(logging.WARNING, logger="capture"):
        items = [m["item"] for m in iter(lambda: src.read(lambda s: np.empty(s, np.uint8)), None)]
    assert sorted(items) == sorted(SMALL) and src.corrupt == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"of {HUGE}x{HUGE}" in line and "source.max_frame_pixels" in line
    assert line.endswith(str(folder / "huge.png"))


def test_the_oversized_image_is_never_decoded(folder):
    """Peak memory of a process reading the folder stays far below the 432 MB one decode takes."""
    # VmHWM, not ru_maxrss: getrusage keeps the peak of the process image before exec (pytest's).
    code = ("import numpy as np; from pipeline.config import load_config; "
            "from workers.capture.sources import Images; "
            f"src = Images(load_config(None, ['model.weights=none', 'source.kind=images', "
            f"'source.path={folder}']).source); "
            "n = sum(1 for _ in iter(lambda: src.read(lambda s: np.empty(s, np.uint8)), None)); "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print(n, src.corrupt, hwm)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    n, corrupt, peak_kib = map(int, out)
    assert (n, corrupt) == (2, 1)
    assert peak_kib < 300 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB: the huge image was decoded"


def test_an_image_that_grows_after_the_start_is_skipped(tmp_path, caplog):
    d = tmp_path / "imgs"
    d.mkdir()
    png(d / "a.png", 64, 48)
    src = Images(images_cfg(d, "source.loop=true").source)
    assert src.read(lambda s: np.empty(s, np.uint8))["item"] == "a.png"
    png(d / "a.png", 640, 480)  # replaced by a larger one while running: the ring cannot hold it
    with caplog.at_level(logging.WARNING, logger="capture"):
        assert src.read(lambda s: np.empty(s, np.uint8)) is None  # nothing left to read
    assert src.corrupt == 1 and "larger than every image at start" in caplog.records[0].getMessage()


def test_pipeline_skips_the_oversized_image_and_counts_it(folder, tmp_path, clean_machine):
    summary = tmp_path / "s.json"
    p = run_pipeline("images.toml", "--set", f"source.path={folder}", "--set", "model.weights=none",
                     "--quiet", "--summary-json", str(summary))
    assert p.returncode == 0, p.stderr
    s = json.loads(summary.read_text())
    assert s["frames"]["classified"] == 2 and s["drops"]["source"]["corrupt"] == 1
    assert f"of {HUGE}x{HUGE}, more pixels than source.max_frame_pixels" in p.stderr


def test_pipeline_refuses_a_folder_of_only_oversized_images(tmp_path, huge_png, clean_machine):
    d = tmp_path / "imgs"
    d.mkdir()
    shutil.copy(huge_png, d / "huge.png")
    with pytest.raises(SourceError, match="source.max_frame_pixels: every image"):
        Images(images_cfg(d).source)
    assert frame_bytes(images_cfg(d), None) == [0]  # nothing reserved for it
    p = run_pipeline("images.toml", "--set", f"source.path={d}", "--set", "model.weights=none",
                     "--quiet")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        f"pipeline-up: stage 'capture' failed: source.max_frame_pixels: every image at {d} is "
        f"larger than {7680 * 4320} pixels (e.g. {d / 'huge.png'}: {HUGE}x{HUGE})")


def test_pipeline_refuses_a_video_larger_than_the_limit(tmp_path, clean_machine):
    bottle = need(BOTTLE)
    before = shm_segments()
    p = run_pipeline("video.toml", "--set", f"source.path={bottle}", "--set", "model.weights=none",
                     "--set", "source.max_frame_pixels=100000", "--quiet")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        f"pipeline-up: stage 'capture' failed: source.max_frame_pixels: video {bottle} has 640x360 "
        "frames (230400 pixels), more than the limit 100000")
    assert shm_segments() <= before


@pytest.mark.parametrize("overrides, expected", [
    (["source.max_frame_pixels=0"], "source.max_frame_pixels: Input should be greater than or equal to 1"),
    (["source.max_frame_pixels='lots'"], "source.max_frame_pixels: Input should be a valid integer"),
    (["source.max_frame_pixels=2000000000"], "source.max_frame_pixels: Input should be less than"),
    (["source.width=1920", "source.height=1080", "source.max_frame_pixels=1000000"],
     "source.max_frame_pixels: 1920x1080 frames have 2073600 pixels, more than the limit 1000000"),
])
def test_a_bad_limit_is_one_line_naming_the_key(overrides, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.weights=none", *overrides])
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_the_limit_names_the_source_of_several(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text('[[sources]]\nkind = "synthetic"\n[[sources]]\nkind = "synthetic"\n'
                   'width = 1920\nheight = 1080\nmax_frame_pixels = 1000000\n')
    with pytest.raises(ConfigError, match=r"^sources\[1\]\.max_frame_pixels: 1920x1080"):
        load_config(cfg, ["model.weights=none"])


def test_cli_bad_limit_exits_2_with_one_line():
    before = shm_segments()
    p = run_pipeline("demo.toml", "--set", "source.max_frame_pixels=-5")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "pipeline-up: config error: source.max_frame_pixels: Input should be greater than or equal "
        "to 1 (got -5)"]
    assert shm_segments() <= before
