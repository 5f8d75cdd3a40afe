"""The shape of a topology config: the pydantic models a TOML file is validated into, with the
checks that span several sections (cores, sizes, sources, edges) as validators of `Config`."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .classes import class_indices
from .consumers import ConsumerConfig
from .credentials import has_user_info, mask_url
from .topology import LOCAL, Topology, _core_list, allowed_cores

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
# The values of model.weights that are not a file path.
WEIGHTS_SPECIAL = ("builtin", "DEFAULT", "none")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


MAX_FRAME_PIXELS = 7680 * 4320  # source.max_frame_pixels by default: the largest width x height allowed
MAX_FRAME_PIXELS_CEILING = 1 << 30  # OpenCV decodes no larger image anyway
HOST_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


# Home Assistant's binary sensor device classes (BinarySensorDeviceClass, as of Home Assistant
# 2025: https://developers.home-assistant.io/docs/core/entity/binary-sensor#available-device-classes
# and https://www.home-assistant.io/integrations/binary_sensor/#device-class); `door`,
# `garage_door`, `opening` and `window`: ON means open; `occupancy`, `presence`, `motion`: detected.
BINARY_SENSOR_DEVICE_CLASSES = (
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door",
    "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug",
    "power", "presence", "problem", "running", "safety", "smoke", "sound", "tamper", "update",
    "vibration", "window")


class StateConfig(_Strict):
    """Classification as a state (pipeline/client/states.py): which results count towards a
    state, and how many must agree before it changes. The state is `none` while no result
    qualifies."""

    min_prob: float = Field(0.0, ge=0, le=1)  # a class counts only at this probability or more
    # the model's class names or indices, or ImageNet groups ("dog": any of the 118 breeds; the
    # list: pipeline-up --list-classes, --list-groups); empty: any class
    watch: list[int | str] = []
    smoothing: Literal["consecutive", "majority"] = "consecutive"  # how `window` results decide
    # consecutive: `window` results in a row agree; majority: more than half of the last `window`
    window: int = Field(3, ge=1, le=1000)
    # Home Assistant (mqtt consumer, --discovery): a class of the model (e.g. "open" of a door
    # model) or a watched group: the source is then ONE binary sensor, ON while its state is this
    # class, OFF otherwise (instead of a binary sensor per watched class or group); "": none
    on: str = ""
    # Home Assistant's device class of the source's binary sensors: of the `on` one, else of each
    # watched class's; "": none (a plain ON/OFF)
    device_class: str = ""

    @field_validator("device_class")
    @classmethod
    def _home_assistant_class(cls, device_class: str) -> str:
        if device_class and device_class not in BINARY_SENSOR_DEVICE_CLASSES:
            close = difflib.get_close_matches(device_class, BINARY_SENSOR_DEVICE_CLASSES, n=3)
            hint = f"closest: {', '.join(close)}; " if close else ""
            raise ValueError(f"device_class: {device_class!r} is not a Home Assistant binary sensor "
                             f"device class ({hint}one of {', '.join(BINARY_SENSOR_DEVICE_CLASSES)})")
        return device_class

    @field_validator("on")
    @classmethod
    def _on_form(cls, on: str) -> str:
        """Only the form here: whether it is a class of the model is checked once the model is
        known (checks.check_classes, before anything starts)."""
        if on and not on.strip():
            raise ValueError(f"on: {on!r} is not a class name")
        return on

    @model_validator(mode="after")
    def _device_class_has_a_sensor(self) -> StateConfig:
        if self.device_class and not (self.on or self.watch):
            raise ValueError(f"state: device_class {self.device_class!r} is for a binary sensor, and "
                             f"the source has none (set `on` for one, or `watch`: one per class)")
        return self

    @field_validator("watch")
    @classmethod
    def _watch_items(cls, watch: list[int | str]) -> list[int | str]:
        """Only the form here: whether each is a class of the model is checked once the model
        is known (`watch_indices`, before anything starts)."""
        for item in watch:
            if isinstance(item, int) and item < 0 or isinstance(item, str) and not item.strip():
                raise ValueError(f"watch: {item!r} is neither a class name nor a class index")
        return watch

    def watch_indices(self, names: Sequence[str], model: str, key: str = "state.watch") -> frozenset[int]:
        """The watched class indices of a model with these class names (a name two classes share
        watches both); ValueError naming `key` for one the model does not have."""
        return frozenset(i for item in self.watch for i in class_indices(item, key, names, model))


MIN_ROI_PIXELS = 8  # a region narrower or lower than this holds nothing to classify


class _SourceBase(_Strict):
    id: str = Field("", pattern=r"^[A-Za-z0-9_-]{0,40}$")  # carried in every result; "": the kind
    host: str = Field(LOCAL, pattern=HOST_PATTERN)  # where this source's capture stage runs
    # A source that stops delivering for stall_ms every stall_every_s: to study camera hiccups.
    stall_ms: float = Field(0.0, ge=0, le=60000)
    stall_every_s: float = Field(0.0, ge=0, le=3600)  # how often the stall_ms stall comes (0: never)
    # Largest frame the source may deliver, in pixels: a ring slot is sized for the largest frame,
    # so a file declaring a huge size must not reserve its shared memory. Default: 8K UHD.
    max_frame_pixels: int = Field(MAX_FRAME_PIXELS, ge=1, le=MAX_FRAME_PIXELS_CEILING)
    # Region of interest that preprocessing classifies instead of the whole frame: [x, y, width,
    # height], in pixels (all integers) or in fractions of the frame (any number written with a
    # decimal point: then all are fractions, 0 to 1).
    roi: list[int | float] | None = None
    state: StateConfig | None = None  # how results become a state; None: the smoothed top-1

    @property
    def clockless(self) -> bool:
        """Whether the source has no clock of its own (a file read as fast as possible): its
        frames can be read on demand (`Topology.pulled`)."""
        return False

    @field_validator("roi")
    @classmethod
    def _roi_shape(cls, roi: list[int | float] | None) -> list[int | float] | None:
        if roi is None:
            return roi
        if len(roi) != 4:
            raise ValueError(f"roi: {roi} must be [x, y, width, height] (4 numbers)")
        x, y, w, h = roi
        if any(isinstance(v, float) for v in roi):
            if not all(0 <= v <= 1 for v in roi) or w <= 0 or h <= 0 or x + w > 1 + 1e-9 \
                    or y + h > 1 + 1e-9:
                raise ValueError(f"roi: {roi} as fractions must lie within the frame (0 <= x, y; "
                                 f"0 < width, height; x + width <= 1; y + height <= 1)")
        elif x < 0 or y < 0 or w < MIN_ROI_PIXELS or h < MIN_ROI_PIXELS:
            raise ValueError(f"roi: {roi} in pixels needs x, y >= 0 and width, height >= "
                             f"{MIN_ROI_PIXELS} (for fractions write decimals, e.g. [0.0, 0.0, 0.5, 1.0])")
        return roi

    def roi_box(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """The region of interest in a width x height frame as (x0, y0, x1, y1) pixels, or None
        for the whole frame; ValueError when a pixel region does not fit the frame, or fractions
        give it fewer than MIN_ROI_PIXELS either way."""
        if self.roi is None:
            return None
        x, y, w, h = self.roi
        if any(isinstance(v, float) for v in self.roi):
            x0, y0 = min(round(x * width), width - 1), min(round(y * height), height - 1)
            x1 = max(x0 + 1, min(width, round((x + w) * width)))
            y1 = max(y0 + 1, min(height, round((y + h) * height)))
            if x1 - x0 < MIN_ROI_PIXELS or y1 - y0 < MIN_ROI_PIXELS:
                raise ValueError(f"roi: {self.roi} is {x1 - x0}x{y1 - y0} pixels of the {width}x{height} "
                                 f"frame; a region needs at least {MIN_ROI_PIXELS}x{MIN_ROI_PIXELS}")
            return x0, y0, x1, y1
        if x + w > width or y + h > height:
            raise ValueError(f"roi: {self.roi} does not fit in the {width}x{height} frame "
                             f"(x + width <= {width}, y + height <= {height}; or give fractions)")
        return int(x), int(y), int(x + w), int(y + h)


class SyntheticSource(_SourceBase):
    """Built-in moving test pattern: runs anywhere, needs no file or device."""

    kind: Literal["synthetic"]
    width: int = Field(640, ge=16, le=7680)  # frame width in pixels
    height: int = Field(480, ge=16, le=4320)  # frame height in pixels
    fps: float = Field(30.0, ge=0, le=1000)  # 0: as fast as possible
    frames: int = Field(0, ge=0)  # 0: endless

    @property
    def clockless(self) -> bool:
        return self.fps == 0


class VideoSource(_SourceBase):
    kind: Literal["video"]
    path: str  # a file OpenCV can decode (relative to the config file)
    loop: bool = False  # start again at the end instead of ending the run
    realtime: bool = True  # pace at `fps` (or the file's own rate); false: as fast as possible
    fps: float = Field(0.0, ge=0, le=1000)  # 0: the file's own frame rate

    @property
    def clockless(self) -> bool:
        return not self.realtime


class ImagesSource(_SourceBase):
    kind: Literal["images"]
    path: str  # a folder or a glob pattern
    loop: bool = False  # start again after the last image instead of ending the run
    fps: float = Field(0.0, ge=0, le=1000)  # 0: as fast as possible

    @property
    def clockless(self) -> bool:
        return self.fps == 0


STREAM_URL = re.compile(r"^(rtsps?|rtmp|https?)://", re.IGNORECASE)


class CameraSource(_SourceBase):
    kind: Literal["camera"]
    device: int | str = 0  # index N for /dev/videoN, or a device path
    width: int = Field(640, ge=16, le=7680)  # requested; the size the driver grants is used
    height: int = Field(480, ge=16, le=4320)  # requested; the size the driver grants is used
    fps: float = Field(30.0, gt=0, le=1000)  # requested frame rate
    fourcc: str = Field("", pattern=r"^([A-Za-z0-9 ]{4})?$")  # e.g. "MJPG"; empty: driver default
    backend: Literal["v4l2", "any"] = "v4l2"  # "any": let OpenCV choose (files)
    # An IP camera (device = "rtsp://...", "http://..."), read through OpenCV's FFmpeg backend:
    # a stream that does not open or stops delivering within these is a reconnect, not a hang.
    open_timeout_s: float = Field(5.0, gt=0, le=300)
    read_timeout_s: float = Field(5.0, gt=0, le=300)  # no frame this long: reconnect
    rtsp_transport: Literal["tcp", "udp"] = "tcp"  # tcp: no lost packets, no smeared frames
    # An IP camera's user and password: a file holding one line USER:PASSWORD, mode 0600, or a
    # bare name: $CREDENTIALS_DIRECTORY/NAME (systemd's LoadCredential=); see credentials.py.
    # Never in `device`, which shows in ps, the unit and the run directory.
    credentials: str = Field("", pattern=r"^[^\x00-\x1f]{0,4096}$")

    @field_validator("device")
    @classmethod
    def _no_credentials_in_url(cls, device: int | str) -> int | str:
        if isinstance(device, str) and STREAM_URL.match(device) and has_user_info(device):
            raise ValueError(f"device: {mask_url(device)}: credentials do not belong in the URL "
                             "(it shows in ps, the systemd unit and the run directory); put "
                             "USER:PASSWORD in a file only you can read (chmod 600) and give "
                             "credentials = \"FILE\"")
        return device

    @field_validator("credentials")
    @classmethod
    def _credentials_for_streams(cls, credentials: str, info: ValidationInfo) -> str:
        if "device" not in info.data:  # the device was refused already
            return credentials
        device = info.data["device"]
        if credentials and not (isinstance(device, str) and STREAM_URL.match(device)):
            raise ValueError("credentials: apply to an IP camera only (device = \"rtsp://...\" "
                             "or \"http://...\")")
        return credentials

    @property
    def stream(self) -> bool:
        """An IP camera's URL rather than a local device."""
        return isinstance(self.device, str) and STREAM_URL.match(self.device) is not None


