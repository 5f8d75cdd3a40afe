"""What both built-in HTTP servers (the metrics endpoint and the preview consumer) share: the
warning when one listens beyond loopback, and quiet handling of clients that hang up."""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
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
