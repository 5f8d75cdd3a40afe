"""The small msgpack messages that cross sockets; frames themselves never do.

Three families, each defined here once:
- frame descriptors on an edge, stage to stage (`FrameDescriptor` on the frames edge,
  `TensorDescriptor` on the tensors edge): where the pixels are and what happened to them so far,
  named as in the public result they become;
- results on the public PUB socket (documented in docs/protocol.md, versioned by `SCHEMA`);
- control messages between the stages and the supervisor (`Control`).

Timestamps are CLOCK_MONOTONIC nanoseconds (`time.monotonic_ns()`), one clock for every process on
the host, so latencies can be subtracted across processes; `captured_at` is wall-clock UNIX time.
"""

# No `from __future__ import annotations`: the TypedDicts below are read at run time
# (`required_fields`), and NotRequired must be a real object for that.
import math
import typing
from collections.abc import Callable
from typing import Any, Literal, NotRequired, TypedDict

import msgpack

SCHEMA = 1
MAX_RESULT_BYTES = 256 * 1024  # a result's top 1000 ImageNet labels take 40 KB
MAX_SUBSCRIPTION_BYTES = 256  # what a subscriber may send a publisher: a topic prefix

# Control messages (stage <-> supervisor), by `type`:
READY = "ready"  # stage -> supervisor: set up (model warm, source open); carries details
START = "start"  # supervisor -> stage: begin producing frames; carries `settings`
SET = "set"  # supervisor -> stage: run-time settings (adaptive input size)
STOP = "stop"  # supervisor -> stage: finish and exit
STATS = "stats"  # stage -> supervisor: counters, once a second
ERROR = "error"  # stage -> supervisor: fatal problem, one line in `message`
EOS = "eos"  # end of stream: to the supervisor, and on the results socket
BYE = "bye"  # stage -> supervisor: final counters, exiting
# Switching the model of a running pipeline (pipeline/supervisor/deploy.py):
MODEL = "model"  # supervisor -> worker: `action` load (the plan in `plan_file`), switch, or drop
LOADED = "loaded"  # worker -> supervisor: the model to switch to is loaded (`ok`), or `message`
ControlType = Literal["ready", "start", "set", "stop", "stats", "error", "eos", "bye", "model", "loaded"]
FROM_STAGES = (READY, STATS, BYE, ERROR, EOS, LOADED)  # what the supervisor accepts from a stage


class Control(TypedDict):
    """Every control message: its kind and the stage instance it is from or for; the rest of the
    map is the kind's own (ready: pid, cores...; stats: counters; start: settings)."""

    type: ControlType
    stage: NotRequired[str]


class FrameTimes(TypedDict):
    """When a frame went through capture: `t` on the frames edge."""

    capture_start: int  # capture began reading it from the source
    capture: int  # it was complete in the frames ring
    sensor: NotRequired[int]  # the camera exposed it (cameras that say so: picamera2)


class TensorTimes(FrameTimes):
    """... and through preprocessing: `t` on the tensors edge (the result adds inference)."""

    preprocess_start: int
    preprocess_end: int


class Queues(TypedDict):
    """Frames that were waiting when a stage took this one: `queue` (the result adds inference)."""

    preprocess: int


# Each stage's span in a result's `t`: (stage, start, end), in the frame's order.
SPANS = (("capture", "capture_start", "capture"),
         ("preprocess", "preprocess_start", "preprocess_end"),
         ("inference", "inference_start", "inference_end"))


class _Slot(TypedDict):
    """Where the payload is: a slot of the edge's ring, the frame sequence number its sequence
    lock must show, and the payload's shape and type."""

    slot: int
    seq: int
    shape: list[int]
    dtype: str  # uint8 | float32


class FrameDescriptor(_Slot):
    """A raw BGR frame in the frames ring, as capture announces it."""

    source: str  # the source id
    captured_at: float  # UNIX time
    t: FrameTimes
    frame: NotRequired[int]  # position in the file or folder, or frame count
    item: NotRequired[str]  # the image file's name (images source)
    clock: NotRequired[int]  # tcp edge: the sender's wall minus monotonic ns
    encoding: NotRequired[str]  # tcp edge: "jpeg" when the pixels travel encoded


class TensorDescriptor(_Slot):
    """A model input in the tensors ring, with the frame it came from (still readable by
    consumers in the frames ring until overwritten)."""

    source: str
    captured_at: float
    t: TensorTimes
    frame_slot: int
    frame_shape: list[int]
    queue: Queues
    frame: NotRequired[int]
    item: NotRequired[str]


