"""Home Assistant MQTT discovery: the retained config messages that make each source of a
pipeline appear as entities (a sensor for the current class, one for its probability, a binary
sensor per watched class or group, or the one `on` binary sensor of `[source.state]`, the
snapshot as an image, the pipeline's fps), all tied to one device and to the consumer's
availability topic.

A class's entity (and its ON/OFF) goes by the class's ImageNet index for the shipped model (an
id that means one class in every ImageNet model), by the class's name for a model's own classes:
the entity stays when another model has the class at another index, and goes when a model no
longer has the class. A watched ImageNet group's entity (`<source>_group_<name>`) goes by the
group's name, which the state's label is while the state is the group.

Only the payloads are built here; the mqtt consumer sends them (and again whenever Home
Assistant announces `online` on `<discovery prefix>/status`). See
https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery for the format.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pipeline.config import StateConfig
from pipeline.config.classes import Watched, imagenet_classes, resolve

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
    class_ids = _class_ids(names)
    by_name = class_ids[0].startswith("is_")
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
        binary = {"state_topic": state_topic, "payload_on": "ON", "payload_off": "OFF",
                  **({"device_class": state.device_class} if state and state.device_class
                     else {"icon": "mdi:eye-check"})}
        if state and state.on:
            on = _resolve(state.on, names, model)
            if on:
                add("binary_sensor", f"{source}_on", {
                    **binary, "name": f"{source} {state.on}",
                    "value_template": _is_group(on.name) if on.group
                    else _is(names, on.indices, by_name)})
        elif state:
            watched = [w for w in (_resolve(item, names, model) for item in state.watch) if w]
            for group in dict.fromkeys(w.name for w in watched if w.group):
                add("binary_sensor", f"{source}_group_{object_id(group)}", {
                    **binary, "name": f"{source} {group}", "value_template": _is_group(group)})
            for index in sorted({i for w in watched if not w.group for i in w.indices}):
                add("binary_sensor", f"{source}_{class_ids[index]}", {
                    **binary, "name": f"{source} {names[index]}",
                    "value_template": _is(names, [index], by_name)})
        if snapshots:
            add("image", f"{source}_snapshot", {
                "name": f"{source} snapshot", "image_topic": f"{prefix}/{source}/snapshot",
                "content_type": "image/jpeg"})
    add("sensor", "fps", {
        "name": "results per second", "state_topic": f"{prefix}/stats",
        "value_template": "{{ value_json.fps }}", "unit_of_measurement": "fps",
        "state_class": "measurement", "icon": "mdi:speedometer", "entity_category": "diagnostic"})
    return out


def _class_ids(names: Sequence[str]) -> list[str]:
    """Each class's part of its entity's id: `is_<name>` for a model's own classes (when every
    name gives a distinct id), else the index (ImageNet's)."""
    ids = [object_id(n) for n in names]
    if tuple(names) != imagenet_classes() and all(ids) and len(set(ids)) == len(ids):
        return [f"is_{i}" for i in ids]
    return [str(i) for i in range(len(names))]


def _is(names: Sequence[str], indices: Sequence[int], by_name: bool) -> str:
    """A template that is ON while the state is one of these classes: by the class's name for a
    model's own classes (a state kept from another model then counts by its name, never by an
    index that meant another class there; `none` has no index), else by index."""
    if len(indices) == 1 and by_name:
        test = f"value_json.index is number and value_json.label == {json.dumps(names[indices[0]])}"
    elif len(indices) == 1:
        test = f"value_json.index == {indices[0]}"
    else:
        test = f"value_json.index in {sorted(indices)}"
    return f"{{{{ 'ON' if {test} else 'OFF' }}}}"


def _is_group(group: str) -> str:
    """A template that is ON while the state is this watched ImageNet group (by its name, which
    no ImageNet class has)."""
    return (f"{{{{ 'ON' if value_json.index is number and value_json.label == {json.dumps(group)} "
            "else 'OFF' }}")


def _resolve(item: int | str, names: Sequence[str], model: str) -> Watched | None:
    """The classes of the model (or the ImageNet group) a watched item stands for; None when the
    model lacks it (the config was checked against the model the pipeline started with: a
    consumer elsewhere, which cannot read the model's names, may not know them)."""
    try:
        return resolve(item, "", names, model)
    except ValueError:
        return None
