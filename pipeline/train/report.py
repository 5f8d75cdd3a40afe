"""The training report: how well the model does on the held-out images, and what in the data
to be wary of. Printed at the end and written beside the model: FILE.report.txt and .json, the
confusion matrix as FILE.confusion.png, the validation images it got wrong as FILE.errors.png.

Accuracy is given twice: of the head in float on the extracted features, and of the deployed file
itself run through onnxruntime on the validation images preprocessed as the pipeline does; the
per-class figures and the confusion matrix are the deployed file's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from pipeline.outputs import replacing, write_whole

from .dataset import Example
from .features import read_image

FEW_IMAGES = 10         # a class with fewer gets a warning
IMBALANCE = 5.0         # a class this many times larger than the smallest gets one
# A validation image this close to a training image (cosine of their features) is a near copy:
# frames 0.2 s apart in a still scene measure 0.98-0.995, the two states of one scene below 0.7.
DUPLICATE_COSINE = 0.99
SHEET_TILE = 200        # contact sheet: tile width in pixels
SHEET_COLUMNS = 6
SHEET_MAX = 60


@dataclass
class Report:
    model: str
    classes: list[str]
    files: dict[str, str]
    accuracy_float: float
    accuracy_deployed: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    images: dict[str, int]
    train: int
    validation: int
    split: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2) + "\n"

    def text(self) -> str:
        width = max(12, *(len(c) for c in self.classes))
        lines = [f"model {self.model}: {len(self.classes)} classes, {self.train} training and "
                 f"{self.validation} validation images (split by {self.split}), "
                 f"trained in {self.seconds:.0f} s",
                 f"validation accuracy: {self.accuracy_deployed:.1%} (deployed file, onnxruntime); "
                 f"{self.accuracy_float:.1%} (head in float on the features)",
                 "",
                 f"{'class':<{width}}  images  precision  recall  validation"]
        for c in self.classes:
            pc = self.per_class[c]
            lines.append(f"{c:<{width}}  {self.images[c]:>6}  {pc['precision']:>9.1%}  "
                         f"{pc['recall']:>6.1%}  {int(pc['support']):>10}")
        lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
        col = max(6, *(len(c) for c in self.classes))
        lines.append(" " * width + "  " + "  ".join(f"{c:>{col}}" for c in self.classes))
        for c, row in zip(self.classes, self.confusion):
            lines.append(f"{c:<{width}}  " + "  ".join(f"{n:>{col}}" for n in row))
        lines.append("")
        if self.errors:
            lines.append(f"{len(self.errors)} validation images wrong:")
            lines += [f"  {e['file']}: {e['true']} taken for {e['predicted']} ({e['probability']:.0%})"
                      for e in self.errors[:10]]
            if len(self.errors) > 10:
                lines.append(f"  ... and {len(self.errors) - 10} more (see {self.files['report_json']})")
        else:
            lines.append("no validation image wrong")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append("written: " + ", ".join(self.files.values()))
        return "\n".join(lines) + "\n"


def report_files(out: str | Path) -> dict[str, str]:
    """Where the report goes: beside the model, named after it."""
    base = str(Path(out).with_suffix(""))
    return {"model": str(out), "report_txt": f"{base}.report.txt", "report_json": f"{base}.report.json",
            "confusion_png": f"{base}.confusion.png", "errors_png": f"{base}.errors.png"}


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    m = np.zeros((classes, classes), np.int64)
    np.add.at(m, (true, predicted), 1)
    return m


def data_warnings(images: dict[str, int], originals: np.ndarray, train_idx: Sequence[int],
                  val_idx: Sequence[int], unreadable: int) -> list[str]:
    """What in the data makes the model or its accuracy figure doubtful."""
    warnings = []
    for c, n in images.items():
        if n < FEW_IMAGES:
            warnings.append(f"class {c!r} has only {n} images: collect at least {FEW_IMAGES} "
                            f"(a few dozen, in every light, is better)")
    smallest = min(images, key=images.get)
    for c, n in images.items():
        if n > IMBALANCE * images[smallest]:
            warnings.append(f"class {c!r} has {n} images, {n / images[smallest]:.0f}x as many as "
                            f"{smallest!r} ({images[smallest]}): collect more of the smaller classes "
                            f"(training weights classes by their size, but few examples cover few "
                            f"situations)")
    if len(train_idx) and len(val_idx):
        def unit(x: np.ndarray) -> np.ndarray:
            return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)

        closest = (unit(originals[list(val_idx)]) @ unit(originals[list(train_idx)]).T).max(axis=1)
        copies = int((closest >= DUPLICATE_COSINE).sum())
        if copies:
            warnings.append(f"{copies} of {len(val_idx)} validation images are near copies of training "
                            f"images (feature cosine similarity >= {DUPLICATE_COSINE}): the validation "
                            f"accuracy overstates how the model does on new scenes")
    if unreadable:
        warnings.append(f"{unreadable} images were skipped: they do not decode")
    return warnings


def build_report(out: str, classes: list[str], meta: dict[str, str], examples: Sequence[Example],
                 train_idx: Sequence[int], val_idx: Sequence[int], float_probs: np.ndarray,
                 deployed_probs: np.ndarray, originals: np.ndarray, unreadable: int,
                 seconds: float) -> Report:
    """The report of a run, written beside the model file."""
    files = report_files(out)
    true = np.array([examples[i].label for i in val_idx], np.int64)
    predicted = deployed_probs.argmax(axis=1)
    matrix = confusion_matrix(true, predicted, len(classes))
    per_class = {}
    for k, c in enumerate(classes):
        said, truly = matrix[:, k].sum(), matrix[k].sum()
        per_class[c] = {"precision": float(matrix[k, k] / said) if said else 0.0,
                        "recall": float(matrix[k, k] / truly) if truly else 0.0,
                        "support": int(truly)}
    images = {c: 0 for c in classes}
    for e in examples:
        images[classes[e.label]] += 1
    errors = [{"file": str(examples[i].path), "true": classes[t], "predicted": classes[p],
               "probability": round(float(deployed_probs[j, p]), 4)}
              for j, (i, t, p) in enumerate(zip(val_idx, true, predicted)) if t != p]
    report = Report(
        model=meta["model"], classes=classes, files=files,
        accuracy_float=float(np.mean(float_probs.argmax(axis=1) == true)),
        accuracy_deployed=float(np.mean(predicted == true)),
        per_class=per_class, confusion=matrix.tolist(), images=images, train=len(train_idx),
        validation=len(val_idx), split=json.loads(meta["trained_from"])["split"], errors=errors,
        warnings=data_warnings(images, originals, train_idx, val_idx, unreadable), seconds=seconds)
    plot_confusion(matrix, classes, files["confusion_png"], report.model)
    if errors:
        contact_sheet(errors, files["errors_png"])
    else:
        files.pop("errors_png")
        Path(report_files(out)["errors_png"]).unlink(missing_ok=True)  # a previous run's
    write_whole(files["report_json"], report.to_json())
    write_whole(files["report_txt"], report.text())
    return report


def plot_confusion(matrix: np.ndarray, classes: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    size = 2.5 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: validation")
    top = matrix.max() or 1
    for (r, c), n in np.ndenumerate(matrix):
        ax.text(c, r, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def contact_sheet(errors: list[dict[str, Any]], path: str) -> None:
    """The wrongly classified validation images in a grid, each captioned true -> predicted."""
    tiles = []
    for e in errors[:SHEET_MAX]:
        image = read_image(Path(e["file"]))
        if image is None:
            continue
        scale = SHEET_TILE / max(image.shape[:2])
        w, h = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
        tile = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        tile = cv2.copyMakeBorder(tile, 0, SHEET_TILE + 36 - h, 0, SHEET_TILE - w,
                                  cv2.BORDER_CONSTANT, value=(255, 255, 255))
        caption = f"{e['true']} -> {e['predicted']} {e['probability']:.0%}"
        cv2.putText(tile, caption[:30], (4, SHEET_TILE + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 200), 1)
        cv2.putText(tile, Path(e["file"]).name[-30:], (4, SHEET_TILE + 30), cv2.FONT_HERSHEY_SIMPLEX,
                    0.36, (60, 60, 60), 1)
        tiles.append(tile)
    if not tiles:
        return
    columns = min(SHEET_COLUMNS, len(tiles))
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    with replacing(path) as tmp:
        if not cv2.imwrite(tmp, np.vstack(rows)):
            raise OSError(f"cannot write {path}")
