"""The trained model as one .onnx file: the shipped int8 backbone with a new final layer, and
metadata saying what it names, how its input is prepared and where it came from, so the pipeline
runs it with `model.weights = FILE` and nothing else.

The shipped graph's classifier Gemm keeps its features input and gets the new weight and bias as
float32 initializers (the head is 1280 x C: int8 would save nothing worth its rounding); the
chain after it (QuantizeLinear, Cast, DequantizeLinear) is dropped and the Gemm writes `logits`.
Nodes and initializers nothing reads any more (the old weights) are removed.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.outputs import replacing
from workers.inference.model_files import builtin_onnx
from workers.normalize import IMAGENET_MEAN, IMAGENET_STD

from .features import CLASSIFIER, FEATURES
from .head import Head

FORMAT = "1"
OUTPUT = "logits"


def metadata(name: str, classes: list[str], resize: str, provenance: dict[str, Any],
             validation_accuracy: float, options: dict[str, Any], base: dict[str, str]) -> dict[str, str]:
    """The file's metadata_props (all strings)."""
    return {
        "edge_pipeline.format": FORMAT,
        "model": name,
        "categories": json.dumps(classes),
        "input_size": "224",
        "resize_size": "256",
        "resize": resize,
        "mean": json.dumps(IMAGENET_MEAN),
        "std": json.dumps(IMAGENET_STD),
        "input": base.get("input", "1x3xHxW float32, RGB, normalised: (x / 255 - mean) / std"),
        "base_model": base.get("model", "mobilenet_v2"),
        "base_weights": base.get("weights", ""),
        "trained_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "trained_from": json.dumps(provenance),
        "validation_accuracy": f"{validation_accuracy:.4f}",
        "training": json.dumps(options, sort_keys=True),
    }


def build(head: Head, meta: dict[str, str]):
    """The ModelProto: the shipped backbone, `head` as its last layer, `meta` as metadata."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(builtin_onnx()))
    graph = proto.graph
    gemm = next(n for n in graph.node if n.name == CLASSIFIER)
    assert gemm.input[0] == FEATURES, "the shipped model's classifier reads other features"
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    weight = head.weight if trans_b else head.weight.T
    names = ("head.weight", "head.bias")
    graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(weight, np.float32), names[0]),
                              numpy_helper.from_array(head.bias.astype(np.float32), names[1])])
    gemm.input[1], gemm.input[2] = names
    for node in graph.node:  # the old chain's end wrote `logits` too: it is dropped below
        node.output[:] = [f"{o}.replaced" if o == OUTPUT else o for o in node.output]
    gemm.output[0] = OUTPUT
    _prune(graph, OUTPUT)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT,
                                                      [1, len(head.bias)]))
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.doc_string = f"{meta['model']}: {len(head.bias)} classes on int8 MobileNetV2 features, " \
                       "trained by pipeline-train"
    onnx.checker.check_model(proto)
    return proto


def _prune(graph: Any, output: str) -> None:
    """Keep only the nodes, initializers and value infos `output` depends on."""
    producers = {o: n for n in graph.node for o in n.output}
    needed: set[str] = set()
    stack = [output]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producers.get(name)
        if node is not None:
            stack.extend(i for i in node.input if i)
    for repeated, name_of in ((graph.node, lambda n: n.output), (graph.initializer, lambda t: [t.name]),
                              (graph.value_info, lambda v: [v.name])):
        for i in reversed(range(len(repeated))):  # in place: the order stays topological
            if not any(o in needed for o in name_of(repeated[i])):
                del repeated[i]


def base_metadata() -> dict[str, str]:
    """The shipped model's metadata (its name, input description, weights' hash)."""
    from workers.inference.model_meta import read_model

    return read_model(builtin_onnx())[0]


def write(path: str | Path, head: Head, meta: dict[str, str], measure: Callable[[str], float]) -> float:
    """Write the model file whole (a temporary file beside it, renamed over it) with its
    `validation_accuracy` measured on the file itself: `measure(temporary path)`, run before the
    metadata is final (which changes nothing it computes). Returns that accuracy."""
    import onnx

    proto = build(head, meta)
    with replacing(str(path)) as tmp:
        onnx.save(proto, tmp)
        accuracy = measure(tmp)
        for prop in proto.metadata_props:
            if prop.key == "validation_accuracy":
                prop.value = f"{accuracy:.4f}"
        onnx.save(proto, tmp)
    return accuracy
