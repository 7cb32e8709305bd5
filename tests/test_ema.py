"""train.ema: an average of the encoder and generator weights that never changes how the run trains."""

from __future__ import annotations

import pytest
import torch

from unitkit import checkpoint as ckpt
from unitkit.ema import WeightAverage
from unitkit.plugins import load_plugins
from unitkit.recipe import load_recipe
from unitkit.train import build_step, train


def trained(tiny_recipe, run_dir, *overrides):
    registries = load_plugins(autoload=False).registries
    recipe = load_recipe(tiny_recipe, registries, ["train.deterministic=true", *overrides])
    train(recipe, registries, run_dir, show_progress=False)
    return ckpt.read_checkpoint(ckpt.list_checkpoints(run_dir / "checkpoints")[-1])


def test_the_average_does_not_change_training(tiny_recipe, tmp_path):
    # One run with train.ema therefore gives both sides of an EMA comparison: its raw weights are the run
    # without the average.
    without = trained(tiny_recipe, tmp_path / "without")
    averaged = trained(tiny_recipe, tmp_path / "with", "train.ema=0.9")
    assert not without.averaged and averaged.averaged
    for name, tensor in without.model_state.items():
        assert torch.equal(tensor, averaged.model_state[name]), name
    assert any(not torch.equal(averaged.averaged[k], averaged.model_state[k]) for k in averaged.averaged)
    assert averaged.weights("raw") is averaged.model_state
    assert all(torch.equal(averaged.weights("ema")[k], v) for k, v in averaged.averaged.items())


def test_the_average_is_bias_corrected_and_keeps_shared_blocks_shared(tiny_recipe):
    registries = load_plugins(autoload=False).registries
    recipe = load_recipe(tiny_recipe, registries, [])
    model = build_step(recipe, registries, (3, 3), 16, torch.device("cpu")).model
    average = WeightAverage(model, decay=0.75)
    start = [p.detach().clone() for p in model.generator_parameters()]
    with torch.no_grad():
        for step in (1, 2):  # the weights of iteration 1 are start + 1, of iteration 2 start + 2
            for p in model.generator_parameters():
                p.add_(1.0)
            average.update(step)
    # (0.75 * 1 + 1 * 2) / (0.75 + 1): the initial weights have no part in it (bias correction).
    for mine, first in zip(average.model.generator_parameters(), start, strict=True):
        torch.testing.assert_close(mine, first + 2.75 / 1.75)
    assert average.model.enc_a.blocks[-1] is average.model.enc_b.blocks[-1]  # the shared latent layer, once
    assert not any(name.startswith("dis_") for name in average.state())


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_samples_and_evaluation_translate_with_the_chosen_weights(tiny_recipe, tmp_path, monkeypatch, weights):
    import unitkit.train as training

    seen = []
    monkeypatch.setattr(training, "evaluate_run", lambda model, *args: seen.append(model) or {})
    monkeypatch.setattr(training, "sample_grid", lambda model, x_a, x_b, path: seen.append(model) or path)
    registries = load_plugins(autoload=False).registries
    recipe = load_recipe(tiny_recipe, registries, ["train.ema=0.9", f"evaluate.weights={weights}"])
    train(recipe, registries, tmp_path / "run", show_progress=False)
    # The average's encoders and generators are frozen copies; the trained ones learn.
    assert len(seen) > 2 and all(next(m.enc_a.parameters()).requires_grad == (weights == "raw") for m in seen)


def test_the_average_classifies_with_the_trained_discriminators(tiny_recipe):
    # A domain-adaptation evaluation of the average classifies with its discriminators: they must be the trained
    # ones, not a copy of the initial ones.
    registries = load_plugins(autoload=False).registries
    model = build_step(load_recipe(tiny_recipe, registries, []), registries, (3, 3), 16, torch.device("cpu")).model
    average = WeightAverage(model, decay=0.9)
    assert average.model.dis_a is model.dis_a and average.model.dis_b is model.dis_b
    assert average.model.enc_a is not model.enc_a
