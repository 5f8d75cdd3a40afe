"""A model's own class names reach the results, the status line and the checks: from its file's
metadata, or, for an ONNX classifier from elsewhere that names none, from a labels file."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.processes import MODEL_CORE, read_jsonl, run_pipeline
from tests.support.subset_model import subset_model
from workers.inference.model_files import builtin_onnx
from workers.inference.model_meta import ModelFileError, read_model

SHIPPED = builtin_onnx()


@pytest.fixture(scope="module")
def nameless(tmp_path_factory):
    d = tmp_path_factory.mktemp("nameless")
    return subset_model(d / "door.onnx", {"closed": [898], "open": [532], "ajar": [0]}, named=False)


def run(tmp_path, *sets: str, check: bool = False):
    record = tmp_path / "r.jsonl"
    args = ["--check"] if check else ["--duration", "3", "--record", str(record)]
    sets = ("model.runtime=onnxruntime", MODEL_CORE, *sets)
    p = run_pipeline("demo.toml", "--name", "names", *args, *(a for s in sets for a in ("--set", s)))
    return p, (read_jsonl(record) if record.exists() else [])


def test_a_labels_file_names_the_classes_of_a_file_without_names(nameless, tmp_path, clean_machine):
    labels = tmp_path / "labels.txt"
    labels.write_text("closed\nopen\najar\n")
    p, results = run(tmp_path, f"model.weights={nameless}", f"model.labels={labels}",
                     "source.state.watch=[\"open\"]")
    assert p.returncode == 0, p.stderr
    assert results and all(r["model"] == "door" for r in results)
    assert {c["label"] for r in results for c in r["top"]} == {"closed", "open", "ajar"}
    # the per-second status lines show the newest result's class by its name
    assert any(f"{name} 0." in p.stderr or f"{name} 1." in p.stderr for name in ("closed", "open", "ajar"))


def test_without_names_the_classes_are_numbered(nameless, tmp_path, clean_machine):
    p, results = run(tmp_path, f"model.weights={nameless}")
    assert p.returncode == 0, p.stderr
    assert {c["label"] for r in results for c in r["top"]} == {"class 0", "class 1", "class 2"}


@pytest.mark.parametrize("labels, watch, message", [
    ("closed\nopen\n", None, "model.labels: {labels} names 2 classes, the model has 3 outputs"),
    ("closed\n\nopen\najar\n", None, "must hold one class name per line, no empty lines"),
    ("closed\nopen\najar\n", "opne", "source.state.watch: 'opne' is not a class of door (its "
                                     "classes: 'closed', 'open', 'ajar')"),
])
def test_names_that_do_not_fit_are_one_line_before_anything_starts(nameless, tmp_path, labels,
                                                                   watch, message):
    path = tmp_path / "labels.txt"
    path.write_text(labels)
    sets = [f"model.weights={nameless}", f"model.labels={path}"]
    sets += [f'source.state.watch=["{watch}"]'] if watch else []
    p, _ = run(tmp_path, *sets)
    message = message.format(labels=path)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p, _ = run(tmp_path, *sets, check=True)
    assert p.returncode != 0 and message in p.stdout + p.stderr


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4096), cut=st.integers(min_value=0, max_value=200_000))
def test_any_file_is_read_as_a_model_or_refused_in_one_line(tmp_path_factory, data, cut):
    """The supervisor reads model files without onnx: garbage, or a real file cut short, is a
    ModelFileError (one line), never another exception."""
    path = tmp_path_factory.mktemp("fuzz") / "m.onnx"
    for blob in (data, SHIPPED.read_bytes()[:cut] + data):
        path.write_bytes(blob)
        try:
            read_model(path)
        except ModelFileError as e:
            assert "\n" not in str(e) and str(e).startswith("model.weights: ")
