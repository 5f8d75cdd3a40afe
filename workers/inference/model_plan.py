"""Which runtime runs the model, and from which file: decided once by the supervisor before any
stage starts, so every worker (and every restart) loads the same thing.

- `model.runtime = "torch"`: the state dict in torch (TorchScript, quantized engine).
- `"onnxruntime"`: an ONNX file: `model.weights` itself when it is one, the shipped export for the
  built-in weights, else an export of the state dict made once (in its own process, with torch)
  and cached by the weights' hash.
- `"litert"`: a TFLite file: `model.weights` itself, the shipped one for the built-in weights,
  else the ONNX file (as above) converted once, torch-free, and cached by its hash.
- `"auto"`: of the installed runtimes that can run the weights, the one measured fastest on this
  machine for this model, input size and thread count. The measurement runs once, in its own
  process pinned like the worker (so no worker keeps torch loaded for nothing), and is
  remembered in the user's cache directory under a key made of the machine, model, weights and
  library versions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.config.classes import imagenet_classes
from workers.inference.cache import cache_dir
from workers.inference.errors import ModelError
from workers.inference.model_files import BUILTIN_MODEL, builtin_onnx, builtin_tflite, builtin_weights
from workers.inference.model_meta import (
    ID_DIGITS,
    model_id,
    own_labels,
    read_labels_file,
    read_model,
)
from workers.inference.onnx_export import FORMAT, file_sha256
from workers.inference.tflite_export import FORMAT as TFLITE_FORMAT
from workers.normalize import IMAGENET_MEAN, IMAGENET_STD

RUNTIMES = ("torch", "onnxruntime", "litert")
MODULES = {"torch": ("torch", "torchvision"), "onnxruntime": ("onnxruntime",), "litert": ("ai_edge_litert",)}
# The model files each runtime takes (torch: a state dict only; LiteRT converts an ONNX file).
RUNS_FILES = {("onnxruntime", ".onnx"), ("litert", ".onnx"), ("litert", ".tflite")}
PROBE_TIMEOUT_S = 600.0  # the largest models, loaded and timed twice, on a slow board


@dataclass
class ModelPlan:
    runtime: str  # torch | onnxruntime | litert
    file: str  # the state dict (torch), the .onnx file (onnxruntime) or the .tflite file (litert)
    reason: str  # why this runtime, for the ready line
    measured_ms: dict[str, float] = field(default_factory=dict)  # auto: p50 ms per runtime
    # What results say of the model (filled by `describe`): its name, the short hash of its
    # file, and its class names (index i = class i).
    name: str = ""
    id: str = ""
    labels: list[str] = field(default_factory=list)
    resize: str = ""  # the preprocessing a trained model was trained with ("": not said)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ModelPlan":
        return cls(**json.loads(text))


def installed(runtime: str) -> bool:
    """Whether a runtime can be imported here (found without importing it)."""
    return all(importlib.util.find_spec(m) is not None for m in MODULES[runtime])


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def resolve_weights(model_name: str, weights: str) -> str:
    """model.weights with "builtin" replaced by the shipped state dict."""
    if weights != "builtin":
        return weights
    if model_name != BUILTIN_MODEL:
        raise ModelError(f"model.weights: the built-in weights are {BUILTIN_MODEL}'s; for "
                         f"{model_name} give a state-dict path, \"DEFAULT\" (torchvision's "
                         "download) or \"none\" (random, for timing)")
    return str(builtin_weights())


def weights_id(weights: str) -> str:
    """What identifies the weights in cache keys: the file's hash, or the special name (with the
    torchvision version for DEFAULT, whose download changes with it)."""
    if weights == "DEFAULT":
        return f"DEFAULT-torchvision-{version('torchvision')}"
    if weights == "none":
        return "none"
    return file_sha256(weights)


def machine_id() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "CPU part"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {cpu} ({os.cpu_count()} cores)"


def exported_file(model_name: str, weights: str) -> Path:
    """Where the export of these weights is cached."""
    return cache_dir() / "onnx" / f"{model_name}-{weights_id(weights)[:16]}-f{FORMAT}.onnx"


def plan_model(model_cfg: Any, input_size: int, cores: list[int], threads: int,
               say: Callable[[str], None]) -> ModelPlan:
    """Decide runtime and file for `model_cfg` (a ModelConfig), with the model's name, id and
    class names; raises ModelError in one line."""
    return describe(_choose(model_cfg, input_size, cores, threads, say), model_cfg)


def describe(plan: ModelPlan, model_cfg: Any) -> ModelPlan:
    """`plan` with what results say of its model: name, short id, class names. The names are
    `model.labels`'s (a file, one name per line) when given, else those in an ONNX file's
    metadata, else ImageNet's (1000 outputs; torch runs torchvision's ImageNet models), else
    "class i"."""
    try:
        plan.id = model_id(plan.file)
    except OSError:  # DEFAULT or none: torchvision's download, random weights
        plan.id = hashlib.sha256(plan.file.encode()).hexdigest()[:ID_DIGITS]
    given = read_labels_file(model_cfg.labels) if model_cfg.labels else None
    if plan.runtime == "torch":
        plan.name, plan.labels = model_cfg.name, list(imagenet_classes())
        if given is not None and len(given) != len(plan.labels):
            raise ModelError(f"model.labels: {model_cfg.labels} names {len(given)} classes, "
                             f"{model_cfg.name} has {len(plan.labels)}")
        plan.labels = given or plan.labels
        return plan
    meta, shape = read_model(plan.file)
    if shape is not None and len(shape) != 2:
        raise ModelError(f"model.weights: {plan.file} is not a classifier: its output is "
                         f"{' x '.join(str(d or '?') for d in shape)}, a classifier's is 1 x classes")
    classes = shape[-1] if shape else None
    for key, ours in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):  # what preprocessing does
        if key in meta and not _close(meta[key], ours):
            raise ModelError(f"model.weights: {plan.file} wants {key} {meta[key]}, the pipeline "
                             f"normalises with ImageNet's {list(ours)}")
    labels = given or own_labels(meta, classes)
    if classes is not None and len(labels) != classes:
        named = f"model.labels: {model_cfg.labels} names" if given else \
            f"model.weights: {plan.file}'s metadata names"
        raise ModelError(f"{named} {len(labels)} classes, the model has {classes} outputs")
    plan.labels = labels
    plan.name = meta.get("model") or Path(plan.file).stem
    plan.resize = meta.get("resize", "")
    return plan


def _close(text: str, ours: tuple[float, ...]) -> bool:
    try:
        theirs = json.loads(text)
        return len(theirs) == len(ours) and all(abs(a - b) < 1e-4 for a, b in zip(theirs, ours))
    except (ValueError, TypeError):
        return False


def _choose(model_cfg: Any, input_size: int, cores: list[int], threads: int,
            say: Callable[[str], None]) -> ModelPlan:
    name, runtime = model_cfg.name, model_cfg.runtime
    weights = resolve_weights(name, model_cfg.weights)
    have = {r: installed(r) for r in RUNTIMES}
    if runtime != "auto":
        _refuse_file(weights, runtime)
        if not have[runtime]:
            raise ModelError(_missing(runtime))
        return ModelPlan(runtime, str(file_for(runtime, name, weights, say)), "configured")
    files: dict[str, str] = {}
    why_not: list[str] = []
    suffix = Path(weights).suffix.lower()
    for r in RUNTIMES:  # every installed runtime that can run these weights
        if suffix in (".onnx", ".tflite") and (r, suffix) not in RUNS_FILES:
            continue  # a runtime for other files: not a candidate, nothing to say
        if not have[r]:
            why_not.append(f"{r} is not installed")
            continue
        try:
            files[r] = str(file_for(r, name, weights, say))
        except ModelError as e:
            why = str(e).split(" (")[0].removeprefix("model.weights: ").removeprefix("model.name: ")
            why_not += [why] if why not in why_not else []
    if not files:
        missing = [r for r in RUNTIMES if f"{r} is not installed" in why_not]
        if missing and len(missing) == len(why_not):
            raise ModelError(_missing(missing[-1]))
        raise ModelError(f"model.runtime: no installed runtime can run {weights}: "
                         + "; ".join(why_not))
    ms: dict[str, float] = {}
    if len(files) > 1:
        ms, failed = measured(model_cfg, weights, files, input_size, cores, threads, say)
        why_not += [f"{r} failed: {why}" for r, why in failed.items()]
        if not ms:
            raise ModelError(f"model.runtime: no runtime could run {weights}: " + "; ".join(why_not))
    if len(files) == 1 or len(ms) == 1:
        only = next(iter(ms or files))
        why = f" ({'; '.join(why_not)})" if why_not else ""
        return ModelPlan(only, files[only], f"auto: the only runtime here that runs it{why}", ms)
    best = min(ms, key=ms.get)
    others = sorted((r for r in ms if r != best), key=ms.get)
    reason = f"auto: {best} won, {ms[best]:.1f} ms a frame against " + \
        " and ".join(f"{r} {ms[r]:.1f} ms ({ms[r] / ms[best]:.2f}x)" for r in others) + ", measured here"
    return ModelPlan(best, files[best], reason + "".join(f"; {w}" for w in why_not), ms)


def _refuse_file(weights: str, runtime: str) -> None:
    """A model file that `runtime` cannot run, in one line."""
    lower = weights.lower()
    if lower.endswith(".tflite") and runtime != "litert":
        raise ModelError(f"model.weights: {weights} is a TFLite file, which only LiteRT runs; use "
                         "model.runtime = \"litert\" (or \"auto\")")
    if lower.endswith(".onnx") and runtime == "torch":
        raise ModelError(f"model.weights: {weights} is an ONNX file, which the torch runtime "
                         "cannot run; use model.runtime = \"onnxruntime\" or a state dict")


def file_for(runtime: str, model_name: str, weights: str, say: Callable[[str], None]) -> Path | str:
    """What `runtime` loads for these weights: the state dict, the ONNX file, the TFLite file."""
    if runtime == "torch":
        return weights
    if runtime == "onnxruntime":
        return onnx_for(model_name, weights, say)
    return tflite_for(model_name, weights, say)


def _missing(runtime: str) -> str:
    if runtime == "torch":
        return ("model.runtime: torch is not installed (pip install 'edge-pipeline[torch]'), or "
                "use model.runtime = \"onnxruntime\"")
    if runtime == "litert":
        return ("model.runtime: LiteRT is not installed (pip install ai-edge-litert; its wheels "
                "are for 64-bit Linux, macOS on Arm and Windows), or use model.runtime = "
                "\"onnxruntime\"")
    return ("model.runtime: onnxruntime is not installed (pip install onnxruntime), or use "
            "model.runtime = \"torch\"")


def tflite_for(model_name: str, weights: str, say: Callable[[str], None]) -> Path:
    """The TFLite file for these weights: given, shipped, or converted now from their ONNX file
    (torch-free, about a second) and cached by that file's hash."""
    if weights.lower().endswith(".tflite"):
        return Path(weights)
    if weights == str(builtin_weights()) and builtin_tflite().is_file():
        return builtin_tflite()
    onnx = onnx_for(model_name, weights, say)
    target = cache_dir() / "tflite" / f"{onnx.stem}-{file_sha256(onnx)[:16]}-f{TFLITE_FORMAT}.tflite"
    if target.is_file():
        return target
    from workers.inference.tflite_export import ConvertError, convert

    target.parent.mkdir(parents=True, exist_ok=True)
    say(f"converting {onnx.name} to TFLite for LiteRT (once; cached as {target}) ...")
    t0 = time.monotonic()
    try:
        convert(onnx, target)
    except ConvertError as e:
        raise ModelError(f"model.weights: {onnx.name} does not convert to TFLite ({e})") from None
    say(f"converted in {time.monotonic() - t0:.1f} s")
    return target


