"""The model the package ships, so a pipeline runs offline out of the box (`model.weights =
"builtin"`, the default): torchvision's pretrained int8 MobileNetV2 (`IMAGENET1K_QNNPACK_V1`,
BSD-3-Clause, see LICENSE-torchvision) as a state dict for the torch runtime, its ONNX export
(`pipeline-export`) for onnxruntime, and that export converted to TFLite (`pipeline-export --weights
FILE.onnx --out FILE.tflite`) for LiteRT."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILTIN_MODEL = "mobilenet_v2"


def builtin_weights() -> Path:
    return HERE / "mobilenet_v2_qnnpack_imagenet1k.pth"


def builtin_onnx() -> Path:
    return HERE / "mobilenet_v2_qnnpack_imagenet1k.onnx"


def builtin_tflite() -> Path:
    return HERE / "mobilenet_v2_qnnpack_imagenet1k.tflite"
