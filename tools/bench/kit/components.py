"""Child process of `tools.bench.pipeline --cost`: what each piece of the per-frame path costs on its own,
single-threaded on one core, as CPU and wall time per frame (the median of several rounds).

    python -m tools.bench.kit.components JSON-ARGS   -> one JSON line

Pieces: decoding the video (the capture stage's own source), preprocessing (today's, and the
OpenCV area resize it replaced, kept here as the reference), the model in onnxruntime (1
thread), packing and unpacking the frame and tensor descriptors, the worker's result (built and
packed) and the results hub's share of it (unpacked, checked, stamped, packed again), one hop
between two processes (a descriptor over ZeroMQ ipc with the receiver asleep in poll, as a
stage waits: the wake-up is the cost), and a stage's stats message (once a second: per frame at
30 fps), with the per-frame bookkeeping behind it.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any, Callable

ROUNDS = 5
HOP_MESSAGES = 150
HOP_RATE = 100.0  # messages per second: every one finds its receiver asleep


def measure(fn: Callable[[], Any], n: int) -> dict[str, float]:
    """CPU (the whole process: a decoder may use threads) and wall microseconds per call: the
    median of ROUNDS rounds of n calls."""
    for _ in range(max(3, n // 10)):
        fn()
    cpu, wall = [], []
    for _ in range(ROUNDS):
        c0, w0 = time.process_time_ns(), time.perf_counter_ns()
        for _ in range(n):
            fn()
        cpu.append((time.process_time_ns() - c0) / n / 1e3)
        wall.append((time.perf_counter_ns() - w0) / n / 1e3)
    return {"cpu_us": round(statistics.median(cpu), 1), "wall_us": round(statistics.median(wall), 1)}


def area_resize_before(frame: Any, out: Any, prep: Any) -> None:
    """The preprocessing the pipeline used before: OpenCV's area resize of the part of the frame
    the crop needs (the same pixels as resizing all of it), then the same normalisation."""
    import cv2

    h, w = frame.shape[:2]
    rh, rw, top, left = prep.geometry(h, w)
    s = prep.crop_size

    def window(src: int, dst: int, start: int) -> tuple[int, int, int, int]:
        g = math.gcd(src, dst)
        po, pi = dst // g, src // g
        o0, o1 = start // po * po, min(dst, -(-(start + s) // po) * po)
        return (0, dst, 0, src) if o1 - o0 >= dst else (o0, o1, o0 // po * pi, o1 // po * pi)

    y0, y1, sy0, sy1 = window(h, rh, top)
    x0, x1, sx0, sx1 = window(w, rw, left)
    resized = cv2.resize(frame[sy0:sy1, sx0:sx1], (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    prep.normalize(resized[top - y0:top - y0 + s, left - x0:left - x0 + s], out)


def _hop_receiver(endpoint: str, core: int, ready: Any, result: Any) -> None:
    import zmq

    from pipeline.transport.messages import unpack

    os.sched_setaffinity(0, {core})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.connect(endpoint)
    ready.set()
    cpu0 = None
    got = 0
    while got < HOP_MESSAGES:
        if sock.poll(2000):
            if cpu0 is None:
                cpu0 = time.process_time_ns()  # the process's, its ZeroMQ thread included
            unpack(sock.recv())
            got += 1
    result.put((time.process_time_ns() - cpu0) / (HOP_MESSAGES - 1) / 1e3)
    sock.close(0)
    ctx.term()


def hop(core: int, desc: dict[str, Any]) -> dict[str, float]:
    """A descriptor from one process to another over ipc, the receiver waiting in poll: the
    sender's pack and send, plus the receiver's whole process CPU per message."""
    import zmq

    from pipeline.transport.messages import pack

    endpoint = f"ipc:///tmp/bench-hop-{os.getpid()}"
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.bind(endpoint)
    ready, result = mp.Event(), mp.Queue()
    proc = mp.Process(target=_hop_receiver, args=(endpoint, core, ready, result))
    proc.start()
    ready.wait(10)
    time.sleep(0.2)
    send_cpu = 0
    for _ in range(HOP_MESSAGES):
        t = time.process_time_ns()
        sock.send(pack(desc))
        send_cpu += time.process_time_ns() - t
        time.sleep(1 / HOP_RATE)
    receive_us = result.get(timeout=30)
    proc.join(10)
    sock.close(0)
    ctx.term()
    os.unlink(endpoint[len("ipc://"):])
    send_us = send_cpu / HOP_MESSAGES / 1e3
    return {"cpu_us": round(send_us + receive_us, 1), "send_us": round(send_us, 1),
            "receive_us": round(receive_us, 1)}


def main(args: dict[str, Any]) -> dict[str, Any]:
    core = args["core"]
    os.sched_setaffinity(0, {core})
    import cv2
    import numpy as np

    from pipeline.config.schema import VideoSource
    from pipeline.observe.stats import StageMeter
    from pipeline.transport.messages import SCHEMA, pack, result_problem, unpack
    from workers.capture.sources import open_source
    from workers.inference.classifier import OnnxClassifier, top_k
    from workers.preprocess.transform import Preprocessor

    cv2.setNumThreads(1)
    out: dict[str, Any] = {}
    source = open_source(VideoSource(kind="video", path=args["video"], loop=True, realtime=False))
    frame = np.empty(source.max_frame_bytes, np.uint8)
    shape: list[Any] = []

    def buffer_for(s: tuple[int, int, int]) -> Any:
        shape[:] = [s]
        return frame[: s[0] * s[1] * s[2]].reshape(s)

    out["decode"] = measure(lambda: source.read(buffer_for), 100)
    image = frame[: math.prod(shape[0])].reshape(shape[0]).copy()
    out["frame_shape"] = list(image.shape)
    source.close()
    prep = Preprocessor()
    x = np.empty((1, *prep.output_shape), np.float32)
    out["preprocess"] = measure(lambda: prep(image, x[0]), 200)
    out["preprocess_before"] = measure(lambda: area_resize_before(image, x[0], prep), 200)
    model = OnnxClassifier(args["onnx"], 1)
    out["model"] = measure(lambda: model.logits(x), 60)
    if args.get("work_only"):  # decode, preprocess, model: the 2-core limit's terms
        return out
    t = {"capture_start": time.monotonic_ns(), "capture": time.monotonic_ns()}
    frame_desc = {"source": "video", "seq": 1234, "slot": 2, "shape": list(image.shape),
                  "dtype": "uint8", "frame": 1234, "captured_at": time.time(), "t": t}
    tensor_desc = {**frame_desc, "frame_slot": 2, "frame_shape": list(image.shape),
                   "shape": [3, 224, 224], "dtype": "float32", "queue": {"preprocess": 0},
                   "t": {**t, "preprocess_start": 1, "preprocess_end": 2}}
    out["descriptors"] = measure(lambda: (unpack(pack(frame_desc)), unpack(pack(tensor_desc))), 2000)
    logits = model.logits(x)
    labels = model.labels

    def result() -> bytes:
        idx, p = top_k(logits, 5)
        r = {"schema": SCHEMA, "type": "result", "pipeline": "video", "result_seq": 1,
             "worker": "inference", "source": "video", "seq": 1234, "frame": 1234,
             "frame_slot": 2, "frame_shape": list(image.shape), "captured_at": time.time(),
             "t": {**tensor_desc["t"], "inference_start": 3, "inference_end": 4},
             "queue": {"preprocess": 0, "inference": 0}, "latency_ms": 5.0, "model": "m",
             "model_id": "0123456789ab", "runtime": "onnxruntime", "input_size": 224,
             "top": [{"index": i, "label": labels[i], "prob": round(q, 5)} for i, q in zip(idx, p)]}
        return pack(r)

    out["result"] = measure(result, 2000)
    raw = result()

    def hub() -> bytes:
        msg = unpack(raw)
        result_problem(msg)
        msg["dropped"] = 0
        msg["t"]["published"] = time.monotonic_ns()
        return pack(msg)

    out["hub"] = measure(hub, 2000)
    out["hop"] = hop(core, tensor_desc)
    stats = {"frames_in": 100, "frames_out": 100, "service_ms": {"p50": 1.0, "p99": 2.0},
             "queue": {"p50": 0, "max": 1}, "drops": {"frames": {"latest": 0, "torn": 0}},
             "in_use": {"frames": 1}, "threads": 1, "source": "video", "interval_ms": {}}
    meter = StageMeter()
    per_frame = measure(lambda: (meter.took(0), meter.done(1.0)), 2000)
    per_second = measure(lambda: (meter.snapshot(), pack(stats)), 200)
    out["stats"] = {k: round(per_frame[k] + per_second[k] / 30, 2) for k in per_frame}  # at 30 fps
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
