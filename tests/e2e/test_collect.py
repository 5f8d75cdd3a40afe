"""The `collect` consumer on real pipelines: what the model sees of each source (its region of
interest, as captured) saved as JPEG into DIR/unlabelled, spread over time, without near-copies,
up to a cap; offline from a video file or an image folder through `[[consumers]]`, and live
through `pipeline-attach --consumer collect`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.train.dataset import COLLECTED
from tests.support.assets import BOTTLE, IMAGES, ROOT, need
from tests.support.processes import shm_segments, wait_running
from tests.support.topologies import finish, toml_value, up, wait_for

ATTACH = [sys.executable, "-m", "pipeline.cli.attach"]
MODEL = {"weights": "builtin", "runtime": "onnxruntime"}
BOTTLE_FPS = 29.83  # the file's own rate: an unpaced run is spread by it
AWAY = range(537, 656)  # frames of the bottle video without the middle bottle
AROUND = range(500, 700)  # the bottle is being taken away or put back
ROI = [240, 60, 160, 280]  # x, y, width, height: the middle bottle, in pixels of the 640x360 frame
SUMMARY = re.compile(r"collect: saved (\d+) examples to .*; skipped (\d+) as too soon, (\d+) as "
                     r"near-duplicates, (\d+) without a usable frame")


def write_config(path: Path, source: dict, collect: dict, name: str, edges: list[str] = ()) -> Path:
    lines = [f'name = "{name}"', "[source]", *[f"{k} = {toml_value(v)}" for k, v in source.items()],
             "[model]", *[f"{k} = {toml_value(v)}" for k, v in MODEL.items()], *edges,
             "[[consumers]]", 'kind = "collect"', *[f"{k} = {toml_value(v)}" for k, v in collect.items()]]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_offline(config: Path) -> tuple[subprocess.CompletedProcess, tuple[int, int, int, int]]:
    """`pipeline-up` on a file pipeline with a collect consumer, to the end of the file: the run and
    the consumer's counts (saved, too soon, near-duplicates, without frame)."""
    before = shm_segments()
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(config), "--quiet"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    name = re.search(r'^name = "(.*)"$', config.read_text(), re.M)[1]
    assert not [s for s in shm_segments() - before if f"edge-pipeline-{name}-" in s]
    m = SUMMARY.search(p.stderr)
    assert m, p.stderr
    return p, tuple(int(n) for n in m.groups())


def collected(folder: Path) -> list[tuple[Path, str, float, int]]:
    """The examples in folder/unlabelled: (path, source, UTC capture time, frame), by time."""
    out = []
    for path in (folder / "unlabelled").iterdir():
        assert not path.name.startswith("."), f"a temporary file was left: {path}"
        m = COLLECTED.match(path.name)
        assert m and path.suffix == ".jpg", path.name
        when = datetime.strptime(m["time"], "%Y%m%d-%H%M%S.%f").replace(tzinfo=timezone.utc)
        out.append((path, m["source"], when.timestamp(), int(m["n"])))
    return sorted(out, key=lambda e: e[2])


def jpeg_shape(path: Path) -> tuple[int, ...]:
    data = path.read_bytes()
    assert data[:2] == b"\xff\xd8", path  # a JPEG, whatever the name says
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image.shape


@pytest.fixture(scope="module")
def bottle_run(tmp_path_factory):
    """The bottle video read as fast as it decodes, its region of interest collected with the
    defaults (1 s, cap 200). Two frames in flight rather than one (edges.credits) keep capture,
    preprocess and the model busy at once; a ring of 16 frames keeps each one there for the
    collect consumer that reads it after its result."""
    need(BOTTLE)
    tmp = tmp_path_factory.mktemp("collect")
    config = write_config(tmp / "bottle.toml", {"kind": "video", "path": str(BOTTLE), "realtime": False,
                                                "roi": ROI},
                          {"out": str(tmp / "ds"), "verbose": True}, "collbottle",
                          edges=["[edges]", "credits = 2", "[edges.frames]", "slots = 16"])
    p, counts = run_offline(config)
    return config, tmp / "ds", p, counts


