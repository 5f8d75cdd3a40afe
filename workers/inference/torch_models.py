"""Building torchvision's quantized classifiers: engine choice, weights, TorchScript, warm-up.

Shared by the inference stage and the benchmarks, so both time exactly the same model.
"""

from __future__ import annotations

import logging
import platform
import time
import warnings

import torch
from torchvision.models import get_model, get_model_weights

from workers.inference.errors import ModelError

log = logging.getLogger("inference")


def choose_engine(requested: str, model_name: str) -> str:
    """The quantized engine: the config's choice, else qnnpack on Arm; on x86 the engine the
    model's pretrained weights were calibrated for (qnnpack for MobileNets, x86 for the rest)."""
    supported = torch.backends.quantized.supported_engines
    if requested != "auto":
        if requested not in supported:
            raise ModelError(f"model.engine: {requested} is not available in this torch build "
                             f"(available: {', '.join(e for e in supported if e != 'none')})")
        return requested
    arm = platform.machine().lower() in ("aarch64", "arm64") or platform.machine().startswith("arm")
    preferred = "qnnpack" if arm or model_name.startswith("mobilenet") else "x86"
    for engine in (preferred, "qnnpack", "x86", "fbgemm"):
        if engine in supported:
            return engine
    raise ModelError("this torch build has no quantized engine")


# Scripted, these return (logits, aux...) even in eval mode; eager, they return the logits.
TUPLE_OUTPUT = ("googlenet", "inception_v3")
# ...and say so on every forward pass: once per frame on stderr is noise, not news.
warnings.filterwarnings("ignore", message=r"Scripted Quantizable\w+ always returns")


class FirstOutput(torch.nn.Module):
    """The logits of a scripted model that returns a tuple, so every model returns a tensor."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def categories(model_name: str) -> list[str]:
    """ImageNet class names from torchvision's weights metadata (shipped with the package)."""
    return list(get_model_weights(f"quantized_{model_name}").DEFAULT.meta["categories"])


def load_torch_model(model_name: str, weights: str, engine: str = "auto", jit: bool = True,
                     threads: int | None = None, channels_last: bool = False) -> torch.nn.Module:
    """A quantized classifier in eval mode, scripted if `jit`, its weights in channels-last
    layout if asked; `weights` is a state-dict path, "DEFAULT" (torchvision's pretrained
    weights, downloaded once to torch's cache) or "none"."""
    if threads:
        torch.set_num_threads(threads)
    torch.backends.quantized.engine = choose_engine(engine, model_name)
    arch = f"quantized_{model_name}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation chatter about quantized tensors
        if weights == "DEFAULT":
            try:
                model = get_model(arch, weights="DEFAULT", quantize=True)
            except Exception as e:
                url = get_model_weights(arch).DEFAULT.url
                raise ModelError(
                    f"model.weights: cannot fetch torchvision's pretrained {model_name} "
                    f"({e.__class__.__name__}); "
                    f"download {url} where the network allows and give its path with "
                    f"--set model.weights=PATH") from None
        else:
            model = get_model(arch, weights=None, quantize=True)
            if weights == "none":
                log.warning("model.weights = \"none\": random weights, results are meaningless "
                            "(use for timing only)")
            else:
                try:
                    state = torch.load(weights, map_location="cpu", weights_only=True)
                    model.load_state_dict(state)
                except Exception as e:
                    first = str(e).strip().splitlines()[0][:200]
                    raise ModelError(f"model.weights: {weights} is not a state dict of quantized "
                                     f"{model_name}: {first}") from None
        model.eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if jit:
            model = torch.jit.script(model)
            if model_name in TUPLE_OUTPUT:
                model = FirstOutput(model)
    return model


def warm_up_torch_model(model: torch.nn.Module, size: int, iterations: int,
                        channels_last: bool = False) -> float:
    """Run a few frames so the first real one is not slow; returns the last run's ms."""
    x = torch.zeros(1, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ms = 0.0
    with torch.inference_mode():
        for _ in range(iterations):
            t = time.perf_counter()
            model(x)
            ms = (time.perf_counter() - t) * 1e3
    return ms