PICAMERA2_FORMATS = ("RGB888", "BGR888", "XRGB8888", "XBGR8888", "YUV420")
Picamera2Format = Literal[PICAMERA2_FORMATS]  # type: ignore[valid-type]


def _even_size(key: str, width: int, height: int) -> None:
    """libcamera streams have even sizes (Picamera2 would round an odd one down, and the ring
    would not get the frame it was sized for)."""
    for name, n in (("width", width), ("height", height)):
        if n % 2:
            raise ValueError(f"{key}.{name}: {n} is odd; a camera stream has an even {name} "
                             f"(e.g. {n - 1} or {n + 1})")


class LoresStream(_Strict):
    """Picamera2's second, smaller stream, scaled by the ISP at no CPU cost; when given, it is the
    one the pipeline reads (the main stream still sets the field of view)."""

    width: int = Field(224, ge=16, le=7680)  # even
    height: int = Field(224, ge=16, le=4320)  # even
    format: Picamera2Format = "YUV420"  # a Pi 4 gives lores as YUV420 only


class Picamera2Source(_SourceBase):
    """A Raspberry Pi camera module (v2, v3, HQ) through Picamera2 and libcamera, as in the
    tutorial; OpenCV's V4L2 backend cannot read these on Raspberry Pi OS Bookworm."""

    kind: Literal["picamera2"]
    camera: int = Field(0, ge=0, le=15)  # libcamera's camera number (rpicam-hello --list-cameras)
    width: int = Field(640, ge=16, le=7680)  # main stream width (even)
    height: int = Field(480, ge=16, le=4320)  # main stream height (even)
    fps: float = Field(30.0, gt=0, le=1000)  # the sensor's frame duration is fixed at 1/fps
    # RGB888 is B,G,R in memory, the ring's own layout: one plain copy a frame. The tutorial's
    # BGR888 is R,G,B (swapped on the copy); X...8888 carry a fourth byte; YUV420 is converted.
    format: Picamera2Format = "RGB888"
    lores: LoresStream | None = None  # a second, smaller stream; when given, the one read
    buffer_count: int = Field(4, ge=1, le=32)  # libcamera buffers in flight (none wait for us)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the frames the pipeline receives: the lores stream's, if given."""
        return (self.lores.width, self.lores.height) if self.lores else (self.width, self.height)

    def check_streams(self, key: str) -> None:
        """Sizes libcamera can deliver as asked (`key` names this source in the message)."""
        _even_size(key, self.width, self.height)
        if self.lores:
            _even_size(f"{key}.lores", self.lores.width, self.lores.height)
            if self.lores.width > self.width or self.lores.height > self.height:
                raise ValueError(f"{key}.lores: {self.lores.width}x{self.lores.height} is larger "
                                 f"than the main stream {self.width}x{self.height} (lores may not "
                                 f"exceed {key}.width/height)")


