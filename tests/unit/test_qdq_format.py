"""The int8 format of the ONNX file: written S8S8 (the Arm format), loaded as U8S8 on x86-64, and
the rewrite between the two exact (same real values, same logits)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from workers.inference.classifier import OnnxClassifier
from workers.inference.model_files import builtin_onnx
from workers.inference.qdq_format import (
    activation_type,
    clamp_weights,
    cpu_activation_type,
    for_this_cpu,
    set_activation_type,
)


def logits(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0].reshape(-1)


def test_the_shipped_file_is_s8s8_with_weights_in_the_symmetric_range():
    proto = onnx.load(str(builtin_onnx()))
    assert activation_type(proto) == "int8"
    assert clamp_weights(proto) == 0, "no weight is -128"


def test_the_rewrite_to_uint8_and_back_is_exact():
    x = np.random.default_rng(0).standard_normal((1, 3, 160, 160)).astype(np.float32)
    proto = onnx.load(str(builtin_onnx()))
    assert set_activation_type(proto, "uint8") and activation_type(proto) == "uint8"
    assert not set_activation_type(proto, "uint8"), "nothing left to change"
    casts = {a.i for n in proto.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    assert onnx.TensorProto.INT8 not in casts, "the Casts between Q and DQ follow the activations"
    u8 = logits(proto, x)
    assert set_activation_type(proto, "int8") and activation_type(proto) == "int8"
    again = onnx.load(str(builtin_onnx()))
    assert proto.SerializeToString() == again.SerializeToString(), "back to the same bytes"
    # Same real values: the fused U8S8 graph and the S8S8 one agree to within a quantization step
    # of the output (x86-64 runs S8S8 convolutions unfused, in float).
    scale = float(onnx.numpy_helper.to_array(next(
        n for n in again.graph.node if n.output[0] == "/dequant/Constant_output_0").attribute[0].t))
    assert np.abs(u8 - logits(again, x)).max() <= 3 * scale
    assert int(np.argmax(u8)) == int(np.argmax(logits(again, x)))


def test_weights_of_minus_128_become_minus_127_and_only_those():
    proto = onnx.load(str(builtin_onnx()))
    consts = {n.output[0]: n for n in proto.graph.node if n.op_type == "Constant"}
    first = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts
                 and consts[n.input[0]].attribute[0].t.data_type == onnx.TensorProto.INT8)
    t = consts[first.input[0]].attribute[0].t
    q = onnx.numpy_helper.to_array(t).copy()
    q.reshape(-1)[:5] = -128
    t.CopyFrom(onnx.numpy_helper.from_array(q))
    assert clamp_weights(proto) == 5
    after = onnx.numpy_helper.to_array(consts[first.input[0]].attribute[0].t)
    assert after.min() == -127 and np.array_equal(after.reshape(-1)[5:], q.reshape(-1)[5:])


def test_onnxruntime_loads_the_format_with_fast_kernels_on_this_cpu(tmp_path, monkeypatch):
    """Rewritten only where the CPU needs it, once: kept in the cache, found there next time."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    want = cpu_activation_type()
    model, loaded = for_this_cpu(str(builtin_onnx()))
    assert loaded == want
    assert (model == str(builtin_onnx())) == (want == "int8")
    if want != "int8":
        assert model.startswith(str(tmp_path)) and model.endswith(f".{want}.onnx")
        assert activation_type(onnx.load(model)) == want
        again = for_this_cpu(str(builtin_onnx()))
        assert again == (model, want) and for_this_cpu(model) == (model, want)
    clf = OnnxClassifier(str(builtin_onnx()))
    assert clf.engine == f"cpu, {'S8S8' if want == 'int8' else 'U8S8'}"



def test_what_onnxruntime_loads_here_runs_every_convolution_and_add_in_int8(tmp_path, monkeypatch):
    """onnxruntime's optimizer fuses each DequantizeLinear -> Conv/Add -> QuantizeLinear into its
    int8 kernel only for the activation type it has kernels for on this CPU (int8 on Arm, uint8 on
    x86-64): what `for_this_cpu` gives it is fused whole, no convolution left in float."""
    from collections import Counter

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(for_this_cpu(str(builtin_onnx()))[0], opts, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] == 52 and ops["QLinearAdd"] == 10, ops
    assert ops["Conv"] == 0 and ops["Add"] == 0, ops
