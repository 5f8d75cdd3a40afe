"""Who may connect to an edge: a descriptor handed to a stranger is a slot that is never
released, and on an in-order edge `slots` of them stop the pipeline. So an edge socket admits
only the current process of its own stages, checked by the kernel's word on the peer (the ZAP
handler `Admission`)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Collection

import zmq

_ZAP = "inproc://zeromq.zap.01"  # where libzmq asks a context's authentication handler

log = logging.getLogger("edge")


def sibling_stage(pid: int) -> str | None:
    """The stage instance process `pid` runs, if it is a child of this process's parent (the
    supervisor) started as `workers.stage --stage NAME`; None for any other process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        ppid = int(stat.rpartition(b")")[2].split()[1])  # after the command name, which may hold ")"
        if ppid != os.getppid() or b"workers.stage" not in argv:
            return None
        return argv[argv.index(b"--stage") + 1].decode()
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _describe(pid: int) -> str:
    """A process for a log line: its pid and command."""
    if pid <= 0:
        return "a process libzmq did not name (no peer credentials)"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "gone"
    return f"pid {pid} ({cmd[:80]})"


class Admission:
    """The ZAP handler of a stage process: an ipc socket `guard`ed with a set of stages accepts a
    connection only from the current process of one of them. libzmq hands the handler the peer's
    pid as the kernel reports it (SO_PEERCRED), so nothing a stranger sends can pass for a stage:
    the peer must be a child of our supervisor exec'd as one of the stages, as a restarted stage
    is. A refused peer never completes the handshake: no descriptor reaches it, and its
    subscription never counts as a reader. One thread per process (per ZeroMQ context), asleep
    in poll except while a peer connects; nothing per frame."""

    _open: dict[zmq.Context, "Admission"] = {}

    @classmethod
    def acquire(cls, zctx: zmq.Context) -> "Admission":
        """The context's handler, started on first use; `release` once per `acquire`."""
        adm = cls._open.get(zctx)
        if adm is None:
            adm = cls._open[zctx] = cls(zctx)
        adm._users += 1
        return adm

    def __init__(self, zctx: zmq.Context):
        self._users = 0
        self._zctx = zctx
        self._domains: dict[bytes, tuple[str, frozenset[str]]] = {}  # ZAP domain -> edge, stages
        self.refused: dict[str, int] = {}  # edge -> connections refused
        self._zap = zctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._stop = zctx.socket(zmq.PAIR)  # main thread: tells the handler to end
        self._stop.setsockopt(zmq.LINGER, 0)
        self._wake = zctx.socket(zmq.PAIR)  # the handler's end of it
        self._wake.setsockopt(zmq.LINGER, 0)
        try:
            # Bound before any guarded socket binds: without a handler libzmq would let all in.
            self._zap.bind(_ZAP)
            self._wake.bind(f"inproc://edge-admission-{id(self)}")
            self._stop.connect(f"inproc://edge-admission-{id(self)}")
        except zmq.ZMQError as e:
            for s in (self._zap, self._stop, self._wake):
                s.close(0)
            raise RuntimeError(f"edge admission needs this process's ZeroMQ authentication "
                               f"handler, which is taken (a CURVE server in the same context?): {e}"
                               ) from None
        self._thread = threading.Thread(target=self._serve, name="edge-admission", daemon=True)
        self._thread.start()

    def guard(self, sock: zmq.Socket, edge: str, stages: Collection[str]) -> None:
        """Before `sock` binds: admit only `stages` (instance names) to it."""
        domain = f"edge{len(self._domains)}".encode()
        self._domains[domain] = (edge, frozenset(stages))
        self.refused.setdefault(edge, 0)
        sock.zap_domain = domain

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._zap, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        while True:
            if self._wake in dict(poller.poll()):
                return
            request = self._zap.recv_multipart()
            try:
                ok = self._admits(request)
            except Exception:  # whatever went wrong, refuse; the handler must keep answering
                ok = False
            self._zap.send_multipart([b"1.0", request[1] if len(request) > 1 else b"",
                                      b"200" if ok else b"400", b"OK" if ok else b"not a reader",
                                      b"", b""])

    def _admits(self, request: list[bytes]) -> bool:
        """ZAP request: version, id, domain, address (`host:uid:gid:pid` on ipc), identity,
        mechanism. Anything malformed or unknown is refused."""
        if len(request) < 6 or request[0] != b"1.0" or request[2] not in self._domains:
            return False
        edge, stages = self._domains[request[2]]
        try:
            pid = int(request[3].rsplit(b":", 1)[1])
        except (ValueError, IndexError):
            pid = 0
        if pid > 0 and sibling_stage(pid) in stages:
            return True
        n = self.refused[edge] = self.refused[edge] + 1
        if n == 1:
            log.warning("%s: refused a connection from %s, not %s (further ones are counted, "
                        "not logged)", edge, _describe(pid), " or ".join(sorted(stages)))
        return False

    def release(self) -> None:
        """One user less; the last one stops the thread (before the context is destroyed)."""
        self._users -= 1
        if self._users > 0:
            return
        Admission._open.pop(self._zctx, None)
        self._stop.send(b"")
        self._thread.join()
        for s in (self._zap, self._stop, self._wake):
            s.close(0)
