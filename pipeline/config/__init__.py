"""Topology config: a TOML file plus `--set key=value` overrides, validated into typed objects.

Validation happens in the supervisor before anything starts, and every problem becomes one
`ConfigError` line naming the key and what is allowed, so `pipeline-up` can exit 2 cleanly.
"""

from __future__ import annotations

import glob
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import UserError

MODEL_NAMES = (
    "mobilenet_v2",
    "mobilenet_v3_large",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    "resnet18",
    "resnet50",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "googlenet",
    "inception_v3",
)
ModelName = Literal[MODEL_NAMES]  # type: ignore[valid-type]
Policy = Literal["latest", "drop_new", "block"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Keys whose values are file paths: relative to the config file when written there,
# relative to the working directory when given with --set.
PATH_KEYS = (("source", "path"), ("model", "weights"), ("curve", "keys"))
WEIGHTS_SPECIAL = ("builtin", "DEFAULT", "none")


CORES_ENV = "EDGE_PIPELINE_CORES"  # set by the supervisor for the processes it starts


def allowed_cores() -> list[int]:
    """Cores this pipeline may use: the supervisor's own set, handed down to its stages and
    consumers (it pins itself off the inference cores), else this process's affinity."""
    given = os.environ.get(CORES_ENV)
    if given:
        return sorted(int(c) for c in given.split(","))
    return sorted(os.sched_getaffinity(0))


def keep_off_inference_cores(config: "Config") -> None:
    """Move this process (supervisor, consumer, tracer) off the model's cores, where its work
    would show up as latency spikes; it stays where it is if inference has every core."""
    others = set(os.sched_getaffinity(0)) - set(config.cores_of("inference"))
    if others:
        os.sched_setaffinity(0, others)


class ConfigError(UserError):
    """A config problem, phrased as one line for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


HOST_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
LOCAL = "local"  # the host of every stage a config does not place elsewhere


class _SourceBase(_Strict):
    id: str = Field("", pattern=r"^[A-Za-z0-9_-]{0,40}$")
    host: str = Field(LOCAL, pattern=HOST_PATTERN)  # where this source's capture stage runs
    # A source that stops delivering for stall_ms every stall_every_s: to study camera hiccups.
    stall_ms: float = Field(0.0, ge=0, le=60000)
    stall_every_s: float = Field(0.0, ge=0, le=3600)


class SyntheticSource(_SourceBase):
    """Built-in moving test pattern: runs anywhere, needs no file or device."""

    kind: Literal["synthetic"]
    width: int = Field(640, ge=16, le=7680)
    height: int = Field(480, ge=16, le=4320)
    fps: float = Field(30.0, ge=0, le=1000)  # 0: as fast as possible
    frames: int = Field(0, ge=0)  # 0: endless


class VideoSource(_SourceBase):
    kind: Literal["video"]
    path: str
    loop: bool = False
    realtime: bool = True  # pace at `fps` (or the file's own rate); false: as fast as possible
    fps: float = Field(0.0, ge=0, le=1000)  # 0: the file's own frame rate


class ImagesSource(_SourceBase):
    kind: Literal["images"]
    path: str  # a folder or a glob pattern
    loop: bool = False
    fps: float = Field(0.0, ge=0, le=1000)  # 0: as fast as possible


class CameraSource(_SourceBase):
    kind: Literal["camera"]
    device: int | str = 0  # index N for /dev/videoN, or a device path
    width: int = Field(640, ge=16, le=7680)
    height: int = Field(480, ge=16, le=4320)
    fps: float = Field(30.0, gt=0, le=1000)
    fourcc: str = Field("", pattern=r"^([A-Za-z0-9 ]{4})?$")  # e.g. "MJPG"; empty: driver default
    backend: Literal["v4l2", "any"] = "v4l2"  # "any": let OpenCV choose (RTSP/HTTP URLs, files)


Source = Annotated[
    Union[SyntheticSource, VideoSource, ImagesSource, CameraSource], Field(discriminator="kind")
]


Restart = Literal["never", "on-failure", "always"]


class Supervision(_Strict):
    """Restart budget and watchdog, shared by all stages."""

    max_restarts: int = Field(5, ge=0, le=1000)  # per stage within restart_window_s
    restart_window_s: float = Field(60.0, gt=0, le=86400)
    backoff_s: float = Field(0.5, ge=0, le=60)  # first delay; doubles per recent restart
    backoff_max_s: float = Field(10.0, ge=0, le=600)
    watchdog_s: float = Field(5.0, ge=0, le=3600)  # no heartbeat this long: hung (0: off)


class CaptureStage(_Strict):
    cores: list[int] | None = None  # None: first allowed core
    restart: Restart = "never"


class PreprocessStage(_Strict):
    cores: list[int] | None = None  # None: first allowed core
    restart: Restart = "never"
    threads: int = Field(1, ge=1, le=64)  # OpenCV threads
    resize: Literal["crop", "squash"] = "crop"
    resize_size: int = Field(256, ge=16, le=4096)  # shorter side before the center crop
    crop_size: int = Field(224, ge=16, le=4096)  # model input is crop_size x crop_size
    # What the model input ring holds: normalised float32 (the model takes it as is), or the
    # uint8 RGB crop (a quarter of the memory; the inference stage normalises it).
    dtype: Literal["float32", "uint8"] = "float32"
    delay_ms: float = Field(0.0, ge=0, le=10000)  # extra time per frame: to study a slow stage
    delay_every: int = Field(1, ge=1, le=1_000_000)  # the delay hits every Nth frame only


class InferenceStage(_Strict):
    cores: list[int] | None = None  # None: every allowed core but the first
    restart: Restart = "never"
    threads: int = Field(0, ge=0, le=256)  # 0: one per pinned core (per worker)
    spinning: bool = False  # onnxruntime's pool threads poll for work between frames
    workers: int = Field(1, ge=1, le=64)  # model processes sharing the sources' frames
    host: str = Field(LOCAL, pattern=HOST_PATTERN)  # where preprocess and inference run
    delay_ms: float = Field(0.0, ge=0, le=10000)  # extra time per frame: to study a slow stage
    delay_every: int = Field(1, ge=1, le=1_000_000)  # the delay hits every Nth frame only


class AdaptiveConfig(_Strict):
    """Opt-in adaptive input resolution (see pipeline/supervisor/adaptive.py)."""

    enabled: bool = False
    sizes: list[int] = [224, 192, 160]  # largest first; the largest is preprocess.crop_size
    target_fps: float = Field(30.0, gt=0, le=1000)
    low: float = Field(0.95, gt=0, le=1)  # step down below low x target
    high: float = Field(1.15, ge=1, le=10)  # step up when the next size keeps high x target
    hold_s: float = Field(2.0, ge=0, le=600)  # how long a condition must hold

    @model_validator(mode="after")
    def _sizes(self) -> "AdaptiveConfig":
        if not self.sizes or any(not 16 <= s <= 4096 for s in self.sizes) \
                or sorted(set(self.sizes), reverse=True) != self.sizes:
            raise ValueError(f"adaptive.sizes: {self.sizes} must be distinct sizes from 16 to "
                             f"4096, largest first (e.g. [224, 192, 160])")
        return self


class ModelConfig(_Strict):
    name: ModelName = "mobilenet_v2"
    # "builtin" (the shipped MobileNetV2), a state-dict or .onnx path, "DEFAULT" (torchvision's
    # download) or "none" (random weights, for timing)
    weights: str = "builtin"
    runtime: Literal["auto", "torch", "onnxruntime"] = "auto"
    engine: Literal["auto", "qnnpack", "x86", "fbgemm", "onednn"] = "auto"
    jit: bool = True  # TorchScript
    channels_last: bool = False  # NHWC weights and input
    top_k: int = Field(5, ge=1, le=1000)
    warmup: int = Field(10, ge=0, le=10000)


TCP_ENDPOINT = r"^(tcp://[^\s/]+:[0-9]{1,5})?$"  # empty: not a tcp edge


class Edge(_Strict):
    policy: Policy = "latest"
    slots: int = Field(4, ge=2, le=256)
    # Across hosts (frames edge only): the writer binds `bind`, the reader connects to `connect`
    # ("{host}" stands for the capture host's name); source i of several uses port + i.
    bind: str = Field("", pattern=TCP_ENDPOINT)
    connect: str = Field("", pattern=TCP_ENDPOINT)
    encoding: Literal["raw", "jpeg"] = "raw"  # how a frame travels over tcp
    quality: int = Field(90, ge=1, le=100)  # JPEG quality

    @property
    def tcp(self) -> bool:
        return bool(self.bind)


class Edges(_Strict):
    frames: Edge = Edge()  # capture -> preprocess (raw BGR frames)
    tensors: Edge = Edge()  # preprocess -> inference (model inputs)
    # "auto": a source without a clock (a file decoded as fast as possible, an image folder) is
    # read on demand: capture decodes a frame only when a worker has taken one (credits), and both
    # of its edges run in order. "off": every source is read at its own pace, by the policies.
    pull: Literal["auto", "off"] = "auto"
    credits: int = Field(0, ge=0, le=64)  # frames in flight per pulled source; 0: one per worker


class CurveConfig(_Strict):
    """ZeroMQ CURVE on tcp edges: `keys` is a folder holding HOST.key_secret for the hosts that run
    here and HOST.key (public) for every host; a peer whose public key is not there is refused."""

    keys: str = ""  # empty: tcp edges are plain


@dataclass(frozen=True)
class Instance:
    """One stage process: `name` is how stats, status and restarts refer to it."""

    name: str  # "capture", or "capture.ID" with several sources; "inference.N" with several workers
    kind: str  # capture | preprocess | inference
    source: int | None = None  # index into Config.source_list (capture, preprocess)
    worker: int | None = None  # 0-based (inference)


class ConsumerConfig(_Strict):
    """A consumer started and supervised with the pipeline (same options as pipeline-attach)."""

    kind: str  # print, jsonl, video, preview, or MODULE:NAME / FILE.py:NAME
    out: str | None = None
    port: int = Field(8080, ge=0, le=65535)
    host: str = "127.0.0.1"
    fps: float | None = Field(None, gt=0, le=1000)
    frames: bool = False

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in ("print", "jsonl", "video", "preview") and not re.fullmatch(r"[\w./-]+:\w+", kind):
            raise ValueError(f"consumers.kind: {kind!r} is not print, jsonl, video, preview or MODULE:NAME")
        return kind

    @model_validator(mode="after")
    def _video_needs_out(self) -> "ConsumerConfig":
        if self.kind == "video" and not self.out:
            raise ValueError("consumers: a video consumer needs out = \"FILE.mp4\"")
        return self


class Config(_Strict):
    name: str = Field("pipeline", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    source: Source = SyntheticSource(kind="synthetic")
    sources: list[Source] = []  # several sources instead of `source`
    capture: CaptureStage = CaptureStage()
    preprocess: PreprocessStage = PreprocessStage()
    inference: InferenceStage = InferenceStage()
    model: ModelConfig = ModelConfig()
    edges: Edges = Edges()
    supervision: Supervision = Supervision()
    adaptive: AdaptiveConfig = AdaptiveConfig()
    curve: CurveConfig = CurveConfig()
    consumers: list[ConsumerConfig] = []

    @model_validator(mode="after")
    def _check_topology(self) -> "Config":
        allowed = allowed_cores()
        for stage in ("capture", "preprocess", "inference"):
            cores = getattr(self, stage).cores
            if cores is None:
                continue
            if not cores:
                raise ValueError(f"{stage}.cores: empty list (give at least one of {_core_list(allowed)})")
            bad = [c for c in cores if c not in allowed]
            if bad:
                raise ValueError(
                    f"{stage}.cores: core {bad[0]} does not exist here (allowed: {_core_list(allowed)})"
                )
            if len(set(cores)) != len(cores):
                raise ValueError(f"{stage}.cores: core listed twice in {cores}")
        pre = self.preprocess
        if pre.resize == "crop" and pre.crop_size > pre.resize_size:
            raise ValueError(
                f"preprocess.crop_size: {pre.crop_size} is larger than preprocess.resize_size "
                f"{pre.resize_size} (the crop must fit in the resized image)"
            )
        if self.adaptive.enabled and self.adaptive.sizes[0] != pre.crop_size:
            raise ValueError(f"adaptive.sizes: the largest size {self.adaptive.sizes[0]} must equal "
                             f"preprocess.crop_size {pre.crop_size} (the ring is sized for it)")
        self._check_sources()
        self._check_edges()
        return self

    def _check_sources(self) -> None:
        ids = self.source_ids()
        dup = next((i for i in ids if ids.count(i) > 1), None)
        if dup is not None:
            raise ValueError(f"sources.id: '{dup}' names two sources (each needs its own id)")

    def _check_edges(self) -> None:
        frames, tensors = self.edges.frames, self.edges.tensors
        if tensors.bind or tensors.connect or tensors.encoding != "raw":
            raise ValueError("edges.tensors: only edges.frames can cross hosts (bind, connect, "
                             "encoding); preprocess runs beside inference")
        if bool(frames.bind) != bool(frames.connect):
            raise ValueError("edges.frames: give both bind (where capture listens, e.g. "
                             "tcp://*:5550) and connect (e.g. tcp://{host}:5550), or neither")
        if frames.encoding == "jpeg" and not frames.tcp:
            raise ValueError("edges.frames.encoding: jpeg applies to a tcp edge only "
                             "(give edges.frames.bind and connect)")
        if not frames.tcp:
            for i, src in enumerate(self.source_list):
                if src.host != self.inference.host:
                    raise ValueError(
                        f"edges.frames: source '{self.source_ids()[i]}' is captured on host "
                        f"'{src.host}' and inference runs on '{self.inference.host}': give "
                        f"edges.frames.bind and edges.frames.connect (tcp://) to cross hosts")
        if self.edges.credits and self.edges.credits > min(frames.slots, tensors.slots):
            raise ValueError(f"edges.credits: {self.edges.credits} frames in flight need as many "
                             f"slots on both edges (slots: frames {frames.slots}, tensors "
                             f"{tensors.slots})")
        if frames.tcp and len(self.source_list) > 1:
            port = int(frames.bind.rsplit(":", 1)[1])
            if port + len(self.source_list) - 1 > 65535:
                raise ValueError(f"edges.frames.bind: ports {port}.. leave no room for "
                                 f"{len(self.source_list)} sources (port + i per source)")

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

    def frames_ring(self, source: int) -> str:
        """The ring holding a source's frames where they are preprocessed: capture's own, or the
        copy a tcp edge receives them into (`<edge>.rx`)."""
        name = self.edge_name("frames", source)
        return f"{name}.rx" if self.edges.frames.tcp else name

    def pulled(self, source: int) -> bool:
        """Whether a source is read on demand: it has no clock of its own, its frames stay on
        this host, and `edges.pull` is "auto"."""
        src = self.source_list[source]
        clockless = (isinstance(src, VideoSource) and not src.realtime) or \
            (isinstance(src, (ImagesSource, SyntheticSource)) and src.fps == 0)
        return self.edges.pull == "auto" and clockless and not self.edges.frames.tcp

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


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is read as TOML, else kept as a string."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(re.fullmatch(r"[A-Za-z0-9_]+", p) for p in parts):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with KEY like source.path")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts, value


def _set(tree: dict, parts: list[str], value: Any, origin: str) -> None:
    """tree[a][b]... = value; a numeric part indexes a list (sources.1.path)."""
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list) and part.isdigit():
            if int(part) >= len(node):
                raise ConfigError(f"{origin}: {'.'.join(parts[:i])} has {len(node)} entries")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{origin}: {'.'.join(parts[: i + 1])} is not a table")
    if isinstance(node, list):
        raise ConfigError(f"{origin}: give an entry of {'.'.join(parts[:-1])} (e.g. .0.key)")
    node[parts[-1]] = value


def _resolve_path(tree: dict, base: Path) -> None:
    def resolve(table: Any, key: str) -> None:
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, str) and value and value not in WEIGHTS_SPECIAL and value != "-":
            table[key] = os.path.normpath(base / os.path.expanduser(value))

    for section, key in PATH_KEYS:
        resolve(tree.get(section), key)
    consumers = tree.get("consumers")
    for consumer in consumers if isinstance(consumers, list) else []:
        resolve(consumer, "out")
    sources = tree.get("sources")
    for src in sources if isinstance(sources, list) else []:
        resolve(src, "path")


def load_config(path: str | os.PathLike | None, overrides: list[str] = (),
                host: str | None = None) -> Config:
    """Read, override and validate a topology; raises ConfigError with one readable line.
    With `host`, only what runs on that host must exist here (files, keys)."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                tree = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"config path is a directory, not a TOML file: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        _resolve_path(tree, path.resolve().parent)
    for text in overrides:
        parts, value = parse_override(text)
        if parts[-1] in ("path", "weights", "keys", "out") and isinstance(value, str) \
                and value and value not in WEIGHTS_SPECIAL and value != "-":
            value = os.path.normpath(Path.cwd() / os.path.expanduser(value))
        _set(tree, parts, value, f"--set {text}")
    return validate(tree, host)


def validate(tree: dict[str, Any], host: str | None = None) -> Config:
    if "source" in tree and tree.get("sources"):
        raise ConfigError("sources: give either [source] or [[sources]], not both")
    if isinstance(tree.get("source"), dict):
        tree["source"].setdefault("kind", "synthetic")
    for src in tree.get("sources") or [] if isinstance(tree.get("sources"), list) else []:
        if isinstance(src, dict):
            src.setdefault("kind", "synthetic")
    try:
        config = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_describe(e, tree)) from None
    if host is not None and host not in config.hosts():
        raise ConfigError(f"--host {host}: no stage runs on it (hosts in this config: "
                          f"{', '.join(config.hosts())})")
    _check_files(config, host)
    return config


