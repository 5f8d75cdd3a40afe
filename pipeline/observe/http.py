"""What both built-in HTTP servers (the metrics endpoint and the preview consumer) share: the
warning when one listens beyond loopback, quiet handling of clients that hang up, and a bound on
the connections and file descriptors any client can hold."""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
from typing import Any


def beyond_loopback(host: str) -> bool:
    """True if other machines may reach `host`: a wildcard (0.0.0.0, ::), any address outside
    127.0.0.0/8 and ::1, or a name that resolves to one. Unresolvable names count as exposed."""
    if host.lower().rstrip(".") == "localhost":
        return False
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return True
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_loopback:
            return True
    return False


def warn_if_exposed(who: str, host: str, port: int, what: str, flag: str) -> None:
    """One line on stderr when `host` is beyond loopback: the user may not expect `what` to be
    readable from the network."""
    if beyond_loopback(host):
        print(f"warning: {who} listens on {host}:{port}, beyond loopback: {what} can be read from "
              f"the network; use {flag} 127.0.0.1 or a firewall", file=sys.stderr, flush=True)


class QuietErrors:
    """Mixin for a socketserver: a client hanging up mid-request is routine (counted, silent);
    any other error is one line on stderr, once per kind, instead of a traceback per request."""

    label = "http"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hung_up = 0
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            self.hung_up += 1
        else:
            self.report(exc)

    def report(self, exc: BaseException | None) -> None:
        kind = type(exc).__name__
        with self._lock:
            first = kind not in self._reported
            self._reported.add(kind)
        if first:
            print(f"{self.label}: a request failed ({kind}: {exc}); the server runs on",
                  file=sys.stderr, flush=True)


_BUSY_TEXT = b"too many connections; try again later\n"
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT))


class BoundedConnections:
    """Mixin for a threading socketserver: at most `max_connections` open at once, and a request
    must arrive whole within `request_deadline_s` of connecting. Clients that open connections
    and never finish a request (slowloris) can thus neither take the process's file descriptors
    nor keep others waiting: at the cap, the oldest connection still sending its request is cut
    to make room; when answered connections (streams) alone fill it, a new one gets a 503.
    Handlers call `request_read` (see TimedRequests)."""

    max_connections = 64
    request_deadline_s = 10.0
    request_queue_size = 128  # a burst of connections waits in the kernel, not refused by it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_connections: set[socket.socket] = set()
        self._reading: dict[socket.socket, float] = {}  # request not read yet: accepted at (oldest first)
        self._connections_lock = threading.Lock()
        self.cut = 0  # connections cut before their request was complete
        self.refused = 0  # connections answered 503

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            if len(self.open_connections) >= self.max_connections and self._reading:
                self._cut(next(iter(self._reading)))
            admitted = len(self.open_connections) < self.max_connections
            if admitted:
                self.open_connections.add(request)
                self._reading[request] = time.monotonic()
        if not admitted:
            self.refused += 1
            try:
                request.send(BUSY, socket.MSG_DONTWAIT)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)  # type: ignore[misc]

    def request_read(self, request: Any) -> bool:
        """The handler has the whole request: True to answer it, False if it was cut meanwhile."""
        with self._connections_lock:
            return self._reading.pop(request, None) is not None

    def service_actions(self) -> None:
        """Cut the connections whose request is overdue (called by serve_forever's loop)."""
        super().service_actions()  # type: ignore[misc]
        overdue = time.monotonic() - self.request_deadline_s
        with self._connections_lock:
            while self._reading:
                request, since = next(iter(self._reading.items()))
                if since > overdue:
                    break
                self._cut(request)

    def _cut(self, request: socket.socket) -> None:
        """End a connection whose request is not complete: its handler reads the end of the
        stream and returns, closing it (call under the lock)."""
        del self._reading[request]
        self.open_connections.discard(request)
        self.cut += 1
        try:
            request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self.open_connections.discard(request)
            self._reading.pop(request, None)
        super().shutdown_request(request)  # type: ignore[misc]


class TimedRequests:
    """Mixin for the request handler of a BoundedConnections server: every read and write times
    out after `timeout` s (a client that stops reading a stream is let go), and a request cut
    before it was complete is not answered."""

    timeout = 30.0

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # type: ignore[misc]  # reads the headers
        return self.server.request_read(self.connection) and parsed  # type: ignore[attr-defined]
