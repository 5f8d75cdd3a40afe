"""Telling systemd how the pipeline is doing (sd_notify(3)), without libsystemd: one datagram to
the unix socket named by $NOTIFY_SOCKET, `KEY=value` lines.

- `READY=1` once every stage reported ready (the model is loaded and warm) and frames flow, so a
  unit of `Type=notify` is "started" only when it classifies;
- `WATCHDOG=1` each second while every stage is healthy, and only then: a wedged pipeline stops
  pinging and systemd (`WatchdogSec=`) restarts it;
- `STATUS=` a one-line summary each second (`systemctl status` shows it);
- `STOPPING=1` when the pipeline begins to stop.

Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

HEALTHY = ("running", "reconnecting")  # a camera that reconnects is handled, not wedged


class SystemdNotifier:
    def __init__(self, env: Mapping[str, str] = os.environ):
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.socket: socket.socket | None = None
        if self.address:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # The watchdog is ours when WATCHDOG_USEC is set and WATCHDOG_PID, if set, is this process.
        pid = env.get("WATCHDOG_PID", "")
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog = bool(self.socket) and usec.isdigit() and int(usec) > 0 and \
            (not pid or pid == str(os.getpid()))
        self.ready = False

    def send(self, *fields: str) -> None:
        if self.socket is None:
            return
        try:
            self.socket.sendto("\n".join(fields).encode(), self.address)
        except OSError:  # systemd went away or the socket is full: nothing to do about it
            pass

    def status(self, line: str) -> None:
        self.send(f"STATUS={line}")

    def started(self, line: str) -> None:
        """Every stage is ready and frames flow."""
        self.ready = True
        self.send("READY=1", f"STATUS={line}")

    def tick(self, status: dict[str, Any], line: str) -> None:
        """Once a second, after the start: the summary, and the watchdog ping while healthy."""
        fields = [f"STATUS={line}"]
        if self.watchdog and self.ready and healthy(status):
            fields.insert(0, "WATCHDOG=1")
        self.send(*fields)

    def stopping(self, why: str) -> None:
        self.send("STOPPING=1", f"STATUS=stopping ({why})")

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()


def healthy(status: dict[str, Any]) -> bool:
    """Every stage runs and reports (a stalled, restarting or silent stage is not healthy)."""
    stages = status.get("stages", {})
    return bool(stages) and all(m.get("state") in HEALTHY for m in stages.values())