def _check_files(config: Config, host: str | None = None) -> None:
    for i, src in enumerate(config.source_list):
        if host is None or src.host == host:  # a source elsewhere is checked on its own host
            _check_source(src, "source" if not config.sources else f"sources[{i}]")
    weights = config.model.weights
    runs_model = host is None or host == config.inference.host
    if runs_model and weights not in WEIGHTS_SPECIAL and not os.path.isfile(weights):
        raise ConfigError(f"model.weights: no such file: {weights} (give a state-dict or .onnx "
                          "path, \"builtin\", \"DEFAULT\" or \"none\")")
    if weights == "builtin" and config.model.name != "mobilenet_v2":
        raise ConfigError(f"model.weights: the built-in weights are mobilenet_v2's; for "
                          f"{config.model.name} give a state-dict path, \"DEFAULT\" (torchvision's "
                          "download) or \"none\" (random, for timing)")
    if weights.lower().endswith(".onnx") and config.model.runtime == "torch":
        raise ConfigError(f"model.weights: {weights} is an ONNX file, which the torch runtime "
                          "cannot run (use model.runtime = \"onnxruntime\" or a state dict)")
    if config.curve.keys:
        _check_keys(config, host)


def _check_keys(config: Config, host: str | None) -> None:
    keys = config.curve.keys
    if not config.edges.frames.tcp:
        raise ConfigError("curve.keys: CURVE secures tcp edges, and edges.frames is not one "
                          "(give edges.frames.bind and connect)")
    if not os.path.isdir(keys):
        raise ConfigError(f"curve.keys: no such folder: {keys}")
    needed = [(h, ".key_secret") for h in config.hosts() if host is None or h == host]
    needed += [(h, ".key") for h in config.hosts()]
    for h, suffix in needed:
        if not os.path.isfile(os.path.join(keys, h + suffix)):
            raise ConfigError(f"curve.keys: no {h}{suffix} in {keys} (make a key pair with "
                              f"`python tools/make_keys.py {keys} {h}`; copy only the .key "
                              f"files to other hosts)")


