"""The result consumers and their options, each declared once, here: a field of `ConsumerConfig`
(a config's `[[consumers]]` entry) gives an option's type, default, limits, help and the built-in
consumers that take it. pipeline-attach's arguments (pipeline/cli/consumer_args.py) and the command
line of a consumer started with the pipeline (`attach_args`) are made from these fields.

This module names the consumers' classes without importing them: a config is read where paho or
OpenCV may not even load."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo

from pipeline.strings import broker_problem, control_problem, topic_prefix_problem


@dataclass(frozen=True)
class Builtin:
    """A consumer that ships with the pipeline."""

    target: str  # MODULE:CLASS, imported only when the consumer runs
    about: str  # what it does, as pipeline-attach --help shows it


BUILTIN_CONSUMERS: dict[str, Builtin] = {
    "print": Builtin("pipeline.client.consumers.text:PrintConsumer", "a line per result (the default)"),
    "jsonl": Builtin("pipeline.client.consumers.text:JsonlConsumer", "every result as a JSON line"),
    "video": Builtin("pipeline.client.consumers.video:VideoConsumer", "an annotated mp4"),
    "preview": Builtin("pipeline.client.consumers.preview:PreviewConsumer",
                       "a live web page of the frames and numbers"),
    "mqtt": Builtin("pipeline.client.consumers.mqtt:MqttConsumer",
                    "states, events and stats on an MQTT broker (credentials: MQTT_USERNAME, "
                    "MQTT_PASSWORD in the environment)"),
    "collect": Builtin("pipeline.client.consumers.collect:CollectConsumer",
                       "examples to train on, in --out FOLDER/unlabelled"),
}
CUSTOM_KIND = re.compile(r"[\w./-]+:\w+")  # MODULE:NAME or FILE.py:NAME


def unknown_kind(kind: str) -> str:
    """The words for a consumer that is neither built in nor MODULE:NAME, with the closest."""
    close = difflib.get_close_matches(kind, BUILTIN_CONSUMERS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{kind!r} is not {', '.join(BUILTIN_CONSUMERS)} or MODULE:NAME{hint}"


def option(default: Any, help: str, *, consumers: tuple[str, ...] = (), flag: str = "",
           metavar: str | None = None, **limits: Any) -> Any:
    """A consumer option: a pydantic field that also carries its help, the built-in consumers
    that take it (none: any consumer, e.g. a custom one) and, where it is not `--NAME` with
    dashes, its pipeline-attach flag."""
    unknown = set(consumers) - set(BUILTIN_CONSUMERS)
    assert not unknown, f"no such consumer: {unknown}"
    return Field(default, description=help, **limits,
                 json_schema_extra={"consumers": list(consumers), "flag": flag, "metavar": metavar})


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def flag_of(name: str) -> str:
    """The pipeline-attach flag of option `name`: `--allow-host` for `allow_hosts`."""
    return _extra(ConsumerConfig.model_fields[name]).get("flag") or "--" + name.replace("_", "-")


def metavar_of(name: str) -> str | None:
    """What pipeline-attach --help calls option `name`'s value (None: argparse's choice)."""
    return _extra(ConsumerConfig.model_fields[name]).get("metavar")


def takers(name: str) -> tuple[str, ...]:
    """The built-in consumers that take option `name`; () for an option of any consumer."""
    return tuple(_extra(ConsumerConfig.model_fields[name]).get("consumers", ()))


def options() -> list[str]:
    """Every consumer option, in the order declared (`kind` is the consumer itself)."""
    return [name for name in ConsumerConfig.model_fields if name != "kind"]


def options_of(kind: str) -> list[str]:
    """The options consumer `kind` takes: a built-in's own and those of any consumer; a custom
    consumer may take any (its constructor says which)."""
    if kind not in BUILTIN_CONSUMERS:
        return options()
    return [name for name in options() if not takers(name) or kind in takers(name)]


def default(name: str) -> Any:
    """Option `name`'s default, for a consumer's constructor to share."""
    return ConsumerConfig.model_fields[name].default


PREVIEW, MQTT, COLLECT = ("preview",), ("mqtt",), ("collect",)


class ConsumerConfig(BaseModel):
    """A consumer started and supervised with the pipeline (same options as pipeline-attach)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: str  # print, jsonl, video, preview, mqtt, collect, or MODULE:NAME / FILE.py:NAME
    out: str | None = option(None, "jsonl: the file (default: stdout); video: the .mp4 (required); "
                                   "collect: the dataset folder", consumers=("jsonl", "video", "collect"))
    fps: float | None = option(None, "frame rate of the file (default: the source's)",
                               consumers=("video",), gt=0, le=1000)
    frames: bool = option(False, "give a custom consumer the frames too")
    port: int = option(8080, "HTTP port; 0: a free one", consumers=PREVIEW, ge=0, le=65535)
    host: str = option("127.0.0.1", "the address it listens on", consumers=PREVIEW)
    allow_hosts: list[str] = option(
        [], "also answer requests addressed to host NAME (repeatable; by default only this "
            "machine's names and any address are answered)", consumers=PREVIEW, flag="--allow-host",
        metavar="NAME")
    # preview's labelling page (/teach), on with a dataset folder
    dataset: str | None = option(None, "the dataset folder (a subfolder per class, unlabelled/) the "
                                       "labelling page (/teach) labels", consumers=PREVIEW, metavar="DIR")
    review_below: float = option(0.6, "save results below this top-1 probability into "
                                      "DATASET/unlabelled for review; 0: none", consumers=PREVIEW,
                                 metavar="P", ge=0, le=1)
    token: str | None = option(None, "the labelling page's write token (default: a random one, "
                                     "printed at start)", consumers=PREVIEW,
                               pattern=r"^[A-Za-z0-9_-]{16,128}$")
    models: str | None = option(None, "where models trained from the labelling page go (default "
                                      "DATASET/../<dataset name>-models)", consumers=PREVIEW,
                                metavar="DIR")
    # mqtt
    broker: str = option("mqtt://localhost:1883", "mqtt://HOST[:PORT], or mqtts://HOST[:PORT] for "
                                                  "TLS", consumers=MQTT, metavar="URL")
    topic_prefix: str | None = option(None, "topics start with this (default edge-pipeline/"
                                            "<hostname>/<pipeline name>)", consumers=MQTT,
                                      metavar="PREFIX")
    client_id: str | None = option(None, "MQTT client id (default: unique per process)",
                                   consumers=MQTT, metavar="ID", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    qos: int = option(1, "QoS of every message: 0, 1 or 2", consumers=MQTT, ge=0, le=2)
    discovery: bool = option(False, "announce the sources to Home Assistant (MQTT discovery, "
                                    "retained)", consumers=MQTT)
    discovery_prefix: str = option("homeassistant", "Home Assistant's discovery prefix",
                                   consumers=MQTT, metavar="PREFIX")
    snapshots: bool = option(False, "publish a JPEG of the frame behind each state change",
                             consumers=MQTT)
    stats_interval: float = option(5.0, "seconds between stats messages and state refreshes",
                                   consumers=MQTT, metavar="SECONDS", gt=0, le=3600)
    ca: str | None = option(None, "mqtts: CA certificate file (default: the system's)", consumers=MQTT,
                            metavar="FILE")
    # collect
    quality: int = option(90, "JPEG quality 1-100", consumers=COLLECT, ge=1, le=100)
    min_interval: float = option(1.0, "per source, at most one frame per this much capture time is "
                                      "considered", consumers=COLLECT, metavar="SECONDS", ge=0, le=86400)
    min_difference: float = option(0.1, "keep a frame only if its thumbnail differs from every kept "
                                         "one's by this (0-2)", consumers=COLLECT, metavar="D", ge=0, le=2)
    max_examples: int = option(200, "save at most this many examples of each source in one run",
                               consumers=COLLECT, metavar="N", ge=1, le=1_000_000)
    verbose: bool = option(False, "a line for each example saved", consumers=COLLECT)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in BUILTIN_CONSUMERS and not CUSTOM_KIND.fullmatch(kind):
            raise ValueError(f"consumers.kind: {unknown_kind(kind)}")
        return kind

    @field_validator("out", "host", "allow_hosts", "ca", "topic_prefix", "discovery_prefix",
                     "broker", "dataset", "models")
    @classmethod
    def _usable_string(cls, value: str | list[str] | None, info: ValidationInfo
                       ) -> str | list[str] | None:
        """No control characters (a NUL byte cannot even be passed on); a broker URL and topic
        prefixes the mqtt consumer can use."""
        for item in value if isinstance(value, list) else [value]:
            what = f"consumers.{info.field_name}"
            problem = item is not None and (
                broker_problem(item) if info.field_name == "broker"
                else topic_prefix_problem(what, item) if info.field_name.endswith("prefix")
                else control_problem(what, item))
            if problem:
                raise ValueError(problem if problem.startswith("consumers.") else f"consumers.{problem}")
        return value

    @model_validator(mode="after")
    def _video_needs_out(self) -> "ConsumerConfig":
        if self.kind == "video" and not self.out:
            raise ValueError("consumers: a video consumer needs out = \"FILE.mp4\"")
        if self.kind == "collect" and not self.out:
            raise ValueError("consumers: a collect consumer needs out = \"FOLDER\" (the dataset)")
        return self

    def attach_args(self) -> list[str]:
        """The pipeline-attach arguments that run this consumer: each of its options that is not
        at its default (pipeline-attach has the same defaults)."""
        args = ["--consumer", self.kind]
        for name in options_of(self.kind):
            value = getattr(self, name)
            if value == default(name):
                continue
            if isinstance(value, bool):
                args.append(flag_of(name))
            elif isinstance(value, list):
                args += [arg for item in value for arg in (flag_of(name), str(item))]
            else:
                args += [flag_of(name), str(value)]
        return args
