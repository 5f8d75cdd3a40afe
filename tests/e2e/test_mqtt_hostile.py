"""The mqtt consumer against what a hostile or careless user sends it: a broker whose packets
paho cannot handle (a topic that is not UTF-8, a malformed PUBLISH), a client that publishes a
huge message or floods Home Assistant's `online` through a real mosquitto, and consumer options
a config or a command line cannot mean."""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.client.consumers.mqtt import MAX_INCOMING, REDISCOVERY_S
from tests.support.assets import ROOT
from tests.support.mqtt_broker import Broker, Watcher, free_port
from tests.support.processes import launch, pipeline_cmd

ATTACH = [sys.executable, "-m", "pipeline.cli.attach"]
NAME = "mqtthostile"


@pytest.fixture(scope="module")
def pipeline():
    """The synthetic camera with random weights: results and a status every second."""
    proc = launch(pipeline_cmd("demo.toml", "--name", NAME, "--set", "model.weights=none",
                               "--quiet"))
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)


def attach_mqtt(port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*ATTACH, "--name", NAME, "--consumer", "mqtt", "--broker",
                             f"mqtt://127.0.0.1:{port}", *args], cwd=ROOT, text=True,
                            stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=30)[1]


def packet(kind: int, body: bytes) -> bytes:
    """An MQTT packet: the fixed header (type and flags, remaining length) and `body`."""
    length, n = b"", len(body)
    while True:
        n, digit = n // 128, n % 128
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            return bytes([kind]) + length + body


def publish(topic: bytes, payload: bytes, retain: bool = False) -> bytes:
    """A QoS 0 PUBLISH of raw topic bytes (which mosquitto would check; this broker does not)."""
    return packet(0x31 if retain else 0x30, struct.pack("!H", len(topic)) + topic + payload)


class HostileBroker:
    """An MQTT 3.1.1 server on a loopback port that answers CONNECT, SUBSCRIBE, UNSUBSCRIBE,
    PINGREQ and QoS 1 PUBLISH as a broker does, records every PUBLISH it receives, and sends
    `attack` once, on the first connection, after the client's first SUBSCRIBE."""

    def __init__(self, attack: bytes):
        self.attack = attack
        self.attacked_at: float | None = None
        self.published: list[tuple[int, str, float]] = []  # (connection, topic, time)
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.server.getsockname()[1]
        self.server.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _read(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn:
            try:
                while self.running:
                    kind = self._read(conn, 1)[0]
                    length, mult = 0, 1
                    while True:
                        byte = self._read(conn, 1)[0]
                        length += (byte & 0x7F) * mult
                        mult *= 128
                        if not byte & 0x80:
                            break
                    body = self._read(conn, length)
                    self._answer(conn, number, kind, body)
            except (ConnectionError, OSError):
                pass

    def _answer(self, conn: socket.socket, number: int, kind: int, body: bytes) -> None:
        if kind >> 4 == 1:  # CONNECT
            conn.sendall(packet(0x20, b"\x00\x00"))
        elif kind >> 4 == 8:  # SUBSCRIBE: grant QoS 1 to each filter
            filters, pos = 0, 2
            while pos < len(body):
                pos += 2 + struct.unpack("!H", body[pos:pos + 2])[0] + 1
                filters += 1
            conn.sendall(packet(0x90, body[:2] + b"\x01" * filters))
            if number == 1 and self.attacked_at is None:
                self.attacked_at = time.monotonic()
                conn.sendall(self.attack)
        elif kind >> 4 == 10:  # UNSUBSCRIBE
            conn.sendall(packet(0xB0, body[:2]))
        elif kind >> 4 == 12:  # PINGREQ
            conn.sendall(packet(0xD0, b""))
        elif kind >> 4 == 3:  # PUBLISH
            size = struct.unpack("!H", body[:2])[0]
            self.published.append((number, body[2:2 + size].decode(), time.monotonic()))
            if (kind >> 1) & 3 == 1:
                conn.sendall(packet(0x40, body[2 + size:4 + size]))
        elif kind >> 4 == 14:  # DISCONNECT
            raise ConnectionError

    def published_after(self, t: float, suffix: str) -> list[tuple[int, str, float]]:
        return [p for p in self.published if p[2] > t and p[1].endswith(suffix)]

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.server.close()


@pytest.mark.parametrize("attack", ["topic not UTF-8", "state nested 60,000 deep"])
def test_a_message_that_cannot_be_handled_does_not_silence_the_consumer(pipeline, attack):
    """A topic that is not UTF-8 (paho raises when it is read), or a retained state on the
    consumer's own topic that no JSON parser can take, is ignored and counted: stats go on
    reaching the broker on the same connection, and the process says what it ignored."""
    bad = publish(b"homeassistant/\xff\xfe", b"online") if attack == "topic not UTF-8" \
        else publish(b"hostile/synthetic/state", b"[" * 60_000, retain=True)
    broker = HostileBroker(bad)
    consumer = attach_mqtt(broker.port, "--discovery", "--topic-prefix", "hostile",
                           "--stats-interval", "0.5")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                broker.attacked_at and len(broker.published_after(broker.attacked_at, "/stats")) >= 3):
            assert consumer.poll() is None, consumer.communicate()[1]
            time.sleep(0.2)
        after = broker.published_after(broker.attacked_at or 0, "/stats")
        assert broker.attacked_at is not None, "the consumer never subscribed"
        assert len(after) >= 3, f"nothing published after the attack: {broker.published[-3:]}"
    finally:
        err = stop(consumer)
        broker.close()
    assert consumer.returncode == 0 and "Traceback" not in err, err
    assert "(not UTF-8) (UnicodeDecodeError)" in err if attack == "topic not UTF-8" else \
        "ignored a message on 'hostile/synthetic/state' (RecursionError)" in err
    assert "1 received messages ignored" in err
    assert {n for n, _, _ in after} == {1}  # the same connection went on


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident memory."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1])


