"""A pipeline split over two "hosts" (two `pipeline-up --host` process groups on this machine,
talking ZeroMQ TCP over loopback): the tcp frames edge, CURVE, and recovery on either side."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
import zmq.auth

from pipeline.transport.ring import Ring
from pipeline.transport.tcp_edge import TcpEdgeReader, TcpEdgeWriter
from tests.support.assets import BOTTLE, ROOT, WEIGHTS, need
from tests.support.processes import read_jsonl, wait_running
from tests.support.topologies import WATER_BOTTLE, finish, free_port, lines, up, wait_for, write_config


def _frame(i: int) -> np.ndarray:
    y, x = np.mgrid[0:120, 0:160]
    img = np.stack([(x + 7 * i) % 256, (y + 3 * i) % 256, (x + y) % 256], axis=-1)
    return img.astype(np.uint8)


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_tcp_edge_carries_frames_into_the_receivers_own_ring(encoding):
    port, tag = free_port(), f"edge-pipeline-tcptest-{os.getpid()}"
    zctx = zmq.Context()
    send_ring = Ring.create(f"{tag}-frames", 4, 120 * 160 * 3)
    writer = TcpEdgeWriter(zctx, f"tcp://127.0.0.1:{port}", send_ring, "block", encoding, 90)
    reader = TcpEdgeReader(zctx, f"tcp://127.0.0.1:{port}", f"{tag}-frames.rx", "block", 4,
                           120 * 160 * 3, required=("source", "t.capture"))
    try:
        for i in range(1, 4):
            slot = writer.acquire(lambda: True)
            writer.begin(slot, 100 + i)
            np.copyto(writer.view(slot, (120, 160, 3)), _frame(i))
            writer.publish(slot, 100 + i, {"source": "t", "shape": [120, 160, 3], "dtype": "uint8",
                                           "t": {"capture_start": 5, "capture": 6}}, lambda: True)
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            desc = reader.take(200)
            if desc is not None:
                got.append((desc, reader.frame(desc).copy()))
                assert reader.intact(desc)
                reader.release()
        assert [d["seq"] for d, _ in got] == [1, 2, 3]  # the receiving ring's own numbering
        for i, (desc, img) in enumerate(got, 1):
            assert desc["source"] == "t" and abs(desc["t"]["capture"] - 6) < 5_000_000  # same clock
            diff = np.abs(img.astype(int) - _frame(i)).mean()
            assert diff == 0 if encoding == "raw" else diff < 3, diff
        assert writer.frames_sent == 3 and writer.bytes_sent > 0
        if encoding == "jpeg":
            assert writer.bytes_sent < 3 * 120 * 160 * 3 / 3
    finally:
        writer.close()
        reader.close()
        zctx.term()
        for name in (f"{tag}-frames", f"{tag}-frames.rx"):
            Ring.unlink(name)


def test_tcp_edge_reader_drops_what_is_not_a_frame():
    port = free_port()
    zctx = zmq.Context()
    sender = zctx.socket(zmq.PUSH)  # a server that is not a capture stage
    sender.setsockopt(zmq.LINGER, 0)
    sender.bind(f"tcp://127.0.0.1:{port}")
    name = f"edge-pipeline-tcptest-{os.getpid()}-frames.rx"
    reader = TcpEdgeReader(zctx, f"tcp://127.0.0.1:{port}", name, "latest", 4, 1000,
                           required=("source",))
    try:
        bad = [[b"\x81\xa1x\x01", b"not a frame"], [b"\xff\xfe"],
               [msgpack.packb({"source": 1, "shape": [2, 2, 3], "dtype": "uint8",
                               "t": {"capture_start": 1, "capture": 1}}), b"short"]]
        for parts in bad:
            sender.send_multipart(parts)
        wait_for(lambda: reader.take(50) is None and reader.drops["malformed"] == len(bad), 10,
                 "malformed messages counted")
        assert not os.path.exists(f"/dev/shm/{name}")  # nothing was written anywhere
    finally:
        sender.close(0)
        reader.close()
        zctx.term()


def two_host_config(path: Path, port: int, **extra: dict) -> Path:
    return write_config(
        path, [{"kind": "video", "id": "bottle", "path": str(need(BOTTLE)), "loop": True,
                "host": "cam"}],
        name="split", capture={"cores": [0]}, preprocess={"cores": [0]},
        inference={"host": "box", "cores": [1], "threads": 1}, model={"weights": str(need(WEIGHTS))},
        edges__frames={"bind": f"tcp://127.0.0.1:{port}", "connect": f"tcp://127.0.0.1:{port}",
                       "encoding": "jpeg", "quality": 90}, **extra)


def test_two_hosts_over_tcp_classify_and_recover_when_either_side_is_stopped(tmp_path, clean_machine):
    cfg = two_host_config(tmp_path / "split.toml", free_port())
    rec1, rec2 = tmp_path / "box1.jsonl", tmp_path / "box2.jsonl"
    box = up(cfg, "--host", "box", "--record", str(rec1), "--quiet", group=True)
    cam = up(cfg, "--host", "cam", "--quiet", group=True)
    procs = [box, cam]
    try:
        wait_for(lambda: lines(rec1) > 60, 120, "results on the box")
        tops = [r["top"][0]["index"] for r in read_jsonl(rec1)]
        assert tops.count(WATER_BOTTLE) > 0.7 * len(tops)
        # the link goes down: every process of the capture host dies at once
        os.killpg(cam.pid, signal.SIGKILL)
        cam.wait()
        time.sleep(1.5)
        stalled = lines(rec1)
        time.sleep(2)
        assert lines(rec1) == stalled, "no frames can arrive while the capture host is down"
        assert box.poll() is None, "the box keeps running without its camera"
        cam = up(cfg, "--host", "cam", "--quiet", group=True)  # cleans the killed one's segments
        procs.append(cam)
        wait_for(lambda: lines(rec1) > stalled + 60, 120, "results after the capture host is back")
        # now the other side: the box stops and a new one takes over; capture never noticed
        out, err = finish(box)
        assert box.returncode == 0, err
        box = up(cfg, "--host", "box", "--record", str(rec2), "--quiet", group=True)
        procs.append(box)
        wait_for(lambda: lines(rec2) > 60, 120, "results on the new box")
        tops = [r["top"][0]["index"] for r in read_jsonl(rec2)]
        assert tops.count(WATER_BOTTLE) > 0.7 * len(tops)
        assert cam.poll() is None
    finally:
        for p in procs:
            if p.poll() is None:
                finish(p)
    assert box.returncode == 0 and cam.returncode == 0


def test_curve_admits_only_clients_whose_key_is_in_the_folder(tmp_path, clean_machine):
    keys, strangers = tmp_path / "keys", tmp_path / "strangers"
    for folder, hosts in ((keys, ["cam", "box"]), (strangers, ["box"])):
        p = subprocess.run([sys.executable, "-m", "tools.make_keys", str(folder), *hosts], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
    assert oct((keys / "cam.key_secret").stat().st_mode & 0o777) == "0o600"
    port = free_port()
    cfg = two_host_config(tmp_path / "curve.toml", port, curve={"keys": str(keys)})
    cam = up(cfg, "--host", "cam", "--quiet", group=True)
    box = None
    zctx = zmq.Context()
    try:
        wait_running(cam)  # its frames edge listens
        plain = zctx.socket(zmq.PULL)  # no keys at all
        impostor = zctx.socket(zmq.PULL)  # a key pair the capture host never saw
        pub, sec = zmq.auth.load_certificate(str(strangers / "box.key_secret"))
        server, _ = zmq.auth.load_certificate(str(keys / "cam.key"))
        impostor.curve_publickey, impostor.curve_secretkey, impostor.curve_serverkey = pub, sec, server
        for sock in (plain, impostor):
            sock.connect(f"tcp://127.0.0.1:{port}")
        time.sleep(3)
        for sock in (plain, impostor):
            assert not sock.poll(1000), "a client without an admitted key received a frame"
        record = tmp_path / "box.jsonl"
        box = up(cfg, "--host", "box", "--record", str(record), "--quiet", group=True)
        wait_for(lambda: lines(record) > 30, 120, "results over the CURVE link")
        for sock in (plain, impostor):
            assert not sock.poll(100)
            sock.close(0)
    finally:
        zctx.term()
        for p in (box, cam):
            if p is not None and p.poll() is None:
                finish(p)
    # a missing key is a config error on the host that needs it, before anything starts
    (keys / "box.key_secret").unlink()
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(cfg), "--host", "box"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "curve.keys: no box.key_secret" in p.stderr


def test_a_port_in_use_is_one_clear_line_and_leaves_nothing(tmp_path, clean_machine):
    port = free_port()
    cfg = two_host_config(tmp_path / "port.toml", port)
    first = up(cfg, "--host", "cam", "--quiet")
    try:
        wait_running(first)  # it holds the port
        p = subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(cfg), "--name", "second",
                            "--host", "cam"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert p.returncode == 1
        assert p.stderr.strip().splitlines()[-1].startswith(
            f"pipeline-up: stage 'capture' failed: cannot listen on tcp://127.0.0.1:{port} "
            "(edges.frames.bind): Address already in use")
    finally:
        finish(first)
