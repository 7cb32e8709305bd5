"""``unitkit export``: TorchScript and ONNX files that translate as ``unitkit translate`` does, run by a Python that
cannot import unitkit; their metadata; and one-line errors for a missing extra, a size the encoder does not take,
an operator ONNX lacks and a trace that only holds at the size it was made at.

Tolerance: an exported file must give the tensors the Translator gives to within 1e-4 (another runtime's kernels
round float32 differently, by about 1e-6; a wrong graph is off by far more), and the 8-bit levels that ``unitkit
translate`` writes to within one level (a value that close to a rounding boundary may round either way).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RECIPE, invoke, make_distribution
from PIL import Image

from unitkit import Translator
from unitkit.checkpoint import list_checkpoints, save_checkpoint
from unitkit.errors import UsageError
from unitkit.export import export_network
from unitkit.model import build_model
from unitkit.plugins import load_plugins
from unitkit.recipe import validate

TENSOR_TOLERANCE = 1e-4
LEVEL_TOLERANCE = 1
#: The exported files, each with the options that made it (beside --direction a2b).
EXPORTS = {
    "a2b.pt": ("--format", "torchscript"),
    "a2b_dynamic.pt": ("--format", "torchscript", "--dynamic"),
    "a2b_raw.pt": ("--format", "torchscript", "--weights", "raw"),
    "a2b.onnx": ("--format", "onnx"),
    "a2b_dynamic.onnx": ("--format", "onnx", "--dynamic"),
}
#: Test images: two at the trained size, and two of another size the encoder takes (multiples of 2, at least 4).
SIZES = {"trained": (16, 16), "other": (20, 12)}

#: Loads each exported file with unitkit made unimportable and runs it on inputs.npz; writes outputs.npz and
#: metadata.json. Files of a fixed shape take one trained-size image at a time.
RUN_WITHOUT_UNITKIT = """
import json, sys
sys.modules["unitkit"] = None  # from here on, `import unitkit` fails
import numpy as np, onnxruntime, torch

folder = sys.argv[1]
inputs, outputs, metadata = dict(np.load(f"{folder}/inputs.npz")), {}, {}
for name in sys.argv[2:]:
    if name.endswith(".pt"):
        extra = {"unitkit.json": ""}
        module = torch.jit.load(f"{folder}/{name}", _extra_files=extra)
        metadata[name] = json.loads(extra["unitkit.json"])
        run = lambda x: module(torch.from_numpy(x)).detach().numpy()
    else:
        session = onnxruntime.InferenceSession(f"{folder}/{name}", providers=["CPUExecutionProvider"])
        metadata[name] = json.loads(session.get_modelmeta().custom_metadata_map["unitkit"])
        run = lambda x: session.run(None, {"images": x})[0]
    for size, images in inputs.items():
        if metadata[name]["input"]["shape"][0] == "batch":
            outputs[f"{name}/{size}"] = run(images)
        elif size == "trained":
            outputs[f"{name}/{size}"] = np.concatenate([run(image[None]) for image in images])