Source = Annotated[
    Union[SyntheticSource, VideoSource, ImagesSource, CameraSource, Picamera2Source],
    Field(discriminator="kind"),
]


Restart = Literal["never", "on-failure", "always"]


class Supervision(_Strict):
    """Restart budget and watchdog, shared by all stages."""

    max_restarts: int = Field(5, ge=0, le=1000)  # per stage within restart_window_s
    restart_window_s: float = Field(60.0, gt=0, le=86400)  # the window max_restarts counts in
    backoff_s: float = Field(0.5, ge=0, le=60)  # first delay; doubles per recent restart
    backoff_max_s: float = Field(10.0, ge=0, le=600)  # the longest delay before a restart
    watchdog_s: float = Field(5.0, ge=0, le=3600)  # no heartbeat this long: hung (0: off)


class CaptureStage(_Strict):
    cores: list[int] | None = None  # None: first allowed core
    restart: Restart = "never"  # never: its death stops the pipeline; else restarted (supervision)


class PreprocessStage(_Strict):
    cores: list[int] | None = None  # None: first allowed core
    restart: Restart = "never"  # never: its death stops the pipeline; else restarted (supervision)
    threads: int = Field(1, ge=1, le=64)  # OpenCV threads (the resize is PIL's: unused today)
    # crop: shorter side to resize_size, centre crop crop_size (torchvision's eval transform);
    # squash: the whole frame (or region of interest) to crop_size square
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
    restart: Restart = "never"  # never: its death stops the pipeline; else restarted (supervision)
    threads: int = Field(0, ge=0, le=256)  # 0: one per pinned core (per worker)
    spinning: bool = False  # onnxruntime's pool threads poll for work between frames
    workers: int = Field(1, ge=1, le=64)  # model processes sharing the sources' frames
    # Niceness of the workers: below capture and preprocess, which then get a shared core the
    # moment they have a frame to make (see topology.auto_layout); 0: the same as every stage.
    nice: int = Field(10, ge=0, le=19)
    host: str = Field(LOCAL, pattern=HOST_PATTERN)  # where preprocess and inference run
    delay_ms: float = Field(0.0, ge=0, le=10000)  # extra time per frame: to study a slow stage
    delay_every: int = Field(1, ge=1, le=1_000_000)  # the delay hits every Nth frame only


