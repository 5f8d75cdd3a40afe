"""A real MQTT broker for the tests (Debian's mosquitto on a free loopback port, installed with
apt-get where missing) and a paho subscriber that records what the broker delivers."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

MOSQUITTO = "/usr/sbin/mosquitto"


def mosquitto() -> str:
    """The mosquitto binary, installed with apt-get when missing (as root); else skip."""
    path = shutil.which("mosquitto") or (MOSQUITTO if Path(MOSQUITTO).exists() else None)
    if path:
        return path
    if shutil.which("apt-get") is None or not _root():
        pytest.skip("mosquitto is not installed and this user cannot install it with apt-get")
    ok = subprocess.run("apt-get update -qq && apt-get install -y -qq mosquitto", shell=True,
                        capture_output=True, timeout=900).returncode == 0
    if not ok or not Path(MOSQUITTO).exists():
        pytest.skip("Debian's mosquitto package could not be installed here")
    return MOSQUITTO


def _root() -> bool:
    import os

    return os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1:`port`, no persistence (a restart forgets retained messages)."""

    def __init__(self, folder: Path, *, passwords: dict[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None):
        self.binary = mosquitto()
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "user root"]
        if passwords:
            pwfile = folder / "passwords"
            pwfile.touch(mode=0o600)
            for user, password in passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines += ["allow_anonymous true"]
        if tls:
            ca, cert, key = tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
        (folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.folder / "mosquitto.log", "a")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.folder / "mosquitto.conf")],
                                     stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, (self.folder / "mosquitto.log").read_text()
                time.sleep(0.05)
        raise AssertionError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Watcher:
    """A paho subscriber to `#` that keeps every message: (topic, payload, retain, time)."""

    def __init__(self, port: int, topics: str = "#"):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe(topics, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self.cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain), time.monotonic()))
            self.cond.notify_all()

    def on(self, topic: str) -> list[bytes]:
        with self.cond:
            return [m[1] for m in self.messages if m[0] == topic]

    def json_on(self, topic: str) -> list[dict]:
        return [json.loads(p) for p in self.on(topic)]

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = check()
                if value:
                    return value
                left = deadline - time.monotonic()
                assert left > 0, f"timed out after {timeout} s waiting for {what}; got " \
                                 f"{sorted({m[0] for m in self.messages})}"
                self.cond.wait(min(left, 0.2))

    def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
