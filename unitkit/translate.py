"""Translate image files with a trained checkpoint, at the images' own resolution."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from unitkit.checkpoint import Checkpoint, load_model_state, read_checkpoint
from unitkit.components import IMAGE_SUFFIXES, to_levels
from unitkit.model import UNIT, build_model
from unitkit.recipe import Recipe, validate
from unitkit.registry import Registries


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
def translate_image(model: UNIT, image: Image.Image, source: str, channels: int) -> Image.Image:
    """Translate one PIL image from domain ``source`` to the other domain, returning an image of its size.

    Sides the encoder cannot take are padded (by reflection) up to its size multiple and cropped back; an
    encoder that takes one size only gets the image resized to it and the result resized back.
    """
    device = next(model.parameters()).device
    x = pil_to_tensor(image.convert("L" if channels == 1 else "RGB")).float().div(127.5).sub(1).unsqueeze(0)
    height, width = x.shape[-2:]
    encoder = model.encoder(source)
    if encoder.fixed_size:
        x = F.interpolate(x, size=(encoder.fixed_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
    else:
        multiple = encoder.size_multiple
        pad_h, pad_w = -height % multiple, -width % multiple
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    y = model.translate(x.to(device), source).cpu()
    if encoder.fixed_size:
        y = F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    y = y[..., :height, :width]
    return to_pil_image(to_levels(y[0]).to(torch.uint8))


def translate_path(
    model: UNIT, data_info: dict, source_path: Path, output_dir: Path, direction: str, overwrite: bool = False
) -> list[Path]:
    """Translate a file or every image in a folder into ``output_dir``, keeping file names.

    Existing files in ``output_dir`` are never replaced unless ``overwrite`` is set.
    """
    source = direction[0]
    channels = data_info["channels"][0 if source == "a" else 1]
    inputs = list(image_files(source_path))
    clashes = [output_dir / p.name for p in inputs if (output_dir / p.name).exists()]
    if clashes and not overwrite:
        raise FileExistsError(
            f"{clashes[0]} exists ({len(clashes)} output file(s) would be replaced); pass --overwrite"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in inputs:
        try:
            with Image.open(path) as image:
                result = translate_image(model, image, source, channels)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc
        out = output_dir / path.name
        result.save(out)
        written.append(out)
    if not written:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {source_path}")
    return written