class AdaptiveConfig(_Strict):
    """Opt-in adaptive input resolution (see pipeline/supervisor/adaptive.py)."""

    enabled: bool = False  # lower the model input size when the model cannot hold target_fps
    sizes: list[int] = [224, 192, 160]  # largest first; the largest is preprocess.crop_size
    target_fps: float = Field(30.0, gt=0, le=1000)  # the frame rate to hold
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
    name: ModelName = "mobilenet_v2"  # a quantizable torchvision classifier
    # "builtin" (the shipped MobileNetV2), a state-dict, .onnx or .tflite path, "DEFAULT" (torchvision's
    # download) or "none" (random weights, for timing)
    weights: str = "builtin"
    # A file of class names, one per line (line i = class i), for a model whose file names none
    # (an ONNX classifier from elsewhere); "": the names the model file carries, else ImageNet's.
    labels: str = ""
    # auto: of the installed runtimes that can run the model, the one measured fastest on this
    # machine (cached); litert: LiteRT with XNNPACK, the model converted to TFLite
    runtime: Literal["auto", "torch", "onnxruntime", "litert"] = "auto"
    # torch's quantized engine; auto: qnnpack on Arm and for the MobileNets, else x86
    engine: Literal["auto", "qnnpack", "x86", "fbgemm", "onednn"] = "auto"
    jit: bool = True  # TorchScript
    channels_last: bool = False  # NHWC weights and input
    top_k: int = Field(5, ge=1, le=1000)  # classes per result
    warmup: int = Field(10, ge=0, le=10000)  # model runs before the stage reports ready


