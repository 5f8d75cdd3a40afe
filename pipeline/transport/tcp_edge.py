"""The frames edge across hosts: the frame travels inline over ZeroMQ TCP, raw or JPEG-encoded.

The capture side still decodes into its own ring (consumers on that host can read it); the
writer sends a copy of each frame as a two-part message [descriptor, pixels]. The receiving side
writes the frame into a ring of its own and hands the stage a descriptor of that slot, so
everything downstream reads shared memory exactly as on one host. Sequence numbers are the
receiving ring's own (a restarted remote capture starts again at 1), and the sender's monotonic
timestamps are moved onto the receiver's clock through both hosts' wall clocks (exact on one
machine, as good as NTP across machines).

Back-pressure works on the socket instead of ring slots: `latest` sends without waiting and the
reader keeps the newest frame it has received; `drop_new` drops at the writer while the send
queue is full; `block` waits for room. With CURVE (`curve.keys`), the writer is the server and
accepts only clients whose public key is in the keys folder.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import cv2
import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from pipeline.errors import UserError
from pipeline.transport.drops import DROP_NEW, LATEST, MALFORMED, OVERSIZE
from pipeline.transport.edge import EdgeReader, EdgeWriter
from pipeline.transport.messages import has_fields, pack, unpack
from pipeline.transport.ring import Ring

MAX_FRAME = 64 * 2**20  # bytes: a peer sending a larger message is disconnected


def _wall_minus_monotonic() -> int:
    return time.time_ns() - time.monotonic_ns()


class LinkError(UserError):
    """A tcp edge that cannot be set up, in one line for the user."""


class Curve:
    """This host's CURVE key pair from the keys folder (HOST.key_secret, HOST.key)."""

    def __init__(self, keys: str, host: str):
        self.keys = keys
        self.public, self.secret = zmq.auth.load_certificate(os.path.join(keys, f"{host}.key_secret"))
        self._auth: ThreadAuthenticator | None = None

    def serve(self, zctx: zmq.Context, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server that admits only the public keys in the folder."""
        if self._auth is None:
            self._auth = ThreadAuthenticator(zctx)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=self.keys)
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def client(self, sock: zmq.Socket, server_host: str) -> None:
        server, _ = zmq.auth.load_certificate(os.path.join(self.keys, f"{server_host}.key"))
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = server

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


class TcpEdgeWriter(EdgeWriter):
    """Capture end: the frame is written to the local ring as always, then sent inline."""

    def __init__(self, zctx: zmq.Context, bind: str, ring: Ring, policy: str, encoding: str,
                 quality: int, curve: Curve | None = None):
        self.jpeg = [cv2.IMWRITE_JPEG_QUALITY, quality] if encoding == "jpeg" else None
        self.bytes_sent = 0
        self.frames_sent = 0
        self.encode_ms = 0.0  # total JPEG encoding time
        self._clock = _wall_minus_monotonic()
        self._curve = curve
        try:
            super().__init__(zctx, bind, ring, policy)
        except zmq.ZMQError as e:
            raise LinkError(f"cannot listen on {bind} (edges.frames.bind): {e}") from None

    def _socket(self, zctx: zmq.Context, fanout: bool) -> zmq.Socket:
        sock = zctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.ring.slots)  # the queue of a slow link: slots frames
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no queue for a peer that is not connected
        if self._curve is not None:
            self._curve.serve(zctx, sock)
        return sock

    def acquire(self, alive: Callable[[], bool]) -> int | None:
        if self.policy == "drop_new" and not self.sock.poll(0, zmq.POLLOUT):
            return None
        if self.policy == "block":
            while not self.sock.poll(100, zmq.POLLOUT):
                if not alive():
                    return None
        return self._count % self.ring.slots

    def publish(self, slot: int, seq: int, desc: dict[str, Any], alive: Callable[[], bool]) -> None:
        self.ring.end_write(slot, seq)
        self._count += 1
        frame = self.ring.view(slot, tuple(desc["shape"]), desc["dtype"])
        if self.jpeg is not None:
            t0 = time.perf_counter()
            ok, payload = cv2.imencode(".jpg", frame, self.jpeg)
            self.encode_ms += (time.perf_counter() - t0) * 1000
            desc["encoding"] = "jpeg"
        else:
            payload = frame
        desc.update(slot=slot, seq=seq, clock=self._clock)
        parts = [pack(desc), payload]
        if self.policy == "latest":
            try:
                self.sock.send_multipart(parts, zmq.NOBLOCK)
            except zmq.Again:  # the link is behind (or down): this frame is the one to lose
                self.drops[LATEST] += 1
                self.ring.release(1)
                return
        else:
            while True:
                try:
                    self.sock.send_multipart(parts, zmq.NOBLOCK)
                    break
                except zmq.Again:
                    if self.policy == "drop_new" or not alive():
                        self.drops[DROP_NEW] += self.policy == "drop_new"
                        self.ring.release(1)
                        return
                    self.sock.poll(100, zmq.POLLOUT)
        self.frames_sent += 1
        self.bytes_sent += len(parts[0]) + payload.nbytes
        self.ring.mark_sent()
        self.ring.release(1)  # the local ring has no reader to wait for

    def send_eos(self, alive: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and alive():
            try:
                self.sock.send(pack({"eos": True}), zmq.NOBLOCK)
                return
            except zmq.Again:
                time.sleep(0.05)


class TcpEdgeReader(EdgeReader):
    """Preprocess end: receives frames inline and writes each one it takes into its own ring."""

    def __init__(self, zctx: zmq.Context, connect: str, ring_name: str, policy: str, slots: int,
                 slot_bytes: int, required: tuple[str, ...] = (), curve: Curve | None = None,
                 server_host: str = "", token: int = 0):
        self._slots, self._slot_bytes = slots, slot_bytes
        self._token = token  # the run's: a ring left by a restart is taken over only if it bears it
        self._local_seq = 0
        self._clock = _wall_minus_monotonic()
        self.bytes_received = 0
        self._curve = (curve, server_host)
        super().__init__(zctx, connect, ring_name, policy, required)
        self._remote_fields = tuple(k for k in self.required if k not in ("slot", "seq"))
        self.drops[OVERSIZE] = 0

    def _socket(self, zctx: zmq.Context, fanout: bool) -> zmq.Socket:
        sock = zctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        sock.setsockopt(zmq.RCVHWM, max(2, self._slots))
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        curve, server_host = self._curve
        if curve is not None:
            curve.client(sock, server_host)
        return sock

    def _take_over(self) -> int:
        return 0  # the ring is this reader's own

    def _skip(self, n: int) -> None:
        pass  # skipped frames never reached the local ring

    def _drain(self) -> None:
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            self.bytes_received += sum(len(p) for p in parts)
            try:
                desc = unpack(parts[0])
            except Exception:
                desc = None
            if desc is not None and desc.get("eos") is True and len(parts) == 1:
                self._pending.append(desc)
            elif desc is not None and len(parts) == 2 and self._valid_remote(desc, parts[1]):
                desc["_payload"] = parts[1]
                self._pending.append(desc)
            else:
                self.drops[MALFORMED] += 1

    def _valid_remote(self, desc: dict[str, Any], payload: bytes) -> bool:
        if not has_fields(desc, self._remote_fields):
            return False
        shape = desc["shape"]
        if not (isinstance(shape, list) and len(shape) == 3 and shape[2] == 3
                and all(type(d) is int and 0 < d <= 16384 for d in shape)
                and desc["dtype"] == "uint8" and type(desc.get("clock", 0)) is int):
            return False
        return desc.get("encoding") == "jpeg" or len(payload) == shape[0] * shape[1] * 3

    def take(self, timeout_ms: int) -> dict[str, Any] | None:
        desc = super().take(timeout_ms)
        if desc is None or desc.get("eos"):
            return desc
        return self._store(desc)

    def _store(self, desc: dict[str, Any]) -> dict[str, Any] | None:
        """Write the taken frame into the local ring; the descriptor now points at that slot."""
        payload = desc.pop("_payload")
        shape = tuple(desc["shape"])
        if desc.pop("encoding", None) == "jpeg":
            image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
            if image is None or image.shape != shape:
                self.drops[MALFORMED] += 1
                return None
        else:
            image = np.frombuffer(payload, np.uint8).reshape(shape)
        need = image.nbytes
        if self.ring is None:
            self.ring = Ring.open_for_writing(self.ring_name, self._slots, max(self._slot_bytes, need),
                                              self._token)
            self._local_seq = self.ring.last_seq
        if need > self.ring.slot_bytes:
            self.drops[OVERSIZE] += 1
            return None
        self._local_seq += 1
        seq, slot = self._local_seq, self.ring.written % self.ring.slots
        self.ring.begin_write(slot, seq)
        np.copyto(self.ring.view(slot, shape), image)
        self.ring.end_write(slot, seq)
        self.ring.mark_sent()  # handed to this stage at once
        shift = int(desc.pop("clock", self._clock)) - self._clock  # sender's clock -> ours
        times = desc["t"]
        for key, value in times.items():
            if type(value) is int:
                times[key] = value + shift
        desc["slot"], desc["seq"] = slot, seq
        return desc
