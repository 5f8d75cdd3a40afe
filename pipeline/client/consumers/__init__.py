"""Result consumers: the built-ins (`print`, `jsonl`, `video`, `preview`, `mqtt`, `collect`) and
custom ones.

A consumer is a plain function `fn(result)`, or an object with `on_result(result)` and, if it
wants them, `on_status(status)` and `close()`. Class attributes `frames = True` / `status = True`
ask for the frame of each result and for the pipeline's per-second status. A class is given the
consumer options (pipeline/config/consumers.py) and `name`, `config` (the pipeline's) that its
constructor names, or those its `OPTIONS` lists. Custom consumers are named `module:attribute` or
`path/to/file.py:attribute` (see tools/examples/consumer.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.client.result import Result
from pipeline.client.subscription import Subscription
from pipeline.config.consumers import BUILTIN_CONSUMERS
from pipeline.errors import UserError


class ConsumerError(UserError):
    """A consumer that cannot be loaded or started; shown to the user as one line."""


class _FunctionConsumer:
    def __init__(self, fn: Callable[[Result], Any]):
        self.on_result = fn
        self.frames = getattr(fn, "frames", False)
        self.status = getattr(fn, "status", False)


def resolve(spec: str) -> Any:
    """What a consumer spec names: a built-in class, or the attribute of a custom module or file."""
    target = BUILTIN_CONSUMERS[spec].target if spec in BUILTIN_CONSUMERS else spec
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConsumerError(f"--consumer {spec!r}: use one of {', '.join(BUILTIN_CONSUMERS)} or "
                            f"MODULE:NAME")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            loader = importlib.util.spec_from_file_location(path.stem, path)
            if loader is None or not path.is_file():
                raise ConsumerError(f"--consumer {spec!r}: no such file {path}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_name)
        return getattr(module, attr)
    except ConsumerError:
        raise
    except (ImportError, AttributeError, OSError, SyntaxError) as e:
        raise ConsumerError(f"--consumer {spec!r}: cannot load it: {e}") from None


def _takes(cls: type) -> set[str]:
    """The options a consumer class takes: those its `OPTIONS` lists, else those its constructor
    names."""
    if hasattr(cls, "OPTIONS"):
        return set(cls.OPTIONS)
    return {name for name, p in inspect.signature(cls).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def load(spec: str, **options: Any) -> Any:
    """A ready consumer object; a class gets the options it takes (see `_takes`)."""
    obj = resolve(spec)
    if isinstance(obj, type):
        wanted = _takes(obj)
        return obj(**{k: v for k, v in options.items() if k in wanted})
    if callable(obj) and not hasattr(obj, "on_result"):
        return _FunctionConsumer(obj)
    if hasattr(obj, "on_result"):
        return obj
    raise ConsumerError(f"--consumer {spec!r}: not a function, class or object with on_result")


def run(consumer: Any, sub: Subscription, count: int | None = None,
        duration: float | None = None) -> None:
    """Feed results to the consumer until the stream ends, `count` results, or `duration` s."""
    end = time.monotonic() + duration if duration else None
    status_seen: dict | None = None
    n = 0
    try:
        while count is None or n < count:
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            result = sub.receive(timeout=remaining)
            if getattr(consumer, "status", False) and sub.last_status is not status_seen:
                status_seen = sub.last_status
                consumer.on_status(status_seen)
            if result is None:
                if sub.ended:
                    break
                continue
            consumer.on_result(result)
            n += 1
    finally:
        close = getattr(consumer, "close", None)
        if close:
            close()