def _check_source(src: Any, key: str) -> None:
    if isinstance(src, VideoSource) and not os.path.isfile(src.path):
        raise ConfigError(f"{key}.path: no such video file: {src.path}")
    if isinstance(src, ImagesSource) and not image_files(src.path):
        raise ConfigError(
            f"{key}.path: no image files ({', '.join(IMAGE_SUFFIXES)}) at {src.path} "
            "(give a folder or a glob pattern)"
        )
    if isinstance(src, CameraSource) and isinstance(src.device, str) and src.backend == "v4l2":
        if not os.path.exists(src.device):
            raise ConfigError(f"{key}.device: no such camera device: {src.device} ({_video_devices()})")
    if isinstance(src, CameraSource) and isinstance(src.device, int):
        if src.device < 0:
            raise ConfigError(f"{key}.device: camera index must be >= 0, got {src.device}")
        if src.backend == "v4l2" and not os.path.exists(f"/dev/video{src.device}"):
            raise ConfigError(
                f"{key}.device: no camera /dev/video{src.device} ({_video_devices()})"
            )


def _video_devices() -> str:
    found = sorted(glob.glob("/dev/video*"))
    return "video devices here: " + (", ".join(found) if found else "none")


def image_files(pattern: str) -> list[str]:
    """The image files a folder or glob names, sorted; used by config checks and the source."""
    if os.path.isdir(pattern):
        names = [os.path.join(pattern, n) for n in os.listdir(pattern)]
    else:
        names = glob.glob(pattern)
    return sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(n))


