"""Home Assistant MQTT discovery: the retained config messages that make each source of a
pipeline appear as entities (a sensor for the current class, one for its probability, a binary
sensor per watched class, the snapshot as an image, the pipeline's fps), all tied to one device
and to the consumer's availability topic.

Only the payloads are built here; the mqtt consumer sends them (and again whenever Home
Assistant announces `online` on `<discovery prefix>/status`). See
https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery for the format.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pipeline.config import StateConfig
from pipeline.config.classes import imagenet_classes

try:
    __version__ = version("edge-pipeline")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"


def object_id(*parts: str) -> str:
    """An id Home Assistant accepts (letters, digits, _ and -), stable across restarts."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", "_".join(parts)).strip("_")


def node_id(host: str, prefix: str) -> str:
    """The device's id: readable (the prefix's letters) and unique per host and exact prefix
    (a digest of both), so `home/cam` and `home_cam`, or `café/x` and `cafè/x`, or one prefix
    on two hosts never share entities."""
    digest = hashlib.sha256(f"{host}\n{prefix}".encode()).hexdigest()[:8]
    return object_id(prefix, digest)


def discovery_configs(*, pipeline: str, prefix: str, sources: dict[str, StateConfig | None],
                      model: str, snapshots: bool, host: str, labels: Sequence[str] | None = None,
                      discovery_prefix: str = "homeassistant") -> list[tuple[str, dict[str, Any]]]:
    """(topic, payload) of every entity of the pipeline on `host` whose topics start with
    `prefix`; `labels`: the model's class names (default ImageNet's)."""
    node = node_id(host, prefix)
    device = {"identifiers": [node], "name": f"edge-pipeline {pipeline} on {host}",
              "manufacturer": "edge-pipeline", "model": model, "sw_version": __version__}
    common = {"availability_topic": f"{prefix}/availability", "payload_available": "online",
              "payload_not_available": "offline", "device": device,
              "origin": {"name": "edge-pipeline", "sw_version": __version__}}
    names = list(labels) if labels else imagenet_classes()
    out: list[tuple[str, dict[str, Any]]] = []

    def add(component: str, obj: str, payload: dict[str, Any]) -> None:
        uid = object_id(node, obj)
        out.append((f"{discovery_prefix}/{component}/{node}/{object_id(obj)}/config",
                    {**payload, "unique_id": uid, "object_id": uid, **common}))

    for source, state in sources.items():
        state_topic = f"{prefix}/{source}/state"
        add("sensor", f"{source}_class", {
            "name": f"{source} class", "state_topic": state_topic, "icon": "mdi:eye",
            "value_template": "{{ value_json.label }}", "json_attributes_topic": state_topic})
        add("sensor", f"{source}_probability", {
            "name": f"{source} probability", "state_topic": state_topic,
            "value_template": "{{ value_json.probability }}", "state_class": "measurement",
            "icon": "mdi:percent"})
        for index in sorted(state.watch_indices(names, model) if state else ()):
            add("binary_sensor", f"{source}_{index}", {
                "name": f"{source} {names[index]}", "state_topic": state_topic,
                "value_template": f"{{{{ 'ON' if value_json.index == {index} else 'OFF' }}}}",
                "payload_on": "ON", "payload_off": "OFF", "icon": "mdi:eye-check"})
        if snapshots:
            add("image", f"{source}_snapshot", {
                "name": f"{source} snapshot", "image_topic": f"{prefix}/{source}/snapshot",
                "content_type": "image/jpeg"})
    add("sensor", "fps", {
        "name": "results per second", "state_topic": f"{prefix}/stats",
        "value_template": "{{ value_json.fps }}", "unit_of_measurement": "fps",
        "state_class": "measurement", "icon": "mdi:speedometer", "entity_category": "diagnostic"})
    return out
