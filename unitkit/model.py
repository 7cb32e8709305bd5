"""The UNIT model: two VAE encoders, two generators and two discriminators over a shared latent space."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unitkit.components import (
    Discriminator,
    EncoderBackbone,
    GeneratorBackbone,
    count_parameters,
    tie_submodule,
    unique_parameters,
)
from unitkit.recipe import Component, Recipe, RecipeError
from unitkit.registry import Registries

DOMAINS = ("a", "b")


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, running batch-norm statistics) and no gradients inside; the old mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class UNIT(nn.Module):
    """E_a, E_b, G_a, G_b, D_a, D_b, with the sharing strategy already applied.

    Shared blocks are the same module objects in both domains' networks, so ``parameters()`` yields each
    shared tensor once.
    """

    #: The networks that translate (trained by the generator optimiser, averaged by ``train.ema``, exported);
    #: the discriminators only train them.
    TRANSLATION_NETWORKS = ("enc_a", "enc_b", "gen_a", "gen_b")

    def __init__(
        self,
        encoders: tuple[EncoderBackbone, EncoderBackbone],
        generators: tuple[GeneratorBackbone, GeneratorBackbone],
        discriminators: tuple[Discriminator, Discriminator],
    ) -> None:
        super().__init__()
        self.enc_a, self.enc_b = encoders
        self.gen_a, self.gen_b = generators
        self.dis_a, self.dis_b = discriminators

    def encoder(self, domain: str) -> EncoderBackbone:
        return self.enc_a if domain == "a" else self.enc_b

    def generator(self, domain: str) -> GeneratorBackbone:
        return self.gen_a if domain == "a" else self.gen_b

    def discriminator(self, domain: str) -> Discriminator:
        return self.dis_a if domain == "a" else self.dis_b

    def translate(self, x: Tensor, source: str) -> Tensor:
        """Images of domain ``source`` translated to the other domain through the latent mean (no noise)."""
        return self.generator("b" if source == "a" else "a")(self.encoder(source).encode_mean(x))

    def translation_networks(self) -> list[nn.Module]:
        """E_a, E_b, G_a, G_b (:data:`TRANSLATION_NETWORKS`)."""
        return [getattr(self, name) for name in self.TRANSLATION_NETWORKS]

    def generator_parameters(self) -> list[nn.Parameter]:
        """Encoder and generator parameters, each shared tensor once (what the generator optimiser updates)."""
        return unique_parameters(*self.translation_networks())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return unique_parameters(self.dis_a, self.dis_b)

    @property
    def size_multiple(self) -> int:
        """Image sides must be divisible by this (the encoders' total downsampling)."""
        return max(self.enc_a.size_multiple, self.enc_b.size_multiple)

    def encode_pair(self, x_a: Tensor, x_b: Tensor) -> tuple[Tensor, Tensor]:
        """Both encoders' outputs for their domain's images (``EncoderBackbone.posterior`` reads them).

        The blocks both encoders share run once on the two batches together (as the authors' code does),
        which halves their kernel launches; results equal two separate passes for per-sample norms.
        """
        first_shared = _first_shared_block(self.enc_a, self.enc_b)
        h_a, h_b = x_a, x_b
        for block_a, block_b in zip(self.enc_a.blocks[:first_shared], self.enc_b.blocks[:first_shared], strict=True):
            h_a, h_b = block_a(h_a), block_b(h_b)
        if first_shared < len(self.enc_a.blocks) and h_a.shape[1:] == h_b.shape[1:]:
            h = torch.cat([h_a, h_b])
            for block in self.enc_a.blocks[first_shared:]:
                h = block(h)
            return h[: len(h_a)], h[len(h_a) :]
        for block_a, block_b in zip(self.enc_a.blocks[first_shared:], self.enc_b.blocks[first_shared:], strict=True):
            h_a, h_b = block_a(h_a), block_b(h_b)
        return h_a, h_b

    def posteriors(self, x_a: Tensor, x_b: Tensor) -> tuple[tuple[Tensor, Tensor | None], ...]:
        """(mean, std) of q_a(z|x_a) and of q_b(z|x_b), encoded together (std None: unit variance)."""
        h_a, h_b = self.encode_pair(x_a, x_b)
        return self.enc_a.posterior(h_a), self.enc_b.posterior(h_b)

    def decode_both(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """G_a(z) and G_b(z): the leading blocks both generators share run once, their outputs feed both ends."""
        shared = _shared_prefix(self.gen_a, self.gen_b)
        if not shared:
            return self.gen_a(z), self.gen_b(z)
        h = z
        for block in self.gen_a.blocks[:shared]:
            h = block(h)
        x_a = x_b = h
        for block in self.gen_a.blocks[shared:]:
            x_a = block(x_a)
        for block in self.gen_b.blocks[shared:]:
            x_b = block(x_b)
        return x_a, x_b


def _shared_prefix(a: nn.Module, b: nn.Module) -> int:
    """How many leading blocks of the two backbones are the same module."""
    count = 0
    while count < min(len(a.blocks), len(b.blocks)) and a.blocks[count] is b.blocks[count]:
        count += 1
    return count


def _first_shared_block(a: nn.Module, b: nn.Module) -> int:
    """Index from which every block of the two backbones is the same module (len(blocks) if none is)."""
    index = len(a.blocks)
    while index > 0 and a.blocks[index - 1] is b.blocks[index - 1]:
        index -= 1
    return index


@dataclass(frozen=True)
class ParameterReport:
    """Parameter counts per network, counting shared tensors once in totals."""

    per_network: dict[str, int]
    shared_generator: int
    shared_discriminator: int
    generator_total: int
    discriminator_total: int


def parameter_report(model: UNIT) -> ParameterReport:
    """Parameters per network, the totals of the encoders + generators and of the discriminators (a shared tensor
    counted once), and what sharing saves on each side."""
    nets = {
        "E_a": model.enc_a, "E_b": model.enc_b, "G_a": model.gen_a, "G_b": model.gen_b,
        "D_a": model.dis_a, "D_b": model.dis_b,
    }  # fmt: skip
    per = {name: count_parameters(net) for name, net in nets.items()}
    gen_total = count_parameters(*model.translation_networks())
    dis_total = count_parameters(model.dis_a, model.dis_b)
    return ParameterReport(
        per_network=per,
        shared_generator=per["E_a"] + per["E_b"] + per["G_a"] + per["G_b"] - gen_total,
        shared_discriminator=per["D_a"] + per["D_b"] - dis_total,
        generator_total=gen_total,
        discriminator_total=dis_total,
    )


def _construct(registries: Registries, registry_kind: str, component: Component, table: str, **provided: object):
    factory = registries[registry_kind].get(component.kind).factory
    try:
        return factory(**provided, **component.settings)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"[{table}] kind = {component.kind!r}: {exc}") from exc


def build_model(
    recipe: Recipe, registries: Registries, channels: tuple[int, int], num_classes: int = 0, image_size: int = 0
) -> UNIT:
    """Build the six networks from a validated recipe, apply its sharing strategy and check that they fit together.

    This is where every check of the networks a recipe describes is made, so that ``unitkit show`` and
    ``unitkit run`` refuse the same recipes.

    Args:
        channels: image channels of domains A and B (from the dataset).
        num_classes: classes of a classifier head on the discriminators (0: none).
        image_size: when given, :func:`check_shapes` runs images of this side through the networks, so a
            mismatch is a recipe error before training starts.
    """
    encoders = tuple(
        _construct(registries, "encoders", recipe.encoder, "model.encoder", in_channels=c) for c in channels
    )
    latent = encoders[0].latent_channels
    generators = tuple(
        _construct(
            registries, "generators", recipe.generator, "model.generator", out_channels=c, latent_channels=latent
        )
        for c in channels
    )
    discriminators = tuple(
        _construct(
            registries,
            "discriminators",
            recipe.discriminator,
            "model.discriminator",
            in_channels=c,
            num_classes=num_classes,
        )
        for c in channels
    )
    if (recipe.objective.classify or recipe.objective.feature) and not _exposes_features(discriminators[0]):
        raise RecipeError(
            f"objective.classify and objective.feature need a discriminator that exposes its trunk features; "
            f"[model.discriminator] kind = {recipe.discriminator.kind!r} does not (the built-in 'digits32' does)"
        )
    strategy = registries.sharing_strategies.get(recipe.sharing.kind).factory
    try:
        strategy(encoders, generators, **recipe.sharing.settings)
    except ValueError as exc:
        raise RecipeError(f"[model.sharing] kind = {recipe.sharing.kind!r}: {exc}") from exc
    if recipe.share_discriminators:
        trunk = discriminators[0].trunk
        if not trunk:
            raise RecipeError(
                f"[model] share_discriminators = true, but discriminator {recipe.discriminator.kind!r} "
                "declares no shareable trunk"
            )
        for path in trunk:
            tie_submodule(discriminators[0], discriminators[1], path)
    elif discriminators[0].classifier_path:
        tie_submodule(discriminators[0], discriminators[1], discriminators[0].classifier_path)
    model = UNIT(encoders, generators, discriminators)
    if image_size:
        check_shapes(model, channels, image_size)
    return model


def _exposes_features(discriminator: Discriminator) -> bool:
    return type(discriminator).features is not Discriminator.features


def check_shapes(model: UNIT, channels: tuple[int, int], image_size: int) -> None:
    """Run one image per domain through encoder, generator and discriminator; a size mismatch is a RecipeError.

    The images go through a copy of the model on the meta device, which computes shapes and no values, so the
    check costs next to nothing at any image size. Should that pass fail, real tensors decide: a component may
    use operations without meta support, or read a value.
    """
    fixed = model.enc_a.fixed_size or model.enc_b.fixed_size
    if fixed and image_size != fixed:
        raise RecipeError(
            f"[data] image_size = {image_size}, but the encoder takes {fixed}x{fixed} images only; set "
            f"data.image_size = {fixed}"
        )
    if image_size % model.size_multiple:
        raise RecipeError(
            f"[data] image_size = {image_size} is not divisible by {model.size_multiple}, the encoder's downsampling"
        )
    try:
        _dry_pass(copy.deepcopy(model).to("meta"), channels, image_size)
    except RecipeError:
        raise
    except Exception:  # the meta pass is a shortcut only, whatever stopped it; the real pass below decides
        try:
            _dry_pass(model, channels, image_size)
        except (RuntimeError, ValueError) as exc:
            message = f"[model] encoder, generator and discriminator do not fit [data] image_size = {image_size}"
            raise RecipeError(f"{message}: {exc}") from exc


def _dry_pass(model: UNIT, channels: tuple[int, int], image_size: int) -> None:
    """One image per domain through encoders, generators and discriminators, in evaluation mode, on the model's
    device."""
    device = next(model.parameters()).device
    x = [torch.zeros(1, c, image_size, image_size, device=device) for c in channels]
    with evaluation_mode(model):
        (h_a, _), (h_b, _) = model.posteriors(*x)
        for domain, h, c in (("a", h_b, channels[0]), ("b", h_a, channels[1])):
            out = model.generator(domain)(h)
            if tuple(out.shape[1:]) != (c, image_size, image_size):
                raise RecipeError(
                    f"[model.generator] produces images of shape {tuple(out.shape[1:])} from a latent of a "
                    f"{image_size}x{image_size} image; expected {(c, image_size, image_size)}. Match the "
                    "generator's settings (e.g. downsamplings) to the encoder's"
                )
        for domain, image in zip(DOMAINS, x, strict=True):
            try:
                model.discriminator(domain)(image)
            except ValueError as exc:  # a discriminator's own check, e.g. too many scales for the size
                message = f"[model.discriminator] does not fit [data] image_size = {image_size}: {exc}"
                raise RecipeError(message) from exc
