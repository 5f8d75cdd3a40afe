"""Real-time video classification on edge CPUs: one pinned process per stage, frames in
shared-memory rings, small msgpack messages over ZeroMQ."""

__version__ = "0.1.0"
