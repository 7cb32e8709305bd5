"""Translate image files with a trained checkpoint, at the images' own resolution."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from unitkit.components import IMAGE_SUFFIXES, BadImageError, image_mode, read_image
from unitkit.errors import UnitkitError
from unitkit.translator import Translator

#: The most pixels ``translate`` takes in one image: 2048 x 2048. The reference networks (width 64) need about 2 KB
#: of working memory per pixel, about 9 GB at this size; resize or crop larger images first.
MAX_TRANSLATE_PIXELS = 2048 * 2048


def image_files(source: Path) -> Iterator[Path]:
    """``source`` itself when it is a file, else the image files directly inside the folder, sorted."""
    if source.is_file():
        yield source
        return
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


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
    translator: Translator,
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
    mode = image_mode(translator.channels(direction[0]))
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
            translated = translator.translate(image, direction)
        except RuntimeError as error:  # torch.OutOfMemoryError on a GPU, a plain RuntimeError from the CPU allocator
            if not isinstance(error, torch.OutOfMemoryError) and "can't allocate memory" not in str(error):
                raise
            raise UnitkitError(
                f"out of memory translating {path} ({image.width}x{image.height}) on {translator.device}; resize or "
                "crop it, or translate on the CPU (--device cpu)"
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
