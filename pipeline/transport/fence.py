"""A full memory fence callable from Python, for the rings' sequence lock (`ring.py`).

Why: a reader checks a frame's sequence words after reading its payload, and a writer marks a slot
before and after filling it. Arm may reorder plain loads among themselves and plain stores among
themselves, so without a fence a reader could read new pixels yet still see the old `begin` word
and accept a torn frame. x86 keeps loads and stores each in order (TSO), so there the fence only
costs time.

How: `atomic_thread_fence` from libatomic (GCC's runtime library, Debian package `libatomic1`),
called through ctypes, so the target needs no compiler. Its whole body is one barrier: `dmb ish`
on aarch64, `lock or $0,(%rsp)` on x86-64 (libatomic is compiled without knowing the order it
will be given, so it always fences seq_cst). A call costs about 150 ns on x86-64, nearly all of
it ctypes (`python -m tools.bench.fence`).

Without libatomic, x86 falls back to no fence at all (the ring never needs a store ordered before
a later load, the one reordering TSO allows); any other machine fails here, naming the package,
rather than running the ring unordered.
"""

from __future__ import annotations

import ctypes
import functools
import platform
from typing import Callable

_SEQ_CST = 5  # __ATOMIC_SEQ_CST, C11 memory_order_seq_cst
_TSO_MACHINES = {"x86_64", "amd64", "i386", "i686"}


def _noop() -> None:
    """No instruction: enough on a TSO machine (see the module docstring)."""


def _load() -> tuple[Callable[[], None], str]:
    try:
        fn = ctypes.CDLL("libatomic.so.1").atomic_thread_fence
    except (OSError, AttributeError):
        if platform.machine().lower() in _TSO_MACHINES:
            return _noop, "none (x86 store and load order, libatomic.so.1 not found)"
        raise ImportError("the shared-memory rings need libatomic.so.1 for their memory fence: "
                          "install it with `sudo apt install libatomic1`") from None
    # No argtypes: ctypes passes a Python int as a C int anyway, and converting through declared
    # argtypes doubles the cost of the call. `restype = None`: the function returns nothing.
    fn.restype = None
    return functools.partial(fn, _SEQ_CST), "libatomic atomic_thread_fence(seq_cst)"


# full_fence(): no load or store of this thread moves across it, as seen by any core.
# FENCE: what full_fence is on this machine (for reports).
full_fence, FENCE = _load()
