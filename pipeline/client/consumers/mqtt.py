"""`mqtt` consumer: a pipeline's states, events, stats and snapshots on an MQTT broker, where
Home Assistant, Node-RED and dashboards already look (topics in docs/protocol.md).

Each source's results go through its state machine (pipeline/client/states.py); the state is
published retained on every change (and refreshed every `stats_interval`), each change as an
event, optionally with a JPEG of the frame behind it. `<prefix>/availability` is `online` while
this consumer is connected, and the broker's last will makes it `offline` when the consumer or
its host dies; a pipeline that ends or dies makes the consumer say `offline` itself.

A (re)started consumer publishes no state before its state machine has decided: the state the
broker kept from before stays valid meanwhile. It reads that state back from the broker when it
connects, and when it decides on the same class the state goes on with its old `since` and no
event, so a restart changes nothing a user or an automation sees; a class is the same by its name
(the model may have changed meanwhile), and a kept class the model no longer has ends. Ids and the
default prefix carry the host's name: two hosts running a pipeline of one name do not share topics
or entities.

Home Assistant's entities follow the model: when results come from another model (`model_id`:
`pipeline-deploy`), the discovery configs are sent again for its classes, and those of entities
that no longer exist (a class the model lacks) are emptied, which removes them. On connecting, the
consumer also reads back which configs of its own device the broker kept, so a restart with
another model, config or options removes what no longer applies.

What the broker sends this consumer is bounded: a packet over 64 KiB drops the connection
before it is read, a message that cannot be handled (a topic that is not UTF-8) is ignored and
counted rather than ending paho's network thread, and a flood of Home Assistant's `online` sends
the discovery configs again at most once every 5 s.

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
import ssl
import sys
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import cv2
import paho.mqtt.client as mqtt

from pipeline.client.consumers.homeassistant import discovery_configs, node_id, object_id
from pipeline.client.model import running_model
from pipeline.client.result import Result
from pipeline.client.states import State, StateEvent, Tracker
from pipeline.config import Config
from pipeline.config.classes import imagenet_classes
from pipeline.config.consumers import default
from pipeline.errors import UserError
from pipeline.observe.format import results_per_second
from pipeline.strings import MQTT_PORTS, broker_problem, topic_prefix_problem

USERNAME_ENV, PASSWORD_ENV = "MQTT_USERNAME", "MQTT_PASSWORD"
MAX_QUEUED = 200  # QoS 1/2 messages paho may hold for a slow broker; beyond: dropped, counted
FIRST_CONNECT_S = 3.0  # how long start-up waits for the broker before going on without it
RECALL_S = 3.0  # how long after connecting the broker's copy of the states may take to come back
MAX_INCOMING = 64 * 1024  # bytes of a packet from the broker: what this consumer reads is small
REDISCOVERY_S = 5.0  # Home Assistant's `online` is answered at most this often
REFUSED_FOR_GOOD = ("Bad user name or password", "Not authorized", "Client identifier not valid")
CREDENTIALS_REFUSED = ("Bad user name or password", "Not authorized")


class MqttError(UserError):
    """A broker URL, option or credential that cannot work; one line."""


def parse_broker(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`."""
    problem = broker_problem(url)
    if problem:
        raise MqttError(f"--{problem}")
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or MQTT_PORTS[parts.scheme], parts.scheme == "mqtts"


def check_prefix(prefix: str, flag: str) -> str:
    """A topic prefix: no wildcards, no empty levels."""
    problem = topic_prefix_problem(flag, prefix)
    if problem:
        raise MqttError(problem)
    return prefix


def unreachable(error: OSError, host: str) -> str:
    """Why a connection to the broker at `host` failed, in words a user can act on: the name
    does not resolve (DNS), nothing accepts connections on the port (refused), no answer (timed
    out), a certificate not trusted, or what the system said."""
    if isinstance(error, socket.gaierror):
        return f"DNS failure, the name {host!r} does not resolve ({error.strerror})"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused, nothing listens on that port there or a firewall rejects it"
    if isinstance(error, TimeoutError):
        return "timed out, no answer from that address (the host is down or a firewall drops it)"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({error.verify_message}; --ca FILE names the CA)"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed ({error.reason or error})"
    return error.strerror or str(error)


def credentials_hint(user: str | None) -> str:
    """What to do when the broker refuses the credentials given (or their absence)."""
    if not user:
        return (f"it wants a user name and password: set {USERNAME_ENV} and {PASSWORD_ENV} in the "
                f"environment of pipeline-attach (of pipeline-up for [[consumers]])")
    return f"check {USERNAME_ENV} ({user!r}) and {PASSWORD_ENV} in the environment"


