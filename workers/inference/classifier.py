"""The model behind the inference stage, whichever runtime runs it: logits for one input, then
softmax and top-k in numpy (the same code for every runtime, so results are comparable).

`load_planned_classifier(plan, ...)` imports only the chosen runtime: with onnxruntime or LiteRT
the worker process never loads torch or torchvision (about 700 MB of RSS and 3 s of start-up
saved).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from workers.inference.errors import ModelError
from workers.inference.model_meta import ModelFileError, own_labels, read_model
from workers.inference.qdq_format import for_this_cpu
from workers.normalize import Normalizer

if TYPE_CHECKING:
    from pipeline.config import Config
    from workers.inference.model_plan import ModelPlan


class Classifier(Protocol):
    runtime: str
    engine: str  # what runs it: torch's quantized engine, onnxruntime's provider, LiteRT's delegate
    threads: int
    labels: list[str]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Class scores (1-D) for one 1x3xHxW float32 input."""


def top_k(logits: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """Indices and softmax probabilities of the k best classes, best first. Quantized models tie
    often: among equal scores the lower class index comes first (as torch.topk orders them)."""
    e = np.exp(logits - logits.max())
    idx = np.argsort(-logits, kind="stable")[:k]
    return idx.tolist(), (e[idx] / e.sum()).tolist()


class OnnxClassifier:
    """An ONNX classifier in onnxruntime (CPU), on the process's pinned cores."""

    runtime = "onnxruntime"

    def __init__(self, path: str, threads: int = 1, spinning: bool = False,
                 labels: list[str] | None = None):
        """`labels`: the class names (the plan's); None: those the file carries."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ModelError(f"model.runtime: onnxruntime cannot be imported ({e}); "
                             "install it with pip install onnxruntime, or set "
                             "model.runtime = \"torch\"") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning pool threads keep polling for work between frames: a whole core each.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            model, activations = for_this_cpu(path)
            self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ModelError(f"model.weights: onnxruntime cannot load {path}: {first}") from None
        # what runs it: the CPU provider, and the int8 format it runs (qdq_format.py says why)
        self.engine = f"cpu, {'S8S8' if activations == 'int8' else 'U8S8'}" if activations else "cpu"
        self.threads = threads
        self.meta = self.session.get_modelmeta().custom_metadata_map
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self.fixed_size = inp.shape[-1] if isinstance(inp.shape[-1], int) else None
        classes = self.session.get_outputs()[0].shape[-1]
        self.labels = labels or own_labels(self.meta, classes if isinstance(classes, int) else None)
        if isinstance(classes, int) and classes != len(self.labels):
            raise ModelError(f"model.weights: {path} has {classes} outputs, the plan names "
                             f"{len(self.labels)} classes")
        self._feed: dict[str, np.ndarray] = {}

    def logits(self, x: np.ndarray) -> np.ndarray:
        self._feed[self.input_name] = x
        return self.session.run([self.output_name], self._feed)[0].reshape(-1)


class LiteRTClassifier:
    """A TFLite classifier in LiteRT's interpreter, its CPU work done by XNNPACK (the default
    delegate), on the process's pinned cores."""

    runtime = "litert"

    def __init__(self, path: str, threads: int = 1, labels: list[str] | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise ModelError(f"model.runtime: ai-edge-litert cannot be imported ({e}); install it "
                             "with pip install ai-edge-litert, or set model.runtime = "
                             "\"onnxruntime\"") from None
        try:
            with _without_info_lines():
                self.interpreter = Interpreter(model_path=path, num_threads=threads)
                self.interpreter.allocate_tensors()
            self.meta, _ = read_model(path)
        except ModelFileError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ModelError(f"model.weights: LiteRT cannot load {path}: {first}") from None
        ops = {op["op_name"] for op in self.interpreter._get_ops_details()}
        self.engine = "xnnpack" if "DELEGATE" in ops else "builtin kernels"
        self.threads = threads
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self.input_index, self.output_index = inp["index"], out["index"]
        self.fixed_size = None if inp["shape_signature"][-1] == -1 else int(inp["shape"][-1])
        self.shape = tuple(int(d) for d in inp["shape"])
        classes = int(out["shape"][-1])
        self.labels = labels or own_labels(self.meta, classes)
        if classes != len(self.labels):
            raise ModelError(f"model.weights: {path} has {classes} outputs, the plan names "
                             f"{len(self.labels)} classes")

    def logits(self, x: np.ndarray) -> np.ndarray:
        if x.shape != self.shape:  # adaptive resolution: every operator adapts to the new size
            self.interpreter.resize_tensor_input(self.input_index, x.shape)
            self.interpreter.allocate_tensors()
            self.shape = x.shape
        self.interpreter.set_tensor(self.input_index, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).reshape(-1)


@contextlib.contextmanager
def _without_info_lines() -> Iterator[None]:
    """LiteRT's C++ logger prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on
    stderr for every interpreter, with no setting to stop it: stderr (fd 2) goes to a file for
    the block, and whatever was not an INFO line is written back."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            rest = [ln for ln in caught.read().decode(errors="replace").splitlines(keepends=True)
                    if not ln.startswith("INFO: ")]
            sys.stderr.write("".join(rest))


class TorchClassifier:
    """A quantized torchvision classifier in torch (TorchScript, qnnpack/x86 engine)."""

    runtime = "torch"

    def __init__(self, model_name: str, weights: str, engine: str, jit: bool, threads: int,
                 channels_last: bool):
        import torch

        from workers.inference import torch_models as models

        torch.set_num_threads(threads)
        self._torch = torch
        self.model = models.load_torch_model(model_name, weights, engine, jit,
                                             channels_last=channels_last)
        self.engine = torch.backends.quantized.engine
        self.threads = torch.get_num_threads()
        self.labels = models.categories(model_name)
        self.channels_last = channels_last
        self._inputs: dict[tuple[int, ...], tuple[Any, np.ndarray]] = {}

    def logits(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        entry = self._inputs.get(x.shape)
        if entry is None:  # one tensor per input size, filled in place (no per-frame allocation)
            if len(self._inputs) > 8:
                self._inputs.clear()
            t = torch.zeros(*x.shape)
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            entry = self._inputs[x.shape] = (t, t.numpy())
        t, view = entry
        np.copyto(view, x)
        with torch.inference_mode():
            return self.model(t)[0].numpy()


def warm_up_classifier(clf: Classifier, size: int, iterations: int) -> float:
    """Run a few frames so the first real one is not slow; returns the last run's ms."""
    x = np.zeros((1, 3, size, size), np.float32)
    ms = 0.0
    for _ in range(iterations):
        t = time.perf_counter()
        clf.logits(x)
        ms = (time.perf_counter() - t) * 1e3
    return ms


class ModelInputs:
    """Private model inputs, one per input size (adaptive resolution changes it), filled from the
    ring: float32 copied as is, uint8 RGB normalised on the way in."""

    MAX_SIZES = 8

    def __init__(self) -> None:
        self.norm = Normalizer()
        self.arrays: dict[tuple[int, ...], np.ndarray] = {}

    def load(self, src: np.ndarray) -> np.ndarray | None:
        """The 1x3xNxN model input for one ring payload; None for a shape that is not 3xNxN."""
        x = self.arrays.get(src.shape)
        if x is None:
            if len(src.shape) != 3 or src.shape[0] != 3 or src.shape[1] != src.shape[2]:
                return None
            if len(self.arrays) >= self.MAX_SIZES:
                self.arrays.clear()
            x = self.arrays[src.shape] = np.zeros((1, *src.shape), np.float32)
        if src.dtype == np.uint8:
            self.norm.normalize_chw(src, x[0])
        else:
            np.copyto(x[0], src)
        return x


def load_planned_classifier(plan: "ModelPlan", config: "Config", threads: int) -> Classifier:
    """The planned runtime only: an onnxruntime worker never imports torch."""
    model = config.model
    if plan.runtime in ("onnxruntime", "litert"):
        clf = OnnxClassifier(plan.file, threads, config.inference.spinning, plan.labels) \
            if plan.runtime == "onnxruntime" else LiteRTClassifier(plan.file, threads, plan.labels)
        size = config.preprocess.crop_size
        if clf.fixed_size is not None and clf.fixed_size != size:
            raise ModelError(f"model.weights: {plan.file} takes {clf.fixed_size}x{clf.fixed_size} "
                             f"input, preprocess.crop_size is {size}")
        return clf
    clf = TorchClassifier(model.name, plan.file, model.engine, model.jit, threads,
                          model.channels_last)
    clf.labels = plan.labels or clf.labels
    return clf
