"""Adversarial and reconstruction losses."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from unitkit import GANLoss


class LSGAN(GANLoss):
    """Least-squares GAN (Mao et al. 2017): the reference UNIT code's adversarial loss."""

    def discriminator(self, real: Tensor, fake: Tensor) -> Tensor:
        return ((real - 1) ** 2).mean() + (fake**2).mean()

    def generator(self, fake: Tensor) -> Tensor:
        return ((fake - 1) ** 2).mean()


class VanillaGAN(GANLoss):
    """Binary cross-entropy GAN (the paper's), with the non-saturating generator loss -log D(G(z))."""

    def discriminator(self, real: Tensor, fake: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(real, real.new_ones(()).expand_as(real)) + (
            F.binary_cross_entropy_with_logits(fake, fake.new_zeros(()).expand_as(fake))
        )

    def generator(self, fake: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(fake, fake.new_ones(()).expand_as(fake))


class HingeGAN(GANLoss):
    """Hinge loss (Lim & Ye 2017; used by SAGAN and BigGAN)."""

    def discriminator(self, real: Tensor, fake: Tensor) -> Tensor:
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def generator(self, fake: Tensor) -> Tensor:
        return -fake.mean()


def l1() -> Callable[[Tensor, Tensor], Tensor]:
    """Mean absolute error (the reference UNIT code's reconstruction loss)."""
    return F.l1_loss


def l2() -> Callable[[Tensor, Tensor], Tensor]:
    """Mean squared error."""
    return F.mse_loss
