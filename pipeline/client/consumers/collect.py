"""`collect` consumer: saves examples to label and train on, each what the model sees of its source
(the region of interest when one is set, else the whole frame) at the resolution it was captured,
as JPEG in `OUT/unlabelled/`, named `<source>-<YYYYmmdd-HHMMSS.ffffff>-f<frame or seq>.jpg` (UTC
capture time). Moving a file into `OUT/<class>/` labels it.

A folder of near-identical frames teaches nothing, so examples are spread over time and kept only
when they look different: per source, at most one frame per `min_interval` seconds is considered,
and it is kept only if its thumbnail (small, grayscale, normalised for brightness and contrast)
differs from every kept example's by at least `min_difference` (mean absolute difference; 0 for
identical, about 1.1 for unrelated pictures). Examples already in the folder (unlabelled or in a
class) count as kept, so a second run over the same scene adds little. Time is the capture time,
except where a file is read as fast as it decodes: a video's time is then its own (frame number
over frame rate), so an offline run is spread as the video was recorded, and each image of a folder
is a moment of its own (every image is considered).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from pipeline.client.result import Result
from pipeline.config.consumers import default
from pipeline.errors import UserError
from pipeline.outputs import check_folder
from pipeline.train.dataset import COLLECTED, IMAGE_SUFFIXES, UNLABELLED

THUMB = 32  # thumbnail side, pixels: enough to tell scenes apart, cheap to compare against hundreds
MIN_INTERVAL_S = default("min_interval")
MIN_DIFFERENCE = default("min_difference")  # a still camera's frames differ by ~0.01, a moved object by >0.15
MAX_EXAMPLES = default("max_examples")  # per source
QUALITY = default("quality")
TIME_SLACK = 1e-6  # s: frame number x frame time rounds, an interval of exactly min_interval is enough


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A THUMB*THUMB float32 vector of the image in gray, zero mean and unit spread."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(gray, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    small -= small.mean()
    small /= small.std() + 1e-3
    return small


def file_name(source: str, captured_at: float, number: int) -> str:
    stamp = datetime.fromtimestamp(captured_at, timezone.utc).strftime("%Y%m%d-%H%M%S.%f")
    return f"{source}-{stamp}-f{number}.jpg"


@dataclass
class _Source:
    """One source's kept examples (their thumbnails, a row each) and when it was last looked at."""

    name: str
    thumbs: np.ndarray = field(default_factory=lambda: np.empty((0, THUMB * THUMB), np.float32))
    saved: int = 0  # by this run
    looked_at: float | None = None  # time of the last frame considered
    full: bool = False
    crop: np.ndarray | None = None  # the region copied out of shared memory, reused

    def distance(self, thumb: np.ndarray) -> float:
        """How far the thumbnail is from the nearest kept one (inf when none is kept)."""
        if not len(self.thumbs):
            return float("inf")
        return float(np.abs(self.thumbs - thumb).mean(axis=1).min())

    def keep(self, thumb: np.ndarray) -> None:
        self.thumbs = np.vstack([self.thumbs, thumb[None]])


class ExampleSaver:
    """Saves what the model sees of a result (its source's region of interest) as a JPEG in
    `root/unlabelled/`, named by source, capture time and frame, unless it looks like an example
    already kept (in any folder of the dataset). The collect consumer and the review of a running
    model's uncertain results both save through it, so their examples agree."""

    def __init__(self, root: Path, source_configs: dict[str, Any] | None = None, quality: int = QUALITY,
                 min_difference: float = MIN_DIFFERENCE):
        self.root = root
        self.folder = root / UNLABELLED
        self.source_configs = source_configs or {}  # source id -> its config (roi_box)
        self.min_difference = min_difference
        self.sources: dict[str, _Source] = {}
        self._boxes: dict[tuple[str, int, int], tuple[int, int, int, int]] = {}
        self._jpeg = (cv2.IMWRITE_JPEG_QUALITY, quality)

    def source(self, name: str) -> _Source:
        """The source's kept examples; on its first sight, those already in the dataset."""
        src = self.sources.get(name)
        if src is None:
            src = self.sources[name] = _Source(name)
            known = list(_kept_thumbnails(self.root, name))
            if known:
                src.thumbs = np.stack(known)
        return src

    def region(self, src: _Source, r: Result) -> np.ndarray | None:
        """The source's region of interest copied out of the frame, or None when the result has no
        frame or the pipeline overwrote it meanwhile."""
        if r.frame is None:
            return None
        h, w = r.frame.shape[:2]
        box = self._boxes.get((r.source, h, w))
        if box is None:
            box = self._boxes[(r.source, h, w)] = self._box(r.source, w, h)
        x0, y0, x1, y1 = box
        region = r.frame[y0:y1, x0:x1]
        if src.crop is None or src.crop.shape != region.shape:
            src.crop = np.empty(region.shape, region.dtype)
        np.copyto(src.crop, region)
        return src.crop if r.frame_still_valid() else None

    def _box(self, source: str, w: int, h: int) -> tuple[int, int, int, int]:
        cfg = self.source_configs.get(source)
        try:
            return (cfg.roi_box(w, h) if cfg is not None else None) or (0, 0, w, h)
        except ValueError:  # preprocessing refuses such frames: the model sees none of them
            return 0, 0, w, h

    def save(self, src: _Source, r: Result, crop: np.ndarray) -> Path | None:
        """The saved file, or None when the crop is a near-duplicate of a kept example or its
        name is taken (the same frame saved before). OSError (naming the file) when it cannot be
        written."""
        thumb = thumbnail(crop)
        if src.distance(thumb) < self.min_difference:
            return None
        number = r.frame_index if r.frame_index is not None else r.seq
        name = file_name(r.source, r.captured_at, number)
        if not self._write(name, crop):
            return None
        src.keep(thumb)
        src.saved += 1
        return self.folder / name

    def _write(self, name: str, image: np.ndarray) -> bool:
        """Write the JPEG under a temporary name, then link it into place, never over a file that
        is there; False when one is."""
        ok, buf = cv2.imencode(".jpg", image, self._jpeg)
        if not ok:
            raise UserError(f"OpenCV cannot encode a {image.shape} frame as JPEG")
        target = self.folder / name
        tmp = self.folder / f".{name}.part-{os.getpid()}"
        try:
            tmp.write_bytes(buf.tobytes())
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links
                if target.exists():
                    return False
                os.rename(tmp, target)
            return True
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(target)) from None
        finally:
            tmp.unlink(missing_ok=True)


