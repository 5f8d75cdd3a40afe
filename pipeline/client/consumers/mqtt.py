"""`mqtt` consumer: a pipeline's states, events, stats and snapshots on an MQTT broker, where
Home Assistant, Node-RED and dashboards already look (topics in docs/protocol.md).

Each source's results go through its state machine (pipeline/client/states.py); the state is
published retained on every change (and refreshed every `stats_interval`), each change as an
event, optionally with a JPEG of the frame behind it. `<prefix>/availability` is `online` while
this consumer is connected, and the broker's last will makes it `offline` when the consumer or
its host dies; a pipeline that ends or dies makes the consumer say `offline` itself.

The pipeline never waits for the broker: this is a separate process behind a PUB socket, and
paho's network thread does the sending. While the broker is unreachable, the consumer
reconnects with back-off (1 s doubling to 30 s), keeps each source's newest state and publishes
it on reconnect; events, stats and snapshots of that time are dropped and counted (`dropped` in
the stats, and the closing line), as are messages beyond a bounded queue for a slow broker.
Credentials come from the environment (MQTT_USERNAME, MQTT_PASSWORD), never from the config.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import cv2
import paho.mqtt.client as mqtt

from pipeline.client.consumers.homeassistant import discovery_configs
from pipeline.client.states import State, Tracker
from pipeline.client.subscription import Result
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.observe.format import results_per_second

USERNAME_ENV, PASSWORD_ENV = "MQTT_USERNAME", "MQTT_PASSWORD"
PORTS = {"mqtt": 1883, "mqtts": 8883}
MAX_QUEUED = 200  # QoS 1/2 messages paho may hold for a slow broker; beyond: dropped, counted
FIRST_CONNECT_S = 3.0  # how long start-up waits for the broker before going on without it
REFUSED_FOR_GOOD = ("Bad user name or password", "Not authorized", "Client identifier not valid")


class MqttError(UserError):
    """A broker URL, option or credential that cannot work; one line."""


def parse_broker(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise MqttError(f"--broker {url!r}: {e}") from None
    if parts.scheme not in PORTS or not parts.hostname:
        raise MqttError(f"--broker {url!r}: use mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)")
    if parts.username or parts.password:
        raise MqttError(f"--broker: credentials do not belong in the URL; set {USERNAME_ENV} and "
                        f"{PASSWORD_ENV} in the environment")
    if parts.path not in ("", "/") or parts.query:
        raise MqttError(f"--broker {url!r}: a broker URL has no path or query")
    return parts.hostname, port or PORTS[parts.scheme], parts.scheme == "mqtts"


def check_prefix(prefix: str) -> str:
    """A topic prefix: no wildcards, no empty levels."""
    prefix = prefix.strip("/")
    if not prefix or any(c in prefix for c in "+#\0") or "//" in prefix:
        raise MqttError(f"--topic-prefix {prefix!r}: give topic levels without wildcards "
                        f"(+ #) or empty levels, e.g. edge-pipeline/shed")
    return prefix


def _json(obj: Any) -> str:
    """JSON that any reader accepts: non-finite numbers become null."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), separators=(",", ":"))


