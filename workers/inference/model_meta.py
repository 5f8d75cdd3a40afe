"""What a model file says about itself, read without onnx, onnxruntime or torch: the supervisor
and `--check` need a model's class names (to check `state.watch`) and identity before any worker
starts, and must stay light on a Pi.

An ONNX file is a protobuf `ModelProto`; only two of its parts are read here: `metadata_props`
(field 14: key/value strings, where pipeline-export and pipeline-train store class names, input
size and provenance) and the shape of the graph's first output (field 7 -> output 12 -> type ->
tensor_type -> shape -> dim: a classifier's is 1 x classes). Everything else is skipped by its
length.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.config.classes import imagenet_classes
from pipeline.errors import UserError

ID_DIGITS = 12  # a model's short id: the first digits of its file's sha256


class ModelFileError(UserError):
    """A model file that cannot be read as a classifier."""


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of one protobuf message: ints for varints and fixed-size fields,
    memoryviews for length-delimited ones (strings, bytes, sub-messages)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, value
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > len(buf):
                raise ValueError("truncated field")
            yield number, buf[i:i + length]
            i += length
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")


def _sub(buf: memoryview, number: int) -> list[memoryview]:
    return [v for n, v in _fields(buf) if n == number and isinstance(v, memoryview)]


def read_model(path: str | os.PathLike) -> tuple[dict[str, str], list[int | None] | None]:
    """(metadata, the first output's shape: a size per dimension, None for one that is not fixed;
    None when the file does not say) of an ONNX or TFLite file; ModelFileError in one line for a
    file that is not one."""
    if str(path).lower().endswith(".tflite"):
        return read_tflite(path)
    try:
        buf = memoryview(Path(path).read_bytes())
    except OSError as e:
        raise ModelFileError(f"model.weights: cannot read {path} ({e.strerror})") from None
    try:
        meta = {}
        for entry in _sub(buf, 14):
            kv = {n: bytes(v).decode() for n, v in _fields(entry) if isinstance(v, memoryview)}
            meta[kv.get(1, "")] = kv.get(2, "")
        graphs = _sub(buf, 7)
        if not graphs:
            raise ValueError("no graph")
        dims: list[int | None] | None = None
        outputs = _sub(graphs[0], 12)
        if outputs:
            dims = []
            for typ in _sub(outputs[0], 2):
                for tensor in _sub(typ, 1):
                    for shape in _sub(tensor, 2):
                        for dim in _sub(shape, 1):
                            fixed = [v for n, v in _fields(dim) if n == 1 and isinstance(v, int)]
                            dims.append(fixed[0] if fixed else None)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"model.weights: {path} is not an ONNX model ({e})") from None
    return meta, dims or None


def read_tflite(path: str | os.PathLike) -> tuple[dict[str, str], list[int | None] | None]:
    """read_model for a TFLite file: the metadata the converter stores (the ONNX file's, as JSON
    under tflite_export.METADATA) and the first output's shape. Needs ai-edge-litert's schema
    (flatbuffers, pure Python), which any machine that runs a .tflite has."""
    try:
        buf = Path(path).read_bytes()
    except OSError as e:
        raise ModelFileError(f"model.weights: cannot read {path} ({e.strerror})") from None
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise ModelFileError(f"model.weights: reading {path} needs ai-edge-litert "
                             "(pip install ai-edge-litert)") from None
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ModelFileError(f"model.weights: {path} is not a TFLite model")
    try:
        model = schema.Model.GetRootAs(buf, 0)
        meta: dict[str, str] = {}
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == b"edge_pipeline":
                meta = json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
        graph = model.Subgraphs(0)
        out = graph.Tensors(graph.Outputs(0))
        signature = out.ShapeSignatureAsNumpy() if out.ShapeSignatureLength() else out.ShapeAsNumpy()
        dims: list[int | None] = [int(d) if d >= 0 else None for d in signature]
    except Exception:  # a damaged flatbuffer raises anything from struct.error to IndexError
        raise ModelFileError(f"model.weights: {path} is not a readable TFLite model (truncated "
                             "or damaged)") from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(f"model.weights: {path}'s metadata is not a map of strings")
    return meta, dims or None


def model_id(path: str | os.PathLike) -> str:
    """The short id results carry: the first digits of the file's sha256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:ID_DIGITS]


def read_labels_file(path: str) -> list[str]:
    """Class names from a labels file (model.labels): one per line, line i = class i."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ModelFileError(f"model.labels: cannot read {path} ({why})") from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or not all(names):
        raise ModelFileError(f"model.labels: {path} must hold one class name per line, "
                             "no empty lines")
    return names


def metadata_labels(meta: dict[str, str]) -> list[str] | None:
    """The class names the file carries, or None."""
    if "categories" not in meta:
        return None
    try:
        names = json.loads(meta["categories"])
    except ValueError:
        names = None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelFileError("model.weights: the file's `categories` metadata is not a list of "
                             "class names")
    return names


def own_labels(meta: dict[str, str], classes: int | None) -> list[str]:
    """The names a file carries; without any, ImageNet's for 1000 (or unknown) outputs (a file
    from elsewhere, e.g. the ONNX Model Zoo's MobileNetV2), else "class i"."""
    return metadata_labels(meta) or (list(imagenet_classes()) if classes in (None, 1000) else
                                     [f"class {i}" for i in range(classes)])
