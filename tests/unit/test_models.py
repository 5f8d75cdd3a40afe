"""Model loading: local weights, torchvision names, random weights, and clear errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tests.support.assets import IMAGES, WEIGHTS, need
from workers.inference.errors import ModelError
from workers.inference.torch_models import categories, choose_engine, load_torch_model, warm_up_torch_model
from workers.preprocess.transform import Preprocessor


def classify(model, bgr: np.ndarray) -> int:
    prep = Preprocessor()
    x = torch.zeros(1, 3, 224, 224)
    prep(bgr, x.numpy()[0])
    with torch.inference_mode():
        return int(model(x)[0].argmax())


def test_pretrained_weights_classify_a_real_photo():
    import cv2

    model = load_torch_model("mobilenet_v2", str(need(WEIGHTS)), jit=True)
    assert isinstance(model, torch.jit.ScriptModule)
    bgr = cv2.imread(str(need(IMAGES) / "n04254680_soccer_ball.JPEG"))
    assert classify(model, bgr) == 805  # soccer ball
    names = categories("mobilenet_v2")
    assert len(names) == 1000 and names[898] == "water bottle"


def test_other_quantizable_model_by_name_with_random_weights(caplog):
    with caplog.at_level(logging.WARNING, logger="inference"):
        model = load_torch_model("shufflenet_v2_x0_5", "none", jit=False)
    assert "random weights" in caplog.text
    assert warm_up_torch_model(model, 224, 2) > 0
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_wrong_state_dict_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(ModelError, match=r"model.weights: .*bad.pth is not a state dict of quantized"):
        load_torch_model("mobilenet_v2", str(bad), jit=False)


def test_default_weights_offline_say_how_to_supply_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: forces a download attempt
    try:
        load_torch_model("mobilenet_v2", "DEFAULT", jit=False)
    except ModelError as e:
        assert "--set model.weights=PATH" in str(e) and "download" in str(e)
    else:
        pytest.skip("the network allowed downloading torchvision's weights here")


def test_engine_choice():
    supported = torch.backends.quantized.supported_engines
    assert choose_engine("auto", "mobilenet_v2") in supported
    with pytest.raises(ModelError, match="model.engine"):
        choose_engine("nonexistent", "mobilenet_v2")


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_scripted_models_with_aux_outputs_return_logits(name):
    """Scripted GoogLeNet and Inception v3 return (logits, aux...) tuples: the loader hands the
    inference stage a model that returns the logits like every other."""
    model = load_torch_model(name, "none", jit=True)
    size = 299 if name == "inception_v3" else 224
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, size, size)).shape == (1, 1000)
