"""The harness every stage process runs in: `python -m workers.stage --stage NAME --run-dir DIR
--parent PID`, exec'd by the supervisor.

It does what all stages share, once: before anything heavy is imported it pins the process to its
cores (so torch's and OpenCV's thread pools inherit the mask), asks the kernel for SIGTERM if the
supervisor dies, and ignores SIGINT (Ctrl-C reaches the whole process group; the supervisor decides
how to stop). Then it opens the stage, reports ready, waits for the start, loops the stage's step
while sending stats once a second, and tears everything down whichever way the stage ends.

A stage supplies only what is its own (see `Stage`): opening its inputs and outputs, one step per
frame, and its stats.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

if TYPE_CHECKING:
    from pipeline.config import Config, Instance
    from pipeline.transport.rundir import RunPaths

_PR_SET_PDEATHSIG = 1
T = TypeVar("T")


class Stage(Protocol):
    """A stage's own part. Its constructor, `Stage(ctx)`, opens what it reads and writes
    (registering each with `ctx.own`, which closes them at the end) and waits for its peers."""

    ready_info: dict[str, Any]  # details for the ready message (source kind, model, ...)

    def step(self) -> None:
        """Handle the next frame, or return after a short wait if there is none."""

    def stats(self) -> dict[str, Any]:
        """Counters for the supervisor, sent once a second and at exit."""


class StageContext:
    """What a stage needs from its surroundings: config, endpoints, the control channel, and
    the resources to close at the end."""

    STATS_INTERVAL = 1.0

    def __init__(self, instance: "Instance", run: "RunPaths", config: "Config"):
        import zmq

        self.instance = instance
        self.stage = instance.name
        self.run = run
        self.config = config
        self.cores = self.config.cores_for(instance)
        # capture and preprocess serve one source; inference workers serve them all
        self.source = config.source_list[instance.source] if instance.source is not None else None
        self.source_id = config.source_ids()[instance.source] if instance.source is not None else None
        self.zmq = zmq.Context()
        self._ctl = self.zmq.socket(zmq.DEALER)
        # Unique per process: a restarted stage is a new peer, and nobody else can pose as it.
        self._ctl.setsockopt(zmq.IDENTITY, f"{self.stage}:{os.getpid()}".encode())
        self._ctl.setsockopt(zmq.LINGER, 1000)
        self._ctl.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
        self._ctl.connect(self.run.endpoint("control"))
        self.stopping = False
        self.started = False
        self.settings: dict[str, Any] = {}
        self._next_stats = 0.0
        self.stats_source: Callable[[], dict[str, Any]] = lambda: {}
        self.owned = contextlib.ExitStack()

    def own(self, resource: T) -> T:
        """Close `resource` (anything with `close()`) when the stage ends, however it ends."""
        self.owned.callback(resource.close)  # type: ignore[attr-defined]
        return resource

    def edge(self, edge: str, source: int | None = None) -> tuple[str, str]:
        """(ipc endpoint, ring name) of `edge` for `source` (default: this stage's source)."""
        name = self.config.edge_name(edge, self.instance.source if source is None else source)
        return self.run.endpoint(name), self.run.shm_name(name)

    def send(self, kind: str, **fields: Any) -> None:
        from pipeline.transport.messages import pack

        fields["type"] = kind
        fields["stage"] = self.stage
        self._ctl.send(pack(fields))

    def _handle(self, raw: bytes) -> None:
        from pipeline.transport.messages import SET, START, STOP, unpack

        try:
            msg = unpack(raw)
        except Exception:  # only the supervisor can reach this socket; ignore garbage anyway
            return
        if msg.get("type") == START:
            self.started = True
            self.settings.update(msg.get("settings", {}))
        elif msg.get("type") == STOP:
            self.stopping = True
        elif msg.get("type") == SET:  # run-time settings from the supervisor (adaptive size)
            self.settings.update({k: v for k, v in msg.items() if k != "type"})

    def ready(self, **info: Any) -> bool:
        """Report ready, then wait for the supervisor's start; False if told to stop instead."""
        import zmq

        from pipeline.transport.messages import READY

        # Everything loaded so far (torch, the model) lives for the whole run: keep it out of
        # the collector's reach, or a full collection in the frame loop costs tens of ms.
        # (Before "ready": the collection itself takes that long.)
        gc.collect()
        gc.freeze()
        self.send(READY, pid=os.getpid(), cores=self.cores, **info)
        while not self.started and not self.stopping:
            if self._ctl.poll(200, zmq.POLLIN):
                self._handle(self._ctl.recv())
        self._next_stats = time.monotonic() + self.STATS_INTERVAL
        return not self.stopping

    def alive(self) -> bool:
        """Cheap per-frame check: handles control messages, sends stats once a second."""
        import zmq

        from pipeline.transport.messages import STATS

        while True:
            try:
                self._handle(self._ctl.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.STATS_INTERVAL
            self.send(STATS, **self.stats_source())
        return not self.stopping

    def close(self, **final: Any) -> None:
        """Close what the stage owns, send the final counters, leave."""
        from pipeline.transport.messages import BYE

        self.owned.close()
        self.send(BYE, **self.stats_source(), **final)
        self._ctl.close()  # lingers until the last message is out
        self.zmq.destroy(linger=0)  # and any socket a failing stage left open
        gc.unfreeze()  # let interpreter shutdown free everything (bindings report leaks otherwise)


def stage_class(kind: str) -> type:
    """The stage to run, imported only now: after pinning, and only the one this process runs."""
    if kind == "capture":
        from workers.capture.stage import Capture

        return Capture
    if kind == "preprocess":
        from workers.preprocess.stage import Preprocess

        return Preprocess
    from workers.inference.stage import Inference

    return Inference


def serve(ctx: StageContext, make: Callable[[StageContext], Stage]) -> None:
    """Open the stage, report ready, and step it until told to stop."""
    stage = make(ctx)
    ctx.stats_source = stage.stats
    if ctx.ready(**stage.ready_info):
        while ctx.alive():
            stage.step()


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workers.stage")
    ap.add_argument("--stage", required=True, help="stage instance, e.g. capture or inference.2")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--parent", type=int, required=True)
    args = ap.parse_args(argv)
    _die_with_parent(args.parent)
    from pipeline.config import Config
    from pipeline.errors import UserError
    from pipeline.transport.messages import ERROR
    from pipeline.transport.rundir import RunPaths

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=f"{args.stage}: %(message)s")

    run = RunPaths.load(args.run_dir)
    config = Config.model_validate_json(run.config_file.read_text())
    instance = {i.name: i for i in config.instances()}[args.stage]
    os.sched_setaffinity(0, config.cores_for(instance))  # before torch/OpenCV start threads

    ctx = StageContext(instance, run, config)
    signal.signal(signal.SIGTERM, lambda *_: setattr(ctx, "stopping", True))
    try:
        serve(ctx, stage_class(instance.kind))
    except Exception as e:  # report one line to the supervisor, full detail to stderr
        if not isinstance(e, UserError):
            traceback.print_exc()
        ctx.owned.close()
        ctx.send(ERROR, message=str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}")
        ctx.close()
        return 1
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
