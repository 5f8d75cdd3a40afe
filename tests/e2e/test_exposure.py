"""The HTTP servers on the network: listening beyond loopback warns once, the preview answers only
to this machine's host names (against DNS rebinding), and clients that hang up mid-request leave
no traceback and the servers serving."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import struct
import subprocess
import sys

import pytest

from pipeline.observe.http import beyond_loopback
from tests.support.preview import SOI, attach_preview, pipeline_config
from tests.support.processes import wait_running
from tests.support.topologies import free_port, up, wait_for

ATTACH = [sys.executable, "-m", "pipeline.cli.attach"]


def warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


def get(port: int, path: str, host: str) -> tuple[int, bytes]:
    """One GET with this Host header; of a served stream, only its first 4 KiB."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        streaming = path == "/stream.mjpg" and resp.status == 200
        return resp.status, resp.read(4096) if streaming else resp.read()
    finally:
        conn.close()


def stop(proc: subprocess.Popen) -> str:
    """Interrupt and wait, then the rest of its stderr (communicate() would skip what readline()
    has buffered)."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    return proc.stderr.read()


def _accepted(port: int, client: socket.socket) -> str | None:
    """The inode of the server's end of `client`'s connection, once the server accepted it."""
    local, remote = f"0100007F:{port:04X}", f"0100007F:{client.getsockname()[1]:04X}"
    with open("/proc/net/tcp") as f:
        for row in f.read().splitlines()[1:]:
            cols = row.split()
            if cols[1] == local and cols[2] == remote and cols[9] != "0":
                return cols[9]
    return None


def _holds(pid: int, inode: str) -> bool:
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            if os.readlink(f"{fds}/{fd}") == f"socket:[{inode}]":
                return True
        except FileNotFoundError:
            pass
    return False


def hang_up(pid: int, port: int, send: bytes = b"", read: int = 0, reset: bool = True) -> None:
    """Connect, send `send`, read `read` bytes, then leave with a reset (SO_LINGER 0) or a plain
    close; returns once the server process `pid` has closed its end (it is done with it)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    wait_for(lambda: _accepted(port, s), 30, "the server to accept", step=0.01)
    inode = _accepted(port, s)
    s.sendall(send)
    got = b""
    while len(got) < read:
        chunk = s.recv(read - len(got))
        assert chunk, got
        got += chunk
    if reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    wait_for(lambda: not _holds(pid, inode), 30, "the server to finish the connection", step=0.01)


@pytest.mark.parametrize("host, exposed", [
    ("127.0.0.1", False), ("127.3.2.1", False), ("::1", False), ("localhost", False),
    ("LocalHost.", False), ("0.0.0.0", True), ("::", True), ("192.0.2.7", True)])
def test_loopback_is_told_from_the_network(host, exposed):
    assert beyond_loopback(host) is exposed


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A synthetic pipeline with its metrics on loopback, for previews to attach to."""
    proc = up(pipeline_config(tmp_path_factory.mktemp("exposure"), "exposure"),
              "--quiet", "--metrics-port", "0")
    proc.startup = wait_running(proc)
    yield proc
    stop(proc)


def test_listeners_beyond_loopback_warn_once_and_survive_hang_ups(tmp_path, clean_machine):
    preview_port = free_port()
    config = pipeline_config(tmp_path, "exposed", {"host": "0.0.0.0", "port": preview_port})
    proc = up(config, "--quiet", "--metrics-port", "0", "--metrics-host", "0.0.0.0")
    try:
        startup = wait_running(proc)
        url = next(line.split()[1] for line in startup if line.startswith("metrics: "))
        port = int(url.split(":")[2].split("/")[0])
        assert get(port, "/metrics", f"127.0.0.1:{port}")[0] == 200
        hang_up(proc.pid, port, b"GET /metr")  # a partial request, then a reset
        hang_up(proc.pid, port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        hang_up(proc.pid, port)
        status, body = get(port, "/metrics", f"127.0.0.1:{port}")
        assert status == 200 and b"pipeline_end_to_end_latency_seconds" in body
        # The preview declared in the config answers on 0.0.0.0 (reached here over 127.0.0.1).
        wait_for(lambda: _serves(preview_port), 60, "the configured preview")
    finally:
        err = stop(proc)
    assert "Traceback" not in err, err
    found = warnings("".join(startup) + err)
    assert len(found) == 2, found
    assert found[0].startswith(f"warning: the metrics endpoint listens on 0.0.0.0:{port}, ")
    assert found[1].startswith(f"warning: the preview listens on 0.0.0.0:{preview_port}, ")
    assert all("127.0.0.1 or a firewall" in w for w in found)


def _serves(port: int) -> bool:
    try:
        return get(port, "/status.json", "localhost")[0] == 200
    except OSError:
        return False


def test_preview_refuses_foreign_host_names(live):
    preview, port = attach_preview("exposure", "--host", "0.0.0.0", "--allow-host", "cam.example")
    try:
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "[bad"):
            for path in ("/", "/status.json", "/stream.mjpg"):
                status, body = get(port, path, host)
                assert status == 403 and b"--allow-host" in body, (host, path, status)
                assert SOI not in body and b"--frame" not in body
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", socket.gethostname(),
                     "cam.example", f"[::1]:{port}", "192.0.2.7"):
            status, body = get(port, "/stream.mjpg", host)
            assert status == 200 and SOI in body, (host, status)
        assert get(port, "/", f"localhost:{port}")[0] == 200
    finally:
        err = stop(preview)
    found = warnings(err)
    assert len(found) == 1 and found[0].startswith(
        f"warning: the preview listens on 0.0.0.0:{port}, beyond loopback: "), err
    refused = [line for line in err.splitlines() if "refused" in line]
    assert refused == ["preview: refused a request for host 'evil.example' (not a name of this "
                       "machine); --allow-host NAME accepts one"], err


def test_preview_on_loopback_is_quiet_about_clients_that_hang_up(live):
    assert any(line.startswith("metrics: http://127.0.0.1:") for line in live.startup)
    assert warnings("".join(live.startup)) == []  # metrics on loopback
    preview, port = attach_preview("exposure")  # on 127.0.0.1 by default
    stream = b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        hang_up(preview.pid, port, b"GET /stream.mj")  # a partial request, then a reset
        hang_up(preview.pid, port, b"GET / HTTP/1.1\r\nHost: localh")
        hang_up(preview.pid, port, stream, read=200)  # a few bytes of the stream, then a reset
        hang_up(preview.pid, port, stream, read=200, reset=False)  # ... then a plain close
        hang_up(preview.pid, port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # not read
        hang_up(preview.pid, port, b"GET /status.json HTTP/1.1\r\n\r\n", reset=False)
        hang_up(preview.pid, port)  # nothing sent
        status, body = get(port, "/stream.mjpg", f"127.0.0.1:{port}")
        assert status == 200 and SOI in body
    finally:
        err = stop(preview)
    assert "Traceback" not in err and "Exception" not in err and "failed" not in err, err
    assert warnings(err) == [], err
