"""Translate image files with a trained checkpoint, at the images' own resolution."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from unitkit.checkpoint import Checkpoint, load_model_state, read_checkpoint
from unitkit.components import IMAGE_SUFFIXES, BadImageError, read_image, to_levels
from unitkit.errors import UnitkitError
from unitkit.model import UNIT, build_model
from unitkit.recipe import Recipe, validate
from unitkit.registry import Registries

#: The most pixels ``translate`` takes in one image: 2048 x 2048. The reference networks (width 64) need about 2 KB
#: of working memory per pixel, about 9 GB at this size; resize or crop larger images first.
MAX_TRANSLATE_PIXELS = 2048 * 2048
#: The largest square side tried when looking for the smallest one a model translates.
_LARGEST_TRIED_SIDE = 256


def load_trained_model(path: Path, registries: Registries, device: torch.device) -> tuple[UNIT, Checkpoint, Recipe]:
    """Rebuild the model a checkpoint was trained with (from the recipe stored inside it) and load its weights;
    returns the model, the checkpoint and that recipe."""
    state = read_checkpoint(path)
    recipe = validate(state.recipe(), registries, origin=f"{path} (stored recipe)")
    info = state.data_info
    model = build_model(recipe, registries, tuple(info["channels"]), num_classes=info.get("head_classes", 0))
    load_model_state(model, state.model_state, path)
    return model.to(device).eval(), state, recipe


def image_files(source: Path) -> Iterator[Path]:
    """``source`` itself when it is a file, else the image files directly inside the folder, sorted."""
    if source.is_file():
        yield source
        return
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


@torch.no_grad()
def smallest_side(model: UNIT, source: str, channels: int) -> int:
    """The smallest side, a multiple of the encoder's ``size_multiple``, of the square images from domain ``source``
    that ``model`` translates (an encoder that takes one size only: that size).

    Found by trying, since no interface declares it: padding and normalisation layers set it (a reflection-padded
    7x7 convolution needs 4 pixels, instance normalisation more than one after the downsamplings).
    """
    encoder = model.encoder(source)
    if encoder.fixed_size:  # it takes that side only (translate_image resizes to it): nothing to try
        return encoder.fixed_size
    device = next(model.parameters()).device
    side = encoder.size_multiple
    while True:
        try:
            model.translate(torch.zeros(1, channels, side, side, device=device), source)
            return side
        except (RuntimeError, ValueError):  # what torch raises for an input too small for a layer
            if side * 2 > _LARGEST_TRIED_SIDE:
                raise  # not a question of size: let the model's own error speak
            side *= 2


@torch.no_grad()
def translate_image(
    model: UNIT, image: Image.Image, source: str, channels: int, min_side: int | None = None
) -> Image.Image:
    """Translate one PIL image from domain ``source`` to the other domain, returning an image of its size.

    Sides the encoder cannot take are padded (by reflection) up to its size multiple, and up to ``min_side``
    (default: :func:`smallest_side`), and cropped back; an encoder that takes one size only gets the image resized
    to it and the result resized back.
    """
    device = next(model.parameters()).device
    x = pil_to_tensor(image.convert("L" if channels == 1 else "RGB")).float().div(127.5).sub(1).unsqueeze(0)
    height, width = x.shape[-2:]
    encoder = model.encoder(source)
    if encoder.fixed_size:
        x = F.interpolate(x, size=(encoder.fixed_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
    else:
        if min_side is None:
            min_side = smallest_side(model, source, channels)
        multiple = encoder.size_multiple
        pad_h = max(height + -height % multiple, min_side) - height
        pad_w = max(width + -width % multiple, min_side) - width
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    y = model.translate(x.to(device), source).cpu()
    if encoder.fixed_size:
        y = F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    y = y[..., :height, :width]
    return to_pil_image(to_levels(y[0]).to(torch.uint8))


def read_input(path: Path, mode: str) -> Image.Image:
    """An input of ``translate``, read by :func:`unitkit.components.read_image` (its rule converts 16-bit and
    floating-point images); :class:`BadImageError` also for an image over :data:`MAX_TRANSLATE_PIXELS`."""
    image = read_image(path, mode)
    pixels = image.width * image.height
    if pixels > MAX_TRANSLATE_PIXELS:
        raise BadImageError(
            path,
            f"{image.width}x{image.height} is {pixels:,} pixels, more than the {MAX_TRANSLATE_PIXELS:,} pixels "
            "translate takes in one image; resize or crop it",
        )
    return image


@dataclass
class Translated:
    """What :func:`translate_path` did: the files it wrote, and the inputs it skipped with the reason for each."""

    written: list[Path] = field(default_factory=list)
    skipped: list[BadImageError] = field(default_factory=list)


def translate_path(
    model: UNIT,
    data_info: dict,
    source_path: Path,
    output_dir: Path,
    direction: str,
    overwrite: bool = False,
    bad_files: str = "skip",
) -> Translated:
    """Translate a file or every image in a folder into ``output_dir``, keeping file names.

    Inputs are read by :func:`read_input`. One it refuses is skipped and listed in the result when ``bad_files`` is
    "skip"; with "error", every input is read before anything is written and the first bad one raises
    :class:`BadImageError`. Existing files in ``output_dir`` are never replaced unless ``overwrite`` is set.
    """
    source = direction[0]
    channels = data_info["channels"][0 if source == "a" else 1]
    mode = "L" if channels == 1 else "RGB"
    inputs = list(image_files(source_path))
    if not inputs:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {source_path}")
    clashes = [output_dir / p.name for p in inputs if (output_dir / p.name).exists()]
    if clashes and not overwrite:
        raise FileExistsError(
            f"{clashes[0]} exists ({len(clashes)} output file(s) would be replaced); pass --overwrite"
        )
    if bad_files == "error":
        for path in inputs:
            read_input(path, mode)
    min_side = smallest_side(model, source, channels)
    device = next(model.parameters()).device
    result = Translated()
    for path in inputs:
        try:
            image = read_input(path, mode)
        except BadImageError as error:
            if bad_files == "error":  # changed since it was read above
                raise
            result.skipped.append(error)
            continue
        try:
            translated = translate_image(model, image, source, channels, min_side)
        except RuntimeError as error:  # torch.OutOfMemoryError on a GPU, a plain RuntimeError from the CPU allocator
            if not isinstance(error, torch.OutOfMemoryError) and "can't allocate memory" not in str(error):
                raise
            raise UnitkitError(
                f"out of memory translating {path} ({image.width}x{image.height}) on {device}; resize or crop it, "
                "or translate on the CPU (--device cpu)"
            ) from error
        output_dir.mkdir(parents=True, exist_ok=True)  # here: no empty folder is left when every input is bad
        out = output_dir / path.name
        translated.save(out)
        result.written.append(out)
    if not result.written:
        if len(inputs) == 1:
            raise result.skipped[0]
        raise UnitkitError(
            f"none of the {len(inputs)} images in {source_path} could be translated; the first: {result.skipped[0]}"
        )
    return result