class EndOfStream(TypedDict):
    eos: Literal[True]


def required_fields(descriptor: type) -> tuple[str, ...]:
    """The keys a descriptor must carry, nested ones as `t.capture` (an int in a map): a reader
    drops (as malformed) any descriptor without them."""
    hints = typing.get_type_hints(descriptor)
    out = []
    for key in descriptor.__required_keys__:
        sub = hints[key]
        if typing.is_typeddict(sub):
            out += [f"{key}.{k}" for k in sub.__required_keys__]
        else:
            out.append(key)
    return tuple(sorted(out))


def has_fields(desc: dict[str, Any], fields: tuple[str, ...]) -> bool:
    """Whether `desc` carries every one of `fields` (as given by `required_fields`)."""
    for key in fields:
        head, _, leaf = key.partition(".")
        value = desc.get(head)
        if value is None or (leaf and not (isinstance(value, dict) and type(value.get(leaf)) is int)):
            return False
    return True


FRAME_FIELDS = required_fields(FrameDescriptor)
TENSOR_FIELDS = required_fields(TensorDescriptor)

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: dict[str, Any]) -> bytes:
    return _packer.pack(obj)


def unpack(data: bytes) -> dict[str, Any]:
    """The map in `data`; ValueError for anything else (bad msgpack, a map as a key, not a map)."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several kinds, TypeError among them
        raise ValueError(f"undecodable message: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError("message is not a map")
    return obj


# -- results (docs/protocol.md) -------------------------------------------------------------
# Checked in the supervisor's hub before anyone sees a result, and again by subscribers, so a
# forged or damaged message never reaches a consumer, the record or the figures.

RESULT_TIMES = ("capture", "preprocess_start", "preprocess_end", "inference_start", "inference_end")


def _text(v: Any) -> bool:
    return type(v) is str


def _count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _times(v: Any) -> bool:
    return (type(v) is dict and all(k in v for k in RESULT_TIMES)
            and all(type(k) is str and _count(n) for k, n in v.items()))


def _top(v: Any) -> bool:
    return type(v) is list and 1 <= len(v) <= 1000 and all(
        type(c) is dict and _count(c.get("index")) and _text(c.get("label"))
        and _number(c.get("prob")) for c in v)


def _plain(v: Any, depth: int = 0) -> bool:
    """JSON without surprises (what a key we do not know may hold): no bytes, no inf or nan."""
    if v is None or type(v) in (bool, int, str):
        return True
    if type(v) is float:
        return math.isfinite(v)
    if depth > 8:
        return False
    if type(v) is list:
        return all(_plain(x, depth + 1) for x in v)
    return type(v) is dict and all(type(k) is str and _plain(x, depth + 1) for k, x in v.items())


_RESULT: dict[str, Callable[[Any], bool]] = {
    "schema": lambda v: type(v) is int and v == SCHEMA, "type": lambda v: v == "result",
    "pipeline": _text, "source": _text, "worker": _text, "model": _text, "runtime": _text,
    "result_seq": lambda v: type(v) is int and v >= 1, "seq": _count, "frame_slot": _count,
    "frame_shape": lambda v: type(v) is list and len(v) == 3 and all(
        type(n) is int and n > 0 for n in v),
    "input_size": _count, "captured_at": _number, "latency_ms": _number, "t": _times, "top": _top,
}
_RESULT_OPTIONAL: dict[str, Callable[[Any], bool]] = {
    "frame": lambda v: v is None or _count(v), "item": _text, "dropped": _count, "model_id": _text,
    "queue": lambda v: type(v) is dict and all(type(k) is str and _count(n) for k, n in v.items()),
}


def result_problem(msg: dict[str, Any]) -> str | None:
    """The first field that makes `msg` not a schema-1 result (the kind of a rejection), or None.
    Keys the schema does not name are allowed (new ones may appear) if they hold plain JSON."""
    for key, ok in _RESULT.items():
        if key not in msg or not ok(msg[key]):
            return key
    for key, value in msg.items():
        if key in _RESULT:
            continue
        ok = _RESULT_OPTIONAL.get(key)
        if ok is not None and not ok(value):
            return key
        if ok is None and not (type(key) is str and _plain(value)):
            return "other keys"  # a fixed name: senders cannot invent kinds
    return None
