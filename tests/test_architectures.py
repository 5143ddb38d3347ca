"""Every architecture the shipped accuracy_vs_latency space searches builds, trains a step and predicts
MNIST's 1-channel digits at each of the space's image sizes (the smallest width where it has one),
fast and without Ray; and the width_mult knob: what torchvision takes it, one line when a model does
not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from raydigits.config import make_config
from raydigits.errors import UserError
from raydigits.models import WIDTH_MULT_MODELS, build_model
from raydigits.spec import load_spec
from raydigits.trainer import Trainer

SPACE = load_spec("accuracy_vs_latency")
WIDTH = SPACE.parameters["width_mult"]
SIZES = SPACE.parameters["img_size"].values or []
CASES = [
    (model, min(WIDTH.values or [1.0]) if WIDTH.condition_holds({"model": model}) else 1.0, size)
    for model in SPACE.parameters["model"].values or []
    for size in SIZES
]


def test_the_space_searches_several_architectures_widths_and_sizes():
    assert len(SPACE.parameters["model"].values or []) >= 6 and len(SIZES) >= 2
    assert {m for m, w, _ in CASES if w != 1.0} == set(WIDTH_MULT_MODELS)


@pytest.mark.parametrize("model, width, size", CASES)
def test_architecture_builds_trains_a_step_and_predicts_digits(model, width, size, small_mnist):
    cfg = make_config(
        {
            **SPACE.fixed,
            "model": model,
            "width_mult": width,
            "img_size": size,
            "train_items": 32,  # two steps of 16: what is checked is that a step runs, not what it learns
            "batch_size": 16,
            "val_items": 20,
            "bn_recalibrate": 0,
            "epochs": 1,
            "device": "cpu",
        }
    )
    t = Trainer(cfg, small_mnist)
    before = [p.detach().clone() for p in t.model.parameters()]
    history = t.fit()
    assert history and np.isfinite(history[-1]["val_loss"]) and history[-1]["train_loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters())), "no step taken"
    images = small_mnist.images["val"][:5]
    assert images.shape[-1] == 1  # MNIST's one channel: the pipeline makes what the model takes
    probs = t.predict(images)
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)


def test_width_mult_is_what_torchvision_takes_and_shrinks_the_model():
    for name in WIDTH_MULT_MODELS:
        full = sum(p.numel() for p in torchvision.models.get_model(name, weights=None).parameters())
        half = sum(p.numel() for p in torchvision.models.get_model(name, weights=None, width_mult=0.5).parameters())
        assert half < 0.75 * full, name
        built = build_model(make_config({"model": name, "width_mult": 0.5}), 10)
        assert sum(p.numel() for p in built.parameters()) < 0.75 * sum(
            p.numel() for p in build_model(make_config({"model": name}), 10).parameters()
        )
    for name in ("resnet18", "efficientnet_b0", "shufflenet_v2_x1_0", "regnet_x_400mf"):
        with pytest.raises(TypeError):  # else WIDTH_MULT_MODELS would miss one
            torchvision.models.get_model(name, weights=None, width_mult=0.5)


def test_width_mult_on_a_model_without_one_is_one_line_naming_the_key_and_model():
    with pytest.raises(UserError) as e:
        make_config({"model": "resnet18", "width_mult": 0.5})
    assert str(e.value) == (
        "config: width_mult: 0.5 given, but model resnet18 takes no width multiplier (only mobilenet_v2, "
        "mobilenet_v3_large, mobilenet_v3_small do); leave width_mult at 1.0 for it"
    )
    assert make_config({"model": "resnet18", "width_mult": 1.0}).width_mult == 1.0  # the default fits any model


def test_each_width_is_its_own_entry_in_the_costs_cache():
    from raydigits.costs import config_key

    cpu = torch.device("cpu")
    keys = {config_key(make_config({"width_mult": w}), 10, cpu) for w in (0.5, 0.75, 1.0)}
    assert len(keys) == 3
    # the published width keeps the key it always had: caches written before width_mult stay valid
    assert config_key(make_config({}), 10, cpu).split("|")[1] == "mobilenet_v3_small"
