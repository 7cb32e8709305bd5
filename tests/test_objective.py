"""The UNIT objective term by term: hand-computed values, and zero weights that remove their computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_DIGITS

from unitkit.builtin.losses import LSGAN, HingeGAN, VanillaGAN, l1, l2
from unitkit.model import build_model
from unitkit.objective import (
    adversarial_discriminator,
    discriminator_loss,
    generator_losses,
    kl_divergence,
    translate_both,
    with_noise,
)
from unitkit.recipe import load_recipe

REAL = torch.tensor([[0.5], [2.0]])
FAKE = torch.tensor([[-1.0], [0.25]])


def test_lsgan_matches_hand_computation():
    loss = LSGAN()
    # D: mean((real-1)^2) + mean(fake^2) = (0.25 + 1)/2 + (1 + 0.0625)/2
    assert loss.discriminator(REAL, FAKE).item() == pytest.approx(0.625 + 0.53125)
    # G: mean((fake-1)^2) = (4 + 0.5625)/2
    assert loss.generator(FAKE).item() == pytest.approx(2.28125)


def test_vanilla_gan_matches_hand_computation():
    loss = VanillaGAN()
    softplus = lambda x: torch.log1p(torch.exp(x))  # noqa: E731
    expected_d = softplus(-REAL).mean() + softplus(FAKE).mean()  # -log σ(real) - log(1 - σ(fake))
    assert loss.discriminator(REAL, FAKE).item() == pytest.approx(expected_d.item())
    assert loss.generator(FAKE).item() == pytest.approx(softplus(-FAKE).mean().item())  # non-saturating


def test_hinge_matches_hand_computation():
    loss = HingeGAN()
    # D: mean(relu(1-real)) + mean(relu(1+fake)) = (0.5 + 0)/2 + (0 + 1.25)/2
    assert loss.discriminator(REAL, FAKE).item() == pytest.approx(0.25 + 0.625)
    assert loss.generator(FAKE).item() == pytest.approx(0.375)


def test_kl_is_half_squared_mean_up_to_scale():
    mean = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert kl_divergence(mean).item() == pytest.approx((1 + 4 + 0 + 9) / 4)


def test_kl_with_a_learned_deviation_matches_the_digits_code_and_reduces_to_unit_variance():
    mean, std = torch.tensor([[1.0, -2.0], [0.0, 3.0]]), torch.tensor([[1.0, 0.5], [2.0, 1.0]])
    # the digits code: sum of mean² + std² − log std², per unit here, and −1 so that std = 1 adds nothing
    expected = sum(m**2 + s**2 - math.log(s**2) - 1 for m, s in zip(mean.flatten(), std.flatten(), strict=True)) / 4
    assert kl_divergence(mean, std).item() == pytest.approx(float(expected))
    assert kl_divergence(mean, torch.ones_like(mean)).item() == pytest.approx(kl_divergence(mean).item())


@pytest.fixture
def setup(tiny_recipe, registries):
    def make(**weights):
        overrides = [f"objective.{k}={v}" for k, v in weights.items()]
        recipe = load_recipe(tiny_recipe, registries, overrides)
        torch.manual_seed(0)
        model = build_model(recipe, registries, (3, 3))
        return model, recipe.objective

    return make


def run_terms(model, weights, seed=1):
    torch.manual_seed(seed)
    x_a, x_b = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    t = translate_both(model, x_a, x_b, weights)
    return t, generator_losses(model, t, LSGAN(), F.l1_loss, weights)


def count_calls(model):
    """Images each network processes, counted at a block of its own: shared blocks may run once for both."""
    own_block = {"enc_a": model.enc_a.blocks[0], "enc_b": model.enc_b.blocks[0], "gen_a": model.gen_a.blocks[-1],
                 "gen_b": model.gen_b.blocks[-1], "dis_a": model.dis_a, "dis_b": model.dis_b}  # fmt: skip
    images = dict.fromkeys(own_block, 0)
    for name, module in own_block.items():

        def hook(module, args, output, name=name):
            images[name] += len(args[0])

        module.register_forward_hook(hook)
    return images


def test_terms_match_their_formulas(setup):
    model, weights = setup()
    t, terms = run_terms(model, weights)
    assert set(terms) == {"gan", "kl", "recon", "kl_cycle", "cycle", "total"}
    torch.testing.assert_close(
        terms["recon"], weights.recon * ((t.recon_a - t.x_a).abs().mean() + (t.recon_b - t.x_b).abs().mean())
    )
    torch.testing.assert_close(terms["kl"], weights.kl * (t.h_a.square().mean() + t.h_b.square().mean()))
    torch.testing.assert_close(terms["kl_cycle"], weights.kl_cycle * (t.h_ab.square().mean() + t.h_ba.square().mean()))
    torch.testing.assert_close(
        terms["cycle"], weights.cycle * ((t.aba - t.x_a).abs().mean() + (t.bab - t.x_b).abs().mean())
    )
    gan = sum(((d - 1) ** 2).mean() for d in model.dis_a(t.ba)) + sum(((d - 1) ** 2).mean() for d in model.dis_b(t.ab))
    torch.testing.assert_close(terms["gan"], weights.gan * gan)
    torch.testing.assert_close(terms["total"], sum(v for k, v in terms.items() if k != "total"))


@pytest.mark.parametrize(
    "zeroed, absent, skipped",
    [
        ({"cycle": 0.0}, {"cycle"}, {"aba", "bab"}),
        ({"cycle": 0.0, "kl_cycle": 0.0}, {"cycle", "kl_cycle"}, {"aba", "bab", "h_ab", "h_ba"}),
        ({"recon": 0.0}, {"recon"}, {"recon_a", "recon_b"}),
        ({"kl": 0.0}, {"kl"}, set()),
        ({"gan": 0.0}, {"gan"}, set()),
    ],
)
def test_zero_weight_removes_the_term_and_its_computation(setup, zeroed, absent, skipped):
    full_model, full_weights = setup()
    full_images = count_calls(full_model)
    full_t, full = run_terms(full_model, full_weights)
    model, weights = setup(**zeroed)
    images = count_calls(model)
    t, terms = run_terms(model, weights)
    assert set(full) - set(terms) == absent
    for name in skipped:
        assert getattr(t, name) is None and getattr(full_t, name) is not None
    for name in set(terms) - {"total"} - {"cycle", "kl_cycle"}:  # terms computed before any skipped work
        torch.testing.assert_close(terms[name], full[name])
    if skipped:
        assert sum(images.values()) < sum(full_images.values())
    if "gan" in zeroed:
        assert images["dis_a"] == images["dis_b"] == 0


def test_discriminator_loss_uses_detached_translations(setup):
    model, weights = setup()
    t, _ = run_terms(model, weights)
    terms = discriminator_loss(model, t, LSGAN(), weights)
    assert set(terms) == {"gan", "total"}
    terms["total"].backward()
    assert all(p.grad is None for p in model.generator_parameters())
    assert any(p.grad is not None for p in model.discriminator_parameters())


def test_image_sum_reduction_sums_each_image_and_averages_the_batch():
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([1.0, 2.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]).reshape(2, 1, 2, 2)
    assert l2("image_sum")(x, y).item() == pytest.approx(((1 + 4) + 4) / 2)
    assert l1("image_sum")(x, y).item() == pytest.approx(((1 + 2) + 4) / 2)
    assert l2()(x, y).item() == pytest.approx(9 / 8)


DIGITS_RECIPE = '[data]\nkind = "synthetic"\n' + TINY_DIGITS


@pytest.fixture
def digits(tmp_path, registries):
    def make(*overrides):
        path = tmp_path / "digits.toml"
        path.write_text(DIGITS_RECIPE, encoding="utf-8")
        recipe = load_recipe(path, registries, overrides)
        torch.manual_seed(0)
        model = build_model(recipe, registries, (1, 1), num_classes=10)
        x_a, x_b = torch.rand(4, 1, 32, 32) * 2 - 1, torch.rand(4, 1, 32, 32) * 2 - 1
        return model, recipe.objective, translate_both(model, x_a, x_b, recipe.objective)

    return make


def test_domain_adaptation_terms_match_their_formulas(digits):
    model, weights, t = digits()
    labels = torch.tensor([0, 3, 9, 3])
    terms = discriminator_loss(model, t, VanillaGAN(), weights, labels)
    assert set(terms) == {"gan", "classify", "feature", "total"}

    d_a, d_b = model.dis_a, model.dis_b
    # Reconstructions count as fakes: each D sees real | translation + reconstruction.
    expected_gan = adversarial_discriminator(VanillaGAN(), d_a(t.x_a), d_a(torch.cat([t.ba, t.recon_a]))) + (
        adversarial_discriminator(VanillaGAN(), d_b(t.x_b), d_b(torch.cat([t.ab, t.recon_b])))
    )
    torch.testing.assert_close(terms["gan"], expected_gan)
    expected_classify = 10 * F.cross_entropy(d_a.classify(d_a.features(t.x_a)), labels)
    torch.testing.assert_close(terms["classify"], expected_classify)
    # The translation to B and the reconstruction in A decode the same code; their trunk features should agree.
    expected_feature = 1e-4 * (
        (d_b.features(t.ab) - d_a.features(t.recon_a)).pow(2).sum((1, 2, 3)).mean()
        + (d_a.features(t.ba) - d_b.features(t.recon_b)).pow(2).sum((1, 2, 3)).mean()
    )
    torch.testing.assert_close(terms["feature"], expected_feature)
    torch.testing.assert_close(terms["total"], terms["gan"] + terms["classify"] + terms["feature"])


def test_a_learned_deviation_scales_the_noise_enters_the_kl_and_gets_gradients(digits):
    model, weights, t = digits("model.encoder.learned_scale=true", "objective.kl=0.5")
    assert t.std_a is not None and bool((t.std_a > 0).all()) and t.std_a.shape == t.h_a.shape
    terms = generator_losses(model, t, VanillaGAN(), F.mse_loss, weights)
    torch.testing.assert_close(terms["kl"], 0.5 * (kl_divergence(t.h_a, t.std_a) + kl_divergence(t.h_b, t.std_b)))
    terms["total"].backward()
    head = model.enc_a.blocks[-1].weight.grad  # the mean's output channels, then the scale's
    assert head.shape[0] == 2 * model.enc_a.latent_channels and bool(head[model.enc_a.latent_channels :].abs().sum())

    # The noise is std · ε: with a deviation near zero two draws decode to the same images.
    with torch.no_grad():
        model.enc_a.blocks[-1].bias[model.enc_a.latent_channels :] = -30.0
        model.enc_b.blocks[-1].bias[model.enc_b.latent_channels :] = -30.0
    x_a, x_b = t.x_a, t.x_b
    first, second = translate_both(model, x_a, x_b, weights), translate_both(model, x_a, x_b, weights)
    torch.testing.assert_close(first.recon_a, second.recon_a)
    torch.testing.assert_close(first.ab, second.ab)


def test_feature_term_compares_dropout_free_features_and_leaves_dropout_on(digits):
    # With the digits code's dropout (0.5 on the last trunk block) the distance would be mostly noise.
    model, weights, t = digits("model.discriminator.dropout=true")
    d_a, d_b = model.dis_a, model.dis_b
    values = [discriminator_loss(model, t, VanillaGAN(), weights, torch.tensor([0, 1, 2, 3]))["feature"] for _ in "ab"]
    assert all(m.training for m in d_a.modules()) and all(m.training for m in d_b.modules())
    with torch.no_grad():
        d_a.eval(), d_b.eval()
        expected = 1e-4 * (
            (d_b.features(t.ab) - d_a.features(t.recon_a)).pow(2).sum((1, 2, 3)).mean()
            + (d_a.features(t.ba) - d_b.features(t.recon_b)).pow(2).sum((1, 2, 3)).mean()
        )
    torch.testing.assert_close(values[0], expected)
    torch.testing.assert_close(values[1], expected)


def test_domain_adaptation_terms_train_the_shared_classifier_and_both_stems_not_the_generators(digits):
    model, weights, t = digits("objective.gan=0.0")
    terms = discriminator_loss(model, t, VanillaGAN(), weights, torch.tensor([1, 2, 3, 4]))
    assert "gan" not in terms
    terms["total"].backward()
    assert model.dis_a.classifier is model.dis_b.classifier and model.dis_a.classifier.weight.grad is not None
    assert model.dis_b.stem[0].weight.grad is not None  # B's stem learns through the feature term alone
    assert all(p.grad is None for p in model.generator_parameters())


def test_translations_alone_are_fakes_without_fake_reconstructions(digits):
    model, weights, t = digits("objective.fake_reconstructions=false", "objective.classify=0.0",
                               "objective.feature=0.0")  # fmt: skip
    terms = discriminator_loss(model, t, VanillaGAN(), weights)
    expected = adversarial_discriminator(VanillaGAN(), model.dis_a(t.x_a), model.dis_a(t.ba)) + (
        adversarial_discriminator(VanillaGAN(), model.dis_b(t.x_b), model.dis_b(t.ab))
    )
    torch.testing.assert_close(terms["gan"], expected)


def test_without_the_gan_term_the_discriminators_see_no_fakes(digits):
    model, weights, t = digits("objective.gan=0.0")
    images = {"a": 0, "b": 0}
    for domain in images:  # at the stems, which every pass (forward, features) goes through
        model.discriminator(domain).stem.register_forward_hook(
            lambda module, args, output, domain=domain: images.__setitem__(domain, images[domain] + len(args[0]))
        )
    labels = torch.tensor([0, 3, 9, 3])
    terms = discriminator_loss(model, t, VanillaGAN(), weights, labels)
    assert set(terms) == {"classify", "feature", "total"}
    # the classifier's real A images, the feature term's translations and reconstructions, and no other fakes
    assert images == {"a": 3 * len(t.x_a), "b": 2 * len(t.x_b)}
    expected = 10 * F.cross_entropy(model.dis_a.classify(model.dis_a.features(t.x_a)), labels)
    torch.testing.assert_close(terms["classify"], expected)


def test_classify_without_labels_is_an_error(digits):
    model, weights, t = digits()
    with pytest.raises(ValueError, match="labels of the domain-A batch"):
        discriminator_loss(model, t, VanillaGAN(), weights)


def test_reconstructions_must_fool_d_too_with_fake_reconstructions(digits):
    model, weights, t = digits()
    terms = generator_losses(model, t, VanillaGAN(), l2("image_sum"), weights)
    fool = VanillaGAN().generator
    expected = sum(fool(model.dis_a(x)[0]) for x in (t.ba, t.recon_a)) + sum(
        fool(model.dis_b(x)[0]) for x in (t.ab, t.recon_b)
    )
    torch.testing.assert_close(terms["gan"], weights.gan * expected)


def test_the_classifier_head_is_one_for_both_domains_even_without_discriminator_sharing(digits):
    model, _, _ = digits("model.share_discriminators=false")
    assert model.dis_a.classifier is model.dis_b.classifier
    assert model.dis_a.body is not model.dis_b.body


def test_the_latent_noise_does_not_depend_on_the_memory_layout():
    mean = torch.randn(4, 6, 3, 3)
    torch.manual_seed(0)
    contiguous = with_noise(mean)
    torch.manual_seed(0)
    channels_last = with_noise(mean.to(memory_format=torch.channels_last))
    assert torch.equal(contiguous, channels_last)