def onnx_for(model_name: str, weights: str, say: Callable[[str], None]) -> Path:
    """The ONNX file for these weights: given, shipped, cached, or exported now."""
    if weights.lower().endswith(".onnx"):
        return Path(weights)
    if weights == str(builtin_weights()) and builtin_onnx().is_file():
        return builtin_onnx()
    target = exported_file(model_name, weights)
    if target.is_file():
        return target
    failed = target.with_name(f"{target.stem}.torch-{version('torch')}.failed")
    if failed.is_file():  # this model did not export with this torch: do not try at every start
        raise ModelError(failed.read_text().strip())
    if not installed("torch"):
        raise ModelError(f"model.weights: {weights} must be exported to ONNX once, which needs "
                         "torch (pip install 'edge-pipeline[torch]' here, or run pipeline-export "
                         "on a machine with torch and give the .onnx file)")
    target.parent.mkdir(parents=True, exist_ok=True)
    say(f"exporting {model_name} to ONNX for onnxruntime (once; cached as {target}) ...")
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "pipeline.cli.export", "--model", model_name,
           "--weights", weights, "--out", str(target), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                          env=_child_env())
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        message = last.removeprefix("pipeline-export: ")
        if "does not export to ONNX" in message:
            failed.write_text(message + "\n")
        raise ModelError(message)
    say(f"exported in {time.monotonic() - t0:.1f} s")
    return target


