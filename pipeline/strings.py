"""Checks of strings that a config file or a command line hands on to the system (paths, host
names, MQTT broker URLs and topic prefixes), shared by the config schema and the CLIs so both
refuse the same values with the same one-line reason."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def control_problem(what: str, value: str) -> str | None:
    """Why `value` cannot be used: it holds a control character (a NUL byte cannot even reach
    the operating system), or None."""
    found = CONTROL.search(value)
    if found is None:
        return None
    return f"{what} {value!r}: contains the control character {found.group()!r}; " \
           f"give printable characters only"


def broker_problem(url: str) -> str | None:
    """Why `url` is not `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]` without credentials."""
    problem = control_problem("broker", url)
    if problem:
        return problem
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port beyond 65535 or not a number
    except ValueError as e:
        return f"broker {url!r}: {e} (use mqtt://HOST[:PORT] or mqtts://HOST[:PORT], port 1-65535)"
    if parts.scheme not in MQTT_PORTS or not parts.hostname or port == 0:
        return f"broker {url!r}: use mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS), port 1-65535"
    if parts.username or parts.password:
        return "broker: credentials do not belong in the URL; set MQTT_USERNAME and MQTT_PASSWORD " \
               "in the environment"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"broker {url!r}: a broker URL has no path or query"
    return None


def topic_prefix_problem(what: str, prefix: str) -> str | None:
    """Why `prefix` cannot start topic names: empty, over 200 characters, a wildcard, a space,
    an empty level (`a//b`, `/a`) or a control character."""
    problem = control_problem(what, prefix)
    if problem:
        return problem
    if not 0 < len(prefix) <= 200 or re.search(r"[+#\s]", prefix) or "" in prefix.split("/"):
        return f"{what} {prefix!r}: give 1-200 characters of topic levels separated by single /, " \
               f"without wildcards (+ #), spaces or empty levels, e.g. edge-pipeline/shed"
    return None