class CollectConsumer:
    """Writes distinct, spread-out examples of each source into `out/unlabelled/`."""

    frames = True
    max_age = None  # every result is looked at: an offline run collects from the whole file

    def __init__(self, out: str | None = None, config: dict[str, Any] | None = None,
                 quality: int = QUALITY, min_interval: float = MIN_INTERVAL_S,
                 min_difference: float = MIN_DIFFERENCE, max_examples: int = MAX_EXAMPLES,
                 verbose: bool = False):
        if not out:
            raise ValueError("the collect consumer needs --out FOLDER")
        problem = check_folder(out, "--out")
        if problem:
            raise UserError(problem)
        self.quality, self.min_interval = quality, min_interval
        self.min_difference, self.max_examples = min_difference, max_examples
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be 1-100, got {self.quality}")
        for flag, value in (("--min-interval", self.min_interval), ("--min-difference", self.min_difference)):
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{flag} must be a number >= 0, got {value}")
        if self.max_examples < 1:
            raise ValueError(f"--max-examples must be at least 1, got {self.max_examples}")
        self.verbose = verbose
        self.root = Path(out)
        self.folder = self.root / UNLABELLED
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {out}: cannot create {self.folder} ({e.strerror})") from None
        self.frame_s: dict[str, float] = {}  # source id -> seconds a frame of a file read unpaced
        self.saver = ExampleSaver(self.root, source_configs(config, self.min_interval, self.frame_s)
                                  if config else {}, self.quality, self.min_difference)
        self.too_soon = self.duplicates = self.unavailable = 0
        self.closed = False

    # -- per result ---------------------------------------------------------------------------
    def on_result(self, r: Result) -> None:
        src = self.saver.source(r.source)
        if src.full or self.closed:
            return
        now = self._time(r)
        if src.looked_at is not None and 0 <= now - src.looked_at < self.min_interval - TIME_SLACK:
            self.too_soon += 1
            return
        crop = self.saver.region(src, r)
        if crop is None:
            self.unavailable += 1
            return
        src.looked_at = now
        try:
            path = self.saver.save(src, r, crop)
        except OSError as e:  # a full disk, say: the one line to report, and no summary after it
            self.closed = True
            raise UserError(f"collect: cannot write {e.filename}: {e.strerror}; stopped after "
                            f"{self._saved()} examples") from None
        if path is None:
            self.duplicates += 1  # like a kept one, or that name is taken: the same frame saved before
        elif self.verbose:
            print(f"collect: {path}", file=sys.stderr, flush=True)
        if src.saved >= self.max_examples:
            src.full = True
            print(f"collect: {r.source}: {src.saved} examples saved, the most --max-examples allows; "
                  "saving no more of it", file=sys.stderr, flush=True)

    def _time(self, r: Result) -> float:
        frame_s = self.frame_s.get(r.source)
        if frame_s is not None and r.frame_index is not None:
            return r.frame_index * frame_s
        return r.captured_at

    def _saved(self) -> int:
        return sum(s.saved for s in self.saver.sources.values())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        print(f"collect: saved {self._saved()} examples to {self.folder}; skipped {self.too_soon} as too "
              f"soon, {self.duplicates} as near-duplicates, {self.unavailable} without a usable frame",
              file=sys.stderr, flush=True)


def source_configs(config: dict[str, Any], min_interval: float = MIN_INTERVAL_S,
                   frame_s: dict[str, float] | None = None) -> dict[str, Any]:
    """Each source's config by id (for its region of interest), from a pipeline's config. With
    `frame_s`, also fills in the seconds per frame of each source read as fast as it decodes (a
    video's own frame time; an image of a folder: `min_interval`)."""
    from pipeline.config import Config
    from pipeline.config.schema import ImagesSource, VideoSource

    cfg = Config.model_validate(config)
    configs = {}
    for sid, src in zip(cfg.source_ids(), cfg.source_list):
        configs[sid] = src
        if frame_s is None:
            continue
        if isinstance(src, VideoSource) and not src.realtime:
            fps = _video_fps(src.path)
            if fps > 0:
                frame_s[sid] = 1 / fps
        elif isinstance(src, ImagesSource) and src.fps == 0:
            frame_s[sid] = min_interval
    return configs


def _kept_thumbnails(root: Path, source: str) -> Iterator[np.ndarray]:
    """The thumbnails of the examples collected from `source` before, in any class folder or
    unlabelled."""
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.iterdir()):
            m = COLLECTED.match(path.name)
            if not m or m["source"] != source or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if image is not None:
                yield thumbnail(image)


def _video_fps(path: str) -> float:
    """The file's own frame rate (0 when OpenCV cannot tell: then capture time is used)."""
    video = cv2.VideoCapture(path)
    try:
        return float(video.get(cv2.CAP_PROP_FPS) or 0.0) if video.isOpened() else 0.0
    finally:
        video.release()
