"""Config fuzzing: whatever the file or --set says, the result is a valid config or a ConfigError
whose first line says it all (a handful of problems follow, one a line), never another exception."""

from __future__ import annotations

import string

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import Config, ConfigError, load_config
from pipeline.config.errors import MAX_LISTED

KEYS = ["name", "source", "kind", "path", "width", "height", "fps", "frames", "loop", "realtime",
        "device", "fourcc", "backend", "id", "capture", "preprocess", "inference", "cores",
        "threads", "resize", "resize_size", "crop_size", "delay_ms", "model", "weights", "engine",
        "jit", "top_k", "warmup", "edges", "frames", "tensors", "policy", "slots", "consumers",
        "out", "port", "host", "bogus"]
WORDS = ["synthetic", "video", "images", "camera", "latest", "drop_new", "block", "crop", "squash",
         "mobilenet_v2", "resnet18", "none", "DEFAULT", "auto", "qnnpack", "x86", "jsonl", "print",
         "/dev/null", "", "nope.mp4", "v4l2", "any"]

scalars = st.one_of(st.integers(-5, 300), st.floats(allow_nan=False, allow_infinity=False),
                    st.booleans(), st.sampled_from(WORDS), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=20)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=7)


def check(path, overrides=()) -> None:
    try:
        cfg = load_config(path, list(overrides))
    except ConfigError as e:
        first, *others = str(e).split("\n")
        assert first.strip() and len(others) <= MAX_LISTED
        assert all(line.startswith("  ") and line.strip() for line in others)
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents)
def test_structured_configs(tmp_path, doc):
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):  # e.g. lists mixing tables and scalars: not writable as TOML
        return
    p = tmp_path / "fuzz.toml"
    p.write_text(text)
    check(p)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=string.printable + "äß\x00", max_size=200))
def test_arbitrary_text(tmp_path, text):
    p = tmp_path / "fuzz.toml"
    p.write_bytes(text.encode("utf-8", "surrogatepass"))
    check(p)


@settings(max_examples=300, deadline=None)
@given(overrides=st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
        ["source.fps", "source.kind", "edges.frames.policy", "inference.cores", "model.top_k",
         "consumers", "preprocess.crop_size", "name", "source", "x.y.z"]),
        st.one_of(st.sampled_from(WORDS), st.text(max_size=15), st.integers().map(str))),
    st.text(max_size=20)), max_size=4))
def test_arbitrary_set_overrides(overrides):
    check(None, ["model.weights=none", *overrides])
