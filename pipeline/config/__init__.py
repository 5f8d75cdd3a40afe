"""Topology config: a TOML file plus `--set key=value` overrides, validated into typed objects.

Validation happens in the supervisor before anything starts, and every problem becomes a
`ConfigError` line naming the key (as `--set` takes it) and what is allowed, so `pipeline-up` can
exit 2 cleanly; with several problems the first line counts them and a handful follow.

What lives where: the pydantic models and `Config` with its validators (schema); what a config
implies about processes, names and cores, as methods `Config` inherits (topology); reading the
TOML file and `--set` overrides (load); the files, devices and keys a config needs on this host
(checks); `ConfigError` and the wording of validation errors (errors).
"""

from .checks import IMAGE_SUFFIXES, check_classes, check_files, image_files, input_files
from .errors import ConfigError
from .load import PATH_KEYS, load_config, parse_override, validate
from .schema import (
    HOST_PATTERN,
    MODEL_NAMES,
    TCP_ENDPOINT,
    WEIGHTS_SPECIAL,
    AdaptiveConfig,
    CameraSource,
    CaptureStage,
    Config,
    ConsumerConfig,
    CurveConfig,
    Edge,
    Edges,
    ImagesSource,
    InferenceStage,
    ModelConfig,
    ModelName,
    Policy,
    PreprocessStage,
    Restart,
    Source,
    StateConfig,
    Supervision,
    SyntheticSource,
    VideoSource,
)
from .topology import CORES_ENV, LOCAL, Instance, allowed_cores, keep_off_inference_cores

__all__ = [
    "CORES_ENV",
    "HOST_PATTERN",
    "IMAGE_SUFFIXES",
    "check_classes",
    "check_files",
    "input_files",
    "LOCAL",
    "MODEL_NAMES",
    "PATH_KEYS",
    "TCP_ENDPOINT",
    "WEIGHTS_SPECIAL",
    "AdaptiveConfig",
    "CameraSource",
    "CaptureStage",
    "Config",
    "ConfigError",
    "ConsumerConfig",
    "CurveConfig",
    "Edge",
    "Edges",
    "ImagesSource",
    "InferenceStage",
    "Instance",
    "ModelConfig",
    "ModelName",
    "Policy",
    "PreprocessStage",
    "Restart",
    "Source",
    "StateConfig",
    "Supervision",
    "SyntheticSource",
    "VideoSource",
    "allowed_cores",
    "image_files",
    "keep_off_inference_cores",
    "load_config",
    "parse_override",
    "validate",
]
