"""A small real classifier for tests that need a model with its own classes (a deploy, Home
Assistant with two classes) without training one: the shipped model with its ImageNet head cut
down to a few of its rows, so "bottle" scores as ImageNet's "water bottle" does. Written by
pipeline-train's writer: one .onnx with its class names in the metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from workers.inference.model_files import builtin_onnx


def subset_model(out: Path, classes: dict[str, list[int]], name: str | None = None,
                 named: bool = True) -> Path:
    """`out`: a classifier whose class `c` scores as ImageNet's classes `classes[c]` together
    (the rows of the shipped head; several rows are merged into one by their mean), written by
    pipeline-train's own writer. `named=False`: a file from elsewhere, with no metadata at all."""
    import onnx
    from onnx import numpy_helper

    from pipeline.train.head import Head
    from pipeline.train.model_file import base_metadata, build

    graph = onnx.load(str(builtin_onnx())).graph
    made = {n.output[0]: n for n in graph.node}
    gemm = next(n for n in graph.node if n.op_type == "Gemm")

    def constant(name: str) -> np.ndarray:
        node = made[name]
        if node.op_type == "Cast":  # the bias's zero point is made by ConstantOfShape + Cast
            return np.zeros(1, np.int32)
        return numpy_helper.to_array(node.attribute[0].t)

    def dequantized(name: str) -> np.ndarray:
        q, scale, zero = (constant(i) for i in made[name].input)
        return (q.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)

    w, b = dequantized(gemm.input[1]), dequantized(gemm.input[2])
    head = Head(np.stack([w[rows].mean(axis=0) for rows in classes.values()]).astype(np.float32),
                np.array([b[rows].mean() for rows in classes.values()], np.float32))
    meta = {**base_metadata(), "model": name or out.stem, "categories": json.dumps(list(classes)),
            "resize": "crop"}
    proto = build(head, meta)
    if not named:
        del proto.metadata_props[:]
    onnx.save(proto, str(out))
    return out


def feature_map_model(out: Path) -> Path:
    """`out`: an ONNX model that is not a classifier: the shipped model cut before its pooling,
    so its output is a 1 x 1280 x H x W feature map."""
    import onnx
    from onnx import helper

    model = onnx.load(str(builtin_onnx()))
    graph = model.graph
    pool = next(n for n in graph.node if n.op_type == "GlobalAveragePool")
    features = pool.input[0]
    upto = list(graph.node)[:list(graph.node).index(pool)]
    needed, keep = {features}, []
    for node in reversed(upto):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(features, onnx.TensorProto.FLOAT,
                                                      [1, 1280, "h", "w"]))
    del model.metadata_props[:]
    onnx.save(model, str(out))
    return out
