"""What the shipped model sees of an image: its 1280 pooled features, from the shipped int8
MobileNetV2 in onnxruntime (no torch), with images preprocessed exactly as the pipeline does
(workers/preprocess/transform.py's Preprocessor and its normalisation), and the augmentation that
suits a fixed camera: small shifts, scale and rotation, brightness and contrast; flips only when
asked (a camera does not see its scene mirrored).

The features are the input of the classifier's last layer (`FEATURES`), so a head trained on them
replaces that layer alone and the deployed file computes exactly these features.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from workers.inference.model_files import builtin_onnx
from workers.inference.qdq_format import cpu_activation_type, for_this_cpu, set_activation_type
from workers.preprocess.transform import Preprocessor

FEATURES = "/classifier/1/DequantizeLinear_output_0"  # the 1280-d input of the final Gemm
CLASSIFIER = "/classifier/1/Gemm"
BATCH = 16

# Augmentation ranges: what a fixed camera's image does from one day to the next.
SHIFT = 0.06      # of the image's size, each axis
SCALE = 0.10      # zoom in or out by up to 10%
ROTATE = 3.0      # degrees
BRIGHTNESS = 25   # added to every pixel, of 255
CONTRAST = 0.2    # about the image's mean


def default_threads() -> int:
    return len(os.sched_getaffinity(0))


def session(model: bytes | str, threads: int):
    """An onnxruntime CPU session on `threads` threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def feature_model() -> bytes:
    """The shipped model with the features as its output and a batch dimension of any size."""
    import onnx

    proto = onnx.load(str(builtin_onnx()))
    set_activation_type(proto, cpu_activation_type())  # the fast format here (qdq_format.py)
    graph = proto.graph
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT,
                                                           ["batch", 1280]))
    return proto.SerializeToString()


def read_image(path: Path) -> np.ndarray | None:
    """BGR uint8, or None for a file that does not decode."""
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return image if image is not None and image.size else None


def augment(image: np.ndarray, rng: np.random.Generator, flip: bool = False) -> np.ndarray:
    """A randomly shifted, scaled, slightly rotated and relit copy (the size stays)."""
    h, w = image.shape[:2]
    scale = 1 + rng.uniform(-SCALE, SCALE)
    angle = rng.uniform(-ROTATE, ROTATE)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[0, 2] += rng.uniform(-SHIFT, SHIFT) * w
    m[1, 2] += rng.uniform(-SHIFT, SHIFT) * h
    out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    alpha = 1 + rng.uniform(-CONTRAST, CONTRAST)
    beta = rng.uniform(-BRIGHTNESS, BRIGHTNESS) + (1 - alpha) * float(out.mean())
    out = cv2.addWeighted(out, alpha, out, 0.0, beta)  # saturates to 0..255
    if flip and rng.random() < 0.5:
        out = cv2.flip(out, 1)
    return out


class FeatureExtractor:
    """Features of images, in batches, through one onnxruntime session."""

    def __init__(self, resize: str, threads: int):
        self.prep = Preprocessor(resize)
        self.session = session(feature_model(), threads)
        self.batch = np.empty((BATCH, *self.prep.output_shape), np.float32)

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """N x 1280 float32 for N BGR images of any size."""
        out = np.empty((len(images), 1280), np.float32)
        for start in range(0, len(images), BATCH):
            chunk = images[start:start + BATCH]
            for i, image in enumerate(chunk):
                self.prep(image, self.batch[i])
            out[start:start + len(chunk)] = self.session.run(
                [FEATURES], {"input": self.batch[:len(chunk)]})[0]
        return out


@dataclass
class Features:
    x: np.ndarray          # N x 1280 float32
    owner: np.ndarray      # row -> index of its image in the paths given
    original: np.ndarray   # row is the image itself, not an augmented copy
    unreadable: set[int]   # indices of files that do not decode


def extract(paths: Sequence[Path], extractor: FeatureExtractor, copies: Sequence[int], seed: int,
            flip: bool = False, advance: Callable[[int], None] = lambda n: None) -> Features:
    """The features of each image and of `copies[i]` augmented copies of image i. The copies of
    image i are drawn from its own generator (seed, i), so the result does not depend on the
    order or batching of the work. `advance(1)` after each image."""
    rows: list[np.ndarray] = []
    owners: list[int] = []
    unreadable: set[int] = set()
    originals: list[bool] = []
    pending: list[np.ndarray] = []
    pending_owner: list[int] = []

    def flush() -> None:
        if pending:
            rows.append(extractor.features(pending))
            owners.extend(pending_owner)
            pending.clear()
            pending_owner.clear()

    for i, path in enumerate(paths):
        image = read_image(path)
        if image is None:
            unreadable.add(i)
        else:
            rng = np.random.default_rng([seed, i])
            pending.append(image)
            pending.extend(augment(image, rng, flip) for _ in range(copies[i]))
            pending_owner.extend([i] * (1 + copies[i]))
            originals.extend([True] + [False] * copies[i])
            if len(pending) >= BATCH:
                flush()
        advance(1)
    flush()
    x = np.concatenate(rows) if rows else np.empty((0, 1280), np.float32)
    return Features(x, np.asarray(owners, np.int64), np.asarray(originals, bool), unreadable)


def classify_file(model: str | Path, paths: Sequence[Path], resize: str, threads: int) -> np.ndarray:
    """N x C logits of a classifier file run as the pipeline runs it: one 1x3xHxW input at a
    time, preprocessed by the pipeline's Preprocessor."""
    prep = Preprocessor(resize)
    sess = session(for_this_cpu(str(model))[0], threads)
    name = sess.get_inputs()[0].name
    x = np.empty((1, *prep.output_shape), np.float32)
    logits = []
    for path in paths:
        image = read_image(path)
        if image is None:
            raise OSError(f"cannot read {path}")
        prep(image, x[0])
        logits.append(sess.run(None, {name: x})[0][0])
    return np.stack(logits) if logits else np.empty((0, 0), np.float32)
