"""The interfaces every component implements, built-in or from a plugin.

A component is any callable registered under a name: usually a class whose ``__init__`` keyword arguments are
its recipe settings. The recipe validator reads those arguments (names, type hints, defaults, and
``pydantic.Field`` constraints in ``Annotated`` hints), so a component's signature *is* its schema.

Arguments that unitkit supplies itself, rather than the recipe, are listed per registry in
:data:`unitkit.registry.PROVIDED_ARGUMENTS` (for example an encoder's ``in_channels``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from unitkit.errors import DataError

#: File suffixes read as images: the inputs of ``unitkit translate`` and of the built-in image-folder dataset.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def to_levels(images: Tensor) -> Tensor:
    """Images in [-1, 1] as the 8-bit levels 0..255 (still floats) an image file would hold.

    Metrics judge translations at this precision, as they would judge saved images.
    """
    return ((images.clamp(-1, 1) + 1) * 127.5).round()


class BadImageError(DataError):
    """An image file that cannot be read, or whose pixel values have no known meaning; the message names the file,
    the problem and what to do."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"cannot use image {path}: {problem}")
        self.path, self.problem = path, problem


# What Pillow raises on truncated, corrupt or non-image files (some decoders raise SyntaxError or ValueError).
_UNREADABLE = (OSError, SyntaxError, ValueError)


def image_mode(channels: int) -> str:
    """The PIL mode :func:`read_image` reads images of a domain with ``channels`` (1 or 3) in: "L" or "RGB"."""
    return "L" if channels == 1 else "RGB"


def read_image(path: Path, mode: str) -> Image.Image:
    """The image file at ``path``, fully decoded, as an 8-bit PIL image of ``mode`` ("RGB" or "L": alpha is dropped).

    Pixel values are read by the file's own depth, never clipped: 8-bit channels as they are (16-bit colour PNGs
    arrive as 8-bit from Pillow); integer greyscale images (16-bit PNG, integer TIFF) as 16-bit, their 0..65535
    scaled to 0..255; floating-point images (TIFF) as 0..1, scaled to 0..255. The EXIF orientation is applied.
    This is how the built-in image-folder dataset and ``unitkit translate`` read every file.

    Raises :class:`BadImageError` for a file Pillow cannot decode (truncated, corrupt, not an image), an image over
    Pillow's decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS``, an integer image with values outside
    0..65535, and a floating-point image with values outside [0, 1] or NaN.
    """
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that, and refuses above: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as file:
                image = ImageOps.exif_transpose(file)  # a decoded copy, so truncated files fail here, not later
        image = _in_8_bits(image, path)
        if image.mode in ("P", "PA") or "transparency" in image.info:
            image = image.convert("RGBA")  # palette transparency must go through RGBA to convert cleanly
        return image.convert(mode)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImageError(
            path, f"too large to decode safely: {error} Resize it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
        ) from error
    except _UNREADABLE as error:
        raise BadImageError(path, f"unreadable ({error})") from error


def _in_8_bits(image: Image.Image, path: Path) -> Image.Image:
    """``image`` itself when its channels are 8-bit, else its values scaled to 8-bit greyscale by the rule of
    :func:`read_image`; Pillow's own conversion clips them (a 16-bit mid-grey would turn white, 0.5 black)."""
    if image.mode == "F":
        kind, top, fix = "floating-point", 1.0, "scale it to [0, 1] or save it as an 8- or 16-bit image"
    elif image.mode == "I" or image.mode.startswith("I;16"):
        kind, top, fix = "integer", 65535, "save it as an 8- or 16-bit image"
    else:
        return image
    values = np.asarray(image, dtype=np.float64)
    if np.isnan(values).any():
        raise BadImageError(path, f"it holds NaN pixel values; {fix}")
    low, high = values.min(), values.max()
    if low < 0 or high > top:
        raise BadImageError(path, f"its {kind} pixel values span {low:g}..{high:g}, not 0..{top:g} as read; {fix}")
    return Image.fromarray(np.round(values * (255 / top)).astype(np.uint8))