def _child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])  # the folder holding pipeline/ and workers/
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def measured(model_cfg: Any, weights: str, files: dict[str, str], size: int, cores: list[int],
             threads: int, say: Callable[[str], None]) -> tuple[dict[str, float], dict[str, str]]:
    """(ms per frame (p50) of each runtime in `files` (runtime -> what it loads), why each other
    one failed): from the cache, else measured now in a probe process."""
    key = "|".join([machine_id(), f"cores={len(cores)}", f"threads={threads}", model_cfg.name,
                    weights_id(weights), f"size={size}", f"engine={model_cfg.engine}",
                    f"jit={model_cfg.jit}", f"channels_last={model_cfg.channels_last}",
                    f"torch={version('torch')}", f"torchvision={version('torchvision')}",
                    f"onnxruntime={version('onnxruntime')}", f"litert={version('ai-edge-litert')}",
                    f"format={FORMAT}", f"tflite_format={TFLITE_FORMAT}", f"runtimes={','.join(files)}"])
    path = cache_dir() / "runtimes.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]["ms"], known[key].get("failed", {})
    names = list(files)
    say(f"measuring {', '.join(names[:-1])} and {names[-1]} for {model_cfg.name} at {size}x{size}, "
        f"{threads} thread(s), to pick the fastest (once; remembered in {path}) ...")
    args = {"model": model_cfg.name, "files": files, "size": size, "cores": cores, "threads": threads,
            "engine": model_cfg.engine, "jit": model_cfg.jit, "channels_last": model_cfg.channels_last}
    proc = subprocess.run([sys.executable, "-m", "workers.inference.runtime_probe", json.dumps(args)],
                          capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=_child_env())
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise ModelError(f"model.runtime: measuring the runtimes failed: {err}; set "
                         f"model.runtime to one of {', '.join(map(repr, names))}")
    out = json.loads(lines[-1])
    ms, failed = out["ms"], out["failed"]
    say("measured: " + ", ".join([f"{r} {v:.1f} ms" for r, v in ms.items()] +
                                 [f"{r} failed ({why})" for r, why in failed.items()]))
    known[key] = {"ms": ms, "failed": failed, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".runtimes.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=1))
    os.replace(tmp, path)
    return ms, failed
