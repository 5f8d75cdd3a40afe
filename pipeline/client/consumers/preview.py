"""`preview` consumer: a small web page with the live annotated frames (MJPEG), the current label,
fps, and per-stage latency and queue depth, served on 127.0.0.1 unless told otherwise.

Routes: `/` the page, `/stream.mjpg` the frames, `/status.json` the numbers the page polls.
The HTTP server runs in threads of this consumer process; the pipeline never waits for a viewer.

A request whose Host header names a host other than this machine is refused (403): otherwise a web
page elsewhere could point its own domain name at 127.0.0.1 (DNS rebinding) and read the frames.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable
from urllib.parse import urlsplit

import cv2
import numpy as np

from pipeline.client.consumers.annotate import RateMeter, annotate
from pipeline.client.subscription import Result
from pipeline.observe.http import QuietErrors, warn_if_exposed

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{name} - live preview</title>
<style>
 body {{ font-family: system-ui, sans-serif; background: #111; color: #eee; margin: 1.5em; }}
 #frame {{ max-width: 100%; border: 1px solid #444; min-height: 120px; background: #222; }}
 #label {{ font-size: 1.8em; margin: .3em 0; }}
 table {{ border-collapse: collapse; margin-top: .8em; }}
 td, th {{ padding: .2em .8em; text-align: right; border-bottom: 1px solid #333; }}
 th:first-child, td:first-child {{ text-align: left; }}
 .muted {{ color: #999; }}
</style></head>
<body>
<h1>{name}</h1>
<img id="frame" src="/stream.mjpg" alt="live annotated frames">
<div id="label">waiting for results...</div>
<div id="summary" class="muted"></div>
<table><thead><tr><th>stage</th><th>fps</th><th>service p50 / p99 (ms)</th>
<th>queue (max)</th><th>drops</th></tr></thead><tbody id="stages"></tbody></table>
<script>
async function refresh() {{
  try {{
    const s = await (await fetch('/status.json', {{cache: 'no-store'}})).json();
    if (s.result) {{
      document.getElementById('label').textContent =
        s.result.label + ' ' + s.result.prob.toFixed(2) + '  (seq ' + s.result.seq + ')';
    }}
    document.getElementById('summary').textContent =
      s.fps.toFixed(1) + ' results/s, end-to-end latency ' +
      (s.latency_ms.p50 === undefined ? '-' : s.latency_ms.p50.toFixed(1) + ' / ' +
       s.latency_ms.p99.toFixed(1) + ' ms (p50 / p99)') + ', missed ' + s.missed;
    const rows = Object.entries(s.stages).map(([name, st]) => {{
      const svc = st.service_ms.p50 === undefined ? '-' :
        st.service_ms.p50.toFixed(1) + ' / ' + st.service_ms.p99.toFixed(1);
      const q = st.queue.max === undefined ? '-' : st.queue.p50 + ' (' + st.queue.max + ')';
      const drops = Object.values(st.drops).flatMap(Object.entries)
        .filter(([, n]) => n > 0).map(([r, n]) => r + ' ' + n).join(', ') || '0';
      return '<tr><td>' + name + '</td><td>' + st.fps_out.toFixed(1) + '</td><td>' + svc +
             '</td><td>' + q + '</td><td>' + drops + '</td></tr>';
    }});
    document.getElementById('stages').innerHTML = rows.join('');
  }} catch (e) {{ document.getElementById('summary').textContent = 'pipeline not reachable'; }}
}}
setInterval(refresh, 500); refresh();
</script></body></html>
"""


