"""The Picamera2 source: pixel-format conversions against known colours, the copy into a real
shared-memory ring, the source against Picamera2 (the real module where it imports and a camera
is attached, else the stand-in in picamera2_standin.py), its faults and messages, the Pi configs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.config.schema import PICAMERA2_FORMATS, CameraSource, Picamera2Source
from pipeline.transport.ring import Ring
from pipeline.transport.rundir import find_pipeline
from tests.support import picamera2_standin as standin
from tests.support.assets import ROOT
from tests.support.processes import pipeline_cmd
from workers.capture import picamera2_source as pc
from workers.capture.pixel_formats import FORMATS, converter, from_rgb888, from_yuv420
from workers.capture.source_base import SourceError
from workers.capture.sources import Camera, frame_bytes_estimate, open_source

PACKED = ("RGB888", "BGR888", "XRGB8888", "XBGR8888")
# (width, height): no row padding for RGB888 at 640; 224 and a lores width of 250 (not a multiple
# of 64, picamera2 #645; 190 rows: U and V planes that do not fill whole rows) come back padded.
SIZES = [(640, 480), (224, 224), (250, 190)]
RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)  # BGR


def picamera2_cfg(*overrides: str) -> Picamera2Source:
    return load_config(None, ["model.weights=none", "source.kind=picamera2", *overrides],
                       files=False).source  # the stand-in, not the picamera2 module


def mapped(buf: np.ndarray, fmt: str, w: int, h: int) -> np.ndarray:
    """The buffer as Picamera2's MappedArray shows it."""
    return standin.image_view(buf, fmt, w, h, standin.stride_for(fmt, w))


@pytest.fixture
def cameras():
    """The stand-in's attached cameras and faults, restored after the test."""
    attached, faults = list(standin.attached), dict(standin.faults)
    yield standin
    standin.attached[:] = attached
    standin.faults.clear()
    standin.faults.update(faults)


@pytest.fixture
def ring():
    name = f"edge-pipeline-test-{uuid.uuid4().hex[:8]}"
    r = Ring.create(name, 2, 640 * 480 * 3)
    yield r
    r.close()
    Ring.unlink(name)


# -- the conversions, one pure function each ---------------------------------------------------

@pytest.mark.parametrize("fmt", PACKED)
@pytest.mark.parametrize("w,h", SIZES)
def test_packed_formats_give_the_exact_bgr_colours(fmt, w, h):
    card = standin.test_card(w, h)
    stride = standin.stride_for(fmt, w)
    src = mapped(standin.encode(card, fmt, stride), fmt, w, h)
    assert (stride > w * standin.BYTES[fmt]) == (src.strides[0] > src.shape[1] * src.shape[2])
    dst = np.zeros((h, w, 3), np.uint8)
    converter(fmt, w, h, stride)(src, dst)
    assert np.array_equal(dst, card)
    assert tuple(dst[0, standin.bar_centre(5, w)]) == RED
    assert tuple(dst[0, standin.bar_centre(6, w)]) == BLUE


def test_names_read_backwards_in_memory():
    """RGB888 is B,G,R bytes; BGR888 is R,G,B; the X formats carry a fourth byte."""
    red = np.full((2, 2, 3), RED, np.uint8)
    assert list(standin.encode(red, "RGB888", 64)[:3]) == [0, 0, 255]
    assert list(standin.encode(red, "BGR888", 64)[:3]) == [255, 0, 0]
    assert list(standin.encode(red, "XRGB8888", 64)[:4]) == [0, 0, 255, 0]
    assert list(standin.encode(red, "XBGR8888", 64)[:4]) == [255, 0, 0, 0]


