"""Entry point of every stage process, and the context a worker runs in.

The supervisor execs `python -m pipeline.stage --stage NAME --run-dir DIR --parent PID`. Before
anything heavy is imported, the process pins itself to its cores (so torch's and OpenCV's thread
pools inherit the mask), asks the kernel to send it SIGTERM if the supervisor dies, and ignores
SIGINT (Ctrl-C reaches the whole process group; the supervisor decides how to stop).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import logging
import os
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config, Instance
    from .runtime import RunPaths

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        sys.exit(1)


class StageContext:
    """What a worker needs from its surroundings: config, endpoints, the control channel, stats."""

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
        self.stats_source = lambda: {}  # the worker installs a snapshot function

    def edge(self, edge: str, source: int | None = None) -> tuple[str, str]:
        """(ipc endpoint, ring name) of `edge` for `source` (default: this stage's source)."""
        name = self.config.edge_name(edge, self.instance.source if source is None else source)
        return self.run.endpoint(name), self.run.shm_name(name)

    def send(self, kind: str, **fields: Any) -> None:
        from .messages import pack

        fields["type"] = kind
        fields["stage"] = self.stage
        self._ctl.send(pack(fields))

    def _handle(self, raw: bytes) -> None:
        from .messages import unpack

        try:
            msg = unpack(raw)
        except Exception:  # only the supervisor can reach this socket; ignore garbage anyway
            return
        if msg.get("type") == "start":
            self.started = True
            self.settings.update(msg.get("settings", {}))
        elif msg.get("type") == "stop":
            self.stopping = True
        elif msg.get("type") == "set":  # run-time settings from the supervisor (adaptive size)
            self.settings.update({k: v for k, v in msg.items() if k != "type"})

    def ready(self, **info: Any) -> bool:
        """Report ready, then wait for the supervisor's start; False if told to stop instead."""
        import zmq


        # Everything loaded so far (torch, the model) lives for the whole run: keep it out of
        # the collector's reach, or a full collection in the frame loop costs tens of ms.
        # (Before "ready": the collection itself takes that long.)
        gc.collect()
        gc.freeze()
        self.send("ready", pid=os.getpid(), cores=self.cores, **info)
        while not self.started and not self.stopping:
            if self._ctl.poll(200, zmq.POLLIN):
                self._handle(self._ctl.recv())
        self._next_stats = time.monotonic() + self.STATS_INTERVAL
        return not self.stopping

    def alive(self) -> bool:
        """Cheap per-frame check: handles control messages, sends stats once a second."""
        import zmq


        while True:
            try:
                self._handle(self._ctl.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.STATS_INTERVAL
            self.send("stats", **self.stats_source())
        return not self.stopping

    def close(self, **final: Any) -> None:
        self.send("bye", **self.stats_source(), **final)
        self._ctl.close()  # lingers until the last message is out
        self.zmq.destroy(linger=0)  # and any socket a failing worker left open
        gc.unfreeze()  # let interpreter shutdown free everything (bindings report leaks otherwise)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pipeline.stage")
    ap.add_argument("--stage", required=True, help="stage instance, e.g. capture or inference.2")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--parent", type=int, required=True)
    args = ap.parse_args(argv)
    _die_with_parent(args.parent)
    from .config import Config
    from .runtime import RunPaths

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=f"{args.stage}: %(message)s")

    run = RunPaths.load(args.run_dir)
    config = Config.model_validate_json(run.config_file.read_text())
    instance = {i.name: i for i in config.instances()}[args.stage]
    os.sched_setaffinity(0, config.cores_for(instance))  # before torch/OpenCV start threads

    ctx = StageContext(instance, run, config)
    signal.signal(signal.SIGTERM, lambda *_: setattr(ctx, "stopping", True))
    worker = importlib.import_module(f"workers.{instance.kind}")
    try:
        worker.run(ctx)
    except Exception as e:  # report one line to the supervisor, full detail to stderr
        detail = getattr(e, "user_message", None) or f"{type(e).__name__}: {e}"
        if not getattr(e, "user_message", None):
            traceback.print_exc()
        ctx.send("error", message=detail)
        ctx.close()
        return 1
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
