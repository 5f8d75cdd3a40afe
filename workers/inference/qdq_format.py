"""The int8 format of a QDQ ONNX graph: int8 or uint8 activations, for the CPU that runs it.

torch exports uint8 activations with int8 weights (U8S8). The two formats hold the same real
values (an int8 zero point is the uint8 one - 128, the scale is the same), so converting is
exact, but onnxruntime's kernels differ by CPU:
- Arm (a Pi): onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv for
  int8 activations too, and only int8 activations get its symmetric int8 kernels, packed once at
  load, for the 1x1 convolutions (most of MobileNetV2's work; `MlasSymmQgemm`), with SDOT on a
  Pi 5 and plain Neon on a Pi 4. onnxruntime's docs call S8S8 QDQ "the first choice".
- x86-64: int8-activation convolutions are left unfused (`QDQIsInt8Allowed()` is false there) and
  run in float; fused they are slower still. uint8 activations run its VNNI/AVX2 U8S8 kernels.
  Measured here (AVX-512 VNNI): 4.2 ms U8S8 against 7.2 ms S8S8 for MobileNetV2 (41 ms fused).
So files are written S8S8 and an x86-64 machine loads them as U8S8 (`for_this_cpu`: rewritten
once, kept in the cache).

Weights are kept in [-127, 127]: Arm's int8 kernels (onnxruntime's and XNNPACK's) add pairs of
int8 products in 16 bits, where two -128 x -128 overflow; torch's symmetric observer allows -128.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.outputs import replacing

X86 = ("x86_64", "amd64", "i386", "i686")


def cpu_activation_type() -> str:
    """The activation type with onnxruntime's fast kernels on this CPU."""
    return "uint8" if platform.machine().lower() in X86 else "int8"


def _constants(proto: Any) -> dict[str, Any]:
    return {n.output[0]: n for n in proto.graph.node if n.op_type == "Constant"}


def _activation_zero_points(proto: Any) -> list[Any]:
    """The Constant nodes holding the zero points of activations (not of weights or biases)."""
    consts = _constants(proto)
    out = []
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in consts:
            continue  # weights, biases
        zp = consts.get(node.input[2])
        if zp is not None:
            out.append(zp)
    return out


def activation_type(proto: Any) -> str | None:
    """"int8" or "uint8": the type of the graph's quantized activations (None: none found)."""
    from onnx import TensorProto

    kinds = {zp.attribute[0].t.data_type for zp in _activation_zero_points(proto)}
    names = {TensorProto.INT8: "int8", TensorProto.UINT8: "uint8"}
    return names.get(kinds.pop()) if len(kinds) == 1 else None


def set_activation_type(proto: Any, dtype: str) -> bool:
    """Make every quantized activation `dtype` ("int8" or "uint8") in place: the zero points
    move by 128, and so do the Casts torch puts between QuantizeLinear and DequantizeLinear.
    Returns whether anything changed."""
    from onnx import TensorProto, numpy_helper

    target, other = (TensorProto.INT8, TensorProto.UINT8) if dtype == "int8" else \
        (TensorProto.UINT8, TensorProto.INT8)
    shift = -128 if dtype == "int8" else 128
    changed = False
    for zp in {z.output[0]: z for z in _activation_zero_points(proto)}.values():
        t = zp.attribute[0].t
        if t.data_type == other:
            value = numpy_helper.to_array(t).astype(np.int16) + shift
            t.CopyFrom(numpy_helper.from_array(value.astype(np.int8 if dtype == "int8" else np.uint8)))
            changed = True
    for node in proto.graph.node:
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == other:
                    a.i = target
                    changed = True
    return changed


def clamp_weights(proto: Any) -> int:
    """int8 weights in [-127, 127], in place; returns how many were -128."""
    from onnx import TensorProto, numpy_helper

    consts = _constants(proto)
    clamped = 0
    for node in proto.graph.node:
        w = consts.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if w is not None and w.attribute[0].t.data_type == TensorProto.INT8:
            q = numpy_helper.to_array(w.attribute[0].t)
            if (q == -128).any():
                clamped += int((q == -128).sum())
                w.attribute[0].t.CopyFrom(numpy_helper.from_array(np.maximum(q, -127).astype(np.int8)))
    return clamped


def for_this_cpu(path: str) -> tuple[str, str | None]:
    """(the file onnxruntime should load: `path`, or its rewrite for this CPU, made once and kept
    in the cache beside the other exports; the activation type it then has). A worker finds the
    rewrite there at every start without loading onnx."""
    from workers.inference.cache import cache_dir
    from workers.inference.onnx_export import file_sha256

    want = cpu_activation_type()
    source = Path(path)
    if source.stem.endswith(f".{want}"):  # a rewrite already
        return path, want
    target = cache_dir() / "onnx" / f"{source.stem}-{file_sha256(source)[:16]}.{want}.onnx"
    if target.is_file():
        return str(target), want
    import onnx

    proto = onnx.load(path)
    have = activation_type(proto)
    if have is None or have == want:
        return path, have
    set_activation_type(proto, want)
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(str(target)) as tmp:
        onnx.save(proto, tmp)
    return str(target), want