class MqttConsumer:
    status = True
    max_age = 2.0  # states and events are about now: after falling behind, skip to fresh results
    OPTIONS = ("broker", "topic_prefix", "client_id", "qos", "discovery", "discovery_prefix",
               "snapshots", "stats_interval", "ca", "name", "config")

    def __init__(self, broker: str = "mqtt://localhost:1883", topic_prefix: str | None = None,
                 client_id: str | None = None, qos: int = 1, discovery: bool = False,
                 discovery_prefix: str = "homeassistant", snapshots: bool = False,
                 stats_interval: float = 5.0, ca: str | None = None, name: str = "pipeline",
                 config: dict[str, Any] | None = None):
        self.host, self.port, tls = parse_broker(broker)
        if qos not in (0, 1, 2):
            raise MqttError(f"--qos {qos}: must be 0, 1 or 2")
        if not (math.isfinite(stats_interval) and stats_interval > 0):
            raise MqttError(f"--stats-interval must be a positive number, got {stats_interval}")
        if ca and not os.path.isfile(ca):
            raise MqttError(f"--ca {ca}: no such file")
        self.prefix = check_prefix(topic_prefix or f"edge-pipeline/{name}")
        self.discovery_prefix = check_prefix(discovery_prefix)
        self.name, self.qos, self.discovery = name, qos, discovery
        self.frames = self.snapshots = snapshots
        self.stats_interval = stats_interval
        cfg = Config.model_validate(config) if config else None
        self.tracker = Tracker(cfg)
        self.sources = dict(self.tracker.options)
        self.model = cfg.model.name if cfg else "unknown"
        self.lock = threading.Lock()  # the states, shared with paho's thread
        self.states: dict[str, State] = {}
        self.state_sent: dict[str, float] = {}  # monotonic time each source's state was sent
        self.stats_sent = -math.inf
        self.published: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.connects = 0
        self.acknowledged = 0
        self.lost_at: float | None = None
        self.refused: str | None = None  # the broker refused us for good: why
        self.closing = False  # a disconnect from now on is ours
        self.connected = threading.Event()
        self.client = self._client(client_id, tls, ca)
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(FIRST_CONNECT_S) and self.refused is None:
            self._say(f"cannot reach the broker at {self.host}:{self.port} yet; retrying with "
                      f"back-off (events, stats and snapshots are dropped and counted meanwhile)")
        if self.refused is not None:
            self._stop_client()
            raise MqttError(f"the broker at {self.host}:{self.port} refused the connection: "
                            f"{self.refused}")
        if self.client.is_connected():
            self._say(f"publishing to {self.host}:{self.port} under {self.prefix}/")

    def _client(self, client_id: str | None, tls: bool, ca: str | None) -> mqtt.Client:
        cid = client_id or f"edge-pipeline-{socket.gethostname()}-{self.name}-{os.getpid()}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
        user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
        if password and not user:
            raise MqttError(f"{PASSWORD_ENV} is set but {USERNAME_ENV} is not")
        if user:
            client.username_pw_set(user, password)
        if tls:
            client.tls_set(ca_certs=ca)
        client.will_set(f"{self.prefix}/availability", "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_queued_messages_set(MAX_QUEUED)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # -- paho's thread ----------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            if str(reason) in REFUSED_FOR_GOOD:
                self.refused = str(reason)
                self.connected.set()  # wake the start-up wait: it reports and stops
                client.disconnect()
            else:
                self._lost(f"the broker refused the connection: {reason}")
            return
        self.connects += 1
        if self.lost_at is not None:
            dropped = sum(self.dropped.values())
            self._say(f"{'re' if self.connects > 1 else ''}connected to {self.host}:{self.port} "
                      f"after {time.monotonic() - self.lost_at:.1f} s ({dropped} messages dropped "
                      f"so far)")
            self.lost_at = None
        self._send(f"{self.prefix}/availability", "online", "availability", retain=True)
        if self.discovery:
            client.subscribe(f"{self.discovery_prefix}/status", qos=1)
            self._send_discovery()
        self._send_states()  # the newest state of each source, kept while away
        self.connected.set()

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        self._lost("cannot connect")

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        if not self.closing:
            self._lost(str(reason))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == f"{self.discovery_prefix}/status" and msg.payload == b"online":
            self._send_discovery()  # Home Assistant restarted: it forgot the entities
            self._send_states()

    def _on_publish(self, *_: Any) -> None:
        self.acknowledged += 1  # QoS 1/2: the broker has it; QoS 0: it is on the wire

    def _lost(self, why: str) -> None:
        """Once per outage; a broker never reached is reported by the start-up instead."""
        if self.lost_at is None:
            self.lost_at = time.monotonic()
            if self.connects:
                self._say(f"lost the broker at {self.host}:{self.port} ({why}); reconnecting "
                          f"with back-off (events, stats and snapshots are dropped and counted "
                          f"meanwhile)")

    # -- the consumer's thread --------------------------------------------------------------
    def on_result(self, r: Result) -> None:
        if self.refused is not None:
            raise MqttError(f"the broker at {self.host}:{self.port} refused the connection: "
                            f"{self.refused}")
        events = self.tracker.update(r)
        state = self.tracker.state(r.source)
        with self.lock:
            self.states[r.source] = state
        now = time.monotonic()
        if events:
            for e in events:
                self._send(f"{self.prefix}/{r.source}/event", _json(e.to_dict()), "event")
            self._send_state(r.source, state)
            if self.snapshots:
                self._send_snapshot(r)
        elif now - self.state_sent.get(r.source, -math.inf) >= self.stats_interval:
            self._send_state(r.source, state)  # the probability moves on

    def on_status(self, status: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.stats_sent < self.stats_interval:
            return
        self.stats_sent = now
        self._send(f"{self.prefix}/stats", _json({
            "pipeline": status.get("pipeline"), "elapsed_s": status.get("elapsed_s"),
            "fps": round(results_per_second(status), 2), "latency_ms": status.get("latency_ms"),
            "sources": status.get("sources") or {},
            "stages": status.get("stages"), "mqtt": self.counts()}), "stats")

    def counts(self) -> dict[str, Any]:
        return {"published": sum(self.published.values()), "acknowledged": self.acknowledged,
                "dropped": sum(self.dropped.values()),
                "dropped_by_kind": dict(self.dropped), "connects": self.connects,
                "connected": self.client.is_connected()}

    def _send_states(self) -> None:
        """Every source's newest state (from paho's thread: the copy kept under the lock)."""
        with self.lock:
            states = list(self.states.items())
        for source, state in states:
            self._send_state(source, state)

    def _send_state(self, source: str, state: State | None) -> None:
        if state is None:
            return
        self.state_sent[source] = time.monotonic()
        self._send(f"{self.prefix}/{source}/state", _json(state.to_dict()), "state", retain=True)

    def _send_snapshot(self, r: Result) -> None:
        if r.frame is None:
            self.dropped["snapshot"] += 1  # overwritten in the ring before it could be read
            return
        ok, jpeg = cv2.imencode(".jpg", r.frame, (cv2.IMWRITE_JPEG_QUALITY, 85))
        if not ok or not r.frame_still_valid():
            self.dropped["snapshot"] += 1
            return
        self._send(f"{self.prefix}/{r.source}/snapshot", jpeg.tobytes(), "snapshot", retain=True)

    def _send_discovery(self) -> None:
        for topic, payload in discovery_configs(
                pipeline=self.name, prefix=self.prefix, sources=self.sources, model=self.model,
                snapshots=self.snapshots, discovery_prefix=self.discovery_prefix):
            self._send(topic, _json(payload), "discovery", retain=True)

    def _send(self, topic: str, payload: str | bytes, kind: str, retain: bool = False) -> bool:
        """Publish unless the broker is away; what cannot be sent is counted, never waited for
        (a state is kept and sent again on reconnect)."""
        if not self.client.is_connected():
            if kind != "state":
                self.dropped[kind] += 1
            return False
        info = self.client.publish(topic, payload, qos=self.qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.dropped[kind] += 1
            return False
        self.published[kind] += 1
        return True

    def _say(self, text: str) -> None:
        print(f"mqtt: {text}", file=sys.stderr, flush=True)

    def _stop_client(self) -> None:
        self.closing = True
        self.client.loop_stop()

    def close(self) -> None:
        """`offline`, sent and acknowledged (up to 2 s), then a clean disconnect (no last will)."""
        self.closing = True
        if self.client.is_connected():
            info = self.client.publish(f"{self.prefix}/availability", "offline", qos=1, retain=True)
            self.published["availability"] += 1
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        c = self.counts()
        self._say(f"{c['published']} messages published ({c['acknowledged']} acknowledged by the "
                  f"broker), {c['dropped']} dropped"
                  + (f" ({', '.join(f'{k} {n}' for k, n in sorted(self.dropped.items()))})"
                     if self.dropped else ""))
