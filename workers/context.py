"""What a stage process works with: the context the harness (workers/stage.py) gives it (config,
endpoints, the control channel to the supervisor, what to close at the end), and the shape of a
stage (`Stage`)."""

from __future__ import annotations

import contextlib
import gc
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

if TYPE_CHECKING:
    from pipeline.config import Config, Instance
    from pipeline.observe.tally import DropTally
    from pipeline.transport.rundir import RunPaths

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
        self.commands: list[dict[str, Any]] = []  # for the stage itself to act on (model switch)
        self._next_stats = 0.0
        self.stats_source: Callable[[], dict[str, Any]] = lambda: {}
        self.owned = contextlib.ExitStack()
        self._tally: DropTally | None = None

    @property
    def tally(self) -> "DropTally":
        """Where this process's drop counts are kept so that a kill cannot take them (a stage
        moves its edges' `drops` in with `tally.counts`); open until after the final stats."""
        if self._tally is None:
            from pipeline.observe.tally import DropTally

            self._tally = DropTally(self.run.drops_file(self.stage),
                                    entries=8 * (len(self.config.source_list) + 1))
        return self._tally

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
        fields["sent_ns"] = time.monotonic_ns()  # rates from when stats were sent, not received
        self._ctl.send(pack(fields))

    def _handle(self, raw: bytes) -> None:
        from pipeline.transport.messages import MODEL, SET, START, STOP, unpack

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
        elif msg.get("type") == MODEL and len(self.commands) < 16:
            self.commands.append(msg)

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

        ctl = self._ctl
        while ctl.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # (cheaper than an Again per empty read)
            try:
                self._handle(ctl.recv(zmq.NOBLOCK))
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
        if self._tally is not None:
            self._tally.close()
        gc.unfreeze()  # let interpreter shutdown free everything (bindings report leaks otherwise)
