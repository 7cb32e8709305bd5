"""unitkit-spectral: a spectral-norm PatchGAN discriminator, and the template to copy for a unitkit plugin."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

import unitkit

unitkit_hook_version = 1


def _sn_conv(cin: int, cout: int, kernel: int, stride: int = 1, pad: int = 0) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, kernel, stride, pad))


class SpectralPatchDiscriminator(unitkit.Discriminator):
    """PatchGAN with spectral norm on every conv (Miyato et al. 2018): a logit per patch, one scale.

    ``layers`` stride-2 4x4 convs (channels width, 2*width, ...) with LeakyReLU(0.2), then a 1x1 conv to one
    logit. ``trunk`` = ``body``: every conv but the first, which stays per domain when discriminators are shared.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 0,
        width: Annotated[int, Field(ge=1)] = 64,
        layers: Annotated[int, Field(ge=1)] = 3,
    ):
        super().__init__()
        if num_classes:
            raise ValueError(f"SpectralPatchDiscriminator has no classifier head (num_classes={num_classes})")
        self.stem = nn.Sequential(_sn_conv(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2))
        body: list[nn.Module] = []
        for i in range(layers - 1):
            body += [_sn_conv(width * 2**i, width * 2 ** (i + 1), 4, 2, 1), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*body, _sn_conv(width * 2 ** (layers - 1), 1, 1))
        self.trunk = ("body",)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.body(self.stem(x))]


@unitkit.hookimpl
def unitkit_register_discriminators(registry: unitkit.Registry) -> None:
    registry.register("spectral-patch", SpectralPatchDiscriminator)
