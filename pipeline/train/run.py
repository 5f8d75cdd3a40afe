"""One training run, start to end: scan and split the dataset, extract features (the long part),
fit the head, write the model file with its accuracy measured on the file itself, and the
report beside it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.outputs import check_output

from . import dataset as ds_mod
from .dataset import DatasetError
from .features import FeatureExtractor, classify_file, default_threads, extract
from .head import softmax, train_head
from .model_file import base_metadata, metadata, write
from .report import Report, build_report


@dataclass
class Options:
    dataset: str
    out: str
    name: str = ""
    epochs: int = 30
    augment: int = 4
    resize: str = "crop"
    val_fraction: float = 0.2
    split: str = "time"
    seed: int = 0
    threads: int = 0  # 0: every core this process may use
    flip: bool = False

    def checked(self) -> "Options":
        """These options with defaults filled in; DatasetError in one line for a bad one."""
        if not self.out.endswith(".onnx"):
            raise DatasetError(f"--out: {self.out} must end in .onnx")
        problem = check_output(self.out, "--out", [self.dataset])
        if problem:
            raise DatasetError(problem)
        if not 0 < self.val_fraction < 1:
            raise DatasetError(f"--val-fraction: {self.val_fraction} must be between 0 and 1")
        for flag, value, low in (("--epochs", self.epochs, 1), ("--augment", self.augment, 0),
                                 ("--threads", self.threads, 0)):
            if value < low:
                raise DatasetError(f"{flag}: {value} must be at least {low}")
        name = self.name or Path(self.out).stem
        return Options(**{**asdict(self), "name": name, "threads": self.threads or default_threads()})


@dataclass
class Progress:
    """What the run tells its caller: `begin(total images)`, then `advance(n)` per image."""
    begin: Callable[[int], None] = lambda total: None
    advance: Callable[[int], None] = lambda n: None
    say: Callable[[str], None] = lambda text: None


def train(opts: Options, progress: Progress = Progress()) -> Report:
    """Train and write `opts.out` and its report files; DatasetError (one line) for a dataset or
    an option that cannot be used."""
    opts = opts.checked()
    started = time.monotonic()
    data = ds_mod.scan(opts.dataset)
    paths = [e.path for e in data.examples]
    progress.say(f"{len(paths)} images in {len(data.classes)} classes: "
                 + ", ".join(f"{c} {n}" for c, n in data.counts().items()))
    extractor = FeatureExtractor(opts.resize, opts.threads)
    progress.begin(len(paths))
    # Training images get augmented copies. Which those are is known only once every image is
    # read (one that does not decode leaves the split): split again then; the few images that
    # change sides keep their copies unused, or train without copies.
    first_train, _ = ds_mod.split(data, opts.val_fraction, opts.split, opts.seed)
    copies = np.zeros(len(paths), np.int64)
    copies[first_train] = opts.augment
    feats = extract(paths, extractor, copies, opts.seed, opts.flip, progress.advance)
    if feats.unreadable:
        progress.say(f"warning: skipped {len(feats.unreadable)} images that do not decode")
    keep = [i for i in range(len(paths)) if i not in feats.unreadable]
    readable = data.without(feats.unreadable)
    renumber = {old: new for new, old in enumerate(keep)}
    owner = np.array([renumber[o] for o in feats.owner], np.int64)
    train_idx, val_idx = ds_mod.split(readable, opts.val_fraction, opts.split, opts.seed)
    labels = np.array([e.label for e in readable.examples], np.int64)
    in_train = np.zeros(len(keep), bool)
    in_train[train_idx] = True
    rows = in_train[owner]
    head = train_head(feats.x[rows], labels[owner[rows]], len(data.classes), opts.epochs, opts.seed)
    originals = np.zeros((len(keep), feats.x.shape[1]), np.float32)
    originals[owner[feats.original]] = feats.x[feats.original]
    float_probs = softmax(head.logits(originals[val_idx]))
    val_paths = [readable.examples[i].path for i in val_idx]
    deployed: dict[str, np.ndarray] = {}

    def measure(model_path: str) -> float:
        deployed["logits"] = classify_file(model_path, val_paths, opts.resize, opts.threads)
        return float(np.mean(deployed["logits"].argmax(axis=1) == labels[val_idx]))

    provenance = {"dataset": str(data.root), "images": readable.counts(), "train": len(train_idx),
                  "validation": len(val_idx), "split": opts.split}
    options = {k: v for k, v in asdict(opts).items() if k not in ("dataset", "out", "name")}
    meta = metadata(opts.name, data.classes, opts.resize, provenance, 0.0, options, base_metadata())
    progress.say(f"measuring {Path(opts.out).name} on {len(val_idx)} validation images")
    write(opts.out, head, meta, measure)
    return build_report(
        out=opts.out, classes=data.classes, meta=meta, examples=readable.examples,
        train_idx=train_idx, val_idx=val_idx, float_probs=float_probs,
        deployed_probs=softmax(deployed["logits"]), originals=originals,
        unreadable=len(feats.unreadable), seconds=time.monotonic() - started)