class Backbone(nn.Module):
    """A network that is an ordered list of blocks applied one after another.

    Weight sharing works on blocks: a sharing strategy ties block ``i`` of one domain's network to block ``i``
    of the other's by putting the same module object in both lists. Subclasses fill ``self.blocks``. Training
    runs the blocks itself (a shared block once for both domains' images), so an overridden ``forward`` may check
    its input but must compute what the blocks compute; the contract tests check it.
    """

    blocks: nn.ModuleList

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class EncoderBackbone(Backbone):
    """Maps an image (N, in_channels, H, W) to the mean of q(z|x), a latent tensor (N, latent_channels, h, w)
    (followed by a scale when ``learns_scale``; :meth:`posterior` reads both).

    Subclasses set ``latent_channels`` (what the generator is built for) and ``size_multiple`` (image sides
    must be divisible by it, e.g. ``2 ** downsamplings``; ``translate`` pads inputs to it). An encoder that takes
    one image size only sets ``fixed_size``.
    """

    latent_channels: int
    size_multiple: int = 1
    #: Non-zero when the encoder takes only images of exactly this side (``translate`` resizes to it).
    fixed_size: int = 0
    #: True when the encoder also learns the standard deviation of q(z|x), as the digits code does. Its output
    #: then has 2 * latent_channels channels: the mean, then a raw scale that softplus makes the deviation.
    learns_scale: bool = False

    def posterior(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        """The mean and standard deviation of q(z|x) in this encoder's output ``h``; None stands for unit variance."""
        if not self.learns_scale:
            return h, None
        mean, scale = h.chunk(2, dim=1)
        return mean, F.softplus(scale)

    def encode_mean(self, x: Tensor) -> Tensor:
        """The mean of q(z|x) for images ``x``: the code that translation at test time decodes."""
        return self.posterior(self(x))[0]


class GeneratorBackbone(Backbone):
    """Maps a latent tensor (N, latent_channels, h, w) to an image (N, out_channels, H, W) in [-1, 1]."""


class Discriminator(nn.Module):
    """Scores images as real or fake.

    ``forward`` returns a list of logit tensors (one per scale; a single-scale discriminator returns a list of
    one). The trainer scores a batch of real and a batch of fake images in one call, so a discriminator must
    score each image independently (no batch statistics). ``trunk`` names, as dotted attribute paths, the
    sub-modules that discriminator sharing ties between the two domains.

    The domain-adaptation terms need more: ``features`` (the trunk's output, compared by the feature-consistency
    term) and ``score`` (logits from those features), and for a classifier head ``num_classes`` and
    ``classify``. Splitting the pass this way lets one trunk pass serve the GAN and classifier terms; the feature
    term calls ``features`` again with dropout off.
    """

    trunk: tuple[str, ...] = ()
    num_classes: int = 0
    #: Dotted path of the classifier head. It is tied between the domains even without discriminator sharing:
    #: domain adaptation trains one classifier, on labelled A images, that must also read B.
    classifier_path: str = ""

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.score(self.features(x))

    def features(self, x: Tensor) -> Tensor:
        """The shared trunk's features of images x; only for discriminators that expose them."""
        raise NotImplementedError(f"{type(self).__name__} does not expose trunk features")

    def score(self, features: Tensor) -> list[Tensor]:
        """Real/fake logits (as ``forward`` returns them) from ``features(x)``."""
        raise NotImplementedError(f"{type(self).__name__} does not score trunk features")

    def classify(self, features: Tensor) -> Tensor:
        """Class logits (N, num_classes) from ``features(x)``; only for discriminators with a classifier head."""
        raise NotImplementedError(f"{type(self).__name__} has no classifier head")


class GANLoss:
    """An adversarial loss over discriminator logits (one tensor; the objective sums over scales)."""

    def discriminator(self, real: Tensor, fake: Tensor) -> Tensor:  # pragma: no cover - interface
        """Loss the discriminator minimises, given its logits on real and on generated images."""
        raise NotImplementedError

    def generator(self, fake: Tensor) -> Tensor:  # pragma: no cover - interface
        """Loss the generator minimises, given the discriminator's logits on generated images."""
        raise NotImplementedError


@dataclass
class DomainData:
    """What a dataset factory returns: train and test sets of the two domains, A (X1) and B (X2).

    Every item of the four datasets is ``(image, label)``: a float tensor (C, H, W) in [-1, 1] and an int class
    label (-1 where the dataset has none). ``paired_test`` says that ``test_a[i]`` and ``test_b[i]`` show the
    same content in the two domains (a ground-truth translation), which pixel accuracy needs. Where the factory
    knows what each test scene shows, ``judge_scenes(translations, indices, domain)`` says for each translation
    into ``domain`` of the test images at ``indices`` whether it shows that scene (bool (N,)); evaluation reports
    the share as ``scene_accuracy_*``. ``evaluation_split`` is "validation" where the factory held ``test_a``
    and ``test_b`` out of the training images instead of reading the test sets.
    """

    train_a: Dataset
    train_b: Dataset
    test_a: Dataset
    test_b: Dataset
    channels: tuple[int, int]
    image_size: int
    paired_test: bool = False
    num_classes: int = 0
    judge_scenes: Callable[[Tensor, Tensor, str], Tensor] | None = None
    evaluation_split: Literal["test", "validation"] = "test"


class Logger:
    """Receives a run's scalars and the paths of images it wrote. Constructed with ``run_dir``."""

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def log_image(self, step: int, name: str, path: str) -> None:
        """Called after an image (a sample grid) was written to ``path``; loggers may ignore it."""

    def rewind(self, step: int) -> None:
        """Called once before training: the run starts at ``step`` (0, or its checkpoint's step on a resume).
        Anything logged after ``step`` came from iterations the checkpoint does not have (a crash lands between
        checkpoints; a sweep restarts a variant stopped before its first checkpoint) and which the run now does
        again. Drop it if you can, so that curves and best values describe one run."""

    def close(self) -> None:
        """Flush and release whatever the logger holds."""


def tie_blocks(source: Backbone, target: Backbone, indices: range | list[int]) -> None:
    """Make ``target.blocks[i]`` the very module ``source.blocks[i]`` for each i (shared Parameter objects).

    Raises ValueError when a block's parameter shapes differ between the two backbones, since tying them
    would silently change ``target``'s architecture.
    """
    for i in indices:
        a, b = source.blocks[i], target.blocks[i]
        shapes_a = [tuple(p.shape) for p in a.parameters()]
        shapes_b = [tuple(p.shape) for p in b.parameters()]
        if shapes_a != shapes_b:
            raise ValueError(
                f"cannot share block {i} of {type(source).__name__}: its parameter shapes differ between the "
                f"domains ({shapes_a} vs {shapes_b})"
            )
        target.blocks[i] = a


def tie_submodule(source: nn.Module, target: nn.Module, path: str) -> None:
    """Make the sub-module of ``target`` at dotted ``path`` the very module found at ``path`` in ``source``."""
    *parents, leaf = path.split(".")
    for part in parents:
        source, target = source.get_submodule(part), target.get_submodule(part)
    setattr(target, leaf, getattr(source, leaf))


def unique_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """Parameters across modules, each tensor once even when tied into several of them, in first-seen order."""
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def count_parameters(*modules: nn.Module) -> int:
    """Number of distinct parameters across modules (a tensor tied into several modules counts once)."""
    return sum(p.numel() for p in unique_parameters(*modules))


def init_weights(module: nn.Module, scheme: str = "kaiming") -> None:
    """Initialise conv and linear layers as the reference UNIT code does.

    ``"kaiming"`` (its generators): Kaiming-normal weights, fan-in. ``"gaussian"`` (its discriminators and
    the digits generators): N(0, 0.02). Biases start at 0 in both. ``"xavier"`` (the digits discriminator):
    Xavier-uniform weights with gain √2 and biases of 0.1.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            bias = 0.0
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif scheme == "gaussian":
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif scheme == "xavier":
                nn.init.xavier_uniform_(m.weight, gain=math.sqrt(2))
                bias = 0.1
            else:
                raise ValueError(f"unknown init scheme {scheme!r}; use 'kaiming', 'gaussian' or 'xavier'")
            if m.bias is not None:
                nn.init.constant_(m.bias, bias)


def squared_distance(x: Tensor, y: Tensor) -> Tensor:
    """Sum of squared differences per image (or feature map), averaged over the batch: the digits code's
    reconstruction and feature-consistency distance."""
    return (x - y).pow(2).flatten(1).sum(1).mean()


__all__ = [
    "Backbone",
    "EncoderBackbone",
    "GeneratorBackbone",
    "Discriminator",
    "GANLoss",
    "DomainData",
    "Logger",
    "count_parameters",
    "tie_blocks",
    "tie_submodule",
    "init_weights",
    "squared_distance",
]
