"""A real HTTP MJPEG camera for the tests, as many IP cameras serve one: `GET /video.mjpg` answers
`multipart/x-mixed-replace` with one JPEG part per frame at `fps`, optionally behind HTTP Basic
authentication (401 without the right user and password, as a camera does)."""

from __future__ import annotations

import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = "frameboundary"


def jpeg_frames(n: int = 30, width: int = 320, height: int = 240) -> list[bytes]:
    """`n` distinct JPEG frames: a box moving over a gradient."""
    base = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    frames = []
    for i in range(n):
        img = base.copy()
        x = (i * 7) % (width - 40)
        img[height // 3:height // 3 + 40, x:x + 40] = (0, 0, 255)
        frames.append(cv2.imencode(".jpg", img)[1].tobytes())
    return frames


class MjpegServer:
    """Serves `frames` in a loop on 127.0.0.1:`port` from `start()` until `stop()`."""

    def __init__(self, port: int, frames: list[bytes], fps: float = 15.0,
                 auth: tuple[str, str] | None = None):
        self.port, self.frames, self.fps = port, frames, fps
        self.expected = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() \
            if auth else None
        self.requests: list[tuple[str, int]] = []  # (authorization header given, status)
        self.httpd: ThreadingHTTPServer | None = None

    def start(self) -> "MjpegServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                given = self.headers.get("Authorization", "")
                if server.expected and given != server.expected:
                    server.requests.append((given, 401))
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.requests.append((given, 200))
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                try:
                    i = 0
                    while server.httpd is not None:
                        jpeg = server.frames[i % len(server.frames)]
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode())
                        self.wfile.write(jpeg + b"\r\n")
                        self.wfile.flush()
                        i += 1
                        time.sleep(1 / server.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def stop(self) -> None:
        httpd, self.httpd = self.httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
