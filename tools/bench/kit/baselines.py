"""The three baselines our pipeline is judged against, each run in its own pinned process.

- model: the model alone in a loop on the inference cores, one fixed input (the ceiling);
- tutorial: the single loop of PyTorch's "Real Time Inference on Raspberry Pi 4" tutorial, as the
  tutorial writes it (default torch threads, BGR->RGB by fancy indexing, ToTensor + Normalize),
  plus the resize to 224 that a 640x360 file needs where the tutorial's camera gave 224x224;
- mpqueue: what most people write first: capture, preprocess and inference processes joined by
  multiprocessing.Queue(maxsize=4), frames pickled through them, nothing pinned.

model and tutorial run the scripted quantized torch model, or with `"runtime": "onnxruntime"` the
ONNX file `"onnx"` in an onnxruntime session with `"threads"` threads, or with `"runtime":
"litert"` the TFLite file `"tflite"` in LiteRT's interpreter (XNNPACK) with as many threads (the
model-alone run then never imports torch; the tutorial keeps its torchvision preprocessing, on as
many torch threads, and hands the session the tensor as numpy).

Run as `python -m tools.bench.kit.baselines KIND JSON-ARGS`; prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import nullcontext
from typing import Any

from tools.bench.kit.common import MEAN, STD, LiveVideo, cpu_seconds, rss_mb, spread

WARMUP_S = 2.0  # results in the first seconds of every run are not counted


class Collector:
    """Per-frame timings of one run, summarised the same way for every baseline."""

    def __init__(self, stale_ms: float = 0.0) -> None:
        self.stale_ms = stale_ms  # frames older than this at model start are counted stale
        self.latency: list[float] = []
        self.age: list[float] = []
        self.model: list[float] = []
        self.interval: list[float] = []
        self.last_read = 0
        self.count = 0
        self.t0 = 0.0
        self.t1 = 0.0

    def read_at(self, t_read_end: int, counting: bool) -> None:
        if counting and self.last_read:
            self.interval.append((t_read_end - self.last_read) / 1e6)
        self.last_read = t_read_end

    def frame(self, arrival: int, start: int, end: int) -> None:
        self.count += 1
        self.latency.append((end - arrival) / 1e6)
        self.age.append((start - arrival) / 1e6)
        self.model.append((end - start) / 1e6)

    def summary(self, cpu_s: float, rss: float, **extra: Any) -> dict[str, Any]:
        wall = self.t1 - self.t0
        return {"stale": sum(a > self.stale_ms for a in self.age) if self.stale_ms else 0,
                "fps": round(self.count / wall, 2) if wall > 0 else 0.0, "frames": self.count,
                "latency_ms": spread(self.latency), "age_ms": spread(self.age),
                "model_ms": spread(self.model), "capture_interval_ms": spread(self.interval),
                "cpu_pct": round(100 * cpu_s / wall, 1) if wall > 0 else 0.0, "rss_mb": rss,
                **extra}


def pin(cores: list[int]) -> None:
    os.sched_setaffinity(0, set(cores))  # before torch starts any thread


def load(args: dict[str, Any]) -> Any:
    import torch

    from workers.inference.torch_models import load_torch_model, warm_up_torch_model

    if args.get("threads"):
        torch.set_num_threads(args["threads"])
    model = load_torch_model(args["model"], args["weights"], args.get("engine", "auto"),
                             jit=args.get("jit", True))
    warm_up_torch_model(model, args.get("size", 224), 20)
    return model


def load_net(args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The run's model as a callable on one 1x3xSxS input (a torch tensor; a float32 numpy array
    for onnxruntime and LiteRT), and what runs it."""
    if args.get("runtime") in ("onnxruntime", "litert"):
        from workers.inference.classifier import LiteRTClassifier, OnnxClassifier, warm_up_classifier

        clf = OnnxClassifier(args["onnx"], args["threads"]) if args["runtime"] == "onnxruntime" \
            else LiteRTClassifier(args["tflite"], args["threads"])
        warm_up_classifier(clf, args.get("size", 224), 20)
        return clf.logits, {"runtime": clf.runtime, "threads": clf.threads, "engine": clf.engine}
    import torch

    model = load(args)
    return model, {"runtime": "torch", "threads": torch.get_num_threads(),
                   "engine": torch.backends.quantized.engine}


def model_only(args: dict[str, Any]) -> dict[str, Any]:
    pin(args["cores"])
    import numpy as np

    net, info = load_net(args)
    size = args.get("size", 224)
    x, grad = np.random.rand(1, 3, size, size).astype(np.float32), nullcontext()
    if info["runtime"] == "torch":
        import torch

        x, grad = torch.from_numpy(x), torch.inference_mode()
    c = Collector(args.get("stale_ms", 0.0))
    deadline = time.monotonic() + args["duration"]
    period = 1.0 / args["fps"] if args.get("fps") else 0.0  # paced: idle between frames, as at 30 fps
    with grad:
        c.t0, cpu0 = time.monotonic(), time.process_time()
        while time.monotonic() < deadline:
            t = time.monotonic_ns()
            net(x)
            c.frame(t, t, time.monotonic_ns())
            if period:
                time.sleep(max(0.0, period - (time.monotonic_ns() - t) / 1e9))
        c.t1, cpu = time.monotonic(), time.process_time() - cpu0
    return c.summary(cpu, rss_mb([os.getpid()]), **info)


