"""What an IP camera says about itself, asked directly rather than through FFmpeg.

OpenCV reports only that a stream did not open, and FFmpeg decodes a whole MJPEG frame while
opening it. So, around FFmpeg: `why_not_open` asks the camera once more (an HTTP GET, an RTSP
DESCRIBE) to tell a refused password (401), a forbidden or missing path, a refused connection and
silence apart; `jpeg_size` reads an HTTP camera's first JPEG header, so a frame too large for
source.max_frame_pixels is refused before anything decodes it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import ssl
import urllib.error
import urllib.request
from http.client import HTTPException
from urllib.parse import urlsplit

JPEG_HEADER_BYTES = 256 * 1024  # read at most this much of an HTTP camera's answer for a JPEG header
# JPEG start-of-frame markers (the frame's size follows): C0-CF but DHT (C4), JPG (C8), DAC (CC).
SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
RTSP_PORTS = {"rtsp": 554, "rtsps": 322}


def _http(url: str, auth: tuple[str, str] | None, timeout: float):
    """An open HTTP(S) response (headers read, body not), answering Basic or Digest challenges;
    raises urllib's errors. TLS is not verified, as FFmpeg does not by default."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=_unverified())]
    if auth:
        passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        passwords.add_password(None, url, *auth)
        handlers += [urllib.request.HTTPBasicAuthHandler(passwords),
                     urllib.request.HTTPDigestAuthHandler(passwords)]
    return urllib.request.build_opener(*handlers).open(url, timeout=timeout)


def _unverified() -> ssl.SSLContext:
    """TLS as FFmpeg speaks it by default: encrypted, the camera's (self-signed) certificate unchecked."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def why_not_open(url: str, auth: tuple[str, str] | None, timeout: float) -> str:
    """Why the camera at `url` gives no stream, as far as it tells ("" if it seems fine)."""
    scheme = urlsplit(url).scheme.lower()
    try:
        if scheme in ("http", "https"):
            with _http(url, auth, timeout) as answer:
                return f"it answers (HTTP {answer.status}) but sends no video FFmpeg can read " \
                    f"({answer.headers.get('Content-Type', 'no content type')})"
        if scheme in RTSP_PORTS:
            return _rtsp_describe(url, auth, timeout)
    except urllib.error.HTTPError as e:
        return _refusal(e.code, e.reason, auth)
    except (urllib.error.URLError, OSError, HTTPException) as e:
        return _network(getattr(e, "reason", e), timeout)
    return ""


def _refusal(code: int, reason: str, auth: tuple[str, str] | None) -> str:
    what = f"the camera answers {code} {reason}"
    if code == 401:
        return f"{what}: it refused the user and password of source.credentials" if auth else \
            f"{what}: it wants a user and password (give source.credentials)"
    if code == 403:
        return f"{what}: this user may not read this stream"
    if code == 404:
        return f"{what}: no stream at this path (check the URL in the camera's manual)"
    return what


def _network(reason: object, timeout: float) -> str:
    if isinstance(reason, socket.timeout) or "timed out" in str(reason):
        return f"no answer within {timeout:g} s (source.open_timeout_s)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the camera on, and the port right?)"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    return f"cannot connect ({getattr(reason, 'strerror', None) or reason})"


def _rtsp_describe(url: str, auth: tuple[str, str] | None, timeout: float) -> str:
    """An RTSP DESCRIBE: the status the camera answers with (answering one challenge)."""
    parts = urlsplit(url)
    plain = parts.scheme.lower() == "rtsp"
    with socket.create_connection((parts.hostname, parts.port or RTSP_PORTS[parts.scheme.lower()]),
                                  timeout=timeout) as raw:
        sock = raw if plain else _unverified().wrap_socket(raw, server_hostname=parts.hostname)
        status, reason, challenge = _describe(sock, url, 1, "")
        if status == 401 and auth and challenge:
            status, reason, _ = _describe(sock, url, 2, _authorization(challenge, url, *auth))
    if status == 200:
        return ""
    return _refusal(status, reason, auth)


def _describe(sock: socket.socket, url: str, seq: int, authorization: str) -> tuple[int, str, str]:
    """(status, reason, WWW-Authenticate) of one DESCRIBE on `sock`."""
    sock.sendall(f"DESCRIBE {url} RTSP/1.0\r\nCSeq: {seq}\r\nAccept: application/sdp\r\n"
                 f"{authorization}User-Agent: edge-pipeline\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 16384:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    match = re.match(r"RTSP/\d\.\d (\d{3}) ?(.*)", lines[0])
    if not match:
        raise OSError("the server does not speak RTSP")
    challenges = [v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
                  if k.strip().lower() == "www-authenticate"]
    digest = next((c for c in challenges if c.lower().startswith("digest")), "")
    return int(match[1]), match[2], digest or next(iter(challenges), "")


def _authorization(challenge: str, url: str, user: str, password: str) -> str:
    """The Authorization header answering an RTSP Basic or Digest (MD5) challenge."""
    if challenge.lower().startswith("basic"):
        return f"Authorization: Basic {base64.b64encode(f'{user}:{password}'.encode()).decode()}\r\n"
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    realm, nonce = fields.get("realm", ""), fields.get("nonce", "")
    ha1, ha2 = _md5(f"{user}:{realm}:{password}"), _md5(f"DESCRIBE:{url}")
    return (f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", '
            f'uri="{url}", response="{_md5(f"{ha1}:{nonce}:{ha2}")}"\r\n')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def jpeg_size(url: str, auth: tuple[str, str] | None, timeout: float) -> tuple[int, int] | None:
    """(width, height) of the first JPEG an HTTP camera sends (an MJPEG stream or a snapshot),
    read from its header; None if it sends no JPEG or cannot be asked."""
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        return None
    try:
        with _http(url, auth, timeout) as answer:
            kind = answer.headers.get("Content-Type", "").lower()
            if not kind.startswith(("multipart/", "image/jpeg")):
                return None
            data = b""
            while len(data) < JPEG_HEADER_BYTES:
                chunk = answer.read1(16384)
                if not chunk:
                    break
                data += chunk
                size = _sof_size(data)
                if size:
                    return size
    except (urllib.error.URLError, OSError, HTTPException, ValueError):
        return None
    return None


def _sof_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first JPEG start-of-frame segment in `data`, if complete."""
    i = data.find(b"\xff\xd8")
    if i < 0:
        return None
    i += 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in SOF_MARKERS:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    return None