def test_a_huge_message_on_the_status_topic_is_refused_unread(tmp_path, pipeline):
    """Any client may publish on homeassistant/status: a message many times the limit drops
    the connection before it is read (peak memory stays put), and the consumer reconnects."""
    broker = Broker(tmp_path / "broker")
    prefix = "huge"
    watcher = Watcher(broker.port, f"{prefix}/#")
    consumer = attach_mqtt(broker.port, "--discovery", "--topic-prefix", prefix,
                           "--stats-interval", "0.5")
    try:
        watcher.wait_for(lambda: watcher.on(f"{prefix}/stats"), 30, "stats")
        before = vm_hwm_kib(consumer.pid)
        size = 1000 * MAX_INCOMING  # 64 MB
        watcher.client.publish("homeassistant/status", b"o" * size, qos=0).wait_for_publish(30)
        sent = time.monotonic()
        watcher.wait_for(lambda: [m for m in watcher.messages
                                  if m[0] == f"{prefix}/stats" and m[3] > sent], 60, "stats after")
        grown = vm_hwm_kib(consumer.pid) - before
        print(f"peak memory grew {grown} KiB for a {size >> 20} MiB message")
        assert grown < size / 1024 / 4, f"peak memory grew {grown} KiB for a {size} byte message"
        stats = watcher.wait_for(
            lambda: [s for s in watcher.json_on(f"{prefix}/stats") if s["mqtt"]["connects"] == 2],
            60, "stats after reconnecting")
        assert stats[-1]["mqtt"]["connected"]
    finally:
        err = stop(consumer)
        watcher.close()
        broker.stop()
    assert f"at most {MAX_INCOMING} are accepted" in err and "reconnected" in err, err


