"""Shared-memory ring of fixed-size slots, each guarded by a sequence lock.

One writer process fills slots round-robin; readers learn (slot, seq) from a ZeroMQ message and
read the payload in place. The writer stores `seq` in the slot's `begin` word before touching the
payload and in its `end` word after, so a reader that finished reading can tell whether the slot
still holds the frame it was told about (`intact`): if the writer lapped it, `begin` has moved on
and the frame is dropped as torn instead of being classified half-overwritten.

Ordering: Arm may reorder plain loads among themselves and plain stores among themselves, so
`fence.full_fence` orders them: the writer fences after storing `begin` and before storing `end`;
the reader fences in `intact`, before re-reading the words, so a byte of a newer frame implies it
sees the newer `begin`. A reader learns of a frame through a descriptor; its path through ZeroMQ
and the kernel is a chain of release and acquire operations, so the payload is visible to the
reader when its read starts. (tools/bench/fence.py: three fences cost about 1% of writing a
640x480 frame.)

Two counters in the header carry flow control for the `block` and `drop_new` policies: `written`
(frames published, writer-owned) and `released` (frames finished, reader-owned). A third, `sent`
(writer-owned), counts the frames whose descriptor the writer handed to ZeroMQ: a reader that
restarts after a crash counts as lost only `sent - released`, the frames its predecessor was
sent and did not finish; a frame the writer could not send it counts itself (a `latest` drop).

Two more words let several readers share a ring (inference workers): `claimed`, the sequence
number of the newest frame a reader took, and `holder`, the pid of the reader working on a frame
of an in-order (`block`, `drop_new`) ring. They change only under `locked()`, an exclusive flock
on the segment, held for a few microseconds and dropped by the kernel if its holder dies.

Segments are plain files in /dev/shm (POSIX shared memory on Linux), created and unlinked by name,
so no resource tracker process is involved and the supervisor can remove them after any crash.
The space is reserved at creation (posix_fallocate): a full /dev/shm fails there, loudly, instead
of raising SIGBUS in the middle of a frame.

/dev/shm is shared by every user and segment names are predictable, so a segment found under a
ring's name is used only if it is ours: a regular file owned by the effective uid (root included:
a root pipeline does not read other users' segments either). A writer takes over an existing
segment (a restarted stage) only if, besides, no other user may open it (mode 0600) and its
header holds the run's random token (`RunPaths.token`), which only our own run directory (mode
0700) tells. Anything else is refused with `RingRefused`, one line naming the segment.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import secrets
import stat
from typing import Iterator

import numpy as np

from pipeline.errors import UserError
from pipeline.transport.fence import full_fence

SHM_DIR = "/dev/shm"
MAGIC = 0x52494E4731  # "RING1"
VERSION = 3
# magic, version, slots, slot_bytes, written, released, last seq, token, claimed, holder, sent
_HEADER_WORDS = 11
_W_MAGIC, _W_VERSION, _W_SLOTS, _W_SLOT_BYTES, _W_WRITTEN, _W_RELEASED, _W_LAST_SEQ = range(7)
_W_TOKEN, _W_CLAIMED, _W_HOLDER, _W_SENT = 7, 8, 9, 10
_PAGE = 4096
_SLOT_ALIGN = 64


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def shm_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


class RingRefused(UserError, ValueError):
    """A segment under a ring's name that is not ours to use (another user's, open to others,
    or not made by this run); `str(e)` is the one-line reason."""


def _open_own(name: str, flags: int) -> tuple[int, os.stat_result]:
    """Open a segment only if it is a regular file of ours (never through a symlink, never
    blocking on a FIFO); returns the descriptor and its stat."""
    path = shm_path(name)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:  # a symlink (ELOOP), or another user's private file (EACCES)
        if e.errno not in (errno.ELOOP, errno.EACCES, errno.EPERM):
            raise
        try:
            problem = _not_ours(os.lstat(path))
        except OSError:
            problem = None
        if problem is None:
            raise
        raise RingRefused(_refusal(path, problem)) from None
    st = os.fstat(fd)
    problem = _not_ours(st)
    if problem is not None:
        os.close(fd)
        raise RingRefused(_refusal(path, problem))
    return fd, st


def _not_ours(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.geteuid():
        return f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    return None


def _refusal(path: str, problem: str) -> str:
    return f"shared memory {path} {problem}: refusing to use it; remove it or stop the program that made it"


class Ring:
    """A mapped ring segment; use `Ring.create` (writer) or `Ring.attach` (reader)."""

    def __init__(self, name: str, mm: mmap.mmap, owner: bool):
        self.name = name
        self.owner = owner
        self._mm = mm
        head = np.frombuffer(mm, dtype=np.uint64, count=_HEADER_WORDS)
        if int(head[_W_MAGIC]) != MAGIC:
            raise ValueError(f"shared memory {name} is not a frame ring")
        self.slots = int(head[_W_SLOTS])
        self.slot_bytes = int(head[_W_SLOT_BYTES])
        self._head = head
        self._seq = np.frombuffer(mm, dtype=np.uint64, count=2 * self.slots,
                                  offset=_HEADER_WORDS * 8).reshape(self.slots, 2)
        stride = _align(self.slot_bytes, _SLOT_ALIGN)
        base = _align((_HEADER_WORDS + 2 * self.slots) * 8, _PAGE)
        self._payload = [
            np.frombuffer(mm, dtype=np.uint8, count=self.slot_bytes, offset=base + i * stride)
            for i in range(self.slots)
        ]
        self._views: dict[tuple, np.ndarray] = {}
        self._lock_fd: int | None = None

    @staticmethod
    def nbytes(slots: int, slot_bytes: int) -> int:
        """Size of the segment for a ring of this shape (for /dev/shm budgeting)."""
        base = _align((_HEADER_WORDS + 2 * slots) * 8, _PAGE)
        return base + slots * _align(slot_bytes, _SLOT_ALIGN)

    @classmethod
    def create(cls, name: str, slots: int, slot_bytes: int, token: int = 0) -> "Ring":
        """A new ring (FileExistsError if the name is taken), stamped with the run's `token`."""
        if slots < 1 or slot_bytes < 1:
            raise ValueError(f"ring {name}: slots and slot_bytes must be positive")
        size = cls.nbytes(slots, slot_bytes)
        # Built under a private, unguessable name and linked into place complete, so a reader
        # never maps a segment that is still empty or has no header, and nobody can plant a file
        # of theirs where we build ours.
        final, tmp = shm_path(name), f"{shm_path(name)}.new-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                os.unlink(tmp)
                raise OSError(e.errno, f"cannot reserve {size / 2**20:.1f} MiB in {SHM_DIR} "
                                       f"for ring {name}: {e.strerror}") from None
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        head = np.frombuffer(mm, dtype=np.uint64, count=_HEADER_WORDS)
        head[_W_SLOTS] = slots
        head[_W_SLOT_BYTES] = slot_bytes
        head[_W_VERSION] = VERSION
        head[_W_TOKEN] = token
        head[_W_MAGIC] = MAGIC
        del head
        try:
            os.link(tmp, final)  # fails if the ring exists: O_EXCL for the finished segment
        except FileExistsError:
            mm.close()
            raise
        finally:
            os.unlink(tmp)
        return cls(name, mm, owner=True)

    @classmethod
    def open_for_writing(cls, name: str, slots: int, slot_bytes: int, token: int) -> "Ring":
        """Create the ring, or take over the one a previous run of this stage left (a restart),
        so readers that mapped it carry on with the same segment. Only a segment of ours, private
        (0600) and stamped with this run's `token` is taken over; anything else: RingRefused.
        An existing ring is looked for first, so a restart reserves no new space: it works with
        /dev/shm full."""
        try:
            ring = cls.attach(name, private=True)
        except FileNotFoundError:
            try:
                return cls.create(name, slots, slot_bytes, token)
            except FileExistsError:  # made meanwhile by another writer of this name
                ring = cls.attach(name, private=True)
        if int(ring._head[_W_TOKEN]) != token:
            ring.close()
            raise RingRefused(f"shared memory {shm_path(name)} was not made by this run: "
                              "refusing to write into it; remove it")
        if ring.slots != slots or ring.slot_bytes < slot_bytes:
            ring.close()
            raise ValueError(f"ring {name} exists with another shape")
        return ring

    @classmethod
    def attach(cls, name: str, readonly: bool = False, private: bool = False) -> "Ring":
        """Map an existing ring of ours; `readonly` maps it without write permission (consumers),
        `private` also refuses one that other users may open."""
        fd, st = _open_own(name, os.O_RDONLY if readonly else os.O_RDWR)
        try:
            if private and st.st_mode & 0o077:
                raise RingRefused(f"shared memory {shm_path(name)} is open to other users (mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}, not 0600): refusing to write "
                                  "into it; remove it")
            prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
            mm = mmap.mmap(fd, st.st_size, prot=prot)
        finally:
            os.close(fd)
        return cls(name, mm, owner=False)

    def view(self, slot: int, shape: tuple[int, ...], dtype: str | np.dtype = np.uint8) -> np.ndarray:
        """The slot's payload as an array of `shape` (views are cached: no per-frame allocation)."""
        key = (slot, shape, dtype)
        v = self._views.get(key)
        if v is None:
            dt = np.dtype(dtype)
            n = int(np.prod(shape)) * dt.itemsize
            if n > self.slot_bytes:
                raise ValueError(f"ring {self.name}: {shape} {dt} needs {n} bytes, "
                                 f"slot has {self.slot_bytes}")
            v = self._payload[slot][:n].view(dt).reshape(shape)
            if len(self._views) > 4 * self.slots:  # frame shapes changed (images source)
                self._views.clear()
            self._views[key] = v
        return v

    # Writer side.
    def begin_write(self, slot: int, seq: int) -> None:
        self._seq[slot, 0] = seq
        full_fence()  # `begin` is visible before any byte of the new payload

    def end_write(self, slot: int, seq: int) -> None:
        full_fence()  # the whole payload is visible before `end` (and `last_seq`) name the frame
        self._seq[slot, 1] = seq
        self._head[_W_LAST_SEQ] = seq
        self._head[_W_WRITTEN] += 1

    @property
    def last_seq(self) -> int:
        """Sequence number of the last frame written: a restarted writer continues after it."""
        return int(self._head[_W_LAST_SEQ])

    def mark_sent(self) -> None:
        """The frame written last was handed to the reader's socket (see `take_over`)."""
        self._head[_W_SENT] += 1

    def release_all(self) -> int:
        """Take back every outstanding slot (from a reader that stopped releasing); returns how many."""
        held = self.written - self.released
        if held > 0:
            self._head[_W_RELEASED] = self.written
        return max(0, held)

    def take_over(self) -> int:
        """A reader restarted after a crash: give back the slots its predecessor held and return
        how many frames it lost, those sent to it and not finished (`sent - released`); frames
        the writer could not send are the writer's to count, and one it is still sending (an
        in-order edge) goes to this reader."""
        lost = self.sent - self.released
        if lost > 0:
            self._head[_W_RELEASED] = self.sent
        return max(0, lost)

    @property
    def held(self) -> int:
        """Frames sent to the reader(s) and not yet finished."""
        return max(0, self.sent - self.released)

    # Reader side.
    def intact(self, slot: int, seq: int) -> bool:
        """True while the slot still holds `seq` and no newer write has started on it."""
        full_fence()  # the caller's reads of the payload are done before the words are re-read
        return int(self._seq[slot, 1]) == seq and int(self._seq[slot, 0]) == seq

    def release(self, n: int = 1) -> None:
        self._head[_W_RELEASED] += n

    # Shared readers (under `locked`).
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        if self._lock_fd is None:
            self._lock_fd = os.open(shm_path(self.name), os.O_RDONLY)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @property
    def claimed(self) -> int:
        return int(self._head[_W_CLAIMED])

    @claimed.setter
    def claimed(self, seq: int) -> None:
        self._head[_W_CLAIMED] = seq

    @property
    def holder(self) -> int:
        return int(self._head[_W_HOLDER])

    @holder.setter
    def holder(self, pid: int) -> None:
        self._head[_W_HOLDER] = pid

    @property
    def written(self) -> int:
        return int(self._head[_W_WRITTEN])

    @property
    def released(self) -> int:
        return int(self._head[_W_RELEASED])

    @property
    def sent(self) -> int:
        return int(self._head[_W_SENT])

    def close(self) -> None:
        """Unmap (the segment itself stays until `unlink`)."""
        self._views.clear()
        self._payload = []
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._head = self._seq = None  # type: ignore[assignment]
        try:
            self._mm.close()
        except BufferError:  # a caller still holds a view; the mapping goes with the process
            pass

    @staticmethod
    def unlink(name: str) -> bool:
        """Remove the segment if it is there and ours (another user's, squatting the name, is
        theirs to remove); True if removed."""
        try:
            if os.lstat(shm_path(name)).st_uid != os.geteuid():
                return False
            os.unlink(shm_path(name))
            return True
        except FileNotFoundError:
            return False
