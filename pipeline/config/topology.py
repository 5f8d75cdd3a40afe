"""What a config implies about processes and names: which stage instances run where, the names
of their rings and sockets, their back-pressure and the cores each is pinned to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.cores import CORES_ENV, allowed_cores, keep_off

if TYPE_CHECKING:
    from .schema import Config

__all__ = ["CORES_ENV", "allowed_cores"]  # re-exported: the config is where callers look
LOCAL = "local"  # the host of every stage a config does not place elsewhere


def keep_off_inference_cores(config: "Config") -> None:
    """Move this process (supervisor, consumer, tracer) off the model's cores, where its work
    would show up as latency spikes; it stays where it is if inference has every core."""
    keep_off(config.cores_of("inference"))


def auto_layout(config: "Config") -> dict[str, Any] | None:
    """The inference layout a config that sets neither `inference.workers` nor `inference.cores`
    gets, where it differs from the default (one worker on every core but the first, which
    capture and preprocess keep to themselves: a camera's frames never wait for the model).

    With several sources, or a file read as fast as possible, there are more frames than one
    worker can classify, and the first core idles between decoding them: then one worker per
    core on every core. The workers run below capture and preprocess in priority
    (`inference.nice`), so those still take their share of the first core the moment they have
    a frame to make; and a file is read two frames ahead per worker (`edges.credits`, unless
    set), so a worker never waits for the core it shares to decode its next frame. Returns
    the settings to add to the config's tree; None: the default stands, also where the config
    runs `[[consumers]]` (they run below everything, on the time the first core has spare: with
    every core busy they would fall behind, and frames would be gone before they read them) and
    for stages on other hosts, whose cores are not known here."""
    inf = config.inference
    if {"workers", "cores"} & inf.model_fields_set or inf.host != LOCAL \
            or any(s.host != LOCAL for s in config.source_list) or config.consumers:
        return None
    allowed = allowed_cores()
    if len(allowed) < 2 or (len(config.source_list) == 1 and not config.pulled(0)):
        return None
    layout: dict[str, Any] = {"inference": {"cores": allowed, "workers": len(allowed)}}
    edges = config.edges
    if not edges.credits:
        layout["edges"] = {"credits": min(2 * len(allowed), edges.frames.slots, edges.tensors.slots)}
    return layout


@dataclass(frozen=True)
class Instance:
    """One stage process: `name` is how stats, status and restarts refer to it."""

    name: str  # "capture", or "capture.ID" with several sources; "inference.N" with several workers
    kind: str  # capture | preprocess | inference
    source: int | None = None  # index into Config.source_list (capture, preprocess)
    worker: int | None = None  # 0-based (inference)


class Topology:
    """The topology methods of `Config` (a mixin with no fields): derived from its sections."""

    @property
    def source_list(self) -> list[Any]:
        """The sources, whether the config gave one [source] or several [[sources]]."""
        return list(self.sources) or [self.source]

    def source_ids(self) -> list[str]:
        """Each source's id: its `id`, else its kind (numbered when there are several)."""
        srcs = self.source_list
        if len(srcs) == 1:
            return [srcs[0].id or srcs[0].kind]
        return [s.id or f"{s.kind}{i + 1}" for i, s in enumerate(srcs)]

    def hosts(self) -> list[str]:
        return sorted({s.host for s in self.source_list} | {self.inference.host})

    def instances(self, host: str | None = None) -> list[Instance]:
        """Stage processes of the topology (on `host` only, if given), in start order."""
        ids, several = self.source_ids(), len(self.source_list) > 1
        out: list[Instance] = []
        if host is None or host == self.inference.host:
            n = self.inference.workers
            out += [Instance(f"inference.{w + 1}" if n > 1 else "inference", "inference", worker=w)
                    for w in range(n)]
            out += [Instance(f"preprocess.{sid}" if several else "preprocess", "preprocess", source=i)
                    for i, sid in enumerate(ids)]
        out += [Instance(f"capture.{sid}" if several else "capture", "capture", source=i)
                for i, (sid, src) in enumerate(zip(ids, self.source_list))
                if host is None or src.host == host]
        return out

    def edge_name(self, edge: str, source: int) -> str:
        """Ring and socket name of a source's edge: `frames`, or `frames.ID` with several."""
        return f"{edge}.{self.source_ids()[source]}" if len(self.source_list) > 1 else edge

    def edge_peers(self, edge: str, source: int) -> list[str]:
        """The stage instances that connect to a source's edge socket, the only processes it
        admits: the source's preprocess (frames), or every worker (tensors, credits)."""
        kind = "preprocess" if edge == "frames" else "inference"
        return [i.name for i in self.instances()
                if i.kind == kind and (kind == "inference" or i.source == source)]

    def frames_ring(self, source: int) -> str:
        """The ring holding a source's frames where they are preprocessed: capture's own, or the
        copy a tcp edge receives them into (`<edge>.rx`)."""
        name = self.edge_name("frames", source)
        return f"{name}.rx" if self.edges.frames.tcp else name

    def pulled(self, source: int) -> bool:
        """Whether a source is read on demand: it has no clock of its own, its frames stay on
        this host, and `edges.pull` is "auto"."""
        return self.edges.pull == "auto" and self.source_list[source].clockless \
            and not self.edges.frames.tcp

    def policy(self, edge: str, source: int) -> str:
        """The back-pressure policy of a source's edge: in order ("block") when it is pulled."""
        return "block" if self.pulled(source) else getattr(self.edges, edge).policy

    def credits(self) -> int:
        """Frames in flight per pulled source: one per worker, each decoded just in time."""
        return self.edges.credits or min(self.inference.workers, self.edges.frames.slots,
                                         self.edges.tensors.slots)

    def frames_endpoints(self, source: int) -> tuple[str, str]:
        """(bind, connect) of a source's tcp frames edge: port + source index."""
        e, src = self.edges.frames, self.source_list[source]

        def shift(url: str) -> str:
            head, port = url.rsplit(":", 1)
            return f"{head}:{int(port) + source}"

        return shift(e.bind), shift(e.connect.replace("{host}", src.host))

    def cores_for(self, inst: Instance) -> list[int]:
        """A process's cores: workers split the inference cores between them (a worker per core
        when there are as many cores as workers; several per core when there are fewer)."""
        cores = self.cores_of(inst.kind)
        if inst.worker is None or self.inference.workers == 1:
            return cores
        n = self.inference.workers
        if n >= len(cores):
            return [cores[inst.worker % len(cores)]]
        per = len(cores) // n
        return cores[inst.worker * per:(inst.worker + 1) * per]

    def cores_of(self, stage: str) -> list[int]:
        """Cores a stage is pinned to; unset stages get the default layout
        (capture + preprocess on the first core, inference on the others)."""
        cores = getattr(self, stage).cores
        if cores is not None:
            return list(cores)
        allowed = allowed_cores()
        if stage == "inference" and len(allowed) > 1:
            return allowed[1:]
        return allowed[:1]


def _core_list(cores: list[int]) -> str:
    if cores == list(range(cores[0], cores[-1] + 1)) and len(cores) > 1:
        return f"{cores[0]}-{cores[-1]}"
    return ", ".join(map(str, cores))

