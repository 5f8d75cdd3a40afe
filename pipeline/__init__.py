"""Real-time video classification on edge CPUs: one pinned process per stage, frames in
shared-memory rings, small msgpack messages over ZeroMQ.

`from pipeline import attach` subscribes to a running pipeline (pipeline/client/subscription.py);
`Result` and `Prediction` are what it delivers (pipeline/client/result.py). They are
imported lazily: stage processes import this package before pinning themselves to their cores,
and must not start numpy's thread pools before that.
"""

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["attach", "Subscription", "Result", "Prediction"]
_HOME = {"attach": "subscription", "Subscription": "subscription", "Result": "result", "Prediction": "result"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"pipeline.client.{_HOME[name]}"), name)
    raise AttributeError(name)
