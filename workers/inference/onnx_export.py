"""Export a quantized torchvision classifier to ONNX for the onnxruntime runtime.

The eager int8 model is traced by `torch.onnx.export(..., opset_version=13, dynamo=False)` into a
QDQ graph (QuantizeLinear/DequantizeLinear around integer weights) that onnxruntime runs with its
own int8 kernels, several times faster than torch's quantized ops on the same weights. The input's
height and width stay dynamic, so adaptive resolution works as with torch.

The graph is then made S8S8 (workers/inference/qdq_format.py): int8 activations instead of
torch's uint8 ones and weights in [-127, 127], the format with onnxruntime's fast kernels on Arm.

The file carries what a worker needs without torch or torchvision (`metadata`): class names,
input size, resize size, normalisation, the model's name and the hash of the weights it came from.
Needs torch, torchvision and onnx (`pip install 'edge-pipeline[torch]'`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from pipeline.errors import UserError
from workers.inference.qdq_format import clamp_weights, set_activation_type

FORMAT = "2"  # bump when the exported graph or its metadata change meaning (2: S8S8)
OPSET = 13


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_sizes(model_name: str) -> tuple[int, int]:
    """(crop_size, resize_size) of the model's eval transform."""
    return (299, 342) if model_name == "inception_v3" else (224, 256)


class ExportError(UserError):
    """A model that does not export."""


def export(model_name: str, weights: str, out: str | os.PathLike, engine: str = "auto",
           weights_id: str | None = None) -> dict[str, str]:
    """Write `out` (atomically) and return the metadata stored in it."""
    import onnx
    import torch

    from workers.inference.torch_models import categories, load_torch_model
    from workers.normalize import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)  # "none" (random weights) exports the same file every time
    model = load_torch_model(model_name, weights, engine, jit=False)
    crop, resize = input_sizes(model_name)
    x = torch.zeros(1, 3, crop, crop)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, x, str(tmp), opset_version=OPSET, dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {2: "height", 3: "width"}})
    except Exception as e:
        tmp.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ExportError(f"model.name: {model_name} does not export to ONNX ({first}); "
                          f"use model.runtime = \"torch\"") from None
    import torchvision

    meta = {
        "edge_pipeline.format": FORMAT,
        "model": model_name,
        "categories": json.dumps(categories(model_name)),
        "input_size": str(crop),
        "resize_size": str(resize),
        "mean": json.dumps(IMAGENET_MEAN),
        "std": json.dumps(IMAGENET_STD),
        "input": "1x3xHxW float32, RGB, normalised: (x / 255 - mean) / std",
        "weights": weights_id or (file_sha256(weights) if os.path.isfile(weights) else weights),
        "quantized_engine": torch.backends.quantized.engine,
        "exported_with": f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
                         f"onnx {onnx.__version__}, opset {OPSET}",
    }
    proto = onnx.load(str(tmp))
    clamp_weights(proto)
    set_activation_type(proto, "int8")
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.doc_string = f"int8 {model_name} (torchvision quantized), exported by edge-pipeline"
    onnx.save(proto, str(tmp))
    os.replace(tmp, out)
    return meta

