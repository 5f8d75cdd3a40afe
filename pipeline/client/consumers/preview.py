"""`preview` consumer: a small web page with the live annotated frames (MJPEG), the current label,
fps, and per-stage latency and queue depth, served on 127.0.0.1 unless told otherwise.

Routes (GET; `SOURCE` is a result's `source`, e.g. `video`, `synthetic` or a configured id):

- `/` the page; `/status.json` the numbers the page polls;
- `/stream.mjpg` (or `.mjpeg`) the frames of all sources (multipart/x-mixed-replace);
- `/latest.jpg` the newest frame of any source, one JPEG (for a camera card or a browser);
- `/SOURCE/latest.jpg` the newest frame of that source;
- `/SOURCE/stream.mjpeg` (or `.mjpg`) the frames of that source only.

The image routes take `?annotate=0` for the frame as captured (no label band), `annotate=1` (the
default) for the annotated one. Before a source's first frame, and for an unknown source, they
answer 404 with one line naming the sources seen so far. The annotated JPEG is encoded once per
result (it feeds the streams); the raw one only when asked for, once per frame however many ask.
The HTTP server runs in threads of this consumer process; the pipeline never waits for a viewer.

A request whose Host header names a host other than this machine is refused (403): otherwise a web
page elsewhere could point its own domain name at 127.0.0.1 (DNS rebinding) and read the frames.

With a dataset folder (`dataset`), `/teach` and the paths under it are the labelling page
(pipeline.client.teach): its changes are POSTs that need the write token printed at start.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from pipeline.client.consumers.annotate import RateMeter, annotate
from pipeline.client.result import Result
from pipeline.config.consumers import default
from pipeline.errors import UserError
from pipeline.observe.http import BoundedConnections, QuietErrors, TimedRequests, warn_if_exposed

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


JPEG_QUALITY = (cv2.IMWRITE_JPEG_QUALITY, 80)
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")  # the labelling page's write token
MAX_SOURCES = 64  # sources tracked for the per-source routes; a stream of odd names cannot grow memory
SOURCE_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")  # what a source id may be (config schema)
ANNOTATE = {"1": True, "true": True, "yes": True, "on": True,
            "0": False, "false": False, "no": False, "off": False}


class _Source:
    """One source's newest frame: its annotated JPEG, encoded per result because the streams need
    it anyway, and a copy of the frame as captured, encoded only when a viewer asks for it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.canvas: np.ndarray | None = None  # the consumer thread's alone
        self.jpeg = b""  # annotated; jpeg and frame_no under _Shared.cond
        self.frame_no = 0
        # The raw copy: everything below only under raw_lock. The consumer thread skips a copy
        # rather than wait for an encode in progress, so it never waits for a viewer.
        self.raw_lock = threading.Lock()
        self.raw: np.ndarray | None = None
        self.raw_no = 0  # good copies so far: the number of the frame in `raw`
        self.raw_good = False  # False while `raw` holds a copy the ring overwrote meanwhile
        self.raw_jpeg = b""  # the encoded copy number raw_jpeg_no, shared by every viewer
        self.raw_jpeg_no = 0

    def take_raw(self, r: Result) -> bool:
        """Copy the result's frame; True if a new good copy is in place. Called by the consumer
        thread only; skipped (False) while a viewer's encode holds the copy."""
        if not self.raw_lock.acquire(blocking=False):
            return False
        try:
            assert r.frame is not None
            if self.raw is None or self.raw.shape != r.frame.shape:
                self.raw = np.empty_like(r.frame)
            np.copyto(self.raw, r.frame)
            self.raw_good = r.frame_still_valid()
            if self.raw_good:
                self.raw_no += 1
            return self.raw_good
        finally:
            self.raw_lock.release()

    def raw_jpeg_now(self) -> bytes:
        """The newest good raw frame as JPEG (b"" if none yet), encoded at most once per frame."""
        with self.raw_lock:
            if self.raw_good and self.raw_no != self.raw_jpeg_no and self.raw is not None:
                ok, buf = cv2.imencode(".jpg", self.raw, JPEG_QUALITY)
                if ok:
                    self.raw_jpeg, self.raw_jpeg_no = buf.tobytes(), self.raw_no
            return self.raw_jpeg


class _Shared:
    """What the HTTP threads read: the newest JPEGs, per source and of all, and the newest numbers."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.jpeg: bytes = b""  # annotated, newest of all sources (tracked or not): /stream.mjpg
        self.frame_no = 0
        self.sources: dict[str, _Source] = {}  # at most MAX_SOURCES, in order of first frame
        self.newest: _Source | None = None  # the tracked source of the newest annotated frame
        self.raw_no = 0  # good raw copies of all sources, and the source of the newest one
        self.raw_newest: _Source | None = None
        self.info: dict[str, Any] = {"result": None, "fps": 0.0, "latency_ms": {}, "stages": {},
                                     "missed": 0}
        self.closed = False

    def no_frame(self, name: str | None) -> bytes:
        """The 404 body: which source has no frame, and those that have one (call under cond)."""
        have = ", ".join(n for n, s in self.sources.items() if s.jpeg) or "none"
        which = f" from source {name[:60]!r}" if name is not None else ""
        return f"no frame yet{which} (sources so far: {have})\n".encode()


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


class _Server(QuietErrors, BoundedConnections, ThreadingHTTPServer):
    """Room for a hundred and more viewers of the streams, far below the process's descriptors."""

    label = "preview"
    daemon_threads = True
    max_connections = 256


