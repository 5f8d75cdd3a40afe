"""The dataset: an ImageFolder (a class per subfolder, `unlabelled/` never a class) scanned into
examples in capture-time order, and the validation split.

Frames next to each other in a video are near copies, so a random split puts a copy of nearly
every validation image into training and overstates accuracy. The default split is by time: per
class, the latest examples are held out. The capture time is read from the names the collect
consumer writes (`<source>-<YYYYmmdd-HHMMSS.ffffff>-f<N>.jpg`); other files keep name order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
UNLABELLED = "unlabelled"
MIN_IMAGES = 2  # per class: one to train on, one to validate with
COLLECTED = re.compile(r"^(?P<source>.+)-(?P<time>\d{8}-\d{6}\.\d{6})-f(?P<n>\d+)\.[A-Za-z]+$")


class DatasetError(UserError):
    """A dataset that cannot be trained on."""


@dataclass(frozen=True)
class Example:
    path: Path
    label: int
    order: tuple[str, int, str]  # (capture time or "", frame number, name): sorts by time


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    examples: list[Example] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        n = np.bincount([e.label for e in self.examples], minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, n)}

    def without(self, unreadable: set[int]) -> "Dataset":
        """The dataset less the examples at those indices (images that did not decode), checked
        again."""
        kept = [e for i, e in enumerate(self.examples) if i not in unreadable]
        ds = Dataset(self.root, self.classes, kept)
        check_sizes(ds, "readable ")
        return ds


def capture_order(name: str) -> tuple[str, int, str]:
    """The sort key of a file: its capture time and frame number when collect named it, so a
    class collected from several sources still sorts by time; else its name alone."""
    m = COLLECTED.match(name)
    if m:
        return m["time"], int(m["n"]), name
    return "", 0, name


def scan(root: str | Path) -> Dataset:
    """The classes (sorted folder names) and their images in capture order; DatasetError in one
    line when there is nothing to train on."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"DATASET: no such folder {root} (give a folder with a subfolder per class)")
    folders = sorted(p for p in root.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and p.name != UNLABELLED)
    ds = Dataset(root.resolve(), [p.name for p in folders])
    for label, folder in enumerate(folders):
        files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                 and p.suffix.lower() in IMAGE_SUFFIXES]
        for p in sorted(files, key=lambda p: capture_order(p.name)):
            ds.examples.append(Example(p, label, capture_order(p.name)))
    if not ds.examples:
        raise DatasetError(f"DATASET: {root} holds no images: put them in a subfolder per class "
                           f"({', '.join(IMAGE_SUFFIXES)})")
    check_sizes(ds)
    return ds


def check_sizes(ds: Dataset, what: str = "") -> None:
    if len(ds.classes) < 2:
        found = f"only {ds.classes[0]!r}" if ds.classes else "none"
        raise DatasetError(f"DATASET: {ds.root} needs at least 2 class folders, found {found}")
    small = {c: n for c, n in ds.counts().items() if n < MIN_IMAGES}
    if small:
        listed = ", ".join(f"{c!r} has {n}" for c, n in small.items())
        raise DatasetError(f"DATASET: every class needs at least {MIN_IMAGES} {what}images: {listed}")


def split(ds: Dataset, val_fraction: float, mode: str = "time", seed: int = 0
          ) -> tuple[list[int], list[int]]:
    """(training, validation) indices into ds.examples. Per class, `val_fraction` of its examples
    (at least one, leaving at least one to train on) are held out: the latest ones ("time", the
    examples being in capture order) or a seeded random choice ("random")."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for label in range(len(ds.classes)):
        idx = [i for i, e in enumerate(ds.examples) if e.label == label]
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        if mode == "random":
            idx = [idx[i] for i in rng.permutation(len(idx))]
            held = sorted(idx[:n_val])
            train += sorted(idx[n_val:])
        else:
            held = idx[len(idx) - n_val:]
            train += idx[:len(idx) - n_val]
        val += held
    return train, val
