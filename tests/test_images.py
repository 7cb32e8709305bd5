"""Image files of any bit depth become the right pixels or are refused by name, in training data and in translate;
``unitkit translate`` ends in one line, never a traceback, on tiny, huge and unreadable inputs."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RECIPE, invoke
from PIL import Image

from unitkit import Translator
from unitkit import translate as translate_module
from unitkit.builtin.datasets import unpaired_folders
from unitkit.checkpoint import list_checkpoints
from unitkit.components import BadImageError

MID_GREY_16 = 32768  # 32768 / 65535 * 255 = 127.502: level 128 of 8-bit, as a float 0.5 is (127.5 rounds to even)


def grey_16(path: Path, value: int = MID_GREY_16, size: tuple[int, int] = (12, 10)) -> Path:
    image = Image.fromarray(np.full(size[::-1], value, np.uint16))
    assert image.mode == "I;16"
    image.save(path)
    return path


def grey_32(path: Path, value: int, size: tuple[int, int] = (12, 10)) -> Path:
    image = Image.fromarray(np.full(size[::-1], value, np.int32))
    assert image.mode == "I"
    image.save(path)  # TIFF: PNG holds no 32-bit integers
    return path


def float_image(path: Path, low: float, high: float, size: tuple[int, int] = (12, 10)) -> Path:
    values = np.linspace(low, high, size[0] * size[1], dtype=np.float32).reshape(size[::-1])
    image = Image.fromarray(values)
    assert image.mode == "F"
    image.save(path)
    return path


def grey_8(path: Path, value: int = 128, size: tuple[int, int] = (12, 10)) -> Path:
    Image.new("L", size, value).save(path)
    return path


def folders(root: Path, train_a: dict[str, Callable[[Path], object]] | None = None) -> Path:
    """A CycleGAN layout of 8-bit greys; ``train_a`` maps each name to a writer of that file into trainA."""
    for split in ("trainA", "trainB", "testA", "testB"):
        (root / split).mkdir(parents=True)
        grey_8(root / split / "plain.png")
    for name, write in (train_a or {}).items():
        write(root / "trainA" / name)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the tiny recipe; its encoder takes even sides of at least 4 pixels."""
    folder = tmp_path_factory.mktemp("run")
    (folder / "tiny.toml").write_text(TINY_RECIPE, encoding="utf-8")
    result = invoke("run", folder / "tiny.toml", "--out", folder / "run", "--quiet", "--set", "train.iterations=2")
    assert result.exit_code == 0, result.output
    return list_checkpoints(folder / "run" / "checkpoints")[-1]


def translate(checkpoint: Path, source: Path, out: Path, *options: str):
    return invoke("translate", checkpoint, source, out, "--direction", "a2b", "--device", "cpu", *options)


# ------------------------------------------------------------------------------------------ training data


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("grey16.png", grey_16),
        ("grey32.tif", lambda path: grey_32(path, MID_GREY_16)),
        ("unit_float.tif", lambda path: float_image(path, 0.5, 0.5)),
    ],
)
def test_high_depth_training_images_keep_their_brightness(tmp_path, name, write):
    root = folders(tmp_path / "set", {name: write})
    data = unpaired_folders(str(root), image_size=8, crop="none", channels=1, flip=False, paired_test="no")
    image, _ = data.train_a[[p.name for p in data.train_a.paths].index(name)]
    plain, _ = data.train_a[[p.name for p in data.train_a.paths].index("plain.png")]
    assert np.allclose(image.numpy(), plain.numpy()), f"{name} read as {image.mean():.3f}, not mid-grey"


@pytest.mark.parametrize(
    ("name", "write", "named_range"),
    [
        ("wide_float.tif", lambda path: float_image(path, 0.0, 255.0), "0..255"),
        ("negative_float.tif", lambda path: float_image(path, -1.0, 1.0), "-1..1"),
        ("wide32.tif", lambda path: grey_32(path, 70000), "70000..70000"),
    ],
)
def test_training_images_of_unknown_range_are_refused_or_skipped(tmp_path, name, write, named_range):
    root = folders(tmp_path / "set", {name: write})
    strict = unpaired_folders(str(root), image_size=8, crop="none", paired_test="no", bad_files="error")
    index = [p.name for p in strict.train_a.paths].index(name)
    with pytest.raises(BadImageError, match=rf"{name}.*{named_range}"):
        strict.train_a[index]
    lenient = unpaired_folders(str(root), image_size=8, crop="none", paired_test="no")
    for i in range(len(lenient.train_a)):
        lenient.train_a[i]
    assert lenient.train_a.skipped == 1


