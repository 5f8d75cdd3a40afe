"""Shared-memory rings and edge policies, with a real writer process and real ZeroMQ sockets."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid

import numpy as np
import pytest
import zmq

from pipeline.transport.edge import EdgeReader, EdgeWriter
from pipeline.transport.ring import Ring, shm_path

FRAME = (120, 160, 3)


@pytest.fixture
def ring_name():
    name = f"edge-pipeline-test-{uuid.uuid4().hex[:8]}"
    yield name
    Ring.unlink(name)


def _writer(ring_name: str, endpoint: str, policy: str, frames: int, period: float, out) -> None:
    """Child process: publishes `frames` frames, each filled with seq % 251."""
    ctx = zmq.Context()
    ring = Ring.create(ring_name, 3, int(np.prod(FRAME)))
    w = EdgeWriter(ctx, endpoint, ring, policy)
    out.send("ready")
    out.recv()  # reader connected
    alive = lambda: True  # noqa: E731
    for seq in range(1, frames + 1):
        slot = w.acquire(alive)
        if slot is None:
            w.dropped_new()
        else:
            w.begin(slot, seq)
            w.view(slot, FRAME)[:] = seq % 251
            w.publish(slot, seq, {"shape": list(FRAME), "dtype": "uint8"}, alive)
        if period:
            time.sleep(period)
    w.send_eos(alive)
    out.send(dict(w.drops))
    out.recv()
    w.close()
    ctx.term()


def _start_writer(tmp_path, ring_name, policy, frames, period=0.0):
    endpoint = f"ipc://{tmp_path}/edge.sock"
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_writer,
                                           args=(ring_name, endpoint, policy, frames, period, child))
    proc.start()
    assert parent.poll(30), "writer did not start"
    parent.recv()
    ctx = zmq.Context()
    reader = EdgeReader(ctx, endpoint, ring_name, policy)
    time.sleep(0.2)  # let the PULL socket connect before frames flow
    parent.send("go")
    return proc, parent, ctx, reader


def _read_all(reader, slow_read: float):
    accepted, mixed_rejected, seen = [], 0, []
    while True:
        desc = reader.take(5000)
        assert desc is not None, "edge went silent"
        if desc.get("eos"):
            return accepted, mixed_rejected, seen
        seen.append(desc["seq"])
        view = reader.frame(desc)
        copy = np.empty_like(view)
        half = len(view) // 2
        copy[:half] = view[:half]
        if slow_read:
            time.sleep(slow_read)  # a slow reader: the writer may lap it right here
        copy[half:] = view[half:]
        ok = reader.intact(desc)
        reader.release()
        if ok:
            accepted.append((desc["seq"], copy))
        elif copy.min() != copy.max():
            mixed_rejected += 1


def _finish(proc, parent, ctx, reader):
    drops = parent.recv()
    parent.send("done")
    proc.join(10)
    reader.close()
    ctx.term()
    return drops


def test_ring_layout_and_views(ring_name):
    ring = Ring.create(ring_name, 4, 1000)
    try:
        assert os.path.exists(shm_path(ring_name))
        assert oct(os.stat(shm_path(ring_name)).st_mode & 0o777) == "0o600"
        other = Ring.attach(ring_name)
        ring.begin_write(2, 7)
        ring.view(2, (10, 10), np.uint8)[:] = 9
        ring.end_write(2, 7)
        assert other.slots == 4 and other.slot_bytes == 1000
        assert other.intact(2, 7) and not other.intact(2, 6) and not other.intact(1, 7)
        assert int(other.view(2, (10, 10), np.uint8).sum()) == 900
        assert ring.view(2, (10, 10), np.uint8) is ring.view(2, (10, 10), np.uint8)  # cached
        with pytest.raises(ValueError):
            ring.view(0, (1001,), np.uint8)
        ring.begin_write(2, 8)  # a writer starting over the slot invalidates the old frame
        assert not other.intact(2, 7)
        other.close()
    finally:
        ring.close()
    assert Ring.unlink(ring_name) and not os.path.exists(shm_path(ring_name))


def test_lapping_writer_is_detected_and_never_accepted(tmp_path, ring_name):
    """A writer lapping a slow reader on a 3-slot ring: overwritten frames are dropped as torn,
    and no frame that was overwritten during its read is ever accepted."""
    proc, parent, ctx, reader = _start_writer(tmp_path, ring_name, "latest", 3000, period=0.0002)
    accepted, mixed_rejected, seen = _read_all(reader, slow_read=0.004)
    _finish(proc, parent, ctx, reader)
    assert reader.drops["torn"] > 0, "the writer never lapped the reader: the test proves nothing"
    assert mixed_rejected > 0, "no half-overwritten frame was ever caught"
    for seq, frame in accepted:
        assert frame.min() == frame.max() == seq % 251, f"accepted a corrupted frame {seq}"
    assert seen == sorted(seen), "latest must only move forward"
    assert reader.drops["latest"] > 0


def test_block_edge_delivers_every_frame_in_order(tmp_path, ring_name):
    proc, parent, ctx, reader = _start_writer(tmp_path, ring_name, "block", 300)
    accepted, _, seen = _read_all(reader, slow_read=0.001)
    drops = _finish(proc, parent, ctx, reader)
    assert seen == list(range(1, 301))
    assert [s for s, _ in accepted] == seen
    assert all(f.min() == f.max() == s % 251 for s, f in accepted)
    assert reader.drops["torn"] == reader.drops["latest"] == 0 and drops["drop_new"] == 0


def test_drop_new_edge_drops_at_writer_and_never_tears(tmp_path, ring_name):
    proc, parent, ctx, reader = _start_writer(tmp_path, ring_name, "drop_new", 2000, period=0.0001)
    accepted, _, seen = _read_all(reader, slow_read=0.003)
    drops = _finish(proc, parent, ctx, reader)
    assert drops["drop_new"] > 0
    assert len(seen) + drops["drop_new"] == 2000
    assert seen == sorted(seen) and reader.drops["torn"] == 0 and reader.drops["latest"] == 0
    assert all(f.min() == f.max() == s % 251 for s, f in accepted)


def test_reader_drops_malformed_descriptors_and_keeps_good_ones(tmp_path, ring_name):
    import msgpack

    ring = Ring.create(ring_name, 3, 1000)
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/e.sock"
    push = ctx.socket(zmq.PUSH)
    push.bind(endpoint)
    reader = EdgeReader(ctx, endpoint, ring_name, "block", required=("source",))
    good = {"slot": 1, "seq": 5, "shape": [10, 10], "dtype": "uint8", "source": "x"}
    bad = [b"\x00garbage", msgpack.packb([1, 2]), msgpack.packb({"slot": 1}),
           msgpack.packb({**good, "slot": 3}), msgpack.packb({**good, "slot": -1}),
           msgpack.packb({**good, "shape": [100, 100]}), msgpack.packb({**good, "dtype": "int64"}),
           msgpack.packb({**good, "seq": "5"}), msgpack.packb({**good, "shape": "10x10"}),
           msgpack.packb({k: v for k, v in good.items() if k != "source"}),
           msgpack.packb({"eos": "yes"})]
    time.sleep(0.2)
    for b in bad:
        push.send(b)
    push.send(msgpack.packb(good))
    desc = reader.take(2000)
    assert desc == good and reader.drops["malformed"] == len(bad)
    reader.close()
    push.close(0)
    ring.close()
    ctx.term()


def test_a_frame_descriptor_needs_every_field_its_definition_requires(tmp_path, ring_name):
    """The fields a reader checks come from the TypedDicts in messages.py, nested timestamps
    included: a descriptor whose `t.capture` is missing or not an integer is malformed."""
    import msgpack

    from pipeline.transport.messages import FRAME_FIELDS, TENSOR_FIELDS

    assert {"slot", "seq", "source", "captured_at", "t.capture_start", "t.capture"} <= set(FRAME_FIELDS)
    assert set(TENSOR_FIELDS) - set(FRAME_FIELDS) == {
        "frame_slot", "frame_shape", "queue.preprocess", "t.preprocess_start", "t.preprocess_end"}
    ring = Ring.create(ring_name, 3, 1000)
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/e.sock"
    push = ctx.socket(zmq.PUSH)
    push.bind(endpoint)
    reader = EdgeReader(ctx, endpoint, ring_name, "block", required=FRAME_FIELDS)
    good = {"slot": 0, "seq": 1, "shape": [10, 10], "dtype": "uint8", "source": "cam",
            "captured_at": 1.5, "frame": 0, "t": {"capture_start": 10, "capture": 20}}
    bad = [{**good, "t": {"capture_start": 10}}, {**good, "t": {"capture_start": 10, "capture": "20"}},
           {**good, "t": 20}, {k: v for k, v in good.items() if k != "captured_at"}]
    time.sleep(0.2)
    for b in bad:
        push.send(msgpack.packb(b))
    push.send(msgpack.packb(good))
    assert reader.take(2000) == good and reader.drops["malformed"] == len(bad)
    reader.close()
    push.close(0)
    ring.close()
    ctx.term()