def test_an_offline_run_saves_the_region_of_interest_spread_by_the_files_own_time(bottle_run):
    _, ds, p, (saved, too_soon, duplicates, unavailable) = bottle_run
    examples = collected(ds)
    assert saved == len(examples) >= 5, p.stderr
    assert saved + too_soon + duplicates + unavailable == 1189  # every frame of the file, once
    assert {shape for e in examples for shape in [jpeg_shape(e[0])]} == {(ROI[3], ROI[2], 3)}
    assert {e[1] for e in examples} == {"video"}
    frames = sorted(e[3] for e in examples)
    assert min(np.diff(frames)) >= BOTTLE_FPS  # at least 1 s of the video apart
    verbose = [line for line in p.stderr.splitlines() if line.startswith("collect: /")]
    assert sorted(line.split("collect: ")[1] for line in verbose) == sorted(str(e[0]) for e in examples)
    # What the model saw, as captured: each file is the region of its frame in the video.
    video = cv2.VideoCapture(str(BOTTLE))
    frame_no, checked = 0, 0
    wanted = set(frames)
    while wanted:
        ok, frame = video.read()
        assert ok
        if frame_no in wanted:
            wanted.discard(frame_no)
            saved_image = cv2.imread(str(next(e[0] for e in examples if e[3] == frame_no)))
            region = frame[ROI[1]:ROI[1] + ROI[3], ROI[0]:ROI[0] + ROI[2]].astype(int)
            assert np.abs(saved_image.astype(int) - region).mean() < 4  # JPEG at quality 90
            checked += 1
        frame_no += 1
    assert checked == len(frames)


def test_distinct_scenes_are_kept_from_both_states_of_the_bottle_video(bottle_run):
    frames = [e[3] for e in collected(bottle_run[1])]
    assert any(f in AWAY for f in frames), frames  # the middle bottle away
    assert any(f not in AROUND for f in frames), frames  # the middle bottle there
    assert bottle_run[3][2] > 0  # and near-copies were left out


def test_a_second_run_on_the_same_video_adds_almost_nothing(bottle_run):
    config, ds, _, (first, *_) = bottle_run
    _, (saved, _, duplicates, _) = run_offline(config)
    assert saved <= 2 and duplicates >= first - 2
    assert len(collected(ds)) == first + saved
    # Labelled examples count too: moved into a class folder, they are still known.
    (ds / "bottle").mkdir()
    for path, *_ in collected(ds):
        shutil.move(path, ds / "bottle" / path.name)
    _, (saved, *_) = run_offline(config)
    assert saved <= 2 and len(collected(ds)) == saved


def static_video(path: Path, seconds: float = 6, fps: float = 25) -> Path:
    """A still camera: one real photo in every frame, with a little sensor noise."""
    need(IMAGES)
    photo = cv2.resize(cv2.imread(str(IMAGES / "n01530575_brambling.JPEG")), (320, 240))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (320, 240))
    rng = np.random.default_rng(0)
    for _ in range(int(seconds * fps)):
        noise = rng.integers(-3, 4, photo.shape)
        writer.write(np.clip(photo.astype(int) + noise, 0, 255).astype(np.uint8))
    writer.release()
    return path


def test_a_static_scene_gives_very_few_files_and_the_cap_stops_saving(tmp_path):
    video = static_video(tmp_path / "still.mp4")
    source = {"kind": "video", "path": str(video), "realtime": False}
    config = write_config(tmp_path / "still.toml", source, {"out": str(tmp_path / "ds")}, "collstill")
    p, (saved, too_soon, duplicates, _) = run_offline(config)
    assert saved == 1 and duplicates >= 4, p.stderr  # 6 s: six frames looked at, one kept
    assert jpeg_shape(collected(tmp_path / "ds")[0][0]) == (240, 320, 3)  # the whole frame
    # Every frame looked at and kept however alike (no interval, no difference): the cap stops it.
    config = write_config(tmp_path / "cap.toml", source, {
        "out": str(tmp_path / "capped"), "min_interval": 0, "min_difference": 0, "max_examples": 7,
        "quality": 50}, "collcap")
    p, (saved, too_soon, *_) = run_offline(config)
    assert saved == 7 and too_soon == 0 and len(collected(tmp_path / "capped")) == 7
    capped = [line for line in p.stderr.splitlines() if "--max-examples" in line]
    assert capped == ["collect: video: 7 examples saved, the most --max-examples allows; saving no more "
                      "of it"], p.stderr
    assert not [line for line in p.stderr.splitlines() if line.startswith("collect: /")]  # not verbose


