"""Inference stage (one or several workers): takes the newest model input of the next source
(pipeline/transport/workqueue.py), copies it out of the tensors ring, classifies it, and publishes
the result into the supervisor's results hub.

The input is copied (15 us) into a private array before the model runs, so the slot is free again
at once and the sequence-lock check covers the whole read. The model runs in the runtime the
supervisor planned (workers/inference/model_plan.py); softmax and top-k are numpy for both.

Another model can take over while frames flow (`pipeline-deploy`): told to load it, the worker
loads and warms it up in a thread beside the running one (`NextModel`), says when it is ready,
and switches to it between two frames when told to.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import zmq

from pipeline.observe.stats import StageMeter
from pipeline.transport.credits import CreditSender
from pipeline.transport.messages import (
    EOS,
    LOADED,
    MAX_SUBSCRIPTION_BYTES,
    SCHEMA,
    TENSOR_FIELDS,
    TensorDescriptor,
    pack,
)
from pipeline.transport.rundir import RESULTS_IN
from pipeline.transport.workqueue import SharedCounter, SharedReader, WorkQueue
from workers.context import StageContext

from .classifier import Classifier, ModelInputs, load_planned_classifier, top_k, warm_up_classifier
from .model_plan import ModelPlan


class NextModel:
    """A model being loaded in a thread while the current one keeps classifying."""

    def __init__(self, plan: ModelPlan, ctx: StageContext, threads: int):
        self.plan = plan
        self.model: Classifier | None = None
        self.error: str | None = None
        self.warm_ms = 0.0
        self.reported = False
        self._thread = threading.Thread(target=self._load, args=(ctx, threads), daemon=True,
                                        name="next-model")
        self._thread.start()

    def _load(self, ctx: StageContext, threads: int) -> None:
        config = ctx.config
        try:
            model = load_planned_classifier(self.plan, config, threads)
            self.warm_ms = warm_up_classifier(model, config.preprocess.crop_size, config.model.warmup)
            self.model = model
        except Exception as e:  # anything: the running model goes on, the error is one line
            self.error = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()


class Inference:
    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        cfg, model_cfg, config = ctx.config.inference, ctx.config.model, ctx.config
        self.pub = ctx.own(ctx.zmq.socket(zmq.PUB))  # into the results hub subscribers read
        self.pub.setsockopt(zmq.LINGER, 1000)
        # Queued here while the supervisor cannot take them (stopped, busy): about a minute at the
        # highest result rates; beyond that they are lost, and counted by the hub.
        self.pub.setsockopt(zmq.SNDHWM, 20000)
        self.pub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)  # it hears only subscriptions
        self.pub.connect(ctx.run.endpoint(RESULTS_IN))
        # Subscribed before the model loads, so preprocess (waiting for every worker) is ready soon.
        n_sources = len(config.source_list)
        self.readers = [ctx.own(SharedReader(ctx.zmq, *ctx.edge("tensors", i),
                                             config.policy("tensors", i), required=TENSOR_FIELDS,
                                             sole=cfg.workers == 1))
                        for i in range(n_sources)]
        for i, reader in enumerate(self.readers):  # from now on a kill loses no count
            reader.drops = ctx.tally.counts(config.edge_name("tensors", i), reader.drops)
        plan = self.plan = ModelPlan.from_json(ctx.run.model_plan_file.read_text())
        self.model = load_planned_classifier(plan, config, cfg.threads or len(ctx.cores))
        warm_ms = warm_up_classifier(self.model, config.preprocess.crop_size, model_cfg.warmup)
        self.source_of = {r: i for i, r in enumerate(self.readers)}
        # Sources read on demand get a credit each time this worker takes one of their frames.
        self.credits = ctx.own(CreditSender(ctx.zmq, {i: ctx.edge("credits", i)[0]
                                                      for i in range(n_sources) if config.pulled(i)}))
        self.work = WorkQueue(self.readers)
        self.result_seq = ctx.own(SharedCounter(str(ctx.run.result_seq_file)))
        self.inputs = ModelInputs()
        self.k = min(model_cfg.top_k, len(self.model.labels))
        self.meter = StageMeter()
        self.delay_s = cfg.delay_ms / 1000
        self.edge_names = [config.edge_name("tensors", i) for i in range(n_sources)]
        self.ended = False
        self.next: NextModel | None = None
        m = self.model
        self.ready_info = {"model": plan.name, "model_id": plan.id, "runtime": m.runtime, "engine": m.engine,
                           "threads": m.threads, "warmup_ms": round(warm_ms, 2), "plan": plan.reason}

    def step(self) -> None:
        """Classify the next frame and publish its result."""
        ctx, cfg = self.ctx, self.ctx.config.inference
        if ctx.commands or self.next is not None:
            self._switching()
        desc: TensorDescriptor | None = self.work.take(timeout_ms=100)
        if desc is None:
            if self.work.ended and not self.ended:  # every source has ended: tell the supervisor
                self.ended = True
                ctx.send(EOS)
            return
        inp = self.work.current
        t0 = time.monotonic_ns()
        self.meter.took(inp.depth)
        if self.delay_s and self.meter.frames_in % cfg.delay_every == 0:
            time.sleep(self.delay_s)  # inference.delay_ms: a deliberately slow stage
        x = self.inputs.load(inp.frame(desc))
        intact = inp.intact(desc)
        # The result's number is drawn before the frame is let go: a worker that dies while the
        # model runs leaves a gap the supervisor counts as a dropped result (no frame goes uncounted).
        result_seq = self.result_seq.next() if intact and x is not None else 0
        inp.release()
        t = desc["t"]
        self.credits.took(self.source_of[inp], t["capture_start"], t["preprocess_end"],
                          time.monotonic_ns())
        if not result_seq:
            return
        idx, p = top_k(self.model.logits(x), self.k)
        t1 = time.monotonic_ns()
        self.pub.send(pack(self._result(desc, result_seq, inp.depth, x.shape[-1], idx, p, t0, t1)))
        self.meter.done((t1 - t0) / 1e6)
        self.credits.done(time.monotonic_ns() - t0)

    def _switching(self) -> None:
        """The supervisor's model commands: load a model beside this one, switch to it, or drop
        it; and the word that it has loaded (or failed to), once."""
        for msg in self.ctx.commands:
            action = msg.get("action")
            if action == "load" and self.next is None:
                plan = ModelPlan.from_json(Path(str(msg.get("plan_file"))).read_text())
                threads = self.ctx.config.inference.threads or len(self.ctx.cores)
                self.next = NextModel(plan, self.ctx, threads)
            elif action == "switch" and self.next is not None and self.next.model is not None:
                self.model, self.plan = self.next.model, self.next.plan
                self.k = min(self.ctx.config.model.top_k, len(self.model.labels))
                self.ready_info.update(model=self.plan.name, model_id=self.plan.id,
                                       runtime=self.model.runtime, plan=self.plan.reason)
                self.next = None
            elif action == "drop":
                self.next = None  # (a load still under way finishes in its thread, unused)
        self.ctx.commands.clear()
        nxt = self.next
        if nxt is not None and nxt.done and not nxt.reported:
            nxt.reported = True
            self.ctx.send(LOADED, ok=nxt.model is not None, model_id=nxt.plan.id,
                          warmup_ms=round(nxt.warm_ms, 2), message=nxt.error or "")

    def _result(self, desc: TensorDescriptor, result_seq: int, depth: int, size: int, idx: list[int],
                p: list[float], t0: int, t1: int) -> dict[str, Any]:
        """The public result (docs/protocol.md): the descriptor's fields under the same names,
        completed with the inference times and the prediction."""
        labels = self.model.labels
        desc["t"].update(inference_start=t0, inference_end=t1)
        desc["queue"]["inference"] = depth
        result = {
            "schema": SCHEMA, "type": "result", "pipeline": self.ctx.config.name,
            "result_seq": result_seq, "worker": self.ctx.stage,
            "source": desc["source"], "seq": desc["seq"], "frame": desc.get("frame"),
            "frame_slot": desc["frame_slot"], "frame_shape": desc["frame_shape"],
            "captured_at": desc["captured_at"], "t": desc["t"], "queue": desc["queue"],
            "latency_ms": round((t1 - desc["t"]["capture"]) / 1e6, 3),
            "model": self.plan.name, "model_id": self.plan.id, "runtime": self.model.runtime,
            "input_size": size,
            "top": [{"index": i, "label": labels[i], "prob": round(q, 5)} for i, q in zip(idx, p)],
        }
        if "item" in desc:
            result["item"] = desc["item"]
        return result

    def stats(self) -> dict[str, Any]:
        return {**self.meter.snapshot(), "threads": self.model.threads,
                "runtime": self.model.runtime,
                "drops": {n: dict(r.drops) for n, r in zip(self.edge_names, self.readers)},
                "in_use": {n: r.in_use for n, r in zip(self.edge_names, self.readers)}}