def _handler(shared: _Shared, page: bytes, names: set[str], teach: Any = None
             ) -> type[BaseHTTPRequestHandler]:
    refused_once = threading.Lock()  # taken by the first refusal, never released: one line

    class Handler(TimedRequests, BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # no per-request logging
            pass

        def _foreign_host(self) -> bool:
            """Refuse (403) a request for a host that is not this machine; True if refused."""
            host = self.headers.get("Host")
            if host_allowed(host, names):
                return False
            if refused_once.acquire(blocking=False):
                print(f"preview: refused a request for host {str(host)[:80]!r} (not a name of this "
                      "machine); --allow-host NAME accepts one", file=sys.stderr, flush=True)
            self.close_connection = True  # a POST's body is not read
            self._send(FOREIGN_HOST, "text/plain; charset=utf-8", HTTPStatus.FORBIDDEN)
            return True

        def _teach(self, path: str) -> bool:
            """Hand /teach and the paths under it to the labelling page; True if handed."""
            if path != "/teach" and not path.startswith("/teach/"):
                return False
            from pipeline.client.teach import api

            if teach is None:
                api.no_dataset(self)
            elif self.command == "POST":
                teach.post(self)
            else:
                teach.get(self)
            return True

        def do_POST(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            if teach is not None and (path == "/teach" or path.startswith("/teach/")):
                teach.post(self)  # its own Host, origin and token checks, answered in JSON
                return
            if self._foreign_host():
                return
            if not self._teach(path):
                self.close_connection = True
                self._send(b"only the labelling page (/teach) takes POST requests\n",
                           "text/plain; charset=utf-8", HTTPStatus.METHOD_NOT_ALLOWED)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self._foreign_host():
                return
            url = urlsplit(self.path)
            path = url.path
            if self._teach(path):
                return
            if path == "/":
                self._send(page, "text/html; charset=utf-8")
                return
            if path == "/status.json":
                with shared.cond:
                    body = json.dumps(shared.info).encode()
                self._send(body, "application/json")
                return
            parts = path.split("/")  # "/SOURCE/latest.jpg" -> ["", "SOURCE", "latest.jpg"]
            if path in ("/stream.mjpg", "/stream.mjpeg", "/latest.jpg"):
                name, leaf = None, parts[1]
            elif len(parts) == 3 and parts[2] in ("latest.jpg", "stream.mjpeg", "stream.mjpg"):
                name, leaf = parts[1], parts[2]
            else:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            values = parse_qs(url.query).get("annotate", ["1"])
            annotated = ANNOTATE.get(values[-1].lower())
            if annotated is None:
                self._send(b"annotate takes 0 (the frame as captured) or 1 (annotated, the default)\n",
                           "text/plain; charset=utf-8", HTTPStatus.BAD_REQUEST)
                return
            with shared.cond:
                source = shared.newest if path == "/latest.jpg" else shared.sources.get(name or "")
                unknown = name is not None and (source is None or not source.jpeg)
                missing = shared.no_frame(name) if unknown else b""
            if missing:
                self._send(missing, "text/plain; charset=utf-8", HTTPStatus.NOT_FOUND)
            elif leaf == "latest.jpg":
                self._latest(source, annotated, name)
            else:
                self._stream(source, annotated)

        def _send(self, body: bytes, ctype: str, status: HTTPStatus = HTTPStatus.OK) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _latest(self, source: _Source | None, annotated: bool, name: str | None) -> None:
            jpeg = b""
            if source is not None and annotated:
                with shared.cond:
                    jpeg = source.jpeg
            elif source is not None:
                jpeg = source.raw_jpeg_now()
            if jpeg:
                self._send(jpeg, "image/jpeg")
            else:
                with shared.cond:
                    body = shared.no_frame(name)
                self._send(body, "text/plain; charset=utf-8", HTTPStatus.NOT_FOUND)

        def _stream(self, source: _Source | None, annotated: bool) -> None:
            """Each new frame as one part, of one source or (source None) of all; a viewer that
            falls behind skips to the newest frame."""
            def number() -> int:
                if source is None:
                    return shared.frame_no if annotated else shared.raw_no
                return source.frame_no if annotated else source.raw_no

            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = 0  # frame numbers start at 1: the first part is the first frame
            try:
                while not shared.closed:
                    with shared.cond:
                        shared.cond.wait_for(lambda: number() != seen or shared.closed, 1.0)
                        if number() == seen:
                            continue
                        seen = number()
                        jpeg = (source or shared).jpeg if annotated else b""
                        raw_of = None if annotated else source or shared.raw_newest
                    if raw_of is not None:  # encoded outside the lock: the results go on meanwhile
                        jpeg = raw_of.raw_jpeg_now()
                    if not jpeg:
                        continue
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

    def __init__(self, port: int = default("port"), host: str = default("host"), name: str = "pipeline",
                 allow_hosts: Iterable[str] = (), config: dict[str, Any] | None = None,
                 dataset: str | None = None, token: str | None = None,
                 review_below: float = default("review_below"), models: str | None = None):
        self.shared = _Shared()
        page = PAGE.format(name=name).encode()
        names = known_names(host, allow_hosts)
        self.review: Any = None
        teach = self._teach(dataset, token, review_below, models, name, config, names) if dataset else None
        self.teach = teach
        handler = _handler(self.shared, page, names, teach)
        try:
            self.server = _Server((host, port), handler)
        except OSError as e:
            raise OSError(f"preview: cannot listen on {host}:{port}: {e.strerror}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        port = self.server.server_address[1]
        self.url = f"http://{host}:{port}/"
        print(f"preview: open {self.url}", file=sys.stderr, flush=True)
        if teach is not None:
            print(f"teach: {self.url}teach#token={teach.token.decode()}", file=sys.stderr, flush=True)
        warn_if_exposed("the preview", host, port, "its frames and status", "--host")
        self.meter = RateMeter()
        self.canvas: np.ndarray | None = None  # for the frames of sources not tracked
        self.missed = 0

    def _teach(self, dataset: str, token: str | None, below: float, models: str | None,
               name: str, config: dict[str, Any] | None, names: set[str]) -> Any:
        """The labelling page of `dataset`, and the review of uncertain results into it."""
        from pipeline.client.teach.api import TeachApp
        from pipeline.client.teach.review import Review
        from pipeline.client.teach.store import Store
        from pipeline.outputs import check_folder

        if not 0 <= below <= 1:
            raise UserError(f"--review-below must be a probability 0-1 (0: no review), got {below}")
        if token is not None and not TOKEN.fullmatch(token):
            raise UserError("--token: 16-128 letters, digits, - or _ (default: a random one, printed "
                            "at start)")
        problem = check_folder(dataset, "--dataset")
        if problem:
            raise UserError(problem)
        try:
            store = Store(dataset)
        except OSError as e:
            raise UserError(f"--dataset {dataset}: cannot use it ({e.strerror})") from None
        if below > 0:
            self.review = Review(store.root, below, config)
        shared = self.shared
        configured: list[str] = []
        if config:
            from pipeline.config import Config

            configured = Config.model_validate(config).source_ids()

        def sources() -> list[str]:
            """The configured sources, and any other seen so far."""
            with shared.cond:
                return list(dict.fromkeys([*configured, *shared.sources]))

        folder = Path(models) if models else store.root.parent / f"{store.root.name}-models"
        return TeachApp(store, token or secrets.token_urlsafe(24), folder, name, sources,
                        lambda host: host_allowed(host, names))

    def on_status(self, status: dict[str, Any]) -> None:
        with self.shared.cond:
            self.shared.info["stages"] = status.get("stages", {})
            self.shared.info["latency_ms"] = status.get("latency_ms", {})

    def _source(self, name: str) -> _Source | None:
        """The source's buffers, made on its first frame; None for a name no URL can address or
        beyond MAX_SOURCES (its frames still reach /stream.mjpg)."""
        source = self.shared.sources.get(name)  # only this thread adds to it
        if source is None and len(self.shared.sources) < MAX_SOURCES and SOURCE_ID.fullmatch(name):
            source = _Source(name)
            with self.shared.cond:
                self.shared.sources[name] = source
        return source

    def on_result(self, r: Result) -> None:
        rate = self.meter.tick(time.monotonic())
        self.missed += r.missed_before
        jpeg = None
        source: _Source | None = None
        raw = False  # a new good raw copy
        if r.frame is not None:
            source = self._source(r.source)
            raw = source is not None and source.take_raw(r)
            canvas = source.canvas if source is not None else self.canvas
            if canvas is None or canvas.shape != r.frame.shape:
                canvas = np.empty_like(r.frame)
                if source is not None:
                    source.canvas = canvas
                else:
                    self.canvas = canvas
            if self.review is not None:
                self.review.on_result(r)  # (a region copied out of the frame, about once a second)
            annotate(r, rate, canvas)
            if r.frame_still_valid():
                ok, buf = cv2.imencode(".jpg", canvas, JPEG_QUALITY)
                jpeg = buf.tobytes() if ok else None
        with self.shared.cond:
            shared = self.shared
            info = shared.info
            info["result"] = {"seq": r.seq, "label": r.label, "prob": r.prob,
                              "latency_ms": r.latency_ms}
            info["fps"] = rate
            info["missed"] = self.missed
            if jpeg is not None:
                shared.jpeg = jpeg
                shared.frame_no += 1
                if source is not None:
                    source.jpeg = jpeg
                    source.frame_no += 1
                    shared.newest = source
            if raw:
                shared.raw_no += 1
                shared.raw_newest = source
            shared.cond.notify_all()

    def close(self) -> None:
        with self.shared.cond:
            self.shared.closed = True
            self.shared.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
        if self.teach is not None:
            self.teach.close()