TCP_ENDPOINT = r"^(tcp://[^\s/]+:[0-9]{1,5})?$"  # empty: not a tcp edge


class Edge(_Strict):
    # latest: the newest frame wins (older ones dropped); drop_new: a full ring drops the new
    # frame; block: the writer waits (every frame is processed)
    policy: Policy = "latest"
    slots: int = Field(4, ge=2, le=256)  # frames the edge's shared-memory ring holds
    # Across hosts (frames edge only): the writer binds `bind`, the reader connects to `connect`
    # ("{host}" stands for the capture host's name); source i of several uses port + i.
    bind: str = Field("", pattern=TCP_ENDPOINT)
    connect: str = Field("", pattern=TCP_ENDPOINT)  # e.g. "tcp://{host}:5550"
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



WORKERS_PER_CORE = 4  # inference workers a core can hold usefully (they take turns on it)


class Config(_Strict, Topology):
    name: str = Field("pipeline", pattern=r"^[A-Za-z0-9_-]{1,32}$")  # instance name (--name overrides)
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
        workers, cores = self.inference.workers, len(self.cores_of("inference"))
        if workers > WORKERS_PER_CORE * cores:
            raise ValueError(f"inference.workers: {workers} workers on {cores} inference core(s) "
                             f"cannot keep up, and each holds a model in memory (at most "
                             f"{WORKERS_PER_CORE} per core: {WORKERS_PER_CORE * cores}); lower "
                             f"inference.workers or give more inference.cores")
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
        pis = [(s.host, s.camera) for s in self.source_list if isinstance(s, Picamera2Source)]
        twice = next((p for p in pis if pis.count(p) > 1), None)
        if twice is not None:
            raise ValueError(f"sources.camera: two picamera2 sources read camera {twice[1]} on host "
                             f"'{twice[0]}' (libcamera gives a camera to one process only)")
        for i, src in enumerate(self.source_list):
            if not isinstance(src, (SyntheticSource, CameraSource, Picamera2Source)):
                continue
            key = f"sources[{i}]" if self.sources else "source"
            w, h = src.width, src.height
            if isinstance(src, Picamera2Source):
                src.check_streams(key)
                w, h = src.frame_size
            try:
                src.roi_box(w, h)  # a pixel region must fit the frame
            except ValueError as e:
                raise ValueError(f"{key}.{e}") from None
            if w * h > src.max_frame_pixels:
                raise ValueError(f"{key}.max_frame_pixels: {w}x{h} frames have {w * h} pixels, "
                                 f"more than the limit {src.max_frame_pixels} (raise "
                                 f"{key}.max_frame_pixels or lower {key}.width/height)")

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
