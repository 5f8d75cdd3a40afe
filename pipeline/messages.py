"""The small msgpack messages that cross sockets; frames themselves never do.

Three families:
- frame descriptors on an edge (`slot`, `seq`, shape, timestamps), stage to stage;
- results on the public PUB socket (documented in docs/protocol.md, versioned by `schema`);
- control and stats between stages and the supervisor.

Timestamps are CLOCK_MONOTONIC nanoseconds (`time.monotonic_ns()`), one clock for every process on
the host, so latencies can be subtracted across processes; `captured_at` is wall-clock UNIX time.
"""

from __future__ import annotations

from typing import Any

import msgpack

SCHEMA = 1

# Control message types (stage <-> supervisor).
READY = "ready"  # stage set up (model warm, source open); carries details
START = "start"  # supervisor: begin producing frames
STOP = "stop"  # supervisor: finish and exit
STATS = "stats"  # stage: periodic counters
ERROR = "error"  # stage: fatal problem, one line
EOS = "eos"  # end of stream: on edges, on the results socket and to the supervisor
BYE = "bye"  # stage: final stats, exiting

# Fields a descriptor must carry besides slot, seq, shape and dtype: from capture, and added by
# preprocess. A reader drops (as malformed) any descriptor without them.
FRAME_FIELDS = ("src", "t_read", "t_cap", "t_wall")
TENSOR_FIELDS = ("t_pre0", "t_pre1", "fslot", "fshape")

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: dict[str, Any]) -> bytes:
    return _packer.pack(obj)


def unpack(data: bytes) -> dict[str, Any]:
    obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(obj, dict):
        raise ValueError("message is not a map")
    return obj