np.savez(f"{folder}/outputs.npz", **outputs)
json.dump(metadata, open(f"{folder}/metadata.json", "w"))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint trained with train.ema = 0.5, the files of :data:`EXPORTS`, what ``unitkit translate``
    writes for the test images, and what the files give for them in a Python without unitkit."""
    folder = tmp_path_factory.mktemp("export")
    (folder / "tiny.toml").write_text(TINY_RECIPE, encoding="utf-8")
    trained = invoke("run", folder / "tiny.toml", "--out", folder / "run", "--quiet", "--set", "train.ema=0.5")
    assert trained.exit_code == 0, trained.output
    checkpoint = list_checkpoints(folder / "run" / "checkpoints")[-1]
    for name, options in EXPORTS.items():
        result = invoke("export", checkpoint, folder / name, "--direction", "a2b", *options)
        assert result.exit_code == 0 and not result.stderr, result.output
    rng = np.random.default_rng(0)
    inputs = {size: rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8) for size, (h, w) in SIZES.items()}
    for size, images in inputs.items():
        (folder / size).mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image).save(folder / size / f"{index}.png")
        options = ("--direction", "a2b", "--device", "cpu")
        result = invoke("translate", checkpoint, folder / size, folder / f"{size}_out", *options)
        assert result.exit_code == 0, result.output
    tensors = {size: images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1 for size, images in inputs.items()}
    np.savez(folder / "inputs.npz", **tensors)
    command = [sys.executable, "-I", "-c", RUN_WITHOUT_UNITKIT, str(folder), *EXPORTS]
    subprocess.run(command, check=True, env={"OMP_NUM_THREADS": "1"}, timeout=300)
    return {
        "folder": folder,
        "checkpoint": checkpoint,
        "inputs": {size: torch.from_numpy(array) for size, array in tensors.items()},
        "outputs": dict(np.load(folder / "outputs.npz")),
        "metadata": json.loads((folder / "metadata.json").read_text()),
    }


@pytest.mark.parametrize(
    "name, size",
    [(name, "trained") for name in EXPORTS] + [(name, "other") for name in EXPORTS if "dynamic" in name],
)
def test_the_file_translates_as_unitkit_translate_without_unitkit(exported, name, size):
    weights = exported["metadata"][name]["weights"]
    translator = Translator.from_checkpoint(exported["checkpoint"], device="cpu", weights=weights)
    output = torch.from_numpy(exported["outputs"][f"{name}/{size}"])
    assert (output - translator.a2b(exported["inputs"][size])).abs().max() <= TENSOR_TOLERANCE
    if weights == "ema":  # what `unitkit translate` wrote, with its default weights
        written = np.stack([np.asarray(Image.open(exported["folder"] / f"{size}_out" / f"{i}.png")) for i in (0, 1)])
        levels = ((output.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
        assert np.abs(levels - written).max() <= LEVEL_TOLERANCE


def test_the_metadata_states_the_convention_and_the_source(exported):
    metadata = exported["metadata"]
    assert set(metadata) == set(EXPORTS)
    for name, meta in metadata.items():
        assert (meta["direction"], meta["recipe"], meta["step"]) == ("a2b", "tiny", 4), name
        assert (meta["dtype"], meta["value_range"], meta["image_size"]) == ("float32", [-1.0, 1.0], 16), name
        assert meta["weights"] == ("raw" if "raw" in name else "ema"), name
    assert metadata["a2b.onnx"]["input"] == {"name": "images", "shape": [1, 3, 16, 16]}
    assert metadata["a2b.onnx"]["sizes"] == "16x16 images only"
    dynamic = metadata["a2b_dynamic.pt"]
    assert dynamic["input"]["shape"] == ["batch", 3, "height", "width"] == dynamic["output"]["shape"]
    assert dynamic["sizes"] == "heights and widths that are multiples of 2, at least 4"
    assert dynamic["size_rule"] == {"multiple": 2, "smallest": 4, "fixed": 0}


def test_a_size_the_encoder_does_not_take_is_one_line(exported):
    options = ("--direction", "b2a", "--format", "torchscript", "--image-size", "15")
    result = invoke("export", exported["checkpoint"], exported["folder"] / "odd.pt", *options)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "error: image size 15: the b2a network takes heights and widths that are multiples of 2, at least 4"
    )


def test_a_missing_option_is_one_line(tmp_path):
    result = invoke("export", tmp_path / "run.safetensors", tmp_path / "a2b.pt", "--direction", "a2b")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: Missing option '--format'. Choose from: torchscript, onnx (see")
    assert result.stderr.count("\n") == 1


def test_an_existing_file_is_kept_without_overwrite(exported):
    target = exported["folder"] / "a2b.pt"
    before = target.read_bytes()
    result = invoke("export", exported["checkpoint"], target, "--direction", "b2a", "--format", "torchscript")
    assert result.exit_code == 1 and "exists; pass --overwrite" in result.stderr
    assert target.read_bytes() == before


def test_onnx_without_the_export_extra_is_one_line(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # importing it now fails, as when it is not installed
    options = ("--direction", "a2b", "--format", "onnx")
    result = invoke("export", exported["checkpoint"], exported["folder"] / "x.onnx", *options)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: --format onnx needs the export extra (onnxscript is missing): pip install 'unitkit[export]'"
    )


ODD_BACKBONES = '''
from typing import Literal

import torch
from torch import nn

import unitkit


class RunningMax(nn.Module):
    def forward(self, x):
        return torch.cummax(x, dim=-1).values  # no ONNX conversion exists for cummax


class ColumnRamp(nn.Module):
    def forward(self, x):
        return x + torch.linspace(-1, 1, int(x.shape[-1]))  # a Python number: a trace keeps the width it saw


class OddEncoder(unitkit.EncoderBackbone):
    """One downsampling convolution, then an odd module."""

    def __init__(self, in_channels: int, odd: Literal["running-max", "column-ramp"] = "running-max"):
        super().__init__()
        tail = RunningMax() if odd == "running-max" else ColumnRamp()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(in_channels, 4, 4, 2, 1), tail)])
        self.latent_channels, self.size_multiple = 4, 2


@unitkit.hookimpl
def unitkit_register_encoders(registry):
    registry.register("odd", OddEncoder)
'''


RESNET_ENCODER = '[model.encoder]\nkind = "resnet"\nwidth = 4\ndownsamplings = 1\nres_blocks = 1\n'


@pytest.fixture
def odd_checkpoint(tmp_path, monkeypatch):
    """Writes an untrained checkpoint of the tiny recipe with the plugin encoder 'odd' (installed as a
    distribution, so that the command finds it) whose last module is ``odd``; exporting needs no training."""
    site = make_distribution(tmp_path / "site", "unitkit-odd", "unitkit_odd", ODD_BACKBONES)
    monkeypatch.syspath_prepend(str(site))

    def write(odd: str) -> Path:
        registries = load_plugins().registries
        tables = f'[model.encoder]\nkind = "odd"\nodd = "{odd}"\n[model.sharing]\nkind = "none"\n'
        recipe = validate(tomllib.loads(TINY_RECIPE.replace(RESNET_ENCODER, tables)), registries)
        model = build_model(recipe, registries, (3, 3))
        info = {"channels": [3, 3], "image_size": 16, "num_classes": 0, "paired_test": False, "head_classes": 0}
        return save_checkpoint(tmp_path / odd, 0, model, {}, {}, {}, recipe.to_toml(), info, torch.device("cpu"))

    yield write
    sys.modules.pop("unitkit_odd", None)


def test_an_operator_onnx_lacks_is_one_line_naming_it_and_its_component(odd_checkpoint, tmp_path):
    checkpoint = odd_checkpoint("running-max")
    result = invoke("export", checkpoint, tmp_path / "x.onnx", "--direction", "a2b", "--format", "onnx")
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (
        "error: ONNX has no conversion for operator aten.cummax.default, which the encoder 'odd' uses in "
        "encoder.blocks.0.1 (RunningMax); export it with --format torchscript, or build that component from "
        "operators ONNX supports"
    )
    assert not (tmp_path / "x.onnx").exists() and list(tmp_path.glob(".x.onnx*")) == []


def test_a_trace_that_holds_at_one_size_only_is_not_exported_as_dynamic(odd_checkpoint, tmp_path):
    checkpoint = odd_checkpoint("column-ramp")
    options = ("--direction", "a2b", "--format", "torchscript")
    assert invoke("export", checkpoint, tmp_path / "fixed.pt", *options).exit_code == 0
    result = invoke("export", checkpoint, tmp_path / "dynamic.pt", *options, "--dynamic")
    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert line.startswith("error: the torchscript file does not translate 3x3x20x18 images as the model does: ")
    assert line.endswith("forward takes the batch or image size as a constant: export without --dynamic")
    assert "\n" not in line and not (tmp_path / "dynamic.pt").exists()


def test_only_a_translation_is_exported(exported):
    # "a2a" would be the encoder and generator of one domain: a reconstruction, not a translation.
    translator = Translator.from_checkpoint(exported["checkpoint"], device="cpu")
    with pytest.raises(UsageError, match="direction 'a2a' is not one of a2b, b2a"):
        export_network(translator, exported["folder"] / "a2a.pt", "a2a", "torchscript")
    assert not (exported["folder"] / "a2a.pt").exists()
