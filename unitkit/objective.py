"""The UNIT objective (Liu et al. 2017, eq. 2-5), term by term.

Paper notation → recipe names: λ0 ``gan``, λ1 ``kl``, λ2 ``recon``, λ3 ``kl_cycle``, λ4 ``cycle``. A weight of
zero skips the computation its term needs (a decode, an encode, a discriminator pass), not only its value.
``kl_cycle`` is the KL of the cycle's codes, as in the reference code; the paper's eq. 5 also puts λ3 on the KL of
the first code, which ``kl`` weighs already.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.modules.dropout import _DropoutNd

from unitkit.components import GANLoss, squared_distance
from unitkit.distributed import SINGLE_PROCESS, Shard
from unitkit.model import UNIT
from unitkit.recipe import ObjectiveSettings

ReconstructionLoss = Callable[[Tensor, Tensor], Tensor]


def kl_divergence(mean: Tensor, std: Tensor | None = None) -> Tensor:
    """KL(q(z|x) ‖ N(0, I)) up to constants and scale: the mean over latent units of mean² + std² − log std² − 1.

    With unit variance (``std`` None) that is mean(mean²), as the reference code computes it; the digits code's
    learned deviation adds its own part, which pulls the deviation towards one.
    """
    if std is None:
        return mean.pow(2).mean()
    mean, std = mean.float(), std.float()  # under bf16 autocast the log of a small deviation loses its digits
    return (mean.pow(2) + std.pow(2) - 2 * std.log() - 1).mean()


def with_noise(mean: Tensor, std: Tensor | None = None, shard: Shard = SINGLE_PROCESS) -> Tensor:
    """A sample z = mean + std · ε, ε ~ N(0, I): the reparameterised draw from q(z|x) (std None: unit variance).

    Under data parallelism every process draws the noise of the whole global batch (their RNGs agree) and keeps
    its own slice, so the result does not depend on the number of processes. The draw is in logical order, so it
    does not depend on the memory layout either (``randn_like`` of a channels_last mean fills memory order).
    """
    noise = torch.randn((len(mean) * shard.world, *mean.shape[1:]), dtype=mean.dtype, device=mean.device)
    noise = noise[shard.slice(len(noise))]
    return mean + noise if std is None else mean + std * noise


def decode(generator: torch.nn.Module, *latents: Tensor) -> list[Tensor]:
    """Run one generator on several latent batches in a single pass (fewer, larger kernels)."""
    sizes = [len(z) for z in latents]
    return list(generator(torch.cat(latents)).split(sizes))


@dataclass
class Translations:
    """What one generator-side forward pass computes; entries a zero weight made unnecessary stay None."""

    x_a: Tensor
    x_b: Tensor
    h_a: Tensor  # E_a(x_a): mean of q_a(z|x_a)
    h_b: Tensor
    ab: Tensor  # G_b(z_a): x_a translated to domain B
    ba: Tensor
    recon_a: Tensor | None = None  # G_a(z_a)
    recon_b: Tensor | None = None
    h_ab: Tensor | None = None  # E_b(ab): the translation's code, for the cycle terms
    h_ba: Tensor | None = None
    aba: Tensor | None = None  # G_a(E_b(ab)): the cycle reconstruction of x_a
    bab: Tensor | None = None
    # standard deviations of the four posteriors above, for encoders that learn them (None: unit variance)
    std_a: Tensor | None = None
    std_b: Tensor | None = None
    std_ab: Tensor | None = None
    std_ba: Tensor | None = None


def translate_both(
    model: UNIT, x_a: Tensor, x_b: Tensor, weights: ObjectiveSettings, shard: Shard = SINGLE_PROCESS
) -> Translations:
    """Encode both domains, reconstruct, translate and (when a cycle weight is set) translate back."""
    (h_a, std_a), (h_b, std_b) = model.posteriors(x_a, x_b)
    z_a, z_b = with_noise(h_a, std_a, shard), with_noise(h_b, std_b, shard)
    if weights.recon or weights.feature or weights.fake_reconstructions:
        to_a, to_b = model.decode_both(torch.cat([z_a, z_b]))
        (recon_a, ba), (ab, recon_b) = to_a.split([len(z_a), len(z_b)]), to_b.split([len(z_a), len(z_b)])
    else:
        (ba,), (ab,) = decode(model.gen_a, z_b), decode(model.gen_b, z_a)
        recon_a = recon_b = None
    out = Translations(x_a, x_b, h_a, h_b, ab, ba, recon_a, recon_b, std_a=std_a, std_b=std_b)
    if weights.cycle or weights.kl_cycle:
        (out.h_ba, out.std_ba), (out.h_ab, out.std_ab) = model.posteriors(ba, ab)
        if weights.cycle:
            (out.aba,) = decode(model.gen_a, with_noise(out.h_ab, out.std_ab, shard))
            (out.bab,) = decode(model.gen_b, with_noise(out.h_ba, out.std_ba, shard))
    return out


def adversarial_generator(gan: GANLoss, logits: list[Tensor]) -> Tensor:
    """The generator's loss on D's logits for fakes, summed over D's scales."""
    return sum((gan.generator(scale) for scale in logits), start=logits[0].new_zeros(()))


