"""Inference stage (one or several workers): takes the newest model input of the next source
(see pipeline/workqueue.py), copies it out of the tensors ring, classifies it, and publishes the
result into the supervisor's results hub.

The input is copied (15 us) into a private array before the model runs, so the slot is free again
at once and the sequence-lock check covers the whole read. The model runs in the runtime the
supervisor planned (workers/model_plan.py); softmax and top-k are numpy for both.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import zmq

from pipeline.credits import CreditSender
from pipeline.messages import FRAME_FIELDS, SCHEMA, TENSOR_FIELDS, pack
from pipeline.runtime import RESULTS_IN
from pipeline.stage import StageContext
from pipeline.stats import StageMeter
from pipeline.transport import EdgeReader
from pipeline.workqueue import SharedCounter, WorkQueue

from .classifier import Classifier, ModelError, OnnxClassifier, TorchClassifier, top_k, warm_up
from .model_plan import ModelPlan
from .normalize import Normalizer


class ModelInputs:
    """Private model inputs, one per input size (adaptive resolution changes it), filled from the
    ring: float32 copied as is, uint8 RGB normalised on the way in."""

    MAX_SIZES = 8

    def __init__(self) -> None:
        self.norm = Normalizer()
        self.arrays: dict[tuple[int, ...], np.ndarray] = {}

    def load(self, src: np.ndarray) -> np.ndarray | None:
        """The 1x3xNxN model input for one ring payload; None for a shape that is not 3xNxN."""
        x = self.arrays.get(src.shape)
        if x is None:
            if len(src.shape) != 3 or src.shape[0] != 3 or src.shape[1] != src.shape[2]:
                return None
            if len(self.arrays) >= self.MAX_SIZES:
                self.arrays.clear()
            x = self.arrays[src.shape] = np.zeros((1, *src.shape), np.float32)
        if src.dtype == np.uint8:
            self.norm.normalize_chw(src, x[0])
        else:
            np.copyto(x[0], src)
        return x


def load_classifier(plan: ModelPlan, ctx: StageContext, threads: int) -> Classifier:
    """The planned runtime only: an onnxruntime worker never imports torch."""
    model_cfg = ctx.config.model
    if plan.runtime == "onnxruntime":
        clf = OnnxClassifier(plan.file, threads, ctx.config.inference.spinning)
        size = ctx.config.preprocess.crop_size
        if clf.fixed_size is not None and clf.fixed_size != size:
            raise ModelError(f"model.weights: {plan.file} takes {clf.fixed_size}x{clf.fixed_size} "
                             f"input, preprocess.crop_size is {size}")
        return clf
    return TorchClassifier(model_cfg.name, plan.file, model_cfg.engine, model_cfg.jit, threads,
                           model_cfg.channels_last)


def run(ctx: StageContext) -> None:
    cfg, model_cfg = ctx.config.inference, ctx.config.model
    pub = ctx.zmq.socket(zmq.PUB)  # into the supervisor's results hub, which subscribers read
    pub.setsockopt(zmq.LINGER, 1000)
    pub.setsockopt(zmq.SNDHWM, 1000)  # the hub is local and fast; its subscribers have their HWM
    pub.connect(ctx.run.endpoint(RESULTS_IN))
    # Subscribed before the model loads, so preprocess (waiting for every worker) is ready soon.
    sole, n_sources = cfg.workers == 1, len(ctx.config.source_list)
    readers = []
    for i in range(n_sources):
        endpoint, ring = ctx.edge("tensors", i)
        readers.append(EdgeReader(ctx.zmq, endpoint, ring, ctx.config.policy("tensors", i),
                                  required=FRAME_FIELDS + TENSOR_FIELDS, fanout=True, sole=sole))
    threads = cfg.threads or len(ctx.cores)
    plan = ModelPlan.from_json(ctx.run.model_plan_file.read_text())
    model = load_classifier(plan, ctx, threads)
    labels = model.labels
    size = ctx.config.preprocess.crop_size
    warm_ms = warm_up(model, size, model_cfg.warmup)
    source_of = {r: i for i, r in enumerate(readers)}
    # Sources read on demand get a credit each time this worker takes one of their frames.
    credits = CreditSender(ctx.zmq, {i: ctx.edge("credits", i)[0] for i in range(n_sources)
                                     if ctx.config.pulled(i)})
    work = WorkQueue(readers)
    result_seq = SharedCounter(str(ctx.run.dir / "result_seq"))
    inputs = ModelInputs()
    k = min(model_cfg.top_k, len(labels))
    meter = StageMeter()
    delay_s = cfg.delay_ms / 1000
    pipeline, model_name, runtime = ctx.config.name, model_cfg.name, model.runtime
    names = [ctx.config.edge_name("tensors", i) for i in range(len(readers))]
    ended = False

    def stats() -> dict[str, Any]:
        return {**meter.snapshot(), "threads": model.threads, "runtime": model.runtime,
                "drops": {n: dict(r.drops) for n, r in zip(names, readers)},
                "in_use": {n: r.in_use for n, r in zip(names, readers)}}

    ctx.stats_source = stats
    if not ctx.ready(model=model_name, runtime=model.runtime, engine=model.engine,
                     threads=model.threads, warmup_ms=round(warm_ms, 2), plan=plan.reason):
        work.close()
        credits.close()
        pub.close()
        result_seq.close()
        return
    try:
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
            intact = inp.intact(desc)
            inp.release()
            credits.took(source_of[inp], desc["t_read"], desc["t_pre1"], time.monotonic_ns())
            if not intact or x is None:
                continue
            idx, p = top_k(model.logits(x), k)
            t1 = time.monotonic_ns()
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
                "model": model_name, "runtime": runtime, "input_size": x.shape[-1],
                "top": [{"index": i, "label": labels[i], "prob": round(q, 5)}
                        for i, q in zip(idx, p)],
            }
            if "item" in desc:
                result["item"] = desc["item"]
            pub.send(pack(result))
            meter.done((t1 - t0) / 1e6)
            credits.done(time.monotonic_ns() - t0)
    finally:
        work.close()
        credits.close()
        pub.close()
        result_seq.close()
