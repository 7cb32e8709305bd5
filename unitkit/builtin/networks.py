"""Built-in networks: the reference UNIT/MUNIT backbones and the 32x32 coupled VAE of the digits experiments.

Sources: the public UNIT master code (``networks.py``: ContentEncoder, Decoder, MsImageDis, shared with MUNIT) and
the authors' paper-era domain-adaptation code (COVAE32x32 and its 32x32 discriminator), as summarised in
docs/design.md, "The digits setup".
"""

from collections.abc import Callable
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from unitkit import Discriminator, EncoderBackbone, GeneratorBackbone, init_weights

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Padding = Literal["reflect", "zeros"]
Norm = Callable[[int], nn.Module]


# ---------------------------------------------------------------------------------------------------------------
# Building blocks


class LayerNorm2d(nn.Module):
    """MUNIT's LayerNorm: normalise each sample over (C, H, W), then a learned per-channel scale and shift.

    Computed as ``group_norm`` with one group, a fused kernel that keeps only the input and two statistics per
    sample for backward (the reference's elementwise version keeps three full-size tensors; that is most of the
    decoder's memory). The reference divides by the unbiased std plus eps; this divides by sqrt(biased var +
    eps), which differs by a relative 1/(2·C·H·W) + O(eps/std): below 1e-4 for any feature map here. gamma
    starts uniform in [0, 1) as in the reference.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.rand(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, 1, self.gamma, self.beta, self.eps)


class Bias2d(nn.Module):
    """A learned per-channel bias: the digits code's batch norm has no affine part, only this shift."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias.view(1, -1, 1, 1)


def instance_norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False)


def batch_norm_bias(channels: int) -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(channels, affine=False), Bias2d(channels))


class MatmulConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` that computes a 1x1 input (the digits decoder's code) as one matrix product.

    Same weights and result. On this project's CPU, oneDNN ran the digits decoder's 1x1 -> 4x4 layer forward and
    backward at a sixth of the matrix product's speed in bf16, about a tenth of the digits iteration.
    """

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        plain = self.padding == (0, 0) and self.output_padding == (0, 0) and self.dilation == (1, 1)
        if x.shape[-2:] != (1, 1) or not plain or self.groups != 1 or output_size is not None:
            return super().forward(x, output_size)
        # x.shape[0], not len(x): a trace or torch.export keeps the batch size variable (unitkit export --dynamic)
        out = (x.flatten(1) @ self.weight.flatten(1)).view(x.shape[0], self.out_channels, *self.kernel_size)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def conv(
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    pad: int = 0,
    *,
    padding: str = "zeros",
    norm: Norm | None = None,
    act: nn.Module | None = None,
    transposed: bool = False,
) -> nn.Sequential:
    """Convolution, then optional normalisation and activation: the reference code's ``Conv2dBlock``.

    Callers pass in-place activations, as the reference does: nothing downstream needs the pre-activation, and
    not keeping it saves one activation tensor per layer.
    """
    # Instance/batch norm subtract a conv bias right away (it would get no gradient), so those convs have none.
    bias = norm not in (instance_norm, batch_norm_bias)
    if transposed:
        layer = MatmulConvTranspose2d(cin, cout, kernel, stride, pad, bias=bias)
    else:
        layer = nn.Conv2d(cin, cout, kernel, stride, pad, bias=bias, padding_mode=padding)
    return nn.Sequential(layer, *([norm(cout)] if norm else []), *([act] if act else []))


class ResBlock(nn.Module):
    """x + (conv3x3-IN-ReLU-conv3x3-IN)(x), the residual block of the reference encoder and decoder."""

    def __init__(self, channels: int, padding: str):
        super().__init__()
        self.body = nn.Sequential(
            conv(channels, channels, 3, 1, 1, padding=padding, norm=instance_norm, act=nn.ReLU(inplace=True)),
            conv(channels, channels, 3, 1, 1, padding=padding, norm=instance_norm),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _check_at_least(owner: str, **values: tuple[int, int]) -> None:
    # Recipes are validated by pydantic from the type hints; this repeats the limits for direct construction.
    for name, (value, low) in values.items():
        if value < low:
            raise ValueError(f"{owner}: {name} must be at least {low}, got {value}")


def _check_32x32(owner: str, x: Tensor) -> None:
    if tuple(x.shape[-2:]) != (32, 32):
        raise ValueError(
            f"{owner} takes 32x32 images, got {x.shape[-2]}x{x.shape[-1]}; resize the dataset to 32 "
            "(or use the 'resnet' backbones for other sizes)"
        )


# ---------------------------------------------------------------------------------------------------------------
# The reference UNIT/MUNIT backbones


class ResnetEncoder(EncoderBackbone):
    """Reference UNIT/MUNIT content encoder: 7x7 stem, strided 4x4 downsamplings, residual blocks with IN.

    ``blocks`` = [stem, down_1..down_n, res_1..res_k]; sharing ties the last residual blocks. The output is the
    mean of q(z|x), with ``width * 2**downsamplings`` channels at 1/``2**downsamplings`` of the image size.
    """

    def __init__(
        self,
        in_channels: int,
        width: PositiveInt = 64,
        downsamplings: NonNegativeInt = 2,
        res_blocks: NonNegativeInt = 4,
        padding: Padding = "reflect",
    ):
        super().__init__()
        _check_at_least("ResnetEncoder", width=(width, 1), downsamplings=(downsamplings, 0), res_blocks=(res_blocks, 0))
        blocks = [conv(in_channels, width, 7, 1, 3, padding=padding, norm=instance_norm, act=nn.ReLU(inplace=True))]
        for i in range(downsamplings):
            dim = width * 2**i
            blocks.append(conv(dim, 2 * dim, 4, 2, 1, padding=padding, norm=instance_norm, act=nn.ReLU(inplace=True)))
        self.latent_channels = width * 2**downsamplings
        self.size_multiple = 2**downsamplings
        blocks += [ResBlock(self.latent_channels, padding) for _ in range(res_blocks)]
        self.blocks = nn.ModuleList(blocks)
        init_weights(self, "kaiming")


class ResnetGenerator(GeneratorBackbone):
    """Reference UNIT/MUNIT decoder: residual blocks with IN, upsample + 5x5 conv with LayerNorm, 7x7 tanh output.

    ``blocks`` = [res_1..res_k, up_1..up_n, output]; sharing ties the first residual blocks. Each upsampling
    halves the channels, so ``latent_channels`` must be divisible by ``2**downsamplings``.
    """

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        downsamplings: NonNegativeInt = 2,
        res_blocks: NonNegativeInt = 4,
        padding: Padding = "reflect",
    ):
        super().__init__()
        _check_at_least("ResnetGenerator", downsamplings=(downsamplings, 0), res_blocks=(res_blocks, 0))
        if latent_channels % 2**downsamplings:
            raise ValueError(
                f"ResnetGenerator: latent_channels={latent_channels} is not divisible by 2**downsamplings="
                f"{2**downsamplings}; each of the {downsamplings} upsamplings halves the channels"
            )
        blocks: list[nn.Module] = [ResBlock(latent_channels, padding) for _ in range(res_blocks)]
        for i in range(downsamplings):
            dim = latent_channels // 2**i
            up = conv(dim, dim // 2, 5, 1, 2, padding=padding, norm=LayerNorm2d, act=nn.ReLU(inplace=True))
            blocks.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *up))
        dim = latent_channels // 2**downsamplings
        blocks.append(conv(dim, out_channels, 7, 1, 3, padding=padding, act=nn.Tanh()))
        self.blocks = nn.ModuleList(blocks)
        init_weights(self, "kaiming")


class _PatchScale(nn.Module):
    """One scale of the patch discriminator: a per-domain first conv (``stem``) and the shareable rest."""

    def __init__(self, in_channels: int, width: int, layers: int, padding: str):
        super().__init__()
        self.stem = conv(in_channels, width, 4, 2, 1, padding=padding, act=nn.LeakyReLU(0.2, inplace=True))
        body = [
            conv(width * 2**i, width * 2 ** (i + 1), 4, 2, 1, padding=padding, act=nn.LeakyReLU(0.2, inplace=True))
            for i in range(layers - 1)
        ]
        self.body = nn.Sequential(*body, nn.Conv2d(width * 2 ** (layers - 1), 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.stem(x))


class MultiscalePatchDiscriminator(Discriminator):
    """Reference UNIT/MUNIT multi-scale PatchGAN (MsImageDis): one patch discriminator per 2x-downsampled input.

    Returns one logit map per scale. ``trunk`` is every scale's ``body`` (all but its first conv).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 0,
        width: PositiveInt = 64,
        layers: PositiveInt = 4,
        scales: PositiveInt = 3,
        padding: Padding = "reflect",
    ):
        super().__init__()
        name = type(self).__name__
        if num_classes:
            raise ValueError(f"{name} has no classifier head (num_classes={num_classes}); use 'digits32'")
        _check_at_least(name, width=(width, 1), layers=(layers, 1), scales=(scales, 1))
        self.layers = layers
        self.scales = nn.ModuleList(_PatchScale(in_channels, width, layers, padding) for _ in range(scales))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.trunk = tuple(f"scales.{i}.body" for i in range(scales))
        init_weights(self, "gaussian")

    def forward(self, x: Tensor) -> list[Tensor]:
        side = min(x.shape[-2:])
        for s in range(len(self.scales)):
            # Each scale halves its input `layers` times; a side below 2**layers would vanish to nothing.
            if side < 2**self.layers:
                raise ValueError(
                    f"{type(self).__name__}: a {x.shape[-2]}x{x.shape[-1]} image is too small for scale {s + 1} "
                    f"of {len(self.scales)} with {self.layers} layers; use larger images, fewer scales or layers"
                )
            side = (side + 1) // 2
        outputs = []
        for scale in self.scales:
            outputs.append(scale(x))
            x = self.downsample(x)
        return outputs


class PatchDiscriminator(MultiscalePatchDiscriminator):
    """Single-scale PatchGAN: the reference MsImageDis with one scale."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 0,
        width: PositiveInt = 64,
        layers: PositiveInt = 4,
        padding: Padding = "reflect",
    ):
        super().__init__(in_channels, num_classes, width=width, layers=layers, scales=1, padding=padding)


# ---------------------------------------------------------------------------------------------------------------
# The 32x32 digits networks (the authors' domain-adaptation code)


def _bn_lrelu(
    cin: int, cout: int, kernel: int, stride: int = 1, pad: int = 0, transposed: bool = False
) -> nn.Sequential:
    return conv(
        cin,
        cout,
        kernel,
        stride,
        pad,
        norm=batch_norm_bias,
        act=nn.LeakyReLU(0.01, inplace=True),
        transposed=transposed,
    )


class AppendCoordinates(nn.Module):
    """Appends two channels holding each pixel's row and column, scaled to [-1, 1).

    The digits code's "context" trainer feeds these to its encoders, so the first convolutions know where on
    the canvas a stroke lies.
    """

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        rows = (torch.arange(h, device=x.device, dtype=x.dtype) - h / 2) / (h / 2)
        cols = (torch.arange(w, device=x.device, dtype=x.dtype) - w / 2) / (w / 2)
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))
        return torch.cat([x, grid.expand(n, -1, -1, -1)], 1)


class Digits32Encoder(EncoderBackbone):
    """Encoder of the paper's 32x32 coupled VAE (COVAE32x32) for the digits domain-adaptation experiments.

    ``blocks`` = [stem 5x5/2, conv 5x5/2, conv 8x8 to 1x1, conv 1x1, mean head 1x1]; channels w, 2w, 4w, 8w, 8w
    with batch norm (no affine) + bias and LeakyReLU(0.01). The latent is the mean, (N, 8*width, 1, 1):
    ``latent_channels = 8 * width``. ``learned_scale`` doubles the head's outputs, the mean's and a scale that
    softplus makes q(z|x)'s standard deviation, as the digits code has (there as two 1x1 convs); without it the
    model adds unit-variance noise, as the paper writes q(z|x). ``coordinates`` appends each pixel's row and
    column to the stem's input (:class:`AppendCoordinates`).
    """

    def __init__(
        self, in_channels: int, width: PositiveInt = 64, coordinates: bool = False, learned_scale: bool = False
    ):
        super().__init__()
        _check_at_least("Digits32Encoder", width=(width, 1))
        w = width
        stem = _bn_lrelu(in_channels + 2 * coordinates, w, 5, 2, 2)  # 32 -> 16
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(AppendCoordinates(), *stem) if coordinates else stem,
                _bn_lrelu(w, 2 * w, 5, 2, 2),  # 16 -> 8
                _bn_lrelu(2 * w, 4 * w, 8),  # 8 -> 1
                _bn_lrelu(4 * w, 8 * w, 1),
                nn.Conv2d(8 * w, 8 * w * (1 + learned_scale), 1),  # the mean's conv and the scale's, side by side
            ]
        )
        self.latent_channels = 8 * w
        self.learns_scale = learned_scale
        self.size_multiple = self.fixed_size = 32
        init_weights(self, "gaussian")  # the digits code initialises every conv with N(0, 0.02)

    def forward(self, x: Tensor) -> Tensor:
        _check_32x32(type(self).__name__, x)
        return super().forward(x)


class Digits32Generator(GeneratorBackbone):
    """Decoder of the paper's 32x32 coupled VAE (COVAE32x32): transposed convs from a 1x1 code to a 32x32 image.

    ``blocks`` = [1->4 (8w), 4->8 (4w), 8->16 (2w), output: 16->32 (w) + 1x1 conv + tanh]; the first three are
    the ones the reference shares, the output block is per domain.
    """

    def __init__(self, out_channels: int, latent_channels: int, width: PositiveInt = 64):
        super().__init__()
        _check_at_least("Digits32Generator", width=(width, 1))
        w = width
        self.blocks = nn.ModuleList(
            [
                _bn_lrelu(latent_channels, 8 * w, 4, 2, 0, transposed=True),  # 1 -> 4
                _bn_lrelu(8 * w, 4 * w, 4, 2, 1, transposed=True),  # 4 -> 8
                _bn_lrelu(4 * w, 2 * w, 4, 2, 1, transposed=True),  # 8 -> 16
                nn.Sequential(
                    *_bn_lrelu(2 * w, w, 4, 2, 1, transposed=True),  # 16 -> 32
                    nn.ConvTranspose2d(w, out_channels, 1),
                    nn.Tanh(),
                ),
            ]
        )
        init_weights(self, "gaussian")


def _conv_relu_pool(cin: int, cout: int, dropout: float) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 5, 1, 2), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, *([nn.Dropout(dropout)] if dropout else []))


class Digits32Discriminator(Discriminator):
    """The paper's 32x32 digits discriminator (CoDis32x32), with the optional digit classifier head.

    A per-domain ``stem`` (5x5 conv, w channels) and a shareable ``body`` (2w, 4w, 8w), each 5x5 conv + ReLU +
    2x max-pool, then a 2x2 conv ``head`` to one real/fake logit, and a 2x2 conv ``classifier`` to class logits
    on the body's features. Dropout 0.1 after the stem and 0.3/0.5/0.5 after the body's blocks.
    """

    def __init__(self, in_channels: int, num_classes: int = 0, width: PositiveInt = 64, dropout: bool = True):
        super().__init__()
        _check_at_least("Digits32Discriminator", width=(width, 1), num_classes=(num_classes, 0))
        w = width
        p = (0.1, 0.3, 0.5, 0.5) if dropout else (0.0,) * 4
        self.stem = _conv_relu_pool(in_channels, w, p[0])  # 32 -> 16
        self.body = nn.Sequential(*(_conv_relu_pool(w * 2**i, w * 2 ** (i + 1), p[i + 1]) for i in range(3)))  # -> 2
        self.head = nn.Conv2d(8 * w, 1, 2)
        self.classifier = nn.Conv2d(8 * w, num_classes, 2) if num_classes else None
        self.num_classes = num_classes
        self.trunk = ("body", "head", "classifier") if num_classes else ("body", "head")
        self.classifier_path = "classifier" if num_classes else ""
        init_weights(self, "xavier")  # the digits code initialises its discriminator this way

    def features(self, x: Tensor) -> Tensor:
        """The shared trunk's output (N, 8*width, 2, 2): what the feature-consistency term compares."""
        _check_32x32(type(self).__name__, x)
        return self.body(self.stem(x))

    def score(self, features: Tensor) -> list[Tensor]:
        return [self.head(features)]

    def classify(self, features: Tensor) -> Tensor:
        if self.classifier is None:
            return super().classify(features)
        return self.classifier(features).flatten(1)


__all__ = [
    "ResnetEncoder",
    "ResnetGenerator",
    "MultiscalePatchDiscriminator",
    "PatchDiscriminator",
    "AppendCoordinates",
    "Digits32Encoder",
    "Digits32Generator",
    "Digits32Discriminator",
]
