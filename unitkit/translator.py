"""Translate images in Python with a trained checkpoint: PIL images or tensors in, the same kind out.

    from PIL import Image
    from unitkit import Translator

    translator = Translator.from_checkpoint("runs/quickstart/checkpoints/step_000002000.safetensors")
    translator.a2b(Image.open("shape.png")).save("outline.png")

This is the one way unitkit loads a trained model: ``unitkit translate``, ``unitkit evaluate`` and
``unitkit export`` all go through :meth:`Translator.from_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from unitkit.checkpoint import Checkpoint, load_model_state, read_checkpoint
from unitkit.components import image_mode, to_levels
from unitkit.errors import UsageError
from unitkit.model import UNIT, build_model
from unitkit.plugins import load_plugins
from unitkit.recipe import Recipe, validate
from unitkit.registry import Registries

#: What a translator can translate with: the ``train.ema`` average of the weights, or the raw weights.
WEIGHTS = ("ema", "raw")
#: Domain A to domain B, and back.
DIRECTIONS = ("a2b", "b2a")
#: A PIL image, a list of them, or a tensor batch (N, C, H, W) in [-1, 1]: what goes in comes out.
Images = TypeVar("Images", Image.Image, list[Image.Image], Tensor)
#: The largest square side tried when looking for the smallest one an encoder takes.
_LARGEST_TRIED_SIDE = 256


def check_direction(direction: str) -> None:
    """Refuse a direction other than ``"a2b"`` and ``"b2a"``."""
    if direction not in DIRECTIONS:
        raise UsageError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")


@dataclass(frozen=True)
class SizeRule:
    """The image sides an encoder takes: exactly ``fixed`` when it is set, else the multiples of ``multiple``
    that are at least ``smallest``."""

    multiple: int
    smallest: int
    fixed: int = 0

    def fit(self, side: int) -> int:
        """The side an image side is padded to (or, for a fixed size, resized to) before encoding."""
        return self.fixed or max(side + -side % self.multiple, self.smallest)

    def accepts(self, side: int) -> bool:
        return self.fit(side) == side

    def __str__(self) -> str:
        if self.fixed:
            return f"{self.fixed}x{self.fixed} images only"
        return f"heights and widths that are multiples of {self.multiple}, at least {self.smallest}"


class Translator:
    """A trained UNIT model ready to translate in either direction; build one with :meth:`from_checkpoint`.

    :meth:`a2b` and :meth:`b2a` take a PIL image, a list of them, or a float tensor (N, C, H, W) in [-1, 1], and
    return the same kind at the input's size (PIL images 8-bit, as ``unitkit translate`` writes them). Sides the
    encoder cannot take are padded by reflection and cropped back; an encoder of one fixed size gets the images
    resized to it and back.

    Attributes:
        model: the six networks, in evaluation mode on :attr:`device`.
        checkpoint: the checkpoint file as read (its step, data info, stored recipe and tensors).
        recipe: the recipe stored in the checkpoint, validated against :attr:`registries`.
        registries: the components the model was built from.
        weights: the weights in use: ``"ema"`` (the ``train.ema`` average) or ``"raw"``.
    """

    def __init__(self, model: UNIT, checkpoint: Checkpoint, recipe: Recipe, registries: Registries, weights: str):
        self.model, self.checkpoint, self.recipe, self.registries = model, checkpoint, recipe, registries
        self.weights = weights
        self._size_rules: dict[str, SizeRule] = {}

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        weights: str | None = None,
        registries: Registries | None = None,
    ) -> Translator:
        """Rebuild the model a checkpoint was trained with, from the recipe stored in it, and load its weights.

        Args:
            device: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``
                or a ``torch.device``.
            weights: ``"ema"``: the ``train.ema`` average where the checkpoint holds one, else its raw weights;
                ``"raw"``: the weights as the last iteration left them; None: what the run's samples and
                evaluations used (its recipe's ``evaluate.weights``, ``"ema"`` unless set).
            registries: the components to build the networks from; by default every installed plugin's, loaded
                as the ``unitkit`` command loads them (:func:`unitkit.plugins.load_plugins`).
        """
        from unitkit.train import resolve_device  # here, so that `import unitkit` does not load the training loop

        if weights is not None and weights not in WEIGHTS:
            raise UsageError(f"weights = {weights!r} is not one of {', '.join(WEIGHTS)}")
        device = device if isinstance(device, torch.device) else resolve_device(device, "device")
        registries = load_plugins().registries if registries is None else registries
        path = Path(path)
        state = read_checkpoint(path)
        recipe = validate(state.recipe(), registries, origin=f"{path} (stored recipe)")
        weights = weights or recipe.evaluate.weights
        info = state.data_info
        model = build_model(recipe, registries, tuple(info["channels"]), num_classes=info.get("head_classes", 0))
        load_model_state(model, state.weights(weights), path)
        model = model.requires_grad_(False).to(device).eval()
        return cls(model, state, recipe, registries, "ema" if weights == "ema" and state.averaged else "raw")

    @property
    def path(self) -> Path:
        """The checkpoint file."""
        return self.checkpoint.path

    @property
    def step(self) -> int:
        """The iteration the checkpoint was saved at."""
        return self.checkpoint.step

    @property
    def has_average(self) -> bool:
        """Whether the checkpoint holds a ``train.ema`` average beside its raw weights."""
        return bool(self.checkpoint.averaged)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        """The side of the images the model was trained on."""
        return self.checkpoint.data_info["image_size"]

    def channels(self, domain: str) -> int:
        """Image channels of domain ``"a"`` or ``"b"``."""
        return self.checkpoint.data_info["channels"]["ab".index(domain)]

    def a2b(self, images: Images) -> Images:
        """Images of domain A translated to domain B, as the same kind (PIL image, list, tensor) at their size."""
        return self.translate(images, "a2b")

    def b2a(self, images: Images) -> Images:
        """Images of domain B translated to domain A, as the same kind (PIL image, list, tensor) at their size."""
        return self.translate(images, "b2a")

    def translate(self, images: Images, direction: str) -> Images:
        """``images`` translated ``"a2b"`` or ``"b2a"`` (see :meth:`a2b`)."""
        check_direction(direction)
        if isinstance(images, Image.Image):
            return self._translate_image(images, direction)
        if isinstance(images, list) and all(isinstance(image, Image.Image) for image in images):
            return [self._translate_image(image, direction) for image in images]
        if isinstance(images, Tensor):
            return self._translate_tensor(images, direction)
        raise UsageError(
            f"{direction} takes a PIL image, a list of them or a tensor (N, C, H, W); got {type(images).__name__}"
        )

    def size_rule(self, domain: str) -> SizeRule:
        """The image sides the encoder of ``domain`` takes.

        The smallest side is found by trying square images, since no interface declares it: padding and
        normalisation layers set it (a reflection-padded 7x7 convolution needs 4 pixels, instance normalisation
        more than one after the downsamplings).
        """
        if domain not in self._size_rules:
            encoder = self.model.encoder(domain)
            multiple = encoder.size_multiple
            smallest = encoder.fixed_size or self._smallest_side(domain, multiple)
            self._size_rules[domain] = SizeRule(multiple, smallest, encoder.fixed_size)
        return self._size_rules[domain]

    @torch.no_grad()
    def _smallest_side(self, domain: str, multiple: int) -> int:
        side = multiple
        while True:
            try:
                self.model.translate(torch.zeros(1, self.channels(domain), side, side, device=self.device), domain)
                return side
            except (RuntimeError, ValueError):  # what torch raises for an input too small for a layer
                if side * 2 > _LARGEST_TRIED_SIDE:
                    raise  # not a question of size: let the model's own error speak
                side *= 2

    @torch.no_grad()
    def _translate_tensor(self, images: Tensor, direction: str) -> Tensor:
        source, channels = direction[0], self.channels(direction[0])
        if images.dim() != 4 or images.shape[1] != channels or not images.is_floating_point():
            raise UsageError(
                f"{direction} takes float tensors (N, {channels}, H, W) in [-1, 1]; got {images.dtype} of shape "
                f"{tuple(images.shape)}"
            )
        rule = self.size_rule(source)
        height, width = images.shape[-2:]
        x = images.to(self.device, torch.float32)
        if rule.fixed:
            x = F.interpolate(x, size=(rule.fixed,) * 2, mode="bilinear", align_corners=False, antialias=True)
        else:
            pad_h, pad_w = rule.fit(height) - height, rule.fit(width) - width
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"  # reflection needs pad < side
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        y = self.model.translate(x, source)
        if rule.fixed:
            y = F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        return y[..., :height, :width].to(images.device, images.dtype)

    def _translate_image(self, image: Image.Image, direction: str) -> Image.Image:
        array = np.asarray(image.convert(image_mode(self.channels(direction[0]))), dtype=np.float32)
        x = torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)[None] / 127.5 - 1
        levels = to_levels(self._translate_tensor(x, direction)[0]).to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(levels[..., 0] if levels.shape[-1] == 1 else levels)
