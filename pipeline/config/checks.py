"""What a valid config must also find on this host: source files and devices, model weights,
CURVE keys, camera credentials."""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

from .classes import Watched, resolve
from .credentials import CredentialsError, read_credentials
from .errors import PATH_EXAMPLES, ConfigError
from .schema import WEIGHTS_SPECIAL, CameraSource, Config, ImagesSource, Picamera2Source, VideoSource

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def check_files(config: Config, host: str | None = None) -> None:
    """The files, devices and keys the stages on `host` (None: all) need exist here; raises
    ConfigError naming the first that does not."""
    for i, src in enumerate(config.source_list):
        if host is None or src.host == host:  # a source elsewhere is checked on its own host
            _check_source(src, "source" if not config.sources else f"sources[{i}]")
    weights = config.model.weights
    runs_model = host is None or host == config.inference.host
    if runs_model and weights not in WEIGHTS_SPECIAL and not os.path.isfile(weights):
        raise ConfigError(f"model.weights: no such file: {weights} (give a state-dict or .onnx "
                          "path, \"builtin\", \"DEFAULT\" or \"none\")")
    labels = config.model.labels
    if runs_model and labels and not os.path.isfile(labels):
        raise ConfigError(f"model.labels: no such file: {labels} (give a text file with one class "
                          "name per line)")
    if weights == "builtin" and config.model.name != "mobilenet_v2":
        raise ConfigError(f"model.weights: the built-in weights are mobilenet_v2's; for "
                          f"{config.model.name} give a state-dict path, \"DEFAULT\" (torchvision's "
                          "download) or \"none\" (random, for timing)")
    if weights.lower().endswith(".onnx") and config.model.runtime == "torch":
        raise ConfigError(f"model.weights: {weights} is an ONNX file, which the torch runtime "
                          "cannot run (use model.runtime = \"onnxruntime\" or a state dict)")
    if weights.lower().endswith(".tflite") and config.model.runtime in ("torch", "onnxruntime"):
        raise ConfigError(f"model.weights: {weights} is a TFLite file, which only LiteRT runs "
                          "(use model.runtime = \"litert\" or \"auto\")")
    if config.curve.keys:
        _check_keys(config, host)


def check_classes(config: Config, names: Sequence[str], model: str) -> None:
    """Every class a source's state names (`watch`, `on`) is one of the model's (`names`) or an
    ImageNet group, and the state can be `on`; ConfigError naming the first that is not, with
    the closest names."""
    for i, src in enumerate(config.source_list):
        state = src.state
        if state is not None:
            key = f"{'source' if not config.sources else f'sources[{i}]'}.state"
            try:
                watched = [resolve(item, f"{key}.watch", names, model) for item in state.watch]
                on = resolve(state.on, f"{key}.on", names, model) if state.on else None
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if on is not None:
                _check_on(state.on, on, watched, key)


def _check_on(given: str, on: Watched, watched: list[Watched], key: str) -> None:
    """The state can be `on`: a group only while watched (the state is a group only then); a
    class while watched by itself, or while `watch` is empty, but not while a watched group
    takes its votes."""
    groups = [w for w in watched if w.group]
    if on.group:
        if not any(w.name == on.name for w in groups):
            raise ConfigError(f"{key}.on: {given!r} is a group, and the state is a group only "
                              f"while it is watched, so the state is never {given!r} (add "
                              f"{given!r} to {key}.watch)")
        return
    classes = {i for w in watched if not w.group for i in w.indices}
    if not watched or set(on.indices) & classes:
        return
    taking = [w.name for w in groups if set(on.indices) & set(w.indices)]
    if taking:
        raise ConfigError(f"{key}.on: {given!r} is in the watched group {taking[0]!r}, whose "
                          f"classes vote as the group, so the state is never {given!r} (set "
                          f"`on = {taking[0]!r}`, or add {given!r} itself to {key}.watch)")
    raise ConfigError(f"{key}.on: {given!r} is not watched, so the state is never {given!r} "
                      f"(add it to {key}.watch, or leave `watch` empty)")


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
                              f"`python -m tools.make_keys {keys} {h}`; copy only the .key "
                              f"files to other hosts)")


def _check_source(src: Any, key: str) -> None:
    if isinstance(src, (VideoSource, ImagesSource)) and not src.path:
        raise ConfigError(f"{key}.path: empty (give it in the config, or with --set "
                          f"{key}.path={PATH_EXAMPLES[src.kind]})")
    if isinstance(src, Picamera2Source) and importlib.util.find_spec("picamera2") is None:
        raise ConfigError(f'{key}.kind = "picamera2" needs a Raspberry Pi camera module and the '
                          "picamera2 module, which is not installed here (on Raspberry Pi OS: `sudo apt "
                          "install python3-picamera2`, and a venv made with `python3 -m venv "
                          "--system-site-packages`)")
    if isinstance(src, VideoSource) and not os.path.isfile(src.path):
        raise ConfigError(f"{key}.path: no such video file: {src.path}")
    if isinstance(src, ImagesSource) and not image_files(src.path):
        raise ConfigError(
            f"{key}.path: no image files ({', '.join(IMAGE_SUFFIXES)}) at {src.path} "
            "(give a folder or a glob pattern)"
        )
    if isinstance(src, CameraSource) and isinstance(src.device, str) and src.backend == "v4l2" \
            and not src.stream:
        if not os.path.exists(src.device):
            raise ConfigError(f"{key}.device: no such camera device: {src.device} ({_video_devices()})")
    if isinstance(src, CameraSource) and src.credentials:
        try:  # a missing or unsafe file is a config error (exit 2: systemd does not retry it)
            read_credentials(src.credentials, f"{key}.credentials")
        except CredentialsError as e:
            raise ConfigError(str(e)) from None
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


def input_files(config: Config, config_file: str | None = None) -> list[str]:
    """Every file the run reads (the config, videos, images, weights): no output may be one."""
    files = [config_file] if config_file else []
    for src in config.source_list:
        if isinstance(src, ImagesSource):
            files += image_files(src.path)
        elif isinstance(src, VideoSource):
            files.append(src.path)
    if config.model.weights not in WEIGHTS_SPECIAL:
        files.append(config.model.weights)
    if config.model.labels:
        files.append(config.model.labels)
    return files