class _Shared:
    """What the HTTP threads read: the newest JPEG and the newest numbers."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.jpeg: bytes = b""
        self.frame_no = 0
        self.info: dict[str, Any] = {"result": None, "fps": 0.0, "latency_ms": {}, "stages": {},
                                     "missed": 0}
        self.closed = False


FOREIGN_HOST = (b"This preview answers only to this machine's names and addresses "
                b"(pipeline-attach --allow-host NAME adds one).\n")


def known_names(host: str, allowed: Iterable[str] = ()) -> set[str]:
    """The host names a request may carry: localhost, the bound name, this machine's names, and
    those the user allowed."""
    names = {"localhost", host, socket.gethostname(), socket.getfqdn(), *allowed}
    return {n.lower().rstrip(".") for n in names if n}


def host_allowed(header: str | None, names: set[str]) -> bool:
    """Whether a request's Host header may be answered. Only a name can be rebound to this
    machine by someone else's DNS; a browser sends an address as Host only for a page loaded
    from that address, and a request without Host does not come from a browser."""
    if header is None:
        return True
    try:
        name = urlsplit("//" + header.strip()).hostname
    except ValueError:
        return False
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name.rstrip(".") in names


class _Server(QuietErrors, ThreadingHTTPServer):
    label = "preview"
    daemon_threads = True


def _handler(shared: _Shared, page: bytes, names: set[str]) -> type[BaseHTTPRequestHandler]:
    refused_once = threading.Lock()  # taken by the first refusal, never released: one line

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # no per-request logging
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            host = self.headers.get("Host")
            if not host_allowed(host, names):
                if refused_once.acquire(blocking=False):
                    print(f"preview: refused a request for host {str(host)[:80]!r} (not a name of this "
                          "machine); --allow-host NAME accepts one", file=sys.stderr, flush=True)
                self._send(FOREIGN_HOST, "text/plain; charset=utf-8", HTTPStatus.FORBIDDEN)
            elif self.path == "/":
                self._send(page, "text/html; charset=utf-8")
            elif self.path == "/status.json":
                with shared.cond:
                    body = json.dumps(shared.info).encode()
                self._send(body, "application/json")
            elif self.path == "/stream.mjpg":
                self._stream()
            else:
                self.send_error(HTTPStatus.NOT_FOUND)

        def _send(self, body: bytes, ctype: str, status: HTTPStatus = HTTPStatus.OK) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _stream(self) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = -1
            try:
                while not shared.closed:
                    with shared.cond:
                        shared.cond.wait_for(lambda: shared.frame_no != seen or shared.closed, 1.0)
                        if shared.frame_no == seen:
                            continue
                        seen, jpeg = shared.frame_no, shared.jpeg
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                    self.wfile.flush()
            except ConnectionError:  # the viewer went away
                self.server.hung_up += 1  # type: ignore[attr-defined]

    return Handler


class PreviewConsumer:
    frames = True
    status = True
    max_age = 2.0  # a live view: after falling behind, skip to fresh results
    OPTIONS = ("port", "host", "name", "allow_hosts")

    def __init__(self, port: int = 8080, host: str = "127.0.0.1", name: str = "pipeline",
                 allow_hosts: Iterable[str] = ()):
        self.shared = _Shared()
        page = PAGE.format(name=name).encode()
        handler = _handler(self.shared, page, known_names(host, allow_hosts))
        try:
            self.server = _Server((host, port), handler)
        except OSError as e:
            raise OSError(f"preview: cannot listen on {host}:{port}: {e.strerror}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        port = self.server.server_address[1]
        self.url = f"http://{host}:{port}/"
        print(f"preview: open {self.url}", file=sys.stderr, flush=True)
        warn_if_exposed("the preview", host, port, "its frames and status", "--host")
        self.meter = RateMeter()
        self.canvas: np.ndarray | None = None
        self.missed = 0

    def on_status(self, status: dict[str, Any]) -> None:
        with self.shared.cond:
            self.shared.info["stages"] = status.get("stages", {})
            self.shared.info["latency_ms"] = status.get("latency_ms", {})

    def on_result(self, r: Result) -> None:
        rate = self.meter.tick(time.monotonic())
        self.missed += r.missed_before
        jpeg = None
        if r.frame is not None:
            if self.canvas is None or self.canvas.shape != r.frame.shape:
                self.canvas = np.empty_like(r.frame)
            annotate(r, rate, self.canvas)
            if r.frame_still_valid():
                ok, buf = cv2.imencode(".jpg", self.canvas, (cv2.IMWRITE_JPEG_QUALITY, 80))
                jpeg = buf.tobytes() if ok else None
        with self.shared.cond:
            info = self.shared.info
            info["result"] = {"seq": r.seq, "label": r.label, "prob": r.prob,
                              "latency_ms": r.latency_ms}
            info["fps"] = rate
            info["missed"] = self.missed
            if jpeg is not None:
                self.shared.jpeg = jpeg
                self.shared.frame_no += 1
            self.shared.cond.notify_all()

    def close(self) -> None:
        with self.shared.cond:
            self.shared.closed = True
            self.shared.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
