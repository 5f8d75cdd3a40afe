"""Real-time video classification on edge CPUs: one pinned process per stage, frames in
shared-memory rings, small msgpack messages over ZeroMQ.

`from pipeline import attach` subscribes to a running pipeline (pipeline/client/subscription.py). It is
imported lazily: stage processes import this package before pinning themselves to their cores,
and must not start numpy's thread pools before that.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["attach", "Subscription", "Result", "Prediction"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pipeline.client import subscription

        return getattr(subscription, name)
    raise AttributeError(name)
