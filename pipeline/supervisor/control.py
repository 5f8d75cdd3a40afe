"""The supervisor's end of the control protocol: one ROUTER socket that every stage talks to.
It lets in only well-formed messages from the current process of a known stage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from pipeline.observe.journal import WARNING
from pipeline.observe.report import RunReport
from pipeline.transport.messages import BYE, ERROR, FROM_STAGES, SET, START, STATS, pack, unpack

MAX_MESSAGE = 64 * 1024  # bytes; control, stats and descriptors are far smaller


class ControlChannel:
    def __init__(self, zctx: zmq.Context, endpoint: str, report: RunReport, say: Callable[..., None],
                 on_stats: Callable[[str, dict[str, Any]], None]):
        """`on_stats(stage, msg)` sees every stats message, after `report` has."""
        self.report = report
        self.say = say
        self.on_stats = on_stats
        self.pids: dict[str, int] = {}  # stage -> pid of its current process
        self.errors: dict[str, str] = {}  # stage -> its last error message
        self.socket = zctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)  # a peer sending more is disconnected
        self.socket.bind(endpoint)

    def receive(self, timeout_ms: int) -> list[tuple[str, dict]]:
        """Control messages from the stages (stats and errors are absorbed here). Anything else
        that reaches the control socket is dropped, counted, and logged once per kind."""
        out = []
        if not self.socket.poll(timeout_ms):
            return out
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            msg = self._accept(frames)
            if msg is None:
                continue
            stage = msg["stage"]
            kind = msg["type"]
            if kind in (STATS, BYE):
                self.report.on_stats(msg)
                if kind == STATS:
                    self.on_stats(stage, msg)
            elif kind == ERROR:
                self.errors[stage] = str(msg.get("message", ""))
            out.append((stage, msg))

    def _accept(self, frames: list[bytes]) -> dict[str, Any] | None:
        """The message, if it is a known kind from the stage its sender's identity names."""
        stage = frames[0].decode(errors="replace").rpartition(":")[0]
        if len(frames) != 2 or frames[0] != self.identity(stage):
            self.reject("control message from an unknown peer")
            return None
        try:
            msg = unpack(frames[1])
        except Exception:
            self.reject("undecodable control message")
            return None
        if msg.get("type") not in FROM_STAGES or msg.get("stage") != stage:
            self.reject("control message of unknown type or sender")
            return None
        return msg

    def identity(self, stage: str) -> bytes | None:
        """A stage's control identity: its name and the pid of its current process."""
        pid = self.pids.get(stage)
        return f"{stage}:{pid}".encode() if pid is not None else None

    def reject(self, kind: str) -> None:
        n = self.report.rejected.get(kind, 0)
        self.report.rejected[kind] = n + 1
        if not n:
            self.say(f"dropped a {kind} (further ones are counted, not logged)", WARNING)

    def start(self, stage: str, settings: dict[str, Any]) -> None:
        """Start one stage (a restarted one) with the current run-time settings."""
        self.socket.send_multipart([self.identity(stage), pack({"type": START, "settings": settings})])

    def set_settings(self, stage: str, settings: dict[str, Any]) -> bool:
        """Change a running stage's settings; False when it cannot take them now."""
        return self._try_send(stage, {"type": SET, **settings})

    def command(self, stage: str, msg: dict[str, Any]) -> bool:
        """Send a stage a message of the supervisor's (a model switch); False when it cannot
        take it now."""
        return self._try_send(stage, msg)

    def broadcast(self, kind: str) -> None:
        for stage in self.pids:
            self._try_send(stage, {"type": kind})

    def _try_send(self, stage: str, msg: dict[str, Any]) -> bool:
        try:
            self.socket.send_multipart([self.identity(stage), pack(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        return True

    def close(self) -> None:
        self.socket.close(0)