def flood(port: int, seconds: float, per_second: int) -> int:
    """`online` on homeassistant/status from a raw client, `per_second` for `seconds`."""
    batch = publish(b"homeassistant/status", b"online") * (per_second // 100)
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x05flood"))
        assert s.recv(4)[:2] == b"\x20\x02"
        start = time.monotonic()
        while time.monotonic() < start + seconds:
            s.sendall(batch)
            sent += per_second // 100
            time.sleep(max(0.0, start + sent / per_second - time.monotonic()))
        s.sendall(packet(0xE0, b""))
    return sent


def test_a_flood_of_online_sends_discovery_at_most_every_few_seconds(tmp_path, pipeline):
    """~25,000 `online` a second for 10 s: the configs go out again at most once every
    REDISCOVERY_S, stats keep being published and nothing is dropped."""
    broker = Broker(tmp_path / "broker")
    prefix = "flooded"
    watcher = Watcher(broker.port, [("homeassistant/+/+/+/config", 1), (f"{prefix}/#", 1)])
    consumer = attach_mqtt(broker.port, "--discovery", "--topic-prefix", prefix,
                           "--stats-interval", "0.5")
    try:
        watcher.wait_for(lambda: watcher.on(f"{prefix}/stats"), 30, "stats")
        configs = len([m for m in watcher.messages if m[0].endswith("/config")])
        assert configs >= 2
        t0 = time.monotonic()
        sent = flood(broker.port, 10, 25_000)
        t1 = time.monotonic()
        watcher.wait_for(lambda: [m for m in watcher.messages
                                  if m[0] == f"{prefix}/stats" and m[3] > t1], 30, "stats after")
        time.sleep(REDISCOVERY_S + 1)  # a last coalesced rediscovery may follow the flood
    finally:
        err = stop(consumer)
        watcher.close()
        broker.stop()
    print(f"flood: {sent} messages in {t1 - t0:.1f} s")
    resent = [m for m in watcher.messages if m[0].endswith("/config") and m[3] > t0]
    rounds = len(resent) / configs
    assert 1 <= rounds <= (time.monotonic() - t0) / REDISCOVERY_S + 1, rounds
    during = [m for m in watcher.messages if m[0] == f"{prefix}/stats" and t0 < m[3] < t1]
    assert during, "no stats published during the flood"
    assert re.search(r", 0 dropped", err), err


@pytest.mark.parametrize("key, value, wrong", [
    ("broker", "mqtt://127.0.0.1:99999", "Port out of range"),
    ("broker", "mqtt://127.0.0.1:0", "port 1-65535"),
    ("topic_prefix", "a//b", "empty levels"),
    ("topic_prefix", "/site/shed", "empty levels"),
    ("discovery_prefix", "home assistant", "spaces"),
    ("out", "events\u0000.jsonl", "control character"),
    ("host", "\u0000", "control character"),
    ("allow_hosts", ["pi.lan", "x\u0000"], "control character"),
    ("ca", "ca\u0000.pem", "control character"),
    ("topic_prefix", "site\u0000", "control character"),
    ("discovery_prefix", "ha\u0001", "control character"),
])
def test_consumer_options_that_cannot_work_are_config_errors(tmp_path, key, value, wrong):
    """`--check` refuses them in one line naming the option and which consumer, before anything
    starts."""
    import tomli_w

    kind = "jsonl" if key in ("out", "host", "allow_hosts") else "mqtt"
    config = {"name": "badconsumer", "consumers": [{"kind": "print"}, {"kind": kind, key: value}]}
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(config))
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(path), "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and f"consumers[1].{key}" in lines[0] and wrong in lines[0], p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("flag", ["--out", "--host", "--allow-host", "--ca", "--broker",
                                  "--topic-prefix", "--discovery-prefix"])
def test_pipeline_attach_refuses_control_characters(flag):
    """(A NUL cannot be in a command line; the other control characters can.)"""
    p = subprocess.run([*ATTACH, "--name", "nosuchpipeline", "--consumer", "mqtt", flag,
                        "x\x01y"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"pipeline-attach: {flag} ") and "control character" in p.stderr
