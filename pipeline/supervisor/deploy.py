"""Switching a running pipeline to another model file (`pipeline-deploy`, `systemctl reload`)
without stopping anything: no stage restarts and results keep coming.

The request arrives on the run's `command` socket (in the run directory, which only its user can
enter); requests of another `type` go to the handler registered for it (a region of interest:
pipeline/supervisor/roi.py). The new model is planned as at start (a thread: an export or
runtime measurement may take a while), checked against the config (watched classes,
preprocessing), then every worker loads it beside the running one. Only when all have it does
`model.json` (which a restarted worker and consumers read) name it, and the workers switch
between two frames. Anything that fails on the way leaves the old model running and is the
reply's one line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import zmq

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.supervisor.control import ControlChannel
from pipeline.supervisor.startup import misfit
from pipeline.transport.messages import MODEL, pack, unpack
from pipeline.transport.rundir import RunPaths

MAX_REQUEST = 16 * 1024  # bytes: two paths
LOAD_TIMEOUT_S = 120.0  # every worker has loaded and warmed up the new model (a slow board)
COMMAND = "command"  # the socket's name in the run directory


class ModelDeploy:
    """The supervisor's end of pipeline-deploy: one switch at a time."""

    def __init__(self, zctx: zmq.Context, paths: RunPaths, config: Config, control: ControlChannel,
                 workers: list[str], plan: Callable[[Config], Any], say: Callable[..., None]):
        """`plan(config)`: the ModelPlan for a config, or a one-line refusal (startup.plan_model)."""
        self.paths, self.config, self.control = paths, config, control
        self.workers, self.plan, self.say = workers, plan, say
        self.socket = zctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST)
        self.socket.bind(paths.endpoint(COMMAND))
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="deploy-plan")
        self.asker: bytes | None = None  # who waits for the reply of the switch under way
        self.planning: Future | None = None
        self.next: Any = None  # the plan being loaded
        self.loaded: set[str] = set()
        self.started = 0.0
        self.deadline = 0.0
        # other requests on the socket, by their "type": handler(who, request) replies itself
        self.handlers: dict[str, Callable[[bytes, dict[str, Any]], None]] = {}

    @property
    def next_file(self) -> str:
        return str(self.paths.dir / "model-next.json")

    def receive(self) -> None:
        """Requests waiting on the command socket."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            who, raw = frames
            try:
                request = unpack(raw)
                handler = self.handlers.get(str(request.get("type")))
                if handler is not None:
                    handler(who, request)
                    continue
                weights, labels = str(request["weights"]), str(request.get("labels") or "")
            except (ValueError, KeyError):
                self.reply(who, False, "not a deploy request")
                continue
            if self.asker is not None:
                self.reply(who, False, "another model is being deployed now; try again when it is done")
                continue
            try:
                model = self.config.model.model_copy(update={"weights": weights, "labels": labels})
                config = self.config.model_copy(update={"model": model})
            except Exception as e:  # a frozen model refusing the update: a bug, said in one line
                self.reply(who, False, f"{type(e).__name__}: {e}")
                continue
            self.asker, self.started = who, time.monotonic()
            self.say(f"deploying {weights} ...")
            self.planning = self.pool.submit(self._plan, config)

    def _plan(self, config: Config) -> Any:
        try:
            plan = self.plan(config)
        except UserError as e:
            return str(e)
        return plan if isinstance(plan, str) else (misfit(config, plan) or plan)

    def tick(self, now: float) -> None:
        """Move a switch under way on: its plan is made, or the load took too long."""
        if self.planning is not None and self.planning.done():
            plan, self.planning = self.planning.result(), None
            if isinstance(plan, str):
                self._finish(False, plan)
                return
            self.next, self.loaded = plan, set()
            tmp = f"{self.next_file}.tmp"
            with open(tmp, "w") as f:
                f.write(plan.to_json())
            os.replace(tmp, self.next_file)
            self.deadline = now + LOAD_TIMEOUT_S
            for worker in self.workers:
                if not self.control.command(worker, {"type": MODEL, "action": "load",
                                                     "plan_file": self.next_file}):
                    self._abandon(f"worker '{worker}' cannot be reached (restarting?); try again")
                    return
        elif self.next is not None and now > self.deadline:
            missing = ", ".join(w for w in self.workers if w not in self.loaded)
            self._abandon(f"{missing} did not load the model within {LOAD_TIMEOUT_S:.0f} s")

    def on_loaded(self, stage: str, msg: dict[str, Any]) -> None:
        """A worker has the new model (or could not load it)."""
        if self.next is None or msg.get("model_id") != self.next.id or stage not in self.workers:
            return
        if not msg.get("ok"):
            self._abandon(f"model.weights: {msg.get('message') or 'it did not load'}")
            return
        self.loaded.add(stage)
        if self.loaded >= set(self.workers):
            os.replace(self.next_file, self.paths.model_plan_file)  # before its first result
            for worker in self.workers:
                self.control.command(worker, {"type": MODEL, "action": "switch"})
            plan, self.next = self.next, None
            took = time.monotonic() - self.started
            names = ", ".join(plan.labels[:8]) + (", ..." if len(plan.labels) > 8 else "")
            text = (f"now running {plan.name} (id {plan.id}) on {plan.runtime}, "
                    f"{len(plan.labels)} classes: {names}; switched in {took:.1f} s")
            self.say(f"deploy: {text}")
            self._finish(True, text, plan.to_json())

    def _abandon(self, why: str) -> None:
        """The old model stays; the workers forget the new one."""
        for worker in self.workers:
            self.control.command(worker, {"type": MODEL, "action": "drop"})
        self.next = None
        try:
            os.unlink(self.next_file)
        except FileNotFoundError:
            pass
        self._finish(False, why)

    def _finish(self, ok: bool, text: str, plan: str = "") -> None:
        if not ok:
            self.say(f"deploy refused, the running model stays: {text}")
        if self.asker is not None:
            self.reply(self.asker, ok, text, plan)
        self.asker = None

    def reply(self, who: bytes, ok: bool, text: str, plan: str = "", **fields: Any) -> None:
        """Answer a request on the command socket."""
        try:
            self.socket.send_multipart([who, pack({"ok": ok, "message": text, "plan": plan, **fields})],
                                       zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the asker is gone

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.socket.close(0)