def tutorial(args: dict[str, Any]) -> dict[str, Any]:
    pin(args["cores"])
    import cv2
    import torch
    from torchvision import transforms

    torch.backends.quantized.engine = "qnnpack"  # as the tutorial sets it
    if args.get("threads"):  # the loop's threads, preprocessing included; else torch's default
        torch.set_num_threads(args["threads"])
    net, info = load_net({**args, "engine": "qnnpack"})
    numpy_input = info["runtime"] != "torch"
    preprocess = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    cap = LiveVideo(args["video"], args.get("fps", 0.0), stall_ms=args.get("stall_ms", 0.0),
                    stall_every_s=args.get("stall_every_s", 0.0))
    extra_s, every = args.get("extra_ms", 0.0) / 1000, args.get("extra_every", 0)
    size = args.get("size", 224)
    c = Collector(args.get("stale_ms", 0.0))
    warmup = args.get("warmup", WARMUP_S)
    started = time.monotonic()
    counting = False
    n = 0
    with torch.no_grad():
        while True:
            now = time.monotonic()
            if not counting and now - started >= warmup:
                counting, c.t0, cpu0 = True, now, time.process_time()
            if now - started >= warmup + args["duration"]:
                break
            image, arrival = cap.read()
            c.read_at(time.monotonic_ns(), counting)
            image = image[:, :, [2, 1, 0]]  # BGR -> RGB, as the tutorial does
            image = cv2.resize(image, (size, size))
            input_tensor = preprocess(image)
            input_batch = input_tensor.unsqueeze(0)
            if numpy_input:
                input_batch = input_batch.numpy()  # a view: the session takes numpy
            t_start = time.monotonic_ns()
            output = net(input_batch)  # noqa: F841 - the tutorial then prints the top classes
            n += 1
            if every and n % every == 0:
                time.sleep(extra_s)  # the model's occasional slow frame
            if counting:
                c.frame(arrival, t_start, time.monotonic_ns())
    c.t1 = time.monotonic()
    cpu = time.process_time() - cpu0
    cap.release()
    return c.summary(cpu, rss_mb([os.getpid()]), **info, camera_lost=cap.lost)


# ------------------------------------------------------------- the multiprocessing.Queue pipeline

def _mp_capture(args: dict[str, Any], frames: Any, stop: Any) -> None:
    cap = LiveVideo(args["video"], args.get("fps", 0.0), stall_ms=args.get("stall_ms", 0.0),
                    stall_every_s=args.get("stall_every_s", 0.0))
    while not stop.is_set():
        frame, arrival = cap.read()
        frames.put((frame, arrival, time.monotonic_ns()))  # blocks while the queue is full


def _mp_preprocess(size: int, frames: Any, tensors: Any, stop: Any) -> None:
    import cv2
    from torchvision import transforms

    preprocess = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    while not stop.is_set():
        frame, arrival, t_read = frames.get()
        image = cv2.resize(frame[:, :, [2, 1, 0]], (size, size))
        tensors.put((preprocess(image).numpy(), arrival, t_read))


def _mp_inference(args: dict[str, Any], tensors: Any, results: Any, stop: Any) -> None:
    import torch

    torch.backends.quantized.engine = "qnnpack"
    net = load({**args, "engine": "qnnpack", "threads": None})
    results.put(("ready", 0, 0, 0))
    extra_s, every = args.get("extra_ms", 0.0) / 1000, args.get("extra_every", 0)
    n = 0
    with torch.no_grad():
        while not stop.is_set():
            x, arrival, t_read = tensors.get()
            start = time.monotonic_ns()
            net(torch.from_numpy(x).unsqueeze(0))
            n += 1
            if every and n % every == 0:
                time.sleep(extra_s)
            results.put(("result", arrival, start, time.monotonic_ns()))


def mpqueue(args: dict[str, Any]) -> dict[str, Any]:
    import multiprocessing as mp

    pin(args["cores"])
    frames, tensors, results = mp.Queue(maxsize=4), mp.Queue(maxsize=4), mp.Queue()
    stop = mp.Event()
    procs = [mp.Process(target=_mp_inference, args=(args, tensors, results, stop), daemon=True),
             mp.Process(target=_mp_preprocess, args=(args.get("size", 224), frames, tensors, stop),
                        daemon=True),
             mp.Process(target=_mp_capture, args=(args, frames, stop), daemon=True)]
    procs[0].start()
    results.get()  # the model is loaded: start the camera
    for p in procs[1:]:
        p.start()
    pids = [p.pid for p in procs]
    c = Collector(args.get("stale_ms", 0.0))
    results.get()  # counting starts at the first result: the others' start-up is not held against it
    warmup = args.get("warmup", WARMUP_S)
    started = time.monotonic()
    counting = False
    while True:
        now = time.monotonic()
        if not counting and now - started >= warmup:
            counting, c.t0, cpu0 = True, now, cpu_seconds(pids)
        if now - started >= warmup + args["duration"]:
            break
        _, arrival, start, end = results.get()
        if counting:
            c.frame(arrival, start, end)
    c.t1 = time.monotonic()
    cpu, rss = cpu_seconds(pids) - cpu0, rss_mb(pids)
    stop.set()
    for p in procs:
        p.terminate()
        p.join(5)
    return c.summary(cpu, rss)


KINDS = {"model": model_only, "tutorial": tutorial, "mpqueue": mpqueue}

if __name__ == "__main__":
    print(json.dumps(KINDS[sys.argv[1]](json.loads(sys.argv[2]))), flush=True)
