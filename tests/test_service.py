"""Running as a systemd service: the sd_notify messages, checked on a unix datagram socket the
test binds as systemd would (READY only once the model is warm and frames flow, WATCHDOG only
while every stage is healthy, STATUS each second, STOPPING at the end)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

from pipeline import attach

from .conftest import launch, pipeline_cmd


class NotifySocket:
    """What systemd's $NOTIFY_SOCKET receives, with the monotonic time of each datagram."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, list[str]]] = []
        self.done = False
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.done:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def times(self, field: str) -> list[float]:
        return [t for t, fields in self.messages if field in fields]

    def wait_for(self, check, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.messages[-5:]}")

    def close(self) -> None:
        self.done = True
        self.thread.join()
        self.sock.close()


def stage_pid(supervisor: int, stage: str) -> int:
    out = subprocess.run(["pgrep", "-f", f"workers.stage --stage {stage} .*--parent {supervisor}"],
                         capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_notifications_follow_readiness_health_and_stop(tmp_path, clean_machine):
    notify = NotifySocket(str(tmp_path / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "3000000"}
    # The supervisor's own watchdog off: a frozen stage stays frozen, as a wedged one would.
    proc = launch(pipeline_cmd("demo.toml", "--quiet", "--name", "notifylab", "--set",
                               "model.runtime=onnxruntime", "--set", "supervision.watchdog_s=0"),
                  env=env)
    try:
        ready = notify.wait_for(lambda: notify.times("READY=1"), 10, "READY=1")[0]
        before = [fields for t, fields in notify.messages if t < ready]
        assert before and all(f[0].startswith("STATUS=starting") for f in before), before
        # Ready means classifying: a subscriber gets a result at once.
        with attach("notifylab") as sub:
            assert sub.receive(timeout=5) is not None
        notify.wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 2, 10, "two watchdog pings")
        assert min(notify.times("WATCHDOG=1")) > ready
        line = next(f for _, f in reversed(notify.messages) if "WATCHDOG=1" in f)[1]
        assert line.startswith("STATUS=") and " fps, latency " in line and "drops " in line

        worker = stage_pid(proc.pid, "inference")
        os.kill(worker, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            stalled = notify.wait_for(lambda: [t for t, f in notify.messages if t > frozen and any(
                "inference stalled" in x for x in f)], 15, "a STATUS naming the stalled worker")[0]
            assert stalled - frozen < 6  # no stats for 3 s (STALLED_AFTER_S) is a stall
            time.sleep(2.5)  # several more seconds of status, all without a ping
            pings = notify.times("WATCHDOG=1")
            assert not [t for t in pings if t >= stalled], "a ping while a stage is stalled"
            assert max(pings) < stalled
        finally:
            os.kill(worker, signal.SIGCONT)
        thawed = time.monotonic()
        notify.wait_for(lambda: [t for t in notify.times("WATCHDOG=1") if t > thawed], 10,
                        "pings again after the stage recovered")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
        time.sleep(0.3)
        stopping = notify.times("STOPPING=1")
        assert len(stopping) == 1 and not [t for t in notify.times("WATCHDOG=1") if t > stopping[0]]
        assert any(x.startswith("STATUS=stopping (SIGTERM)") for _, f in notify.messages for x in f)
        assert len(notify.times("READY=1")) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        notify.close()
