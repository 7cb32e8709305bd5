"""The Python API, ``unitkit.Translator``: PIL images, lists and tensors in, the same kind out, as ``unitkit
translate`` writes them; the train.ema average or the raw weights; and ``translate``/``evaluate --weights``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_RECIPE, invoke
from PIL import Image

from unitkit import Translator
from unitkit.checkpoint import list_checkpoints
from unitkit.errors import UsageError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny recipe trained with a weight average that moves fast (train.ema = 0.5), so it differs from the raw
    weights after a few iterations."""
    folder = tmp_path_factory.mktemp("translator")
    (folder / "tiny.toml").write_text(TINY_RECIPE, encoding="utf-8")
    trained = invoke("run", folder / "tiny.toml", "--out", folder / "run", "--quiet", "--set", "train.ema=0.5")
    assert trained.exit_code == 0, trained.output
    return list_checkpoints(folder / "run" / "checkpoints")[-1]


@pytest.fixture(scope="module")
def translator(checkpoint):
    return Translator.from_checkpoint(checkpoint, device="cpu")


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


def test_it_tells_what_it_loaded(translator, checkpoint, registries):
    assert translator.path == checkpoint and translator.step == 4 and translator.recipe.name == "tiny"
    assert translator.checkpoint.step == 4 and translator.has_average and translator.weights == "ema"
    assert translator.device == torch.device("cpu") and translator.image_size == 16
    given = Translator.from_checkpoint(checkpoint, device="cpu", registries=registries)
    assert given.registries is registries


def test_what_goes_in_comes_out_at_its_size(translator):
    image = translator.a2b(noise_image(13, 10))  # sides the encoder cannot take: padded and cropped back
    assert isinstance(image, Image.Image) and image.size == (13, 10) and image.mode == "RGB"
    images = translator.b2a([noise_image(8, 8, seed=1), noise_image(5, 19, seed=2)])
    assert [(i.size, i.mode) for i in images] == [((8, 8), "RGB"), ((5, 19), "RGB")]
    batch = torch.rand(2, 3, 12, 20, dtype=torch.float64) * 2 - 1
    translated = translator.a2b(batch)
    assert translated.shape == batch.shape and translated.dtype == torch.float64
    assert translated.abs().max() <= 1 and not torch.equal(translated, batch)


def test_a_tensor_translates_as_its_image_does_at_eight_bits(translator):
    image = noise_image(13, 10)
    levels = ((translator.a2b(as_tensor(image))[0].clamp(-1, 1) + 1) * 127.5).round()
    assert np.array_equal(levels.permute(1, 2, 0).numpy().astype(np.uint8), np.asarray(translator.a2b(image)))


def test_it_writes_what_unitkit_translate_writes(translator, checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for seed, size in enumerate([(16, 16), (13, 10)]):
        noise_image(*size, seed=seed).save(inputs / f"{seed}.png")
    result = invoke("translate", checkpoint, inputs, tmp_path / "out", "--direction", "b2a", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "weights: the train.ema average" in result.output
    for path in sorted(inputs.iterdir()):
        written = np.asarray(Image.open(tmp_path / "out" / path.name))
        assert np.array_equal(written, np.asarray(translator.b2a(Image.open(path))))


def test_the_raw_weights_are_not_the_average(translator, checkpoint, tmp_path):
    raw = Translator.from_checkpoint(checkpoint, device="cpu", weights="raw")
    assert raw.weights == "raw"
    batch = torch.rand(2, 3, 16, 16) * 2 - 1
    assert (raw.a2b(batch) - translator.a2b(batch)).abs().max() > 1e-3
    image, source = noise_image(16, 16), tmp_path / "in.png"
    image.save(source)
    options = ("--direction", "a2b", "--device", "cpu", "--weights", "raw")
    result = invoke("translate", checkpoint, source, tmp_path / "out", *options)
    assert result.exit_code == 0 and "weights: the raw weights" in result.output, result.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "in.png")), np.asarray(raw.a2b(image)))


def test_evaluate_says_which_weights_it_used(checkpoint, tmp_path):
    result = invoke("evaluate", checkpoint, "--device", "cpu", "--weights", "raw", "--output", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    assert "weights: the raw weights" in result.output and (tmp_path / "e.json").is_file()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t: t.a2b(torch.zeros(1, 1, 16, 16)), r"\(N, 3, H, W\) in \[-1, 1\]; got torch.float32 of shape"),
        (lambda t: t.a2b(torch.zeros(3, 16, 16)), r"got torch.float32 of shape \(3, 16, 16\)"),
        (lambda t: t.b2a("cat.png"), "takes a PIL image, a list of them or a tensor"),
        (lambda t: t.translate(torch.zeros(1, 3, 16, 16), "a2a"), "'a2a' is not one of a2b, b2a"),
    ],
)
def test_what_it_cannot_translate_is_a_usage_error(translator, call, message):
    with pytest.raises(UsageError, match=message):
        call(translator)


def test_unknown_weights_are_a_usage_error(checkpoint):
    with pytest.raises(UsageError, match="weights = 'best' is not one of ema, raw"):
        Translator.from_checkpoint(checkpoint, device="cpu", weights="best")


def test_by_default_it_translates_with_the_weights_the_run_evaluated_with(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_RECIPE, encoding="utf-8")
    options = ("--quiet", "--set", "train.ema=0.5", "--set", "evaluate.weights=raw")
    assert invoke("run", tmp_path / "tiny.toml", "--out", tmp_path / "run", *options).exit_code == 0
    checkpoint = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert Translator.from_checkpoint(checkpoint, device="cpu").weights == "raw"
    assert Translator.from_checkpoint(checkpoint, device="cpu", weights="ema").weights == "ema"
