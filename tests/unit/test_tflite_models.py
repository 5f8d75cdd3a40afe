"""The TFLite converter on torchvision's quantized classifiers (random weights): LiteRT's logits
match onnxruntime's within a few steps of the output's quantization scale, at the export size and
another one (height and width stay dynamic), and XNNPACK runs every operator.

resnet18 covers MaxPool, Add + ReLU, padded stride-2 convolutions; mobilenet_v3_large covers
HardSwish, squeeze-excite (HardSigmoid, Mul) and depthwise convolutions. Larger models
(resnet50, googlenet, inception_v3) are too slow to export here.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="exporting a torchvision model needs torch")
pytest.importorskip("torchvision", reason="exporting a torchvision model needs torchvision")
pytest.importorskip("onnxruntime", reason="the reference logits come from onnxruntime")
pytest.importorskip("ai_edge_litert", reason="running the TFLite model needs ai-edge-litert")

from workers.inference.classifier import LiteRTClassifier, OnnxClassifier  # noqa: E402
from workers.inference.onnx_export import export  # noqa: E402
from workers.inference.tflite_export import ConvertError, convert  # noqa: E402

STEPS = 3  # rounding differs by a step here and there; a few steps at most reach the logits


def output_scale(onnx_path) -> float:
    """The quantization scale of the logits: the graph's output is DequantizeLinear's."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(onnx_path)).graph
    dq = next(n for n in g.node if n.output[0] == g.output[0].name)
    assert dq.op_type == "DequantizeLinear"
    scale = next(n for n in g.node if n.output[0] == dq.input[1])
    return float(numpy_helper.to_array(scale.attribute[0].t))


def fully_delegated(clf: LiteRTClassifier) -> bool:
    """One XNNPACK partition from the model's input to its output: no operator left to LiteRT's
    own kernels (those would split the graph, or sit outside at either end)."""
    it = clf.interpreter
    ops = [op for op in it._get_ops_details() if op["op_name"] == "DELEGATE"]
    return len(ops) == 1 and it.get_input_details()[0]["index"] in ops[0]["inputs"] and \
        it.get_output_details()[0]["index"] in ops[0]["outputs"]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large"])
def test_converted_model_matches_onnxruntime(tmp_path, name):
    onnx_path, tflite_path = tmp_path / f"{name}.onnx", tmp_path / f"{name}.tflite"
    export(name, "none", onnx_path)
    convert(onnx_path, tflite_path)
    ort, lite = OnnxClassifier(str(onnx_path), 1), LiteRTClassifier(str(tflite_path), 1)
    assert fully_delegated(lite)
    bound = STEPS * output_scale(onnx_path)
    rng = np.random.default_rng(0)
    for size in (224, 192, 224):
        for _ in range(2):
            x = rng.standard_normal((1, 3, size, size), dtype=np.float32)
            a, b = ort.logits(x), lite.logits(x)
            assert a.shape == b.shape == (1000,)
            assert np.abs(a - b).max() <= bound, size
            assert a[b.argmax()] >= a.max() - bound  # top-1 the same, up to near-ties


def qdq_model(path, op: str) -> None:
    """A 1x3xHxW classifier-shaped graph: quantize, dequantize, `op`, quantize, dequantize."""
    import onnx
    from onnx import TensorProto, helper

    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05])
    zp = helper.make_tensor("zp", TensorProto.INT8, [], [0])
    nodes = [helper.make_node("QuantizeLinear", ["input", "scale", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"]),
             helper.make_node(op, ["dq"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "scale", "zp"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "scale", "zp"], ["logits"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [scale, zp])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_unsupported_operator_is_named_in_one_line(tmp_path):
    qdq_model(tmp_path / "sin.onnx", "Sin")
    with pytest.raises(ConvertError) as e:
        convert(tmp_path / "sin.onnx", tmp_path / "sin.tflite")
    assert "Sin" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "sin.tflite").exists()
