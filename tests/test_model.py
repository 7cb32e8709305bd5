"""Model assembly and weight sharing: shared blocks are the same Parameter objects, counted once."""

from __future__ import annotations

import pytest
import torch

from unitkit.model import build_model, parameter_report
from unitkit.recipe import RecipeError, load_recipe


def build(recipe_path, registries, *overrides, channels=(3, 3)):
    recipe = load_recipe(recipe_path, registries, list(overrides))
    return build_model(recipe, registries, channels, image_size=16)


def test_shared_latent_ties_last_encoder_and_first_generator_blocks(tiny_recipe, registries):
    model = build(tiny_recipe, registries, "model.sharing.encoder_blocks=2", "model.sharing.generator_blocks=1")
    assert model.enc_a.blocks[-1] is model.enc_b.blocks[-1] and model.enc_a.blocks[-2] is model.enc_b.blocks[-2]
    assert model.enc_a.blocks[0] is not model.enc_b.blocks[0]
    assert model.gen_a.blocks[0] is model.gen_b.blocks[0] and model.gen_a.blocks[1] is not model.gen_b.blocks[1]
    shared = {id(p) for p in model.enc_a.blocks[-1].parameters()}
    assert shared <= {id(p) for p in model.enc_b.parameters()}


@pytest.mark.parametrize("strategy", ["none", "shared-latent", "all-but-ends"])
def test_parameter_counts_count_shared_tensors_once(tiny_recipe, registries, strategy):
    model = build(tiny_recipe, registries, f"model.sharing.kind={strategy}")
    report = parameter_report(model)
    params = model.generator_parameters()
    assert len({id(p) for p in params}) == len(params)
    assert report.generator_total == sum(p.numel() for p in params)
    per = report.per_network
    assert report.generator_total == per["E_a"] + per["E_b"] + per["G_a"] + per["G_b"] - report.shared_generator
    assert (report.shared_generator == 0) == (strategy == "none")


def test_all_but_ends_keeps_only_stems_and_outputs_private(tiny_recipe, registries):
    model = build(tiny_recipe, registries, "model.sharing.kind=all-but-ends")
    assert model.enc_a.blocks[0] is not model.enc_b.blocks[0]
    assert all(a is b for a, b in zip(model.enc_a.blocks[1:], model.enc_b.blocks[1:], strict=True))
    assert model.gen_a.blocks[-1] is not model.gen_b.blocks[-1]
    assert all(a is b for a, b in zip(model.gen_a.blocks[:-1], model.gen_b.blocks[:-1], strict=True))


def test_discriminator_trunk_sharing_switch(tiny_recipe, registries):
    separate = build(tiny_recipe, registries)
    tied = build(tiny_recipe, registries, "model.share_discriminators=true")
    assert parameter_report(separate).shared_discriminator == 0
    assert parameter_report(tied).shared_discriminator > 0
    for path in tied.dis_a.trunk:
        assert tied.dis_a.get_submodule(path) is tied.dis_b.get_submodule(path)


def test_shared_weights_appear_once_in_the_optimizer(tiny_recipe, registries):
    model = build(tiny_recipe, registries)
    optimizer = torch.optim.Adam(model.generator_parameters())
    ids = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(ids) == len(set(ids)) == len({id(p) for m in (model.enc_a, model.enc_b, model.gen_a, model.gen_b)
                                              for p in m.parameters()})  # fmt: skip


def test_too_many_shared_blocks_is_a_recipe_error(tiny_recipe, registries):
    with pytest.raises(RecipeError, match="only"):
        build(tiny_recipe, registries, "model.sharing.encoder_blocks=99")


def test_mismatched_encoder_and_generator_is_a_recipe_error(tiny_recipe, registries):
    with pytest.raises(RecipeError, match="downsamplings"):
        build(tiny_recipe, registries, "model.encoder.downsamplings=2")
    with pytest.raises(RecipeError, match=r"\[model.generator\]"):
        build(tiny_recipe, registries, "model.generator.downsamplings=0")


def test_discriminator_too_deep_for_the_image_size_is_a_recipe_error(tiny_recipe, registries):
    with pytest.raises(RecipeError, match=r"\[model.discriminator\] does not fit \[data\] image_size = 16"):
        build(tiny_recipe, registries, "model.discriminator.layers=5")  # 16 / 2**5 would vanish


def test_encode_pair_matches_separate_encoders(tiny_recipe, registries):
    model = build(tiny_recipe, registries).eval()
    x_a, x_b = torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16)
    h_a, h_b = model.encode_pair(x_a, x_b)
    torch.testing.assert_close(h_a, model.enc_a(x_a))
    torch.testing.assert_close(h_b, model.enc_b(x_b))


@pytest.mark.parametrize("strategy", ["none", "shared-latent", "all-but-ends"])
def test_decode_both_matches_separate_generators_and_runs_shared_blocks_once(tiny_recipe, registries, strategy):
    model = build(tiny_recipe, registries, f"model.sharing.kind={strategy}", channels=(1, 3))
    z = torch.randn(3, model.enc_a.latent_channels, 4, 4)
    calls = []
    hooks = [block.register_forward_hook(lambda *_: calls.append(1)) for block in model.gen_a.blocks]
    with torch.no_grad():
        x_a, x_b = model.decode_both(z)
        shared = sum(a is b for a, b in zip(model.gen_a.blocks, model.gen_b.blocks, strict=True))
        assert len(calls) == len(model.gen_a.blocks)  # G_a's blocks once each, shared ones included
        for hook in hooks:
            hook.remove()
        model.eval()
        torch.testing.assert_close(model.decode_both(z), (model.gen_a(z), model.gen_b(z)))
    assert x_a.shape[1] == 1 and x_b.shape[1] == 3 and (shared > 0) == (strategy != "none")


def test_different_channel_counts_per_domain(tiny_recipe, registries):
    model = build(tiny_recipe, registries, channels=(1, 3))
    h_a, h_b = model.encode_pair(torch.randn(2, 1, 16, 16), torch.randn(2, 3, 16, 16))
    assert model.gen_b(h_a).shape == (2, 3, 16, 16) and model.gen_a(h_b).shape == (2, 1, 16, 16)
