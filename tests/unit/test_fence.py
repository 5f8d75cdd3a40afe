"""The memory fence of the rings' sequence lock, and the lock itself under a writer that keeps
lapping its reader.

The stress test shows that the protocol holds on the machine running it: on x86 (which keeps
loads and stores each in order) and under qemu's arm64 emulation it cannot show what a weakly
ordered core would do without the fences; the instruction test checks that the fence really is
the barrier Arm needs."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import platform
import time
import uuid

import numpy as np
import pytest

from pipeline.transport.fence import FENCE, full_fence
from pipeline.transport.ring import Ring

SLOTS = 16  # the writer laps a read only if it fills 15 slots meanwhile (or is made to wait)
PAYLOAD = 256 * 1024
READS = 2000
LAP_EVERY = 10  # every 10th read waits, mid-copy, until the writer has lapped it
LAP_TIMEOUT_S = 60  # only a dead writer gets near this


def test_fence_runs():
    assert full_fence() is None
    assert FENCE


def test_fence_is_a_barrier_instruction():
    """The loaded atomic_thread_fence starts with the barrier itself (read from memory)."""
    try:
        fn = ctypes.CDLL("libatomic.so.1").atomic_thread_fence
    except OSError:
        pytest.skip("libatomic.so.1 not installed")
    code = ctypes.string_at(ctypes.cast(fn, ctypes.c_void_p).value, 16)
    machine = platform.machine()
    if machine == "aarch64":
        assert code[:4] == bytes.fromhex("bf3b03d5")  # dmb ish
    elif machine == "x86_64":
        code = code.removeprefix(bytes.fromhex("f30f1efa"))  # endbr64
        assert code.startswith((bytes.fromhex("f048830c2400"), bytes.fromhex("0faef0")))  # lock or, mfence
    else:
        pytest.skip(f"no expected instruction for {machine}")
    assert "libatomic" in FENCE


def _writer(name: str, stop, started) -> None:
    """Child process: rewrites the slots round-robin, every byte of frame `seq` = seq & 0xff."""
    ring = Ring.attach(name)
    started.set()
    seq = ring.last_seq
    while not stop.is_set():
        seq += 1
        slot = seq % ring.slots
        ring.begin_write(slot, seq)
        ring.view(slot, (PAYLOAD,)).fill(seq & 0xFF)
        ring.end_write(slot, seq)
    ring.close()


def _wait_for_lap(ring: Ring, seq: int) -> None:
    deadline = time.monotonic() + LAP_TIMEOUT_S
    while ring.last_seq < seq + ring.slots:
        assert time.monotonic() < deadline, "writer stopped writing"


def test_no_torn_frame_passes_intact():
    name = f"edge-pipeline-test-fence-{uuid.uuid4().hex[:8]}"
    ring = Ring.create(name, SLOTS, PAYLOAD)
    spawn = mp.get_context("spawn")
    stop, started = spawn.Event(), spawn.Event()
    writer = spawn.Process(target=_writer, args=(name, stop, started), daemon=True)
    writer.start()
    copy = np.empty(PAYLOAD, np.uint8)
    half = PAYLOAD // 2
    accepted = torn_caught = laps = 0
    try:
        assert started.wait(60), "writer did not start"
        for i in range(READS):
            seq = ring.last_seq  # the newest finished frame: what a descriptor would announce
            while seq == 0:
                seq = ring.last_seq
            full_fence()  # what receiving a descriptor orders: the payload is read after `seq`
            slot = seq % SLOTS
            view = ring.view(slot, (PAYLOAD,))
            lap = i % LAP_EVERY == 0
            copy[:half] = view[:half]
            if lap:
                _wait_for_lap(ring, seq)
            copy[half:] = view[half:]
            ok = ring.intact(slot, seq)
            uniform = int(copy.min()) == int(copy.max()) == seq & 0xFF
            if ok:
                assert uniform, f"frame {seq} passed intact() torn: bytes {np.unique(copy)}"
                assert not lap, f"frame {seq} passed intact() after the writer lapped it"
                accepted += 1
            else:
                torn_caught += not uniform
                laps += lap
    finally:
        stop.set()
        writer.join(30)
        ring.close()
        Ring.unlink(name)
    assert writer.exitcode == 0
    assert laps == READS // LAP_EVERY
    print(f"{READS} reads: {accepted} intact, {READS - accepted} dropped ({laps} forced laps), "
          f"{torn_caught} of them visibly torn; fence: {FENCE}")