def test_images_over_the_decompression_bomb_limit_are_skipped_or_an_error(tmp_path, monkeypatch):
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; both are files not to decode.
    root = folders(tmp_path / "set", {"warns.png": lambda p: grey_8(p, size=(12, 12)),
                                      "raises.png": lambda p: grey_8(p, size=(20, 20))})  # fmt: skip
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12 * 10)
    lenient = unpaired_folders(str(root), image_size=8, crop="none", paired_test="no")
    for i in range(len(lenient.train_a)):
        assert lenient.train_a[i][0].shape == (3, 8, 8)
    assert lenient.train_a.skipped == 2
    strict = unpaired_folders(str(root), image_size=8, crop="none", paired_test="no", bad_files="error")
    for name in ("warns.png", "raises.png"):
        with pytest.raises(BadImageError, match=rf"{name}.*decompression"):
            strict.train_a[[p.name for p in strict.train_a.paths].index(name)]


# ------------------------------------------------------------------------------------------------- translate


def test_translate_reads_high_depth_images_as_their_8_bit_equivalents(checkpoint, tmp_path):
    # A ramp, not a flat grey: instance normalisation makes the translation of a flat image blind to its level.
    levels = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (8, 1))
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(levels).save(inputs / "ramp8.png")
    Image.fromarray(levels.astype(np.uint16) * 257).save(inputs / "ramp16.png")  # 255 * 257 = 65535
    Image.fromarray(levels.astype(np.float32) / 255).save(inputs / "ramp_float.tif")
    result = translate(checkpoint, inputs, tmp_path / "out")
    assert result.exit_code == 0, result.output
    expected = np.asarray(Image.open(tmp_path / "out" / "ramp8.png"))
    for name in ("ramp16.png", "ramp_float.tif"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / name)), expected), name


def test_translate_refuses_a_float_image_of_unknown_range_in_one_line(checkpoint, tmp_path):
    source = float_image(tmp_path / "wide.tif", 0.0, 255.0)
    result = translate(checkpoint, source, tmp_path / "out")
    assert result.exit_code == 1 and "wide.tif" in result.output and "0..255" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("side", [1, 2, 3])
def test_translate_pads_images_smaller_than_the_network_takes(checkpoint, tmp_path, side):
    source = tmp_path / "tiny.png"
    Image.new("RGB", (side, side + 1), (200, 30, 30)).save(source)
    result = translate(checkpoint, source, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "tiny.png").size == (side, side + 1)


def test_translate_refuses_images_over_its_pixel_limit(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(translate_module, "MAX_TRANSLATE_PIXELS", 100)
    source = tmp_path / "big.png"
    Image.new("RGB", (16, 16)).save(source)
    result = translate(checkpoint, source, tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "big.png" in result.output and "100 pixels" in result.output and "resize or crop" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory"), RuntimeError("DefaultCPUAllocator: can't allocate memory")],
)
def test_translate_out_of_memory_is_one_line(checkpoint, tmp_path, monkeypatch, error):
    def exhaust(*args, **kwargs):
        raise error

    monkeypatch.setattr(Translator, "translate", exhaust)
    result = translate(checkpoint, grey_8(tmp_path / "in.png"), tmp_path / "out")
    assert result.exit_code == 1 and "out of memory translating" in result.output and "in.png" in result.output


def test_translate_skips_bad_files_and_names_them_or_stops_before_writing(checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "c.png"):
        Image.new("RGB", (8, 8), (10, 200, 30)).save(inputs / name)
    (inputs / "b.png").write_text("not an image")
    skipped = translate(checkpoint, inputs, tmp_path / "out")
    assert skipped.exit_code == 0, skipped.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]
    assert "skipped 1 of 3" in skipped.output and "b.png" in skipped.output
    strict = translate(checkpoint, inputs, tmp_path / "strict", "--bad-files", "error")
    assert strict.exit_code == 1 and "b.png" in strict.output and "Traceback" not in strict.output
    assert not (tmp_path / "strict").exists() or not any((tmp_path / "strict").iterdir())


def test_translate_of_nothing_but_bad_files_is_an_error(checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.png").write_text("not an image")
    (inputs / "b.jpg").write_bytes(b"\xff\xd8 cut short")
    result = translate(checkpoint, inputs, tmp_path / "out")
    assert result.exit_code == 1 and "none of the 2 images" in result.output and "a.png" in result.output


def test_translate_into_an_unwritable_folder_names_the_file(checkpoint, tmp_path, monkeypatch):
    # Simulated, since root can write into a read-only folder: the error must reach the user with its path.
    def refuse(image, path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    grey_8(tmp_path / "in.png")
    monkeypatch.setattr(Image.Image, "save", refuse)
    result = translate(checkpoint, tmp_path / "in.png", tmp_path / "out")
    assert result.exit_code == 1 and str(tmp_path / "out" / "in.png") in result.output, result.output