def test_an_image_folder_keeps_each_distinct_photo_at_its_own_size(tmp_path):
    need(IMAGES)
    photos = sorted(IMAGES.glob("*.JPEG"))[:12]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, photo in enumerate(photos):
        shutil.copy(photo, folder / f"{i:02d}a.jpg")
        shutil.copy(photo, folder / f"{i:02d}b.jpg")  # the same photo again: a copy to leave out
    config = write_config(tmp_path / "photos.toml", {"kind": "images", "path": str(folder)},
                          {"out": str(tmp_path / "ds")}, "collphotos")
    p, (saved, too_soon, duplicates, _) = run_offline(config)
    assert saved == len(photos) and duplicates == len(photos) and too_soon == 0, p.stderr
    shapes = sorted(jpeg_shape(e[0]) for e in collected(tmp_path / "ds"))
    assert shapes == sorted(cv2.imread(str(p)).shape for p in photos)


def test_live_attach_collects_whole_frames_spread_by_capture_time(tmp_path):
    need(BOTTLE)
    config = tmp_path / "live.toml"
    config.write_text(f'name = "colllive"\n[source]\nkind = "video"\npath = "{BOTTLE}"\nloop = true\n'
                      '[model]\nweights = "builtin"\nruntime = "onnxruntime"\n')
    pipeline = up(config, "--quiet")
    try:
        wait_running(pipeline)
        out = tmp_path / "ds"
        attach = subprocess.Popen([*ATTACH, "--name", "colllive", "--consumer", "collect", "--out", str(out),
                                   "--min-interval", "0.5", "--min-difference", "0.05", "--verbose"],
                                  cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: len(list((out / "unlabelled").glob("*.jpg"))) >= 4, 120, "4 examples")
        finally:
            err = finish(attach)[1]
        assert attach.returncode == 0 and "Traceback" not in err, err
    finally:
        _, perr = finish(pipeline)
    assert pipeline.returncode == 0, perr
    examples = collected(out)
    saved = int(SUMMARY.search(err)[1])
    assert saved == len(examples) >= 4, err
    assert {jpeg_shape(e[0]) for e in examples} == {(360, 640, 3)}
    times = [e[2] for e in examples]
    assert min(np.diff(times)) >= 0.5 - 1e-5  # capture time, to the microsecond of the names


def refused(*args: str, cli: str = "attach") -> str:
    """The one line a command refuses with (exit 2)."""
    p = subprocess.run([sys.executable, "-m", f"pipeline.cli.{cli}", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
    return p.stderr.strip()


def test_an_out_that_cannot_be_a_folder_is_one_line(tmp_path, clean_machine):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    under = blocker / "ds"
    collect = ("--consumer", "collect", "--out")
    assert refused(*collect, str(under)) == \
        f"pipeline-attach: --out {under}: {blocker} is a file, so the folder cannot be made"
    assert refused(*collect, str(blocker)) == f"pipeline-attach: --out {blocker}: is a file; give a folder"
    assert refused("--consumer", "collect") == "pipeline-attach: the collect consumer needs --out FOLDER"
    need(BOTTLE)
    config = write_config(tmp_path / "bad.toml", {"kind": "video", "path": str(BOTTLE)}, {"out": str(under)},
                          "collbad")
    assert refused(str(config), cli="up") == \
        f"pipeline-up: consumers[0].out {under}: {blocker} is a file, so the folder cannot be made"
    config.write_text(config.read_text().replace(f'out = "{under}"\n', ""))
    assert "a collect consumer needs out" in refused(str(config), cli="up")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["bad.toml", "file"]  # nothing made


def test_a_full_disk_stops_collecting_in_one_line_leaving_only_whole_files(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.strip()}")
    config = tmp_path / "full.toml"
    config.write_text('name = "collfull"\n[source]\nkind = "synthetic"\nwidth = 640\nheight = 480\nfps = 30\n'
                      '[model]\nweights = "none"\n')
    pipeline = up(config, "--quiet")
    try:
        wait_running(pipeline)
        p = subprocess.run([*ATTACH, "--name", "collfull", "--consumer", "collect", "--out", str(disk / "ds"),
                            "--min-interval", "0", "--min-difference", "0", "--quality", "100",
                            "--duration", "120"], cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert p.returncode == 1, p.stderr
        m = re.fullmatch(rf"pipeline-attach: collect: cannot write {disk}/ds/unlabelled/synthetic-\S+\.jpg: "
                            r"No space left on device; stopped after (\d+) examples\n", p.stderr)
        assert m, p.stderr
        files = list((disk / "ds" / "unlabelled").iterdir())
        assert len(files) == int(m[1]) > 0 and all(not f.name.startswith(".") for f in files)
        assert {jpeg_shape(f) for f in files} == {(480, 640, 3)}
    finally:
        finish(pipeline)
        subprocess.run(["umount", "-l", str(disk)], check=True)
