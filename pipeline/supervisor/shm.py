"""Shared-memory hygiene: a preflight that refuses to start when /dev/shm cannot hold the rings,
the names of the rings this host makes, and removal of segments orphaned by a supervisor that was
killed (SIGKILL leaves no chance to clean up), never touching the segments of pipelines that are
still running, nor those of other users (theirs to judge: their supervisor may run where we cannot
see it, and we may not remove them anyway).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from pipeline.config import Config, Instance
from pipeline.transport.ring import SHM_DIR, Ring
from pipeline.transport.rundir import RunPaths, supervisor_alive

# rundir.segment_name: edge-pipeline-NAME-PID-START.EDGE, and `.new-HEX` while being built
SEGMENT = re.compile(r"^edge-pipeline-(?P<name>[A-Za-z0-9_-]+)-(?P<pid>\d+)-(?P<start>\d+)\."
                     r"(?P<edge>(frames|tensors)[A-Za-z0-9_.-]*?)(\.new-[0-9a-f]+)?$")


@dataclass(frozen=True)
class RingNeed:
    edge: str
    slots: int
    slot_bytes: int

    @property
    def total(self) -> int:
        return Ring.nbytes(self.slots, self.slot_bytes)


def ring_needs(config: Config, frame_bytes: list[int], host: str | None = None) -> list[RingNeed]:
    """The rings this host makes: a frames ring per source captured here (and one more where a
    tcp edge delivers it), a tensors ring per source preprocessed here."""
    pre, edges = config.preprocess, config.edges
    needs = []
    here = {i.name: i for i in config.instances(host)}
    for inst in here.values():
        if inst.kind == "capture" or (inst.kind == "preprocess" and edges.frames.tcp):
            needs.append(RingNeed(config.edge_name("frames", inst.source), edges.frames.slots,
                                  frame_bytes[inst.source]))
        if inst.kind == "preprocess":
            needs.append(RingNeed(config.edge_name("tensors", inst.source), edges.tensors.slots,
                                  3 * pre.crop_size ** 2 * 4))
    return needs


def frame_bytes(config: Config, host: str | None) -> list[int]:
    """Largest frame of each source captured here (0 for another host's: not here to ask)."""
    from workers.capture.sources import frame_bytes_estimate

    return [frame_bytes_estimate(src) if host in (None, src.host) else 0
            for src in config.source_list]


def frame_rings(config: Config, here: list[Instance], paths: RunPaths) -> dict[str, str]:
    """Each source's rings on this host, by edge name; `frames...` is the ring a result's
    frame_slot points into (the received copy when frames arrive over tcp)."""
    rings = {}
    for inst in here:
        if inst.source is None:
            continue
        frames = config.edge_name("frames", inst.source)
        if inst.kind == "preprocess":
            rings[frames] = paths.shm_name(config.frames_ring(inst.source))
            tensors = config.edge_name("tensors", inst.source)
            rings[tensors] = paths.shm_name(tensors)
        else:
            rings.setdefault(frames, paths.shm_name(frames))
    return rings


def all_rings(config: Config, here: list[Instance], paths: RunPaths) -> set[str]:
    """Every ring a stage of this host may have made (capture's own frames ring too)."""
    names = set(frame_rings(config, here, paths).values())
    for inst in here:
        if inst.source is not None:
            names.add(paths.shm_name(config.edge_name("frames", inst.source)))
    return names


def free_bytes(path: str = SHM_DIR) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def preflight(config: Config, frame_bytes: list[int], free: int | None = None,
              host: str | None = None) -> str | None:
    """None if the rings fit in /dev/shm, else the one-line reason to refuse to start."""
    needs = ring_needs(config, frame_bytes, host)
    need = sum(n.total for n in needs)
    free = free_bytes() if free is None else free
    if need <= free:
        return None
    mib = 2 ** 20
    parts = ", ".join(f"{n.edge} ring {n.slots} x {n.slot_bytes / mib:.1f} MiB" for n in needs)
    return (f"not enough shared memory: the rings need {need / mib:.1f} MiB ({parts}) but {SHM_DIR} "
            f"has {free / mib:.1f} MiB free; lower edges.frames.slots / edges.tensors.slots or the "
            f"source size (source.width/height), or enlarge {SHM_DIR}")


def _segments() -> tuple[list[str], list[str]]:
    """Our segments whose supervisor is gone, and the segments of other users (left alone)."""
    orphans, others = [], []
    for name in sorted(os.listdir(SHM_DIR)):
        m = SEGMENT.match(name)
        if not m:
            continue
        try:
            st = os.lstat(os.path.join(SHM_DIR, name))
        except FileNotFoundError:  # removed meanwhile
            continue
        if st.st_uid != os.geteuid():
            others.append(name)
        elif stat.S_ISREG(st.st_mode) and not supervisor_alive(int(m["pid"]), int(m["start"])):
            orphans.append(name)
    return orphans, others


def orphaned_segments() -> list[str]:
    """Our segments whose supervisor is gone."""
    return _segments()[0]


def others_segments() -> list[str]:
    """Segments named like ours that belong to other users: never judged nor removed here."""
    return _segments()[1]


def remove_orphans() -> list[str]:
    removed = []
    for name in orphaned_segments():
        if Ring.unlink(name):
            removed.append(name)
    return removed
