"""Adversarial and reconstruction losses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from unitkit import GANLoss, squared_distance


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


#: "mean" averages over every value (the reference UNIT code); "image_sum" sums over each image and averages
#: over the batch (the digits code, whose weight 1e-3 is 1e-3 * pixels under "mean").
Reduction = Literal["mean", "image_sum"]


def _image_sum(per_value: Tensor) -> Tensor:
    return per_value.flatten(1).sum(1).mean()


def l1(reduction: Reduction = "mean") -> Callable[[Tensor, Tensor], Tensor]:
    """Absolute error (the reference UNIT code's reconstruction loss)."""
    return F.l1_loss if reduction == "mean" else lambda x, y: _image_sum((x - y).abs())


def l2(reduction: Reduction = "mean") -> Callable[[Tensor, Tensor], Tensor]:
    """Squared error (the digits code's, with "image_sum")."""
    return F.mse_loss if reduction == "mean" else squared_distance