@pytest.mark.parametrize("w,h", SIZES)
def test_yuv420_gives_the_colours_within_rounding(w, h):
    card = standin.test_card(w, h)
    stride = standin.stride_for("YUV420", w)
    planes = mapped(standin.encode(card, "YUV420", stride), "YUV420", w, h)
    assert planes.shape == (h * 3 // 2, stride)
    dst = np.zeros((h, w, 3), np.uint8)
    converter("YUV420", w, h, stride)(planes, dst)
    err = np.abs(dst.astype(int) - card)
    assert err.max() <= 3 and err.mean() < 1.0
    for i, colour in ((3, GREEN), (5, RED), (6, BLUE)):
        x = standin.bar_centre(i, w)
        assert tuple(card[0, x]) == colour
        assert np.abs(dst[0, x].astype(int) - colour).max() <= 3


def test_yuv420_bt601_limited_range_known_values():
    """Y=81 U=90 V=240 is BT.601 limited-range red; Y=16 black, Y=235 white."""
    h, w = 4, 8
    dst = np.zeros((h, w, 3), np.uint8)
    for (y, u, v), bgr in (((81, 90, 240), RED), ((16, 128, 128), (0, 0, 0)),
                           ((235, 128, 128), (255, 255, 255)), ((41, 240, 110), BLUE)):
        planes = np.concatenate([np.full(h * w, y), np.full(h * w // 4, u),
                                 np.full(h * w // 4, v)]).astype(np.uint8).reshape(h * 3 // 2, w)
        from_yuv420(planes, dst)
        assert np.abs(dst.astype(int) - bgr).max() <= 2, (y, u, v, dst[0, 0])


def test_padded_yuv420_packs_once_and_needs_its_buffer():
    conv = converter("YUV420", 250, 188, 256)
    assert conv.keywords["packed"].shape == (282, 250)  # allocated with the converter
    assert converter("YUV420", 640, 480, 640).keywords["packed"] is None
    with pytest.raises(ValueError, match="packing buffer"):
        from_yuv420(np.zeros((282, 256), np.uint8), np.zeros((188, 250, 3), np.uint8))
    with pytest.raises(ValueError, match="NV12"):
        converter("NV12", 64, 64, 64)


def test_schema_and_conversions_know_the_same_formats():
    assert PICAMERA2_FORMATS == FORMATS


# -- the source, against the stand-in (always) and the real module (where it runs) ---------------

def test_frames_land_in_a_real_ring_slot_once_per_read(cameras, ring):
    src = pc.Picamera2Camera(picamera2_cfg("source.width=224", "source.height=224",
                                           "source.fps=200"), api=cameras.API)
    assert src.shape == (224, 224, 3) and src.max_frame_bytes == 224 * 224 * 3 and src.live
    assert src.convert is from_rgb888  # B,G,R already: a plain copy (of padded rows)
    assert src.cam.camera_config["main"]["stride"] == 704
    cam = src.cam
    config = cam.camera_config
    assert config["queue"] is False and config["buffer_count"] == 4
    assert config["controls"]["FrameDurationLimits"] == (5000, 5000)
    assert config["colour_space"] is None  # RGB: the ISP's own; YUV420 asks for BT.601
    metas = [src.read(lambda shape: ring.view(i % 2, shape)) for i in range(6)]
    assert [m["frame"] for m in metas] == list(range(6))
    assert cam.held == 0  # every request went back to libcamera
    reader = Ring.attach(ring.name, readonly=True)
    try:
        assert np.array_equal(reader.view(1, (224, 224, 3)), standin.test_card(224, 224))
    finally:
        reader.close()
    src.close()


def test_lores_yuv420_with_padding_is_cropped_and_converted(cameras):
    src = pc.Picamera2Camera(picamera2_cfg("source.width=640", "source.height=480",
                                           "source.format='XBGR8888'",
                                           "source.lores={width=250, height=188}"),
                             api=cameras.API)
    assert src.stream == "lores" and src.shape == (188, 250, 3)
    assert src.cam.camera_config["lores"]["stride"] == 256
    assert src.cam.camera_config["colour_space"].name == "SMPTE170M"
    dst = np.zeros(src.shape, np.uint8)
    src.read(lambda shape: dst)
    assert np.abs(dst.astype(int) - standin.test_card(250, 188)).max() <= 3
    src.close()


def test_sensor_timestamp_on_the_pipeline_clock_and_newest_frame_wins(cameras):
    src = pc.Picamera2Camera(picamera2_cfg("source.width=64", "source.height=48", "source.fps=50"),
                             api=cameras.API)
    buf = np.empty((48, 64, 3), np.uint8)
    stamps = []
    for _ in range(5):
        meta = src.read(lambda shape: buf)
        now = time.monotonic_ns()
        assert now - 100_000_000 < meta["sensor_ns"] <= now  # exposed just before, this clock
        stamps.append(meta["sensor_ns"])
    gaps = np.diff(stamps) / 1e6
    assert np.all(gaps > 10) and np.median(gaps) < 30  # one frame period apart (20 ms)
    time.sleep(0.2)  # ten frames finish while nobody reads: none of them is kept
    meta = src.read(lambda shape: buf)
    assert time.monotonic_ns() - meta["sensor_ns"] < 3 * 20_000_000
    src.close()


def test_to_monotonic_takes_the_clock_from_the_value():
    mono = time.monotonic_ns()
    boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    assert pc.to_monotonic_ns(mono - 5_000_000, boot, mono) == mono - 5_000_000
    asleep = 3_600 * 10**9  # after an hour suspended, the boot clock runs an hour ahead
    assert pc.to_monotonic_ns(mono + asleep - 5_000_000, mono + asleep, mono) == mono - 5_000_000


def test_no_camera_or_another_number_is_one_line(cameras):
    cameras.attached.clear()
    with pytest.raises(SourceError, match=r"^source\.camera: no camera 0 \(libcamera sees none\)"):
        pc.Picamera2Camera(picamera2_cfg(), api=cameras.API)
    cameras.attached.append({"Model": "imx219", "Num": 0, "Id": "/base/imx219@10"})
    with pytest.raises(SourceError, match=r"no camera 1 \(libcamera sees 0: imx219\)"):
        pc.Picamera2Camera(picamera2_cfg("source.camera=1"), api=cameras.API)


def test_camera_in_use_is_one_line_and_free_again_after_close(cameras):
    first = pc.Picamera2Camera(picamera2_cfg(), api=cameras.API)
    with pytest.raises(SourceError, match=r"cannot open camera 0 \(imx708\): .*busy.*another program"):
        pc.Picamera2Camera(picamera2_cfg(), api=cameras.API)
    first.close()
    first.close()  # twice is harmless
    pc.Picamera2Camera(picamera2_cfg(), api=cameras.API).close()


def test_a_camera_that_errors_or_stops_is_a_source_error_to_reconnect(cameras):
    src = pc.Picamera2Camera(picamera2_cfg("source.fps=100"), api=cameras.API)
    buf = np.empty(src.shape, np.uint8)
    cameras.faults[0] = "error"
    with pytest.raises(SourceError, match="camera 0 \\(imx708\\): RuntimeError: Camera frontend"):
        src.read(lambda shape: buf)
    cameras.faults[0] = "stall"
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"no frame for 2\.0 s"):
        src.read(lambda shape: buf)
    assert 1.9 < time.monotonic() - t0 < 3
    src.close()
    del cameras.faults[0]
    again = pc.Picamera2Camera(picamera2_cfg(), api=cameras.API)  # what the stage's reopen does
    assert again.read(lambda shape: np.empty(shape, np.uint8))["frame"] == 0
    again.close()


def test_a_camera_that_starts_but_sends_nothing_fails_at_open_and_is_closed(cameras):
    cameras.faults[0] = "error"
    with pytest.raises(SourceError, match="started but delivers no frames"):
        pc.Picamera2Camera(picamera2_cfg(), api=cameras.API)
    del cameras.faults[0]
    pc.Picamera2Camera(picamera2_cfg(), api=cameras.API).close()  # it was let go


def test_a_pipeline_reads_the_camera_and_reconnects_when_it_fails(tmp_path, clean_machine):
    """`pipeline-up` with source.kind = "picamera2", the stand-in installed as the `picamera2` and
    `libcamera` modules of its processes: frames reach the ring unchanged, and a camera that
    fails mid-run is reopened (status `reconnecting`) while the pipeline stays up."""
    try:
        pc.import_picamera2()
    except SourceError:
        pass
    else:
        pytest.skip("the real picamera2 imports here: test_real_picamera2_camera runs instead")
    from pipeline import attach
    from tests.support.processes import snapshot, wait_running

    for module, names in (("picamera2", "MappedArray, Picamera2"), ("libcamera", "ColorSpace")):
        (tmp_path / module).mkdir()
        (tmp_path / module / "__init__.py").write_text(
            f"from tests.support.picamera2_standin import {names}  # noqa: F401\n")
    fault = tmp_path / "fault"
    fault.write_text("")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}", "PICAMERA2_STANDIN_FAULT": str(fault)}
    cmd = pipeline_cmd("demo.toml", "--name", "picam", "--set", "model.runtime=onnxruntime", "--quiet",
                       "--set", "source.kind='picamera2'")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_running(proc)
        with attach("picam", frames=True) as sub:
            results = [r for r in (sub.receive(timeout=20) for _ in range(10)) if r is not None]
        card = standin.test_card(640, 480)
        assert results, "no result from the camera"
        # Frames a result still finds in the ring are the card; on a slow machine (emulation)
        # the ring may have moved on, so the ring's first slot is checked too: every frame the
        # camera delivers is the same card, whatever was overwritten when.
        seen = [r.frame for r in results if r.frame is not None]
        assert all(np.array_equal(f, card) for f in seen)
        ring = Ring.attach(find_pipeline("picam")["rings"]["frames"], readonly=True)
        try:
            assert ring.written > 0 and np.array_equal(ring.view(0, card.shape), card)
        finally:
            ring.close()
        fault.write_text("error")
        deadline = time.monotonic() + 15
        while snapshot("picam")["stages"]["capture"]["state"] != "reconnecting":
            assert time.monotonic() < deadline, "capture never reported reconnecting"
            time.sleep(0.2)
        assert proc.poll() is None  # the pipeline stays up meanwhile
        fault.write_text("")
        with attach("picam") as sub:
            assert all(sub.receive(timeout=20) is not None for _ in range(10))
        assert snapshot("picam")["stages"]["capture"]["reconnects"] >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "reconnecting" in err and "source back after" in err and "Traceback" not in err


def test_real_picamera2_camera():
    """The same source on the real module and camera, where this machine has them."""
    try:
        api = pc.import_picamera2()
    except SourceError as e:
        pytest.skip(f"no picamera2 here: {e}")
    if not api.Picamera2.global_camera_info():
        pytest.skip("picamera2 imports, but libcamera sees no camera")
    for fmt in FORMATS:
        src = open_source(picamera2_cfg("source.width=224", "source.height=224",
                                        f"source.format='{fmt}'"))
        buf = np.empty((224, 224, 3), np.uint8)
        stamps = [src.read(lambda shape: buf)["sensor_ns"] for _ in range(5)]
        assert src.shape == (224, 224, 3) and stamps == sorted(stamps)
        assert time.monotonic_ns() - stamps[-1] < 500_000_000 and buf.std() > 0
        src.close()


# -- what a user is told ------------------------------------------------------------------------

def test_without_picamera2_start_up_says_how_to_install_it():
    try:
        import picamera2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("picamera2 is installed here")
    with pytest.raises(SourceError) as e:
        open_source(picamera2_cfg())
    msg = str(e.value)
    assert "\n" not in msg and "sudo apt install python3-picamera2" in msg
    assert "--system-site-packages" in msg


def test_numpy_2_against_the_systems_picamera2_says_what_to_do():
    """The errors numpy 2 gives modules built for numpy 1 (picamera2 #1088, #1211)."""
    for e in (ValueError("numpy.dtype size changed, may indicate binary incompatibility. Expected "
                         "96 from C header, got 88 from PyObject"),
              ImportError("numpy.core.multiarray failed to import")):
        msg = pc.import_problem(e, "2.2.1")
        assert "built for numpy 1.x" in msg and "numpy 2.2.1" in msg
        assert "pip install 'numpy<2' 'opencv-python-headless<4.12'" in msg and "\n" not in msg
    missing = ModuleNotFoundError("No module named 'libcamera'", name="libcamera")
    assert "libcamera's Python bindings" in pc.import_problem(missing, "1.26.4")
    other = pc.import_problem(ImportError("cannot import name 'MappedArray'"), "1.26.4")
    assert other.startswith('source.kind = "picamera2": picamera2 cannot be imported')


def test_v4l2_camera_on_a_libcamera_node_points_to_picamera2(tmp_path, monkeypatch):
    sysfs = tmp_path / "video4linux"
    for node, name in (("video0", "unicam-image"), ("video1", "uvcvideo"), ("video4", "rp1-cfe-csi2_ch0")):
        (sysfs / node).mkdir(parents=True)
        (sysfs / node / "name").write_text(name + "\n")
    monkeypatch.setattr(pc, "SYSFS_V4L", str(sysfs))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    for device, node in ((0, "unicam-image"), ("/dev/video4", "rp1-cfe-csi2_ch0")):
        with pytest.raises(SourceError) as e:
            Camera(CameraSource(kind="camera", device=device))
        assert f"Raspberry Pi's {node} node" in str(e.value)
        assert 'source.kind = "picamera2"' in str(e.value)
    assert pc.libcamera_node(1) == "" and pc.libcamera_node("/dev/null") == ""
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/aarch64-linux-gnu/libcamera/v4l2-compat.so")
    assert pc.not_for_v4l2(0, "/dev/video0") == ""  # libcamerify makes it readable


def test_v4l2_camera_failing_on_a_pi_adds_the_hint(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.5\0")
    monkeypatch.setattr(pc, "DT_MODEL", str(model))
    with pytest.raises(SourceError, match=r'cannot open camera /dev/null .*device\? \(on a Raspberry '
                                          r'Pi, a camera module is read with source\.kind = "picamera2"'):
        Camera(CameraSource(kind="camera", device="/dev/null"))
    model.write_bytes(b"Generic x86 box\0")
    with pytest.raises(SourceError) as e:
        Camera(CameraSource(kind="camera", device="/dev/null"))
    assert "picamera2" not in str(e.value)


# -- the config -----------------------------------------------------------------------------------

def test_config_defaults_and_estimate():
    cfg = picamera2_cfg()
    assert (cfg.camera, cfg.width, cfg.height, cfg.fps, cfg.format, cfg.lores, cfg.buffer_count) \
        == (0, 640, 480, 30.0, "RGB888", None, 4)
    assert frame_bytes_estimate(cfg) == 640 * 480 * 3
    lores = picamera2_cfg("source.lores={width=320, height=240}")
    assert lores.lores.format == "YUV420" and frame_bytes_estimate(lores) == 320 * 240 * 3


@pytest.mark.parametrize("override,expected", [
    ("source.width=225", "source.width: 225 is odd"),
    ("source.lores={width=800, height=240}", "source.lores: 800x240 is larger than the main"),
    ("source.lores={width=321, height=240}", "source.lores.width: 321 is odd"),
    ("source.max_frame_pixels=1000", "source.max_frame_pixels: 640x480 frames have 307200 pixels"),
])
def test_config_mistakes_are_one_line(override, expected):
    with pytest.raises(ConfigError) as e:
        picamera2_cfg(override)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_one_camera_cannot_feed_two_sources(tmp_path):
    text = '[model]\nweights = "none"\n' + '[[sources]]\nkind = "picamera2"\ncamera = 0\n' * 2
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(ConfigError, match="two picamera2 sources read camera 0"):
        load_config(tmp_path / "t.toml")


@pytest.mark.parametrize("name", ["pi4-camera", "pi5-camera"])
def test_pi_configs_are_the_tutorials_layout(name, monkeypatch):
    """On a Pi's four cores the pipeline's own layout is the tutorial's; on two it still fits."""
    monkeypatch.setenv("EDGE_PIPELINE_CORES", "0,1,2,3")
    cfg = load_config(ROOT / "configs" / f"{name}.toml", files=False)  # no picamera2 needed here
    assert cfg.source.kind == "picamera2" and cfg.source.frame_size == (224, 224)
    assert cfg.cores_of("capture") == cfg.cores_of("preprocess") == [0]
    assert cfg.cores_of("inference") == [1, 2, 3] and cfg.inference.workers == 1
    assert cfg.inference.threads == 0  # one per model core: the tutorial's three
    monkeypatch.setenv("EDGE_PIPELINE_CORES", "0,1")
    cfg = load_config(ROOT / "configs" / f"{name}.toml", files=False)
    assert cfg.cores_of("preprocess") == [0] and cfg.cores_of("inference") == [1]
    assert cfg.model.runtime == "auto" and cfg.preprocess.crop_size == 224