def host_name() -> str:
    """This machine's name as a topic level and a part of ids."""
    return object_id(socket.gethostname()) or "host"


class BoundedClient(mqtt.Client):
    """paho's client, bounded in what a broker (or any client, through it) can make it hold: a
    packet over MAX_INCOMING bytes drops the connection before it is read (paho would read all
    of it into memory first)."""

    fault: str | None = None  # why the connection was dropped here, for the next report
    connect_error: OSError | None = None  # why the latest connection attempt failed

    def _create_socket(self) -> Any:
        try:
            sock = super()._create_socket()
        except OSError as e:
            self.connect_error = e
            raise
        self.connect_error = None
        return sock

    def _sock_recv(self, bufsize: int) -> bytes:
        size = self._in_packet["remaining_length"]
        if self._in_packet["have_remaining"] and size > MAX_INCOMING:
            self.fault = f"it sent a packet of {size} bytes; at most {MAX_INCOMING} are accepted"
            raise OSError(self.fault)  # paho: connection lost, reconnect
        return super()._sock_recv(bufsize)


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

    def __init__(self, broker: str = default("broker"), topic_prefix: str | None = None,
                 client_id: str | None = None, qos: int = default("qos"), discovery: bool = False,
                 discovery_prefix: str = default("discovery_prefix"), snapshots: bool = False,
                 stats_interval: float = default("stats_interval"), ca: str | None = None,
                 name: str = "pipeline",
                 config: dict[str, Any] | None = None):
        self.host, self.port, tls = parse_broker(broker)
        if qos not in (0, 1, 2):
            raise MqttError(f"--qos {qos}: must be 0, 1 or 2")
        if not (math.isfinite(stats_interval) and stats_interval > 0):
            raise MqttError(f"--stats-interval must be a positive number, got {stats_interval}")
        if ca and not os.path.isfile(ca):
            raise MqttError(f"--ca {ca}: no such file")
        self.host_name = host_name()
        self.prefix = check_prefix(topic_prefix or f"edge-pipeline/{self.host_name}/{name}",
                                   "--topic-prefix")
        self.discovery_prefix = check_prefix(discovery_prefix, "--discovery-prefix")
        self.name, self.qos, self.discovery = name, qos, discovery
        self.frames = self.snapshots = snapshots
        self.stats_interval = stats_interval
        cfg = Config.model_validate(config) if config else None
        self.tracker = Tracker(cfg)
        self.sources = dict(self.tracker.options)
        running = running_model(name)  # the model's own class names, for discovery
        self.model = running.get("name") or (cfg.model.name if cfg else "unknown")
        self.labels: list[str] | None = running.get("labels")
        self.model_id: str | None = running.get("id")  # the model discovery describes
        self.lock = threading.Lock()  # the states and the model, shared with paho's thread
        self.discovery_lock = threading.Lock()  # one discovery at a time (either thread)
        self.configs_sent: set[str] = set()  # config topics of the newest discovery
        self.kept_configs: set[str] = set()  # config topics of this device the broker kept
        self.states: dict[str, State] = {}  # each source's decided state, as published
        self.state_sent: dict[str, float] = {}  # monotonic time each source's state was sent
        self.stats_sent = -math.inf
        # The states the broker kept from before (paho's thread writes them before `recalled`).
        self.kept: dict[str, dict[str, Any]] = {}
        self.kept_online = False  # the availability the broker kept says online
        self.recalled = threading.Event()  # this connection has brought the kept states back
        self.recall_mid: int | None = None  # the subscription that brings them, until they are in
        self.connected_at = 0.0
        self.reconciled: set[str] = set()  # sources whose first decision met the kept state
        self.first_start: dict[str, StateEvent] = {}  # the newest start before reconciling
        self.rediscover = False  # Home Assistant said `online`: configs and states are due
        self.rediscovered_at = -math.inf
        self.published: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()  # messages from the broker this consumer ignored
        self.connects = 0
        self.acknowledged = 0
        self.lost_at: float | None = None
        self.refused: str | None = None  # why this consumer cannot go on, for good
        self.closing = False  # a disconnect from now on is ours
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.client = self._client(client_id, tls, ca)
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if self.connected.wait(FIRST_CONNECT_S) and self.refused is None:
            self.recalled.wait(RECALL_S)
        elif self.refused is None:
            error = self.client.connect_error
            why = unreachable(error, self.host) if error else f"no answer within {FIRST_CONNECT_S:g} s"
            self._say(f"cannot reach the broker at {self.host}:{self.port} yet: {why}; retrying "
                      f"with back-off (events, stats and snapshots are dropped and counted meanwhile)")
        if self.refused is not None:
            self._stop_client()
            raise MqttError(self.refused)
        if self.client.is_connected():
            self._say(f"publishing to {self.host}:{self.port} under {self.prefix}/")

    def _client(self, client_id: str | None, tls: bool, ca: str | None) -> mqtt.Client:
        cid = client_id or f"edge-pipeline-{socket.gethostname()}-{self.name}-{os.getpid()}"
        client = BoundedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
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
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # -- paho's thread ----------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            if str(reason) in REFUSED_FOR_GOOD:
                hint = f"; {credentials_hint(os.environ.get(USERNAME_ENV))}" \
                    if str(reason) in CREDENTIALS_REFUSED else ""
                self.refused = f"the broker at {self.host}:{self.port} refused the connection: " \
                               f"{reason}{hint}"
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
        # What the broker kept under the prefix, before anything is published there: subscribed
        # at QoS 0 and unsubscribed at once, the broker sends the kept messages before it answers
        # the unsubscribe (it handles a client's packets in order).
        self.recalled.clear()
        self.kept, self.kept_online, self.kept_configs = {}, False, set()
        self.connected_at = time.monotonic()
        recall = [f"{self.prefix}/+/state", f"{self.prefix}/availability"]
        if self.discovery:  # this device's entities from before: what no longer applies goes
            recall.append(self._config_topic("+", "+"))
        client.subscribe([(topic, 0) for topic in recall])
        self.recall_mid = client.unsubscribe(recall)[1]
        if self.discovery:
            client.subscribe(f"{self.discovery_prefix}/status", qos=0)
        self.connected.set()

    def _on_connect_fail(self, client: BoundedClient, _u: Any) -> None:
        error = client.connect_error
        self._lost(unreachable(error, self.host) if error else "cannot connect")

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        self.disconnected.set()
        why, client.fault = client.fault or str(reason), None
        if not self.closing:
            self._lost(why)

    def _on_unsubscribe(self, _c: mqtt.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        if mid == self.recall_mid:
            self._recall_done()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """Whatever arrives: an exception here would end paho's network thread (no more
        publishing or reconnecting, silently), so a message that raises is ignored instead."""
        try:
            self._handle(msg)
        except Exception as e:  # noqa: BLE001 - a message nobody here meant to receive
            try:
                topic = repr(msg.topic)
            except UnicodeDecodeError:
                topic = f"{msg._topic[:40]!r} (not UTF-8)"
            self._ignore(type(e).__name__, f"a message on {topic} ({type(e).__name__})")

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic == f"{self.discovery_prefix}/status":
            if msg.payload == b"online":  # Home Assistant restarted: it forgot the entities
                with self.lock:
                    self.rediscover = True
                self._maybe_rediscover()
        elif topic == f"{self.prefix}/availability" and msg.retain:
            self.kept_online = msg.payload == b"online"
        elif msg.retain and mqtt.topic_matches_sub(self._config_topic("+", "+"), topic):
            self.kept_configs.add(topic)
        elif msg.retain and topic.startswith(f"{self.prefix}/") and topic.endswith("/state"):
            source = topic[len(self.prefix) + 1:-len("/state")]
            if source in self.sources or not self.sources:  # (not: any client's invention)
                self._keep(source, msg.payload)

    def _keep(self, source: str, payload: bytes) -> None:
        """The state the broker kept for `source`, when it is one this consumer could have sent."""
        try:
            kept = json.loads(payload)
            valid = (isinstance(kept, dict) and isinstance(kept.get("label"), str)
                     and (kept.get("index") is None or type(kept.get("index")) is int)
                     and (kept.get("group") is None or isinstance(kept.get("group"), str))
                     and isinstance(kept.get("since"), (int, float)) and math.isfinite(kept["since"]))
        except ValueError:  # not JSON, or not UTF-8
            valid = False
        if valid:
            self.kept[source] = kept
        else:
            self._ignore("state not understood", f"a retained state on {self.prefix}/{source}/state "
                                                 f"that this consumer did not send")

    def _recall_done(self) -> None:
        """The kept messages are in: refuse a prefix another host is using (publishing nothing
        there), else say `online`, announce the entities and send the decided states."""
        with self.lock:
            if self.recalled.is_set() or self.recall_mid is None:
                return
            self.recall_mid = None  # once per connection
        others = sorted({str(s["host"]) for s in self.kept.values() if "host" in s}
                        - {self.host_name})
        if others and self.kept_online:
            self.refused = (f"topic prefix {self.prefix}/ is in use by host {others[0]} (it is "
                            f"online); give each host its own --topic-prefix (topic_prefix)")
            self.recalled.set()
            return
        self._send(f"{self.prefix}/availability", "online", "availability", retain=True)
        if self.discovery:
            self.rediscovered_at = time.monotonic()
            self._send_discovery()
        self.recalled.set()
        self._send_states()

    def _on_publish(self, *_: Any) -> None:
        self.acknowledged += 1  # QoS 1/2: the broker has it; QoS 0: it is on the wire

    def _ignore(self, kind: str, what: str) -> None:
        """A message from the broker this consumer cannot use: said once per kind, counted."""
        if not self.ignored[kind]:
            self._say(f"ignored {what} (counted as ignored in the stats)")
        self.ignored[kind] += 1

    def _lost(self, why: str) -> None:
        """Once per outage; a broker never reached is reported by the start-up instead."""
        if self.lost_at is None:
            self.lost_at = time.monotonic()
            if self.connects:
                self._say(f"lost the broker at {self.host}:{self.port}: {why}; reconnecting "
                          f"with back-off (events, stats and snapshots are dropped and counted "
                          f"meanwhile)")

    # -- the consumer's thread --------------------------------------------------------------
    def on_result(self, r: Result) -> None:
        if self.refused is not None:
            raise MqttError(self.refused)
        if r.model_id and r.model_id != self.model_id:
            self._model_changed(r)
        events = self.tracker.update(r)
        machine = self.tracker.machines[r.source]
        if not machine.decided and not (events and r.source in self.reconciled):
            return  # nothing to say yet: the state the broker kept stays valid meanwhile
        state = machine.state  # (undecided with events: another model's results ended a class)
        if r.source not in self.reconciled:
            events = self._reconcile(r, state, events)
            if events is None:
                return
        with self.lock:
            self.states[r.source] = state
        self._maybe_rediscover()
        now = time.monotonic()
        if events:
            for e in events:
                self._send(f"{self.prefix}/{r.source}/event", _json(e.to_dict()), "event")
            self._send_state(r.source, state)
            if self.snapshots:
                self._send_snapshot(r)
        elif now - self.state_sent.get(r.source, -math.inf) >= self.stats_interval:
            self._send_state(r.source, state)  # the probability moves on

    def _reconcile(self, r: Result, state: State, events: list[StateEvent]
                   ) -> list[StateEvent] | None:
        """The events of a source's first decision as seen from the state the broker kept
        (None: that state is not back yet). The same class goes on with its old `since`."""
        starts = [e for e in events if e.event == "start"]
        if starts:
            self.first_start[r.source] = starts[-1]
        if not self.recalled.is_set():
            if not (self.client.is_connected()
                    and time.monotonic() - self.connected_at > RECALL_S):
                return None
            self._recall_done()  # the broker never answered: go on without its copy
            if self.refused is not None:
                raise MqttError(self.refused)
        self.reconciled.add(r.source)
        kept = self.kept.get(r.source)
        start = self.first_start.pop(r.source, None)
        started = [start] if start is not None and state.index is not None else []
        if kept is None:
            return started
        if self._same_class(kept, state):
            state.since = kept["since"]  # no change: the state began when the kept one did
            return []
        if kept["index"] is None:
            return started
        prob = kept.get("probability")
        end = StateEvent("end", r.source, kept["index"], kept["label"],
                         prob if isinstance(prob, (int, float)) else 0.0, r.captured_at,
                         r.frame_index, r.seq, kept["since"], kept.get("group"))
        return [end, *started]

    def _same_class(self, kept: dict[str, Any], state: State) -> bool:
        """Whether the kept state is the decided one: both `none`, or one class by its name (the
        kept one may be another model's, with this class at another index, or another class at
        this index), and by index where the model has two classes of that name. A watched group
        is the same group by its name, whichever of its classes the index is now."""
        if kept["index"] is None or state.index is None:
            return kept["index"] is None and state.index is None
        if kept.get("group") is not None or state.group is not None:
            return kept.get("group") == state.group
        with self.lock:
            names = self.labels or imagenet_classes()
        return kept["label"] == state.label and (kept["index"] == state.index
                                                 or list(names).count(state.label) == 1)

    def _model_changed(self, r: Result) -> None:
        """Results of another model (deployed while this consumer runs, or the first result of
        a consumer that could not read the model): discovery for its classes."""
        running = running_model(self.name)
        known = running.get("id") == r.model_id
        if not known and self.discovery:
            self._say(f"the class names of model {r.model} ({r.model_id}) are not readable here "
                      f"(no model.json of pipeline {self.name} for it); Home Assistant's binary "
                      f"sensors assume ImageNet's")
        with self.lock:
            self.model_id, self.model = r.model_id, r.model
            self.labels = running.get("labels") if known else None
        if self.discovery and self.recalled.is_set():
            self._send_discovery()

    def on_status(self, status: dict[str, Any]) -> None:
        self._maybe_rediscover()
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
                "dropped_by_kind": dict(self.dropped), "ignored": sum(self.ignored.values()),
                "connects": self.connects, "connected": self.client.is_connected()}

    # -- either thread ----------------------------------------------------------------------
    def _maybe_rediscover(self) -> None:
        """Configs and states again for Home Assistant, at most once every REDISCOVERY_S however
        often it says `online` (many announcements coalesce into one)."""
        now = time.monotonic()
        with self.lock:
            if not self.rediscover or now - self.rediscovered_at < REDISCOVERY_S:
                return
            self.rediscover, self.rediscovered_at = False, now
        self._send_discovery()
        self._send_states()

    def _send_states(self) -> None:
        """Every source's decided state (from paho's thread: the copy kept under the lock)."""
        with self.lock:
            states = list(self.states.items())
        for source, state in states:
            self._send_state(source, state)

    def _send_state(self, source: str, state: State | None) -> None:
        if state is None:
            return
        self.state_sent[source] = time.monotonic()
        self._send(f"{self.prefix}/{source}/state", _json({**state.to_dict(), "host": self.host_name}),
                   "state", retain=True)

    def _send_snapshot(self, r: Result) -> None:
        if r.frame is None:
            self.dropped["snapshot"] += 1  # overwritten in the ring before it could be read
            return
        ok, jpeg = cv2.imencode(".jpg", r.frame, (cv2.IMWRITE_JPEG_QUALITY, 85))
        if not ok or not r.frame_still_valid():
            self.dropped["snapshot"] += 1
            return
        self._send(f"{self.prefix}/{r.source}/snapshot", jpeg.tobytes(), "snapshot", retain=True)

    def _config_topic(self, component: str, obj: str) -> str:
        return f"{self.discovery_prefix}/{component}/{node_id(self.host_name, self.prefix)}/{obj}/config"

    def _send_discovery(self) -> None:
        """The configs of the entities there are now, and an empty config (Home Assistant then
        removes the entity) for each sent before or kept by the broker that is not one of them."""
        with self.discovery_lock:
            with self.lock:
                model, labels = self.model, self.labels
            configs = discovery_configs(
                pipeline=self.name, prefix=self.prefix, sources=self.sources, model=model,
                snapshots=self.snapshots, host=self.host_name, labels=labels,
                discovery_prefix=self.discovery_prefix)
            topics = {topic for topic, _ in configs}
            for topic in sorted((self.configs_sent | self.kept_configs) - topics):
                self._send(topic, "", "discovery", retain=True)
            for topic, payload in configs:
                self._send(topic, _json(payload), "discovery", retain=True)
            self.configs_sent, self.kept_configs = topics, set()

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
        """A clean disconnect (the broker then drops the last will), waited for up to 2 s."""
        self.closing = True
        if self.client.is_connected():
            self.disconnected.clear()
            self.client.disconnect()
            self.disconnected.wait(2.0)
        else:
            self.client.disconnect()
        self.client.loop_stop()

    def close(self) -> None:
        """`offline`, sent and acknowledged (up to 2 s), then a clean disconnect (no last will).
        A consumer refused a prefix says nothing there: the prefix is another host's."""
        self.closing = True
        if self.client.is_connected() and self.refused is None:
            info = self.client.publish(f"{self.prefix}/availability", "offline", qos=1, retain=True)
            self.published["availability"] += 1
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self._stop_client()
        c = self.counts()
        self._say(f"{c['published']} messages published ({c['acknowledged']} acknowledged by the "
                  f"broker), {c['dropped']} dropped"
                  + (f" ({', '.join(f'{k} {n}' for k, n in sorted(self.dropped.items()))})"
                     if self.dropped else "")
                  + (f", {c['ignored']} received messages ignored" if self.ignored else ""))
