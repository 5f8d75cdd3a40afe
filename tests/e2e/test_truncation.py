"""Damaged video files: frames that cannot be decoded mid-file are skipped and counted, a file that
ends before the frame count it declares says so, and with block edges either fails the run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import load_config
from tests.support.assets import BOTTLE, CAR, need
from tests.support.processes import read_jsonl, run_pipeline
from workers.capture.pacing import Pacer
from workers.capture.source_base import SourceError
from workers.capture.sources import Video


def damaged_copy(src: Path, dst: Path, at: float = 0.5, length: int = 20000) -> Path:
    """A copy with `length` bytes zeroed from `at` of the file: damaged frames in the middle."""
    data = bytearray(need(src).read_bytes())
    start = int(len(data) * at)
    data[start:start + length] = bytes(length)
    dst.write_bytes(data)
    return dst


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    """A copy cut off after `keep` of its bytes, as a copy interrupted half way."""
    data = need(src).read_bytes()
    dst.write_bytes(data[:int(len(data) * keep)])
    return dst


def declared_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()


def video(path: Path, *overrides: str) -> Video:
    return Video(load_config(None, ["model.weights=none", "source.kind=video", f"source.path={path}",
                                    "source.realtime=false", *overrides]).source)


def read_all(src: Video, limit: int = 10**6, gaps: list[int] | None = None) -> list[int]:
    """The file positions ("frame") of every frame the source delivers, up to `limit` (and in
    `gaps` the undecodable frames skipped before each)."""
    buf = np.empty(src.shape, np.uint8)
    frames = []
    while len(frames) < limit:
        meta = src.read(lambda shape: buf)
        if meta is None:
            break
        frames.append(meta["frame"])
        if gaps is not None:
            gaps.append(src.gap)
    return frames


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("asset", [BOTTLE, CAR])
def test_an_intact_video_delivers_its_declared_count_with_no_decode_drops(asset, caplog):
    src = video(need(asset))
    with caplog.at_level(logging.WARNING, logger="capture"):
        frames = read_all(src)
    assert len(frames) == src.declared == declared_frames(asset) > 0
    assert frames == list(range(src.declared))
    assert src.undecodable == 0 and src.damage == "" and not warnings_of(caplog)


def test_frames_damaged_mid_file_are_skipped_counted_and_reading_goes_on(tmp_path, caplog):
    path = damaged_copy(BOTTLE, tmp_path / "damaged.mp4")
    src, gaps = video(path), []
    with caplog.at_level(logging.WARNING, logger="capture"):
        frames = read_all(src, gaps=gaps)
    declared = declared_frames(BOTTLE)
    assert 0 < src.undecodable < declared // 4, "the frames after the damage are read"
    assert len(frames) + src.undecodable == declared
    assert frames[-1] == declared - 1, "frame numbers stay positions in the file"
    first_lost = next(i for i, f in enumerate(frames) if f != i)
    lost = sorted(set(range(declared)) - set(frames))
    assert lost == list(range(first_lost, first_lost + src.undecodable))
    assert gaps[first_lost] == src.undecodable and sum(gaps) == src.undecodable  # paced as frames missed
    (line,) = warnings_of(caplog)
    assert str(path) in line and f"frames {first_lost}-{lost[-1]} cannot be decoded" in line


def test_a_truncated_video_reports_where_it_stopped_and_counts_the_rest(tmp_path, caplog):
    path = truncated_copy(CAR, tmp_path / "cut.mp4")
    src = video(path)
    with caplog.at_level(logging.WARNING, logger="capture"):
        frames = read_all(src)
    declared = declared_frames(CAR)
    assert src.declared == declared and 0 < len(frames) < declared
    assert frames == list(range(len(frames)))
    assert src.undecodable == declared - len(frames)
    (line,) = warnings_of(caplog)
    assert str(path) in line and f"stopped at frame {len(frames)} of the {declared}" in line
    assert src.read(lambda shape: np.empty(shape, np.uint8)) is None  # and stays ended


def test_a_video_cut_before_its_index_cannot_be_opened(tmp_path):
    """bottle-detection.mp4 keeps its index (moov) at the end: a cut copy is no video at all."""
    path = truncated_copy(BOTTLE, tmp_path / "cut.mp4")
    with pytest.raises(SourceError, match="cannot open video"):
        video(path)


def test_looping_over_a_truncated_video_counts_every_pass_and_warns_once(tmp_path, caplog):
    path = truncated_copy(CAR, tmp_path / "cut.mp4")
    src = video(path, "source.loop=true")
    with caplog.at_level(logging.WARNING, logger="capture"):
        frames = read_all(src, limit=1000)
    per_pass = frames.index(0, 1)  # frames delivered before the first wrap
    assert len(frames) == 1000 and frames[:per_pass] == list(range(per_pass))
    passes = 1000 // per_pass  # full passes read to their end (a partial last one has not ended)
    assert src.undecodable == passes * (declared_frames(CAR) - per_pass)
    assert len(warnings_of(caplog)) == 1
    strict = video(path, "source.loop=true")
    strict.strict = True  # block edges: the first short pass ends the stream
    assert len(read_all(strict, limit=1000)) == per_pass and "stopped at frame" in strict.damage


def summary_of(path: Path) -> dict:
    return json.loads(path.read_text())


def test_pipeline_counts_decode_drops_and_with_block_edges_fails_naming_the_frame(tmp_path,
                                                                                  clean_machine):
    path = truncated_copy(CAR, tmp_path / "cut.mp4")
    declared, summary = declared_frames(CAR), tmp_path / "s.json"
    common = ["--set", f"source.path={path}", "--set", "model.weights=none",
              "--set", "source.realtime=false", "--quiet", "--summary-json", str(summary)]
    p = run_pipeline("video.toml", *common)
    assert p.returncode == 0, p.stderr  # latest edges: a warning and the count, not a failure
    s = summary_of(summary)
    kept = s["frames"]["captured"]
    assert 0 < kept < declared and s["drops"]["source"]["decode"] == declared - kept
    assert f"stopped at frame {kept} of the {declared} it declares" in p.stderr
    assert f"decode {declared - kept}" in p.stdout  # the printed summary
    p = run_pipeline("video.toml", *common, "--set", "edges.frames.policy=block",
                     "--set", "edges.tensors.policy=block")
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pipeline-up: source.path: video {path}: stopped at frame {kept} of "
                           f"the {declared} it declares"), last
    s = summary_of(summary)
    assert s["stopped_by"] == "end of stream" and s["frames"]["classified"] == kept
    assert s["drops"]["source"]["decode"] == declared - kept and "stopped at frame" in s["failure"]
    p = run_pipeline("video.toml", *common, "--set", "edges.frames.policy=block",
                     "--set", "source.loop=true")  # would loop forever: ends after the first pass
    assert p.returncode == 1 and f"stopped at frame {kept} of" in p.stderr.strip().splitlines()[-1]
    assert summary_of(summary)["frames"]["captured"] == kept


def test_pipeline_reads_past_mid_file_damage(tmp_path, clean_machine):
    path = damaged_copy(BOTTLE, tmp_path / "damaged.mp4")
    declared, summary, record = declared_frames(BOTTLE), tmp_path / "s.json", tmp_path / "r.jsonl"
    common = ["--set", f"source.path={path}", "--set", "model.weights=none", "--set",
              "source.realtime=false", "--quiet", "--summary-json", str(summary)]
    block = ["--set", "edges.frames.policy=block", "--set", "edges.tensors.policy=block"]
    p = run_pipeline("video.toml", *common, *block, "--record", str(record))
    s = summary_of(summary)
    lost = s["drops"]["source"]["decode"]
    assert 0 < lost < declared // 4 and s["frames"]["classified"] + lost == declared
    frames = sorted(r["frame"] for r in read_jsonl(record))
    assert frames[-1] == declared - 1 and len(frames) == declared - lost
    first = next(i for i, f in enumerate(frames) if f != i)
    assert p.returncode == 1 and "Traceback" not in p.stderr  # block: every frame matters
    assert p.stderr.strip().splitlines()[-1].startswith(
        f"pipeline-up: source.path: video {path}: frames {first}-{first + lost - 1} cannot be decoded")
    p = run_pipeline("video.toml", *common)
    assert p.returncode == 0, p.stderr  # latest edges: counted and logged, not a failure
    assert summary_of(summary)["drops"]["source"]["decode"] == lost


def test_pipeline_on_an_intact_video_ends_cleanly_with_no_decode_drops(tmp_path, clean_machine):
    summary = tmp_path / "s.json"
    car = need(CAR)
    p = run_pipeline("video.toml", "--set", f"source.path={car}", "--set", "model.weights=none",
                     "--set", "source.realtime=false", "--set", "edges.frames.policy=block",
                     "--set", "edges.tensors.policy=block", "--quiet", "--summary-json", str(summary))
    assert p.returncode == 0, p.stderr
    s = summary_of(summary)
    assert s["stopped_by"] == "end of stream" and s["failure"] is None
    assert s["frames"]["classified"] == declared_frames(car)
    assert s["drops"]["source"]["decode"] == 0
    assert "cannot be decoded" not in p.stderr and "stopped at frame" not in p.stderr



def test_frames_skipped_keep_their_time_in_a_paced_stream():
    pacer = Pacer(2.0)  # periods long enough that the wait never counts as falling behind
    due = pacer.due
    pacer.wait(3)  # a frame after two that could not be decoded: three periods after the last
    assert pacer.due == pytest.approx(due + 1.5)
