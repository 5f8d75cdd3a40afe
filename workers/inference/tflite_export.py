"""Convert an int8 QDQ ONNX classifier into an int8 TFLite model for LiteRT (XNNPACK), without torch.

Why our own converter: the usual routes (onnx2tf, ai-edge-torch) need TensorFlow or torch, several
GB that a Pi's lean install does not have, and they do not take a model that is already quantized.
A QDQ graph says everything an int8 TFLite model needs: every activation's scale and zero point
(QuantizeLinear / DequantizeLinear), the integer weights and their scales, the int32 biases. So the
pipeline-export'ed models and the ones pipeline-train writes convert where they run, in a second.

How: the ONNX nodes are read in order. Constants are folded with numpy. A DequantizeLinear of an
int8/uint8 activation becomes a "dequantized view" of that int8 tensor; an operator whose inputs
are such views and whose result goes through QuantizeLinear becomes the int8 TFLite operator
(ReLU / ReLU6 fused into it), with its output's scale and zero point. uint8 activations become
int8 ones (zero point - 128, same scale: the same real values). An operator on float values (the
float head pipeline-train adds) stays float, after a DEQUANTIZE. Tensors are NHWC: the model
takes the same 1x3xHxW float input as the ONNX file and transposes it once, after quantizing it.
Height and width stay dynamic (LiteRT resizes the input; every operator adapts).

Operators: Conv (plain, depthwise, grouped), Gemm, Add, Mul, Relu, Clip (as ReLU6), HardSwish
(also as torch writes it: Mul(x, HardSigmoid(x))), HardSigmoid (torch's), GlobalAveragePool,
MaxPool (ceil_mode too, for kernels at least the stride), AveragePool (counting its padding or
not), Concat, Flatten; ReLU / ReLU6 after Conv, Gemm, Add, Mul, pooling or Concat is fused into
it. Anything else is a one-line error naming the operator.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError

FORMAT = "1"  # bump when the converted model or its metadata change meaning
METADATA = "edge_pipeline"  # the TFLite metadata entry holding the ONNX file's metadata (JSON)


class ConvertError(UserError):
    """An ONNX model this converter cannot turn into TFLite."""


@dataclass
class QTensor:
    """An int8 TFLite tensor: real value = scale * (q - zero_point)."""
    index: int
    scale: float
    zero_point: int
    shape: tuple[int, ...]  # NHWC for 4-D


@dataclass
class Dequantized:
    """DequantizeLinear of an int8 tensor: its real values, not yet a float tensor."""
    q: QTensor


@dataclass
class FTensor:
    """A float32 TFLite tensor."""
    index: int
    shape: tuple[int, ...]


@dataclass
class Const:
    """A constant. `q`: (integers, scales, zero points, axis) when it is DequantizeLinear of
    integer constants (weights, biases); `value` is then the real values."""
    value: np.ndarray
    q: tuple[np.ndarray, np.ndarray, np.ndarray, int] | None = None


@dataclass
class Pending:
    """A float operator on dequantized inputs, waiting for the QuantizeLinear (and the ReLU on the
    way) that makes it an int8 operator."""
    node: Any
    inputs: list[Any]
    shape: tuple[int, ...]  # the ONNX (NCHW) shape of its result
    activation: str = "NONE"  # NONE | RELU | RELU6


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as e:
        raise ConvertError(f"converting to TFLite needs ai-edge-litert ({e}): "
                           "pip install ai-edge-litert") from None
    return schema


class _Builder:
    """The TFLite model under construction: tensors, buffers, operators."""

    def __init__(self) -> None:
        self.s = _schema()
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [self.s.BufferT()]  # buffer 0: the empty one, by convention
        self.operators: list[Any] = []
        self.opcodes: dict[int, int] = {}
        self.opcode_list: list[Any] = []

    def tensor(self, shape: tuple[int, ...], dtype: int, name: str, data: np.ndarray | None = None,
               scale: Any = None, zero_point: Any = None, axis: int = 0,
               dynamic: tuple[int, ...] = ()) -> int:
        t = self.s.TensorT()
        t.shape = np.array(shape, np.int32)
        if dynamic:
            t.shapeSignature = np.array([-1 if i in dynamic else d for i, d in enumerate(shape)], np.int32)
        t.type = dtype
        t.name = name
        if data is not None:
            b = self.s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        else:
            t.buffer = 0
        if scale is not None:
            q = self.s.QuantizationParametersT()
            q.scale = np.atleast_1d(np.asarray(scale, np.float32))
            q.zeroPoint = np.atleast_1d(np.asarray(zero_point, np.int64))
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, value: np.ndarray, name: str) -> int:
        kinds = {np.dtype(np.int32): self.s.TensorType.INT32, np.dtype(np.float32): self.s.TensorType.FLOAT32}
        return self.tensor(value.shape, kinds[value.dtype], name, value)

    def op(self, code: int, inputs: list[int], outputs: list[int], options: Any = None,
           options_type: int = 0, version: int = 1) -> None:
        if code not in self.opcodes:
            oc = self.s.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = version
            self.opcodes[code] = len(self.opcode_list)
            self.opcode_list.append(oc)
        o = self.s.OperatorT()
        o.opcodeIndex = self.opcodes[code]
        o.inputs = np.array(inputs, np.int32)
        o.outputs = np.array(outputs, np.int32)
        if options is not None:
            o.builtinOptionsType = options_type
            o.builtinOptions = options
        self.operators.append(o)

    def finish(self, inputs: list[int], outputs: list[int], metadata: dict[str, str],
               description: str) -> bytes:
        import flatbuffers

        s = self.s
        sg = s.SubGraphT()
        sg.tensors, sg.operators, sg.name = self.tensors, self.operators, "main"
        sg.inputs, sg.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
        m = s.ModelT()
        m.version = 3
        m.operatorCodes, m.subgraphs, m.description = self.opcode_list, [sg], description
        meta = s.BufferT()
        meta.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
        self.buffers.append(meta)
        entry = s.MetadataT()
        entry.name, entry.buffer = METADATA, len(self.buffers) - 1
        m.metadata = [entry]
        m.buffers = self.buffers
        b = flatbuffers.Builder(1 << 20)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], *shape[2:], shape[1]) if len(shape) == 4 else tuple(shape)


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Converter:
    def __init__(self, model: Any, size: int) -> None:
        self.model = model
        self.size = size
        self.b = _Builder()
        self.s = self.b.s
        self.values: dict[str, Any] = {}
        self.shapes = self._shapes(model, size)
        self.padding_ops: dict[int, int] = {}

    @staticmethod
    def _shapes(model: Any, size: int) -> dict[str, tuple[int, ...]]:
        """Every tensor's ONNX shape for a size x size input (onnx's shape inference)."""
        import onnx

        m = onnx.ModelProto()
        m.CopyFrom(model)
        dims = m.graph.input[0].type.tensor_type.shape.dim
        for i, d in enumerate(dims):  # batch 1, height and width `size`
            if i != 1:
                d.Clear()
                d.dim_value = 1 if i == 0 else size
        inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
        out = {}
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            dd = vi.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dd):
                out[vi.name] = tuple(d.dim_value for d in dd)
        return out

    # -- values ---------------------------------------------------------------------------
    def shape_of(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise ConvertError(f"the shape of {name} is unknown")
        return self.shapes[name]

    def qtensor(self, shape: tuple[int, ...], scale: float, zp: int, name: str) -> QTensor:
        nhwc = _nhwc(shape)
        dynamic = (1, 2) if len(nhwc) == 4 else ()
        idx = self.b.tensor(nhwc, self.s.TensorType.INT8, name, scale=scale, zero_point=zp,
                            dynamic=dynamic)
        return QTensor(idx, scale, zp, nhwc)

    def ftensor(self, shape: tuple[int, ...], name: str) -> FTensor:
        nhwc = _nhwc(shape)
        idx = self.b.tensor(nhwc, self.s.TensorType.FLOAT32, name,
                            dynamic=(1, 2) if len(nhwc) == 4 else ())
        return FTensor(idx, nhwc)

    def as_float(self, v: Any, name: str) -> FTensor:
        """A float tensor for `v` (a DEQUANTIZE of an int8 one)."""
        if isinstance(v, FTensor):
            return v
        if isinstance(v, Dequantized):
            out = FTensor(self.b.tensor(v.q.shape, self.s.TensorType.FLOAT32, f"{name}.float",
                                        dynamic=(1, 2) if len(v.q.shape) == 4 else ()), v.q.shape)
            self.b.op(self.s.BuiltinOperator.DEQUANTIZE, [v.q.index], [out.index])
            return out
        if isinstance(v, Pending):
            return self.emit(v, None, name)
        raise ConvertError(f"{name}: a constant where a tensor was expected")

    # -- the walk -------------------------------------------------------------------------
    def run(self) -> tuple[list[int], list[int]]:
        g = self.model.graph
        for init in g.initializer:
            from onnx import numpy_helper

            self.values[init.name] = Const(numpy_helper.to_array(init))
        if len(g.input) != 1:
            raise ConvertError(f"the model has {len(g.input)} inputs, a classifier has one")
        inp = g.input[0]
        in_shape = self.shape_of(inp.name)
        if len(in_shape) != 4 or in_shape[1] != 3:
            raise ConvertError(f"the input is {in_shape}, a classifier's is 1x3xHxW")
        index = self.b.tensor(in_shape, self.s.TensorType.FLOAT32, inp.name, dynamic=(2, 3))
        self.values[inp.name] = ("input", index, in_shape)
        for node in g.node:
            try:
                self.visit(node)
            except ConvertError as e:
                raise ConvertError(f"{node.op_type} node {node.name or node.output[0]}: {e}") from None
        if len(g.output) != 1:
            raise ConvertError(f"the model has {len(g.output)} outputs, a classifier has one")
        out = self.as_float(self.values[g.output[0].name], g.output[0].name)
        return [index], [out.index]

    def visit(self, node: Any) -> None:
        op = node.op_type
        ins = [self.values.get(i) if i else None for i in node.input]
        a = _attrs(node)
        out = node.output[0]
        if op == "Constant":
            from onnx import numpy_helper

            self.values[out] = Const(numpy_helper.to_array(a["value"]) if "value" in a else
                                     np.array(next(iter(a.values()))))
        elif op == "ConstantOfShape":
            fill = numpy_helper_array(a.get("value"))
            self.values[out] = Const(np.full(tuple(ins[0].value.astype(np.int64)), fill[0] if fill.size
                                             else 0.0, fill.dtype))
        elif all(isinstance(v, Const) and v.q is None for v in ins if v is not None) and op in _FOLD:
            self.values[out] = Const(_FOLD[op](*(v.value if v else None for v in ins), **a))
        elif op == "Cast":
            self.values[out] = ins[0]  # between QuantizeLinear and DequantizeLinear: no change
        elif op == "QuantizeLinear":
            self.values[out] = self.quantize(ins, out)
        elif op == "DequantizeLinear":
            self.values[out] = self.dequantize(ins, a.get("axis", 1))
        elif op in ("Relu", "Clip") and isinstance(ins[0], Pending) and ins[0].activation == "NONE":
            act = "RELU" if op == "Relu" else self.clip_activation(ins)
            self.values[out] = Pending(ins[0].node, ins[0].inputs, ins[0].shape, act)
        elif op == "Mul" and (x := _hard_swish_input(ins)) is not None:
            from onnx import helper

            swish = helper.make_node("HardSwish", [node.input[0]], [out], name=node.name)
            self.values[out] = Pending(swish, [x], self.shape_of(out))
        elif op in _EMITTERS:
            self.values[out] = Pending(node, ins, self.shape_of(out))
        elif op == "Identity":
            self.values[out] = ins[0]
        else:
            raise ConvertError(f"the operator {op} is not supported by the TFLite converter")

    def clip_activation(self, ins: list[Any]) -> str:
        lo = float(ins[1].value) if len(ins) > 1 and ins[1] is not None else None
        hi = float(ins[2].value) if len(ins) > 2 and ins[2] is not None else None
        if lo == 0.0 and hi == 6.0:
            return "RELU6"
        if lo == 0.0 and hi is None:
            return "RELU"
        raise ConvertError(f"Clip({lo}, {hi}) is not a ReLU or ReLU6")

    def quantize(self, ins: list[Any], name: str) -> Any:
        x, scale, zp = ins[0], ins[1].value, ins[2].value if len(ins) > 2 and ins[2] else np.uint8(0)
        if scale.size != 1:
            raise ConvertError("per-channel activations are not supported")
        scale, zp = float(scale.reshape(-1)[0]), _int8_zero_point(zp)
        if isinstance(x, Const):
            raise ConvertError("quantizing a constant")
        if isinstance(x, Pending):
            return self.emit(x, (scale, zp), name)
        if isinstance(x, Dequantized) and np.isclose(x.q.scale, scale) and x.q.zero_point == zp:
            return x.q
        if isinstance(x, tuple):  # the model's float input: quantized, then made NHWC
            _, index, shape = x
            q = self.b.tensor(shape, self.s.TensorType.INT8, f"{name}.nchw", scale=scale, zero_point=zp,
                              dynamic=(2, 3))
            self.b.op(self.s.BuiltinOperator.QUANTIZE, [index], [q])
            out = self.qtensor(shape, scale, zp, name)
            perm = self.b.const(np.array([0, 2, 3, 1], np.int32), f"{name}.perm")
            self.b.op(self.s.BuiltinOperator.TRANSPOSE, [q, perm], [out.index])
            return out
        src = self.as_float(x, name) if not isinstance(x, Dequantized) else None
        shape = x.q.shape if isinstance(x, Dequantized) else src.shape
        out = QTensor(self.b.tensor(shape, self.s.TensorType.INT8, name, scale=scale, zero_point=zp,
                                    dynamic=(1, 2) if len(shape) == 4 else ()), scale, zp, shape)
        self.b.op(self.s.BuiltinOperator.QUANTIZE, [x.q.index if src is None else src.index], [out.index])
        return out  # (int8 -> int8 QUANTIZE requantizes)

    def dequantize(self, ins: list[Any], axis: int) -> Any:
        x, scale = ins[0], ins[1].value
        zp = ins[2].value if len(ins) > 2 and ins[2] is not None else np.zeros_like(scale, np.uint8)
        if isinstance(x, Const):  # weights or bias
            q = x.value
            axis = axis % max(q.ndim, 1)
            real = (q.astype(np.float64) - _expand(zp, q.ndim, axis)) * _expand(scale, q.ndim, axis)
            return Const(real.astype(np.float32), (q, np.atleast_1d(scale), np.atleast_1d(zp), axis))
        if isinstance(x, QTensor):
            if scale.size != 1 or not np.isclose(float(scale.reshape(-1)[0]), x.scale) or \
                    _int8_zero_point(zp) != x.zero_point:
                raise ConvertError("dequantized with other parameters than it was quantized with")
            return Dequantized(x)
        raise ConvertError("dequantizing something that is not an int8 tensor")

    # -- operators ------------------------------------------------------------------------
    def emit(self, p: Pending, out_q: tuple[float, int] | None, name: str) -> Any:
        """The TFLite operator for `p`: int8 with output parameters `out_q`, or float (None)."""
        quantized = out_q is not None and p.node.op_type not in _FLOAT_ONLY and \
            all(isinstance(v, (Dequantized, Const)) or v is None for v in p.inputs)
        if out_q is not None and not quantized:  # float operator, then quantized
            f = self.emit(p, None, f"{name}.float")
            return self.quantize([f, Const(np.float32(out_q[0])), Const(np.int8(out_q[1]))], name)
        if quantized:
            out = self.qtensor(p.shape, out_q[0], out_q[1], name)
        else:
            out = self.ftensor(p.shape, name)
        _EMITTERS[p.node.op_type](self, p, out, quantized)
        return out

    def operand(self, v: Any, quantized: bool, name: str) -> int:
        if quantized:
            return v.q.index
        return self.as_float(v, name).index

    def activation(self, p: Pending) -> int:
        return getattr(self.s.ActivationFunctionType, p.activation)

    def padded(self, x: int, shape: tuple[int, ...], pads: list[int], name: str,
               value: int | None = None) -> int:
        """`x` (NHWC) padded by ONNX `pads` (top, left, bottom, right): with the zero point (PAD),
        or the int8 `value` (PADV2, which XNNPACK leaves to LiteRT's own kernel)."""
        t, left, bottom, r = pads
        paddings = self.b.const(np.array([[0, 0], [t, bottom], [left, r], [0, 0]], np.int32),
                                f"{name}.paddings")
        new = (shape[0], shape[1] + t + bottom, shape[2] + left + r, shape[3])
        src = self.b.tensors[x]
        q = src.quantization
        idx = self.b.tensor(new, src.type, f"{name}.padded", scale=q.scale if q else None,
                            zero_point=q.zeroPoint if q else None, dynamic=(1, 2))
        if value is None:
            self.b.op(self.s.BuiltinOperator.PAD, [x, paddings], [idx])
        else:
            fill = self.b.tensor((), self.s.TensorType.INT8, f"{name}.fill", np.array(value, np.int8),
                                 scale=q.scale, zero_point=q.zeroPoint)
            self.b.op(self.s.BuiltinOperator.PADV2, [x, paddings, fill], [idx])
        return idx

    def window(self, p: Pending, x: int, in_shape: tuple[int, ...], name: str,
               max_pool: bool = False) -> tuple[int, int]:
        """(input, padding) for a windowed op: SAME where it matches ONNX's pads, else explicit
        padding: real zeros, or for max pooling values no window takes (the int8 minimum)."""
        a = _attrs(p.node)
        k = a["kernel_shape"]
        pads = list(a.get("pads", [0, 0, 0, 0]))
        strides = a.get("strides", [1, 1])
        dil = a.get("dilations", [1, 1])
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ConvertError("auto_pad is not supported")
        if a.get("ceil_mode", 0):
            if not max_pool or any(kk < st for kk, st in zip(k, strides)):
                raise ConvertError("ceil_mode is supported for max pooling with kernel >= stride only")
            # ceil((n + pads - k) / s) = floor((n + pads - k + s - 1) / s): s - 1 more rows and
            # columns at the bottom and right give ceil_mode's output size at every input size, and
            # as k >= s the last window still starts inside the input (where torch wants it).
            pads[2] += strides[0] - 1
            pads[3] += strides[1] - 1
        if not any(pads):
            return x, self.s.Padding.VALID
        symmetric = all(st == 1 for st in strides) and pads[0] == pads[2] and pads[1] == pads[3] and \
            all(d * (kk - 1) == 2 * pp for d, kk, pp in zip(dil, k, pads[:2]))
        if symmetric:  # (max pooling never takes TFLite's SAME padding either)
            return x, self.s.Padding.SAME
        value = None
        if max_pool:
            q = self.b.tensors[x].quantization
            if q is None:
                raise ConvertError("float max pooling with explicit padding is not supported")
            # Zero point -128 (the usual after a ReLU): PAD's zero point is the minimum already.
            value = None if int(q.zeroPoint[0]) == -128 else -128
        return self.padded(x, _nhwc(in_shape), pads, name, value), self.s.Padding.VALID


def numpy_helper_array(t: Any) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(t) if t is not None else np.zeros(1, np.float32)


def _int8_zero_point(zp: np.ndarray) -> int:
    """The int8 zero point of an activation quantized with `zp` (uint8 or int8)."""
    zp = np.asarray(zp)
    value = int(zp.reshape(-1)[0])
    return value - 128 if zp.dtype == np.uint8 else value


def _expand(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    v = np.asarray(v, np.float64).reshape(-1)
    if v.size == 1 or ndim == 0:
        return v.reshape(()) if v.size == 1 else v
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def _weights(c: Any, layout: tuple[int, ...], axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights transposed to `layout`, and their per-channel (or one) scales."""
    if c.q is None:
        raise ConvertError("float weights in a quantized operator")
    q, scale, zp, _ = c.q
    if q.dtype != np.int8:
        raise ConvertError(f"{q.dtype} weights (int8 is needed)")
    if np.any(zp != 0):
        raise ConvertError("asymmetric weights (zero point not 0)")
    # TFLite's int8 spec and XNNPACK's Arm kernels (pairs of int8 products summed in 16 bits)
    # take weights in [-127, 127]: a -128 becomes -127 (torch's symmetric observer allows it).
    w = np.ascontiguousarray(np.maximum(q, -127).transpose(layout))
    return w, np.asarray(scale, np.float32).reshape(-1)


def _bias(conv: _Converter, c: Any, in_scale: float, w_scale: np.ndarray, channels: int,
          name: str) -> int:
    """The int32 bias at scale in_scale * w_scale (what TFLite requires)."""
    want = (np.float32(in_scale) * w_scale).astype(np.float32)
    real = np.zeros(channels) if c is None else c.value.astype(np.float64).reshape(-1)
    if c is not None and c.q is not None and c.q[0].dtype == np.int32 and \
            np.allclose(c.q[1].astype(np.float32), want, rtol=1e-6, atol=0):
        q = c.q[0].astype(np.int32).reshape(-1)
    else:
        q = np.clip(np.round(real / want.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
    return conv.b.tensor(q.shape, conv.s.TensorType.INT32, f"{name}.bias", q,
                         scale=np.broadcast_to(want, q.shape) if want.size > 1 else want,
                         zero_point=np.zeros(max(want.size, 1), np.int64))


def _emit_conv(c: _Converter, p: Pending, out: Any, quantized: bool) -> None:
    s = c.s
    x_v, w_c = p.inputs[0], p.inputs[1]
    b_c = p.inputs[2] if len(p.inputs) > 2 else None
    a = _attrs(p.node)
    group = a.get("group", 1)
    in_shape = c.shape_of(p.node.input[0])
    cin, cout = in_shape[1], w_c.value.shape[0]
    depthwise = group > 1 and group == cin and w_c.value.shape[1] == 1
    layout = (1, 2, 3, 0) if depthwise else (0, 2, 3, 1)
    name = out_name(c, out)
    x = c.operand(x_v, quantized, name)
    x, padding = c.window(p, x, in_shape, name)
    strides, dil = a.get("strides", [1, 1]), a.get("dilations", [1, 1])
    if quantized:
        w, w_scale = _weights(w_c, layout, 0)
        axis = 3 if depthwise else 0
        w_idx = c.b.tensor(w.shape, s.TensorType.INT8, f"{name}.weight", w, scale=w_scale,
                           zero_point=np.zeros(w_scale.size, np.int64), axis=axis if w_scale.size > 1 else 0)
        b_idx = _bias(c, b_c, x_v.q.scale, w_scale, cout, name)
    else:
        w = np.ascontiguousarray(w_c.value.astype(np.float32).transpose(layout))
        w_idx = c.b.const(w, f"{name}.weight")
        bias = b_c.value.astype(np.float32) if b_c is not None else np.zeros(cout, np.float32)
        b_idx = c.b.const(bias.reshape(-1), f"{name}.bias")
    if depthwise:
        o = s.DepthwiseConv2DOptionsT()
        o.depthMultiplier = cout // cin
        code, otype = s.BuiltinOperator.DEPTHWISE_CONV_2D, s.BuiltinOptions.DepthwiseConv2DOptions
    else:
        o = s.Conv2DOptionsT()
        code, otype = s.BuiltinOperator.CONV_2D, s.BuiltinOptions.Conv2DOptions
    o.padding, o.strideH, o.strideW = padding, strides[0], strides[1]
    o.dilationHFactor, o.dilationWFactor = dil[0], dil[1]
    o.fusedActivationFunction = c.activation(p)
    c.b.op(code, [x, w_idx, b_idx], [out.index], o, otype, version=3 if quantized else 1)


def _emit_gemm(c: _Converter, p: Pending, out: Any, quantized: bool) -> None:
    s = c.s
    a = _attrs(p.node)
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise ConvertError("only Gemm with alpha = beta = 1 and A not transposed is supported")
    x_v, w_c = p.inputs[0], p.inputs[1]
    b_c = p.inputs[2] if len(p.inputs) > 2 else None
    if not isinstance(w_c, Const):
        raise ConvertError("Gemm's weights must be constant")
    layout = (0, 1) if a.get("transB", 0) else (1, 0)  # TFLite wants [outputs, inputs]
    name = out_name(c, out)
    cout = w_c.value.shape[layout[0]]
    if quantized:
        w, w_scale = _weights(w_c, layout, 0)
        w_idx = c.b.tensor(w.shape, s.TensorType.INT8, f"{name}.weight", w, scale=w_scale,
                           zero_point=np.zeros(w_scale.size, np.int64))
        b_idx = _bias(c, b_c, x_v.q.scale, w_scale, cout, name)
    else:
        w_idx = c.b.const(np.ascontiguousarray(w_c.value.astype(np.float32).transpose(layout)),
                          f"{name}.weight")
        bias = b_c.value.astype(np.float32).reshape(-1) if b_c is not None else np.zeros(cout, np.float32)
        b_idx = c.b.const(bias, f"{name}.bias")
    o = s.FullyConnectedOptionsT()
    o.fusedActivationFunction = c.activation(p)
    c.b.op(s.BuiltinOperator.FULLY_CONNECTED, [c.operand(x_v, quantized, name), w_idx, b_idx],
           [out.index], o, s.BuiltinOptions.FullyConnectedOptions, version=4 if quantized else 1)


def _emit_binary(c: _Converter, p: Pending, out: Any, quantized: bool) -> None:
    s = c.s
    name = out_name(c, out)
    ins = []
    for i, v in enumerate(p.inputs):
        if isinstance(v, Const):
            raise ConvertError(f"{p.node.op_type} with a constant input is not supported")
        ins.append(c.operand(v, quantized, f"{name}.{i}"))
    if p.node.op_type == "Add":
        o, code, otype = s.AddOptionsT(), s.BuiltinOperator.ADD, s.BuiltinOptions.AddOptions
    else:
        o, code, otype = s.MulOptionsT(), s.BuiltinOperator.MUL, s.BuiltinOptions.MulOptions
    o.fusedActivationFunction = c.activation(p)
    c.b.op(code, ins, [out.index], o, otype, version=2 if quantized else 1)


def _emit_mean(c: _Converter, p: Pending, out: Any, quantized: bool) -> None:
    s = c.s
    name = out_name(c, out)
    if p.activation != "NONE":
        raise ConvertError("an activation after GlobalAveragePool is not supported")
    axes = c.b.const(np.array([1, 2], np.int32), f"{name}.axes")
    o = s.ReducerOptionsT()
    o.keepDims = True
    c.b.op(s.BuiltinOperator.MEAN, [c.operand(p.inputs[0], quantized, name), axes], [out.index], o,
           s.BuiltinOptions.ReducerOptions, version=2 if quantized else 1)


def _emit_pool(c: _Converter, p: Pending, out: Any, quantized: bool) -> None:
    """MaxPool, AveragePool. Average pooling that counts the padding is a depthwise convolution
    with weights 1 / window over zero-point padding: TFLite's AVERAGE_POOL_2D leaves padding out
    of the count."""
    s = c.s
    name = out_name(c, out)
    a = _attrs(p.node)
    x_v = p.inputs[0]
    in_shape = c.shape_of(p.node.input[0])
    is_max = p.node.op_type == "MaxPool"
    if not is_max and a.get("count_include_pad", 0) and any(a.get("pads", [0])):
        _emit_box_filter(c, p, out, quantized)
        return
    x, padding = c.window(p, c.operand(x_v, quantized, name), in_shape, name, max_pool=is_max)
    if not is_max and any(a.get("pads", [0])) and padding != s.Padding.SAME:
        raise ConvertError("average pooling with padding left out of the count and no SAME match")
    pooled = out
    if quantized and (not np.isclose(x_v.q.scale, out.scale) or x_v.q.zero_point != out.zero_point):
        # TFLite's int8 pooling keeps its input's scale and zero point: requantized after
        pooled = c.qtensor(p.shape, x_v.q.scale, x_v.q.zero_point, f"{name}.pooled")
    o = s.Pool2DOptionsT()
    o.padding = padding
    o.strideH, o.strideW = a.get("strides", [1, 1])
    o.filterHeight, o.filterWidth = a["kernel_shape"]
    o.fusedActivationFunction = c.activation(p)
    code = s.BuiltinOperator.MAX_POOL_2D if is_max else s.BuiltinOperator.AVERAGE_POOL_2D
    c.b.op(code, [x], [pooled.index], o, s.BuiltinOptions.Pool2DOptions, version=2 if quantized else 1)
    if pooled is not out:
        c.b.op(s.BuiltinOperator.QUANTIZE, [pooled.index], [out.index])


def _emit_box_filter(c: _Converter, p: Pending, out: Any, quantized: bool) -> None:
    """AveragePool counting its padding: DEPTHWISE_CONV_2D with every weight 1 / window."""
    from onnx import helper

    a = _attrs(p.node)
    if a.get("ceil_mode", 0):
        raise ConvertError("ceil_mode is supported for max pooling only")
    kh, kw = a["kernel_shape"]
    channels = c.shape_of(p.node.input[0])[1]
    ones = np.ones((channels, 1, kh, kw), np.int8)
    scale = np.float32(1.0 / (kh * kw * 127))  # weight 127 * scale = 1 / window
    weights = Const(ones * scale * 127, (ones * 127, np.array([scale]), np.zeros(1, np.int8), 0))
    conv = helper.make_node("Conv", list(p.node.input[:1]), list(p.node.output), group=channels,
                            kernel_shape=[kh, kw], pads=a.get("pads", [0, 0, 0, 0]),
                            strides=a.get("strides", [1, 1]))
    _emit_conv(c, Pending(conv, [p.inputs[0], weights], p.shape, p.activation), out, quantized)


def _emit_concat(c: _Converter, p: Pending, out: Any, quantized: bool) -> None:
    s = c.s
    name = out_name(c, out)
    axis = _attrs(p.node)["axis"]
    rank = len(p.shape)
    axis = axis % rank
    if rank == 4:
        axis = {0: 0, 1: 3, 2: 1, 3: 2}[axis]
    ins = []
    for i, v in enumerate(p.inputs):
        if quantized and (not np.isclose(v.q.scale, out.scale) or v.q.zero_point != out.zero_point):
            # XNNPACK concatenates int8 tensors of the output's scale and zero point only
            v = Dequantized(c.quantize([v, Const(np.float32(out.scale)), Const(np.int8(out.zero_point))],
                                       f"{name}.{i}"))
        ins.append(c.operand(v, quantized, f"{name}.{i}"))
    o = s.ConcatenationOptionsT()
    o.axis = axis
    o.fusedActivationFunction = c.activation(p)
    c.b.op(s.BuiltinOperator.CONCATENATION, ins, [out.index], o, s.BuiltinOptions.ConcatenationOptions,
           version=2 if quantized else 1)


def _emit_flatten(c: _Converter, p: Pending, out: Any, quantized: bool) -> None:
    s = c.s
    name = out_name(c, out)
    in_shape = c.shape_of(p.node.input[0])
    if _attrs(p.node).get("axis", 1) != 1:
        raise ConvertError("Flatten on another axis than 1 is not supported")
    x = c.operand(p.inputs[0], quantized, name)
    if len(in_shape) == 4 and in_shape[2] * in_shape[3] != 1:  # NHWC -> NCHW first: ONNX's order
        src = c.b.tensors[x]
        q = src.quantization
        t = c.b.tensor(tuple(in_shape), src.type, f"{name}.nchw", scale=q.scale if q else None,
                       zero_point=q.zeroPoint if q else None)
        perm = c.b.const(np.array([0, 3, 1, 2], np.int32), f"{name}.perm")
        c.b.op(s.BuiltinOperator.TRANSPOSE, [x, perm], [t])
        x = t
    shape = c.b.const(np.array([-1, int(np.prod(in_shape[1:]))], np.int32), f"{name}.shape")
    c.b.op(s.BuiltinOperator.RESHAPE, [x, shape], [out.index])


def _emit_unary(c: _Converter, p: Pending, out: Any, quantized: bool) -> None:
    s = c.s
    name = out_name(c, out)
    op = p.node.op_type
    x = c.operand(p.inputs[0], quantized, name)
    if op == "HardSwish":
        c.b.op(s.BuiltinOperator.HARD_SWISH, [x], [out.index])
    elif op == "Relu":
        c.b.op(s.BuiltinOperator.RELU, [x], [out.index], version=2 if quantized else 1)
    else:
        raise ConvertError(f"the operator {op} is not supported by the TFLite converter")


def _emit_hard_sigmoid(c: _Converter, p: Pending, out: Any, quantized: bool) -> None:
    """hardsigmoid(x) = relu6(x + 3) / 6 (TFLite has no HARD_SIGMOID): an ADD with ReLU6 fused,
    then a MUL. In int8 the sum is held at 6 times the output's scale, so the MUL only rescales."""
    s = c.s
    name = out_name(c, out)
    _check_hard_sigmoid(p.node)
    if p.activation != "NONE":
        raise ConvertError("an activation after HardSigmoid is not supported")
    x = c.operand(p.inputs[0], quantized, name)
    ones = (1,) * len(p.shape)
    if quantized:
        three, sixth = (c.b.tensor(ones, s.TensorType.INT8, f"{name}.{n}", np.full(ones, 127, np.int8),
                                   scale=v / 127, zero_point=0)
                        for n, v in (("three", 3.0), ("sixth", 1 / 6)))
        mid = c.qtensor(p.shape, 6 * out.scale, out.zero_point, f"{name}.relu6").index
    else:
        three = c.b.const(np.full(ones, 3.0, np.float32), f"{name}.three")
        sixth = c.b.const(np.full(ones, 1 / 6, np.float32), f"{name}.sixth")
        mid = c.ftensor(p.shape, f"{name}.relu6").index
    o = s.AddOptionsT()
    o.fusedActivationFunction = s.ActivationFunctionType.RELU6
    c.b.op(s.BuiltinOperator.ADD, [x, three], [mid], o, s.BuiltinOptions.AddOptions,
           version=2 if quantized else 1)
    c.b.op(s.BuiltinOperator.MUL, [mid, sixth], [out.index], s.MulOptionsT(), s.BuiltinOptions.MulOptions,
           version=2 if quantized else 1)


def _check_hard_sigmoid(node: Any) -> None:
    a = _attrs(node)
    if not np.isclose(a.get("alpha", 0.2), 1 / 6) or not np.isclose(a.get("beta", 0.5), 0.5):
        raise ConvertError("only HardSigmoid(alpha=1/6, beta=1/2), torch's, is supported")


def _hard_swish_input(ins: list[Any]) -> Any:
    """x for Mul(x, HardSigmoid(x)) (how torch exports hardswish), else None."""
    if len(ins) != 2:
        return None
    for x, h in (ins, ins[::-1]):
        if isinstance(h, Pending) and h.node.op_type == "HardSigmoid" and h.activation == "NONE" and \
                h.inputs[0] is x:
            _check_hard_sigmoid(h.node)
            return x
    return None


def out_name(c: _Converter, out: Any) -> str:
    return c.b.tensors[out.index].name


# XNNPACK has no int8 HARD_SWISH (LiteRT's own kernel would run it, outside the delegate): it runs
# in float between DEQUANTIZE and QUANTIZE, all three delegated, as onnxruntime computes it.
_FLOAT_ONLY = {"HardSwish"}

_EMITTERS = {"Conv": _emit_conv, "Gemm": _emit_gemm, "Add": _emit_binary, "Mul": _emit_binary,
             "GlobalAveragePool": _emit_mean, "MaxPool": _emit_pool, "AveragePool": _emit_pool,
             "Concat": _emit_concat, "Flatten": _emit_flatten, "HardSwish": _emit_unary,
             "Relu": _emit_unary, "HardSigmoid": _emit_hard_sigmoid}


def _cast(x: np.ndarray, to: int = 1, **_: Any) -> np.ndarray:
    from onnx import helper

    return x.astype(helper.tensor_dtype_to_np_dtype(to))


_FOLD = {"Cast": _cast}


def convert(onnx_path: str | os.PathLike, out: str | os.PathLike, size: int | None = None) -> dict[str, str]:
    """Write the TFLite model of the ONNX file `onnx_path` to `out` (atomically); returns its
    metadata: the ONNX file's own, plus where it came from."""
    import onnx

    from pipeline.outputs import replacing
    from workers.inference.model_meta import read_model
    from workers.inference.onnx_export import file_sha256

    meta, _ = read_model(onnx_path)
    try:
        model = onnx.load(str(onnx_path))
    except Exception as e:
        raise ConvertError(f"{onnx_path} cannot be read as ONNX ({e})") from None
    size = size or int(meta.get("input_size", "224"))
    conv = _Converter(model, size)
    inputs, outputs = conv.run()
    meta = dict(meta)
    meta.update({"edge_pipeline.tflite_format": FORMAT, "converted_from": Path(onnx_path).name,
                 "converted_from_sha256": file_sha256(onnx_path)})
    data = conv.b.finish(inputs, outputs, meta,
                         f"int8 {meta.get('model', Path(onnx_path).stem)}, converted by edge-pipeline")
    with replacing(str(out)) as tmp:
        Path(tmp).write_bytes(data)
    return meta
