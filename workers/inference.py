"""Inference stage (one or several workers): takes the newest model input of the next source
(see pipeline/workqueue.py), copies it out of the tensors ring, classifies it, and publishes the
result into the supervisor's results hub.

The input is copied (15 us) into a private tensor before the model runs, so the slot is free again
at once and the sequence-lock check covers the whole read.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import zmq

from pipeline.messages import FRAME_FIELDS, SCHEMA, TENSOR_FIELDS, pack
from pipeline.runtime import RESULTS_IN
from pipeline.stage import StageContext
from pipeline.stats import StageMeter
from pipeline.transport import EdgeReader
from pipeline.workqueue import SharedCounter, WorkQueue

from .models import categories, load_classifier, warm_up
from .preprocess import Preprocessor


class ModelInputs:
    """Private model input tensors, one per input size (adaptive resolution changes it), filled
    from the ring: float32 copied as is, uint8 RGB normalised on the way in."""

    MAX_SIZES = 8

    def __init__(self, channels_last: bool):
        self.channels_last = channels_last
        self.norm = Preprocessor()
        self.tensors: dict[tuple[int, ...], tuple[torch.Tensor, np.ndarray]] = {}

    def load(self, src: np.ndarray) -> torch.Tensor | None:
        """The model input for one ring payload; None for a shape that is not 3xNxN."""
        entry = self.tensors.get(src.shape)
        if entry is None:
            if len(src.shape) != 3 or src.shape[0] != 3 or src.shape[1] != src.shape[2]:
                return None
            if len(self.tensors) >= self.MAX_SIZES:
                self.tensors.clear()
            x = torch.zeros(1, *src.shape)
            if self.channels_last:  # a strided numpy view fills it in place all the same
                x = x.contiguous(memory_format=torch.channels_last)
            entry = self.tensors[src.shape] = (x, x.numpy()[0])
        x, x_np = entry
        if src.dtype == np.uint8:
            self.norm.normalize_chw(src, x_np)
        else:
            np.copyto(x_np, src)
        return x


def run(ctx: StageContext) -> None:
    cfg, model_cfg = ctx.config.inference, ctx.config.model
    pub = ctx.zmq.socket(zmq.PUB)  # into the supervisor's results hub, which subscribers read
    pub.setsockopt(zmq.LINGER, 1000)
    pub.setsockopt(zmq.SNDHWM, 1000)  # the hub is local and fast; its subscribers have their HWM
    pub.connect(ctx.run.endpoint(RESULTS_IN))
    threads = cfg.threads or len(ctx.cores)
    torch.set_num_threads(threads)
    model = load_classifier(model_cfg.name, model_cfg.weights, model_cfg.engine, model_cfg.jit,
                            channels_last=model_cfg.channels_last)
    labels = categories(model_cfg.name)
    size = ctx.config.preprocess.crop_size
    warm_ms = warm_up(model, size, model_cfg.warmup, model_cfg.channels_last)

    policy, sole = ctx.config.edges.tensors.policy, cfg.workers == 1
    edges = [ctx.edge("tensors", i) for i in range(len(ctx.config.source_list))]
    readers = [EdgeReader(ctx.zmq, endpoint, ring, policy, required=FRAME_FIELDS + TENSOR_FIELDS,
                          fanout=True, sole=sole) for endpoint, ring in edges]
    work = WorkQueue(readers)
    result_seq = SharedCounter(str(ctx.run.dir / "result_seq"))
    inputs = ModelInputs(model_cfg.channels_last)
    k = min(model_cfg.top_k, len(labels))
    meter = StageMeter()
    delay_s = cfg.delay_ms / 1000
    pipeline, model_name = ctx.config.name, model_cfg.name
    names = [ctx.config.edge_name("tensors", i) for i in range(len(readers))]
    ended = False

    def stats() -> dict[str, Any]:
        return {**meter.snapshot(), "threads": torch.get_num_threads(),
                "drops": {n: dict(r.drops) for n, r in zip(names, readers)},
                "in_use": {n: r.in_use for n, r in zip(names, readers)}}

    ctx.stats_source = stats
    if not ctx.ready(model=model_name, engine=torch.backends.quantized.engine, threads=threads,
                     warmup_ms=round(warm_ms, 2)):
        work.close()
        pub.close()
        result_seq.close()
        return
    try:
        with torch.inference_mode():
            while ctx.alive():
                desc = work.take(timeout_ms=100)
                if desc is None:
                    if work.ended and not ended:  # every source has ended: tell the supervisor
                        ended = True
                        ctx.send("eos")
                    continue
                inp = work.current
                t0 = time.monotonic_ns()
                meter.took(inp.depth)
                if delay_s and meter.frames_in % cfg.delay_every == 0:
                    time.sleep(delay_s)  # inference.delay_ms: a deliberately slow stage
                x = inputs.load(inp.frame(desc))
                if not inp.intact(desc):
                    inp.release()
                    continue
                inp.release()
                if x is None:
                    continue
                probs = torch.softmax(model(x)[0], 0)
                top = torch.topk(probs, k)
                t1 = time.monotonic_ns()
                idx = top.indices.tolist()
                p = top.values.tolist()
                result = {
                    "schema": SCHEMA, "type": "result", "pipeline": pipeline,
                    "result_seq": result_seq.next(), "worker": ctx.stage,
                    "source": desc["src"], "seq": desc["seq"], "frame": desc.get("frame"),
                    "frame_slot": desc["fslot"], "frame_shape": desc["fshape"],
                    "captured_at": desc["t_wall"],
                    "t": {"capture_start": desc["t_read"], "capture": desc["t_cap"],
                          "preprocess_start": desc["t_pre0"],
                          "preprocess_end": desc["t_pre1"], "inference_start": t0,
                          "inference_end": t1},
                    "queue": {"preprocess": desc.get("q_pre", 0), "inference": inp.depth},
                    "latency_ms": round((t1 - desc["t_cap"]) / 1e6, 3),
                    "model": model_name, "input_size": x.shape[-1],
                    "top": [{"index": i, "label": labels[i], "prob": round(q, 5)}
                            for i, q in zip(idx, p)],
                }
                if "item" in desc:
                    result["item"] = desc["item"]
                pub.send(pack(result))
                meter.done((t1 - t0) / 1e6)
    finally:
        work.close()
        pub.close()
        result_seq.close()
