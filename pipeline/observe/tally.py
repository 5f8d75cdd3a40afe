"""A stage's drop counters kept where they outlive the stage: a small file of the run directory,
mapped into memory, holding one entry per (edge, reason).

A count lands in the file the moment it is made (a store into mapped memory: no system call, no
allocation), so the counts a stage made since its last once-a-second stats message are not lost
when it is killed outright (SIGKILL, the watchdog): the supervisor reads the file once the stage
has ended (`take`) and removes it, and the next process of that stage starts a new one.

Layout: entries of 72 bytes, each a name `EDGE/REASON` (UTF-8, NUL-padded to 64 bytes) and a
uint64 count in native byte order. An entry with an empty name is unused.
"""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path

NAME_BYTES = 64
ENTRY_BYTES = NAME_BYTES + 8


class DropTally:
    """The counters of one stage process, created empty (see `counts`)."""

    def __init__(self, path: Path, entries: int):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, entries * ENTRY_BYTES)
            self._mm = mmap.mmap(fd, entries * ENTRY_BYTES)
        finally:
            os.close(fd)
        self._words = memoryview(self._mm).cast("Q")
        self._entries = entries
        self._used = 0

    def counts(self, edge: str, start: Mapping[str, int]) -> "EdgeCounts":
        """`edge`'s counters, starting from `start` (the dict of counts they replace)."""
        out = EdgeCounts(self, edge)
        out.update(start)
        return out

    def _new_entry(self, name: str) -> int:
        """Index of the count word of a new entry called `name`."""
        raw = name.encode()
        if self._used == self._entries or len(raw) > NAME_BYTES:
            raise ValueError(f"drop tally: no room for {name!r} ({self._entries} entries of "
                             f"{NAME_BYTES}-byte names)")
        at = self._used * ENTRY_BYTES
        self._mm[at:at + len(raw)] = raw
        self._used += 1
        return (at + NAME_BYTES) // 8

    def close(self) -> None:
        self._words.release()
        self._mm.close()


class EdgeCounts(MutableMapping[str, int]):
    """One edge's counts in a tally, used like the `{reason: count}` dict they replace."""

    def __init__(self, tally: DropTally, edge: str):
        self._tally = tally
        self._edge = edge
        self._index: dict[str, int] = {}

    def __getitem__(self, reason: str) -> int:
        return self._tally._words[self._index[reason]]

    def __setitem__(self, reason: str, n: int) -> None:
        i = self._index.get(reason)
        if i is None:
            i = self._index[reason] = self._tally._new_entry(f"{self._edge}/{reason}")
        self._tally._words[i] = int(n)

    def __delitem__(self, reason: str) -> None:
        raise TypeError("a drop count cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def take(path: Path) -> dict[str, dict[str, int]]:
    """The counts in a stage's tally file as `{edge: {reason: count}}`, and the file removed
    ({} if there is none: the stage never started, or it was taken already)."""
    try:
        data = path.read_bytes()
        path.unlink()
    except FileNotFoundError:
        return {}
    out: dict[str, dict[str, int]] = {}
    for at in range(0, len(data) - ENTRY_BYTES + 1, ENTRY_BYTES):
        name = data[at:at + NAME_BYTES].rstrip(b"\0").decode(errors="replace")
        if name:
            edge, _, reason = name.rpartition("/")
            out.setdefault(edge, {})[reason] = int.from_bytes(data[at + NAME_BYTES:at + ENTRY_BYTES],
                                                              sys.byteorder)
    return out