def fooling(gan: GANLoss, discriminator: torch.nn.Module, fakes: list[Tensor]) -> Tensor:
    """The generator's adversarial loss summed over equally sized batches of fakes, scored in one D pass."""
    logits = discriminator(torch.cat(fakes))
    return sum(adversarial_generator(gan, [scale.chunk(len(fakes))[i] for scale in logits]) for i in range(len(fakes)))


def adversarial_discriminator(gan: GANLoss, real: list[Tensor], fake: list[Tensor]) -> Tensor:
    """D's loss on its logits for real and for fake images, summed over its scales."""
    return sum((gan.discriminator(r, f) for r, f in zip(real, fake, strict=True)), start=real[0].new_zeros(()))


@contextmanager
def dropout_off(*modules: torch.nn.Module) -> Iterator[None]:
    """Run ``modules`` with their dropout layers in eval mode (and everything else as it was)."""
    dropouts = [m for module in modules for m in module.modules() if isinstance(m, _DropoutNd) and m.training]
    for m in dropouts:
        m.eval()
    try:
        yield
    finally:
        for m in dropouts:
            m.train()


def discriminator_loss(
    model: UNIT, t: Translations, gan: GANLoss, weights: ObjectiveSettings, labels_a: Tensor | None = None
) -> dict[str, Tensor]:
    """The discriminators' weighted terms and their sum under ``"total"``.

    ``gan``: real images against the detached translations (and reconstructions, with
    ``fake_reconstructions``). The domain-adaptation terms of the digits code train D too: ``classify``, the
    classifier head's cross-entropy on labelled domain-A images, and ``feature``, the distance between the
    trunk features of a translation and of the same code's reconstruction (which pulls the two domains'
    features together, so a classifier trained on A also reads B). One trunk pass per domain serves the GAN and
    classifier terms; the feature term takes its own pass with dropout off, as the digits code does.
    """
    terms: dict[str, Tensor] = {}
    if weights.classify and labels_a is None:
        raise ValueError("objective.classify needs the labels of the domain-A batch")
    if weights.gan:
        gan_loss = t.x_a.new_zeros(())
        for domain, real, translation, recon in (("a", t.x_a, t.ba, t.recon_a), ("b", t.x_b, t.ab, t.recon_b)):
            dis = model.discriminator(domain)
            n = len(real)
            # One pass over real and fake images: a larger batch is faster, and D scores each image on its own.
            fakes = [translation, recon] if weights.fake_reconstructions else [translation]
            batch = torch.cat([real, *fakes]).detach()
            if weights.classify and domain == "a":  # the trunk's pass serves the classifier too
                trunk = dis.features(batch)
                real_features_a = trunk[:n]
                logits = dis.score(trunk)
            else:
                logits = dis(batch)
            gan_loss = gan_loss + adversarial_discriminator(gan, [s[:n] for s in logits], [s[n:] for s in logits])
        terms["gan"] = weights.gan * gan_loss
    elif weights.classify:
        real_features_a = model.dis_a.features(t.x_a.detach())
    if weights.classify:
        logits = model.dis_a.classify(real_features_a)
        terms["classify"] = weights.classify * torch.nn.functional.cross_entropy(logits.float(), labels_a)
    if weights.feature:
        # Dropout (0.5 on the digits trunk) would turn most of this distance into noise whose minimum is
        # features shrunk towards zero, not features aligned across the domains.
        with dropout_off(model.dis_a, model.dis_b):
            ab, recon_b = model.dis_b.features(torch.cat([t.ab, t.recon_b]).detach()).chunk(2)
            ba, recon_a = model.dis_a.features(torch.cat([t.ba, t.recon_a]).detach()).chunk(2)
        # the translation to B and the reconstruction in A decode the same code z_a (and vice versa)
        terms["feature"] = weights.feature * (squared_distance(ab, recon_a) + squared_distance(ba, recon_b))
    terms["total"] = sum(terms.values(), start=t.x_a.new_zeros(()))
    return terms


def generator_losses(
    model: UNIT, t: Translations, gan: GANLoss, reconstruction: ReconstructionLoss, weights: ObjectiveSettings
) -> dict[str, Tensor]:
    """Weighted terms of the encoders' and generators' loss, and their sum under ``"total"``."""
    terms: dict[str, Tensor] = {}
    if weights.gan:
        # With fake_reconstructions, D rejects reconstructions too, so they must fool it as well (the digits code).
        fakes_a = [t.ba, t.recon_a] if weights.fake_reconstructions else [t.ba]
        fakes_b = [t.ab, t.recon_b] if weights.fake_reconstructions else [t.ab]
        terms["gan"] = weights.gan * (fooling(gan, model.dis_a, fakes_a) + fooling(gan, model.dis_b, fakes_b))
    if weights.kl:
        terms["kl"] = weights.kl * (kl_divergence(t.h_a, t.std_a) + kl_divergence(t.h_b, t.std_b))
    if weights.recon:
        terms["recon"] = weights.recon * (reconstruction(t.recon_a, t.x_a) + reconstruction(t.recon_b, t.x_b))
    if weights.kl_cycle:
        terms["kl_cycle"] = weights.kl_cycle * (kl_divergence(t.h_ab, t.std_ab) + kl_divergence(t.h_ba, t.std_ba))
    if weights.cycle:
        terms["cycle"] = weights.cycle * (reconstruction(t.aba, t.x_a) + reconstruction(t.bab, t.x_b))
    terms["total"] = sum(terms.values(), start=t.h_a.new_zeros(()))
    return terms