def _describe(error: ValidationError, tree: dict) -> str:
    """First pydantic error as `key: problem (allowed ...)`."""
    err = error.errors()[0]
    loc = [str(p) for p in err["loc"]]
    # Drop the discriminator tag pydantic inserts for the source union.
    kinds = ("synthetic", "video", "images", "camera")
    if len(loc) > 1 and loc[0] == "source" and loc[1] in kinds:
        loc = [loc[0]] + loc[2:]
    if len(loc) > 2 and loc[0] == "sources" and loc[2] in kinds:
        loc = [f"sources[{loc[1]}]"] + loc[3:]
    if loc and loc[0] == "source" and len(loc) > 1 and loc[1] in ("int", "str"):
        loc = loc[:1]
    key = ".".join(loc) or "(top level)"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], tree)
        return f"{key}: unknown key (allowed here: {', '.join(allowed)}){suffix}"
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        key = f"sources[{loc[1]}]" if loc[0] == "sources" and len(loc) > 1 else key
        return f"{key}.kind: must be one of synthetic, video, images, camera{suffix}"
    if kind == "value_error":
        return f"{err['msg'].removeprefix('Value error, ')}{suffix}"
    if kind == "missing":
        return f"{key}: required key is missing{suffix}"
    if kind == "string_pattern_mismatch" and loc[-1] in ("bind", "connect"):
        return f"{key}: {err['input']!r} is not tcp://ADDRESS:PORT (e.g. tcp://*:5550){suffix}"
    return f"{key}: {err['msg']} (got {err['input']!r}){suffix}"


def _allowed_keys(loc: list[str], tree: dict) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        if part == "source" or part.startswith("sources["):
            node = tree.get("source", {}) if part == "source" else \
                tree["sources"][int(part[8:-1])]
            kind = node.get("kind", "synthetic") if isinstance(node, dict) else "synthetic"
            model = {"synthetic": SyntheticSource, "video": VideoSource, "images": ImagesSource,
                     "camera": CameraSource}.get(kind, SyntheticSource)
            continue
        if part.isdigit() or part not in model.model_fields:
            continue
        ann = model.model_fields[part].annotation
        for candidate in (ann, *get_args(ann)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
    return list(model.model_fields)
