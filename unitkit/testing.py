"""Contract tests for components: the checks unitkit runs on its own components, for plugin authors too.

In a plugin's test suite, one line runs them over every component the plugin registers::

    from unitkit.testing import contract_tests

    test_contract = contract_tests(plugin="my-plugin")   # the entry-point name in your pyproject.toml

Each component is built with its default settings and checked on CPU for output shapes, gradient flow and
determinism under a seed. A generator is checked together with the encoder registered under the same name.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from unitkit.components import Backbone, Discriminator, DomainData, EncoderBackbone
from unitkit.plugins import load_plugins
from unitkit.recipe import settings_model
from unitkit.registry import Entry, Registries

#: Image side used for components that accept any multiple of their ``size_multiple``.
CONTRACT_IMAGE_SIZE = 64


@dataclass(frozen=True)
class ContractCase:
    registry: str
    name: str
    plugin: str

    @property
    def id(self) -> str:
        return f"{self.registry}:{self.name}"


def component_cases(registries: Registries | None = None, plugin: str | None = None) -> list[ContractCase]:
    """Every registered component (of one plugin, when ``plugin`` names its entry point)."""
    registries = registries or load_plugins().registries
    return [
        ContractCase(registry.kind, entry.name, entry.provider.plugin)
        for registry in registries
        for entry in registry
        if plugin is None or entry.provider.plugin == plugin
    ]


def _defaults_ok(registries: Registries, kind: str, name: str) -> bool:
    """True when every recipe setting of the component has a default (so it can be built unconfigured)."""
    model = settings_model(registries, kind, name)
    return all(not field.is_required() for field in model.model_fields.values())


def _build(entry: Entry, **provided: Any) -> Any:
    torch.manual_seed(0)
    return entry.factory(**provided)


def _image_size(encoder: EncoderBackbone) -> int:
    if encoder.fixed_size:
        return encoder.fixed_size
    multiple = encoder.size_multiple
    return max(multiple, CONTRACT_IMAGE_SIZE // multiple * multiple)


def _check_gradients(module: nn.Module, loss: torch.Tensor, what: str) -> None:
    loss.backward()
    missing = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{what}: no gradient reaches {missing[:5]}"


def _check_forward_runs_the_blocks(backbone: Backbone, x: torch.Tensor, what: str) -> None:
    """Training runs a backbone's blocks itself (a shared block once for both domains), so ``forward`` may add
    checks but must compute what the blocks compute."""
    expected = x
    for block in backbone.blocks:
        expected = block(expected)
    assert torch.equal(backbone(x), expected), f"{what}: forward differs from applying its blocks in order"


def check_encoder(entry: Entry) -> None:
    """An encoder for 1 and 3 channels: latent shape, a positive deviation if it learns one, gradients to every
    parameter, ``forward`` equal to its blocks, and the same weights under the same seed."""
    for channels in (1, 3):
        encoder = _build(entry, in_channels=channels)
        assert isinstance(encoder, EncoderBackbone), f"encoder {entry.name!r} must subclass unitkit.EncoderBackbone"
        assert len(encoder.blocks) >= 1, f"encoder {entry.name!r} has no blocks"
        size = _image_size(encoder)
        x = torch.randn(2, channels, size, size)
        h = encoder(x)
        outputs = encoder.latent_channels * (2 if encoder.learns_scale else 1)
        assert h.ndim == 4 and h.shape[:2] == (2, outputs), f"latent shape {tuple(h.shape)}"
        _, std = encoder.posterior(h)
        assert std is None or bool((std > 0).all()), f"encoder {entry.name!r}: a standard deviation is not positive"
        _check_gradients(encoder, h.square().mean(), f"encoder {entry.name!r}")
        _check_forward_runs_the_blocks(encoder.eval(), x, f"encoder {entry.name!r}")
        first, second = _build(entry, in_channels=channels), _build(entry, in_channels=channels)
        same = torch.equal(first.eval()(x), second.eval()(x))
        assert same, f"encoder {entry.name!r} is not deterministic under a seed"


def check_generator(entry: Entry, registries: Registries) -> None:
    """A generator with the encoder of the same name: it maps codes back to the image's shape, inside [-1, 1],
    with gradients to every parameter and ``forward`` equal to its blocks."""
    if entry.name not in registries.encoders:
        raise AssertionError(f"generator {entry.name!r} needs an encoder registered under the same name to be checked")
    encoder = _build(registries.encoders.get(entry.name), in_channels=3)
    generator = _build(entry, out_channels=3, latent_channels=encoder.latent_channels)
    size = _image_size(encoder)
    x = torch.randn(2, 3, size, size)
    y = generator(encoder.encode_mean(x))
    assert y.shape == x.shape, f"generator {entry.name!r} maps a {tuple(x.shape)} image to {tuple(y.shape)}"
    assert y.min() >= -1 and y.max() <= 1, f"generator {entry.name!r} output leaves [-1, 1]"
    _check_gradients(generator, y.mean(), f"generator {entry.name!r}")
    _check_forward_runs_the_blocks(generator.eval(), encoder.eval().encode_mean(x), f"generator {entry.name!r}")


def check_discriminator(entry: Entry) -> None:
    """A discriminator: a list of per-image logits, gradients to every parameter, trunk paths that exist, and the
    domain-adaptation parts if it exposes features. Tried at the contract size, then at 32x32 for a discriminator
    that raises ValueError for other sizes."""
    discriminator = _build(entry, in_channels=3, num_classes=0)
    x = torch.randn(2, 3, CONTRACT_IMAGE_SIZE, CONTRACT_IMAGE_SIZE)
    try:
        logits = discriminator(x)
    except ValueError:  # a discriminator for a fixed size says so; try the digits size
        x = torch.randn(2, 3, 32, 32)
        logits = discriminator(x)
    assert isinstance(logits, list) and logits, f"discriminator {entry.name!r} must return a non-empty list"
    assert all(t.shape[0] == 2 for t in logits), "each logit tensor must keep the batch dimension"
    _check_gradients(discriminator, sum(t.mean() for t in logits), f"discriminator {entry.name!r}")
    for path in discriminator.trunk:
        discriminator.get_submodule(path)
    _check_domain_adaptation_parts(entry, discriminator.eval(), x)


def _check_domain_adaptation_parts(entry: Entry, discriminator: Discriminator, x: torch.Tensor) -> None:
    """For a discriminator that exposes trunk features: features + score is forward, and a head classifies."""
    try:
        features = discriminator.features(x)
    except NotImplementedError:
        return
    assert features.shape[0] == len(x), f"discriminator {entry.name!r}: features must keep the batch dimension"
    with torch.no_grad():
        split = discriminator.score(discriminator.features(x))
        whole = discriminator(x)
    for a, b in zip(split, whole, strict=True):
        torch.testing.assert_close(a, b, msg=f"discriminator {entry.name!r}: score(features(x)) must equal forward(x)")
    try:
        with_head = _build(entry, in_channels=3, num_classes=10)
    except ValueError:  # no classifier head offered
        return
    logits = with_head.classify(with_head.features(x))
    assert logits.shape == (len(x), 10), f"discriminator {entry.name!r}: classify gives {tuple(logits.shape)}"


def check_gan_loss(entry: Entry) -> None:
    """A GAN loss: scalar losses, lower for D when it tells real from fake, lower for G when it fools D."""
    loss = entry.factory()
    confident_real, confident_fake = torch.full((4, 1), 5.0), torch.full((4, 1), -5.0)
    good = loss.discriminator(confident_real, confident_fake)
    bad = loss.discriminator(confident_fake, confident_real)
    assert good.ndim == 0 and torch.isfinite(good), "discriminator loss must be a finite scalar"
    assert good < bad, "the discriminator loss must be lower when it tells real from fake"
    fake = torch.zeros(4, 1, requires_grad=True)
    g = loss.generator(fake)
    g.backward()
    assert g.ndim == 0 and fake.grad is not None and fake.grad.abs().sum() > 0, "generator loss must have a gradient"
    assert loss.generator(confident_real) < loss.generator(confident_fake), "fooling D must lower the generator loss"


def check_reconstruction_loss(entry: Entry) -> None:
    """A reconstruction loss: zero for identical images, positive for different ones."""
    loss = entry.factory()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert float(loss(x, x)) == 0.0, "identical images must cost 0"
    assert float(loss(x, -x)) > 0, "different images must cost more than 0"


def check_sharing_strategy(entry: Entry, registries: Registries) -> None:
    """A sharing strategy, applied to the built-in ResNet encoders and generators for a 1- and a 3-channel domain:
    block counts stay, and the networks still translate between the domains."""
    for backbone in ("resnet",):
        encoders = tuple(_build(registries.encoders.get(backbone), in_channels=c) for c in (1, 3))
        latent = encoders[0].latent_channels
        generators = tuple(
            _build(registries.generators.get(backbone), out_channels=c, latent_channels=latent) for c in (1, 3)
        )
        entry.factory(encoders, generators)
        for a, b in (encoders, generators):
            assert len(a.blocks) == len(b.blocks), "sharing must not change the number of blocks"
        x = torch.randn(1, 3, 32, 32)
        assert generators[0](encoders[1](x)).shape == (1, 1, 32, 32)


def check_dataset(entry: Entry, registries: Registries) -> None:
    """A dataset that builds without settings: DomainData whose items have the declared shape, in [-1, 1]."""
    if not _defaults_ok(registries, "datasets", entry.name):
        return  # needs files (a root); its own tests cover it on real data
    data = entry.factory()
    assert isinstance(data, DomainData), f"dataset {entry.name!r} must return unitkit.DomainData"
    for split, channels in ((data.train_a, data.channels[0]), (data.test_b, data.channels[1])):
        image, label = split[0]
        assert image.shape == (channels, data.image_size, data.image_size), f"item shape {tuple(image.shape)}"
        assert image.min() >= -1 and image.max() <= 1, "images must lie in [-1, 1]"
        assert isinstance(label, int)


def check_logger(entry: Entry) -> None:
    """A logger, built in a run directory that holds recipe.toml as training builds it, starts at a step
    (``rewind``), takes scalars and a written image, and closes; built again there, it takes up a resumed run."""
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder)
        (run_dir / "recipe.toml").write_text('name = "contract"\n', encoding="utf-8")
        image = run_dir / "samples.png"
        Image.new("RGB", (8, 8)).save(image)
        logger = entry.factory(run_dir=run_dir)
        logger.rewind(0)
        logger.log_scalars(1, {"G/total": 1.0})
        logger.log_image(1, "samples", str(image))
        logger.log_scalars(2, {"G/total": 0.5})
        logger.close()
        resumed = entry.factory(run_dir=run_dir)
        resumed.rewind(1)
        resumed.log_scalars(2, {"G/total": 0.4})
        resumed.close()


#: The contract check of each kind of component (:data:`unitkit.registry.KINDS`), by registry name.
CONTRACT_CHECKS: dict[str, Callable[[Entry, Registries], None]] = {
    "datasets": check_dataset,
    "encoders": lambda entry, _: check_encoder(entry),
    "generators": check_generator,
    "discriminators": lambda entry, _: check_discriminator(entry),
    "sharing_strategies": check_sharing_strategy,
    "gan_losses": lambda entry, _: check_gan_loss(entry),
    "reconstruction_losses": lambda entry, _: check_reconstruction_loss(entry),
    "loggers": lambda entry, _: check_logger(entry),
}


def check_component(case: ContractCase, registries: Registries | None = None) -> None:
    """Run the contract checks for one registered component."""
    registries = registries or load_plugins().registries
    CONTRACT_CHECKS[case.registry](registries[case.registry].get(case.name), registries)


def contract_tests(plugin: str | None = None) -> Callable[[ContractCase], None]:
    """A pytest test function parametrised over the components of ``plugin`` (all components when None)."""
    import pytest

    registries = load_plugins().registries
    cases = component_cases(registries, plugin)
    if not cases:
        raise LookupError(f"no components registered by plugin {plugin!r}; is it installed (pip install -e .)?")

    @pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])
    def test_component_contract(case: ContractCase) -> None:
        check_component(case, registries)

    return test_component_contract
