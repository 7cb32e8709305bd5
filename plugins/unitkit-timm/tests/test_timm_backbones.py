"""unitkit-timm beyond the contract: pretrained weights from a local file, weight sharing, and a CLI run."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import timm
import tomli_w
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from unitkit_timm import TimmEncoder, TimmGenerator

from unitkit.cli import main
from unitkit.model import build_model
from unitkit.plugins import load_plugins
from unitkit.recipe import RecipeError, load_recipe


@pytest.fixture(scope="module")
def registries():
    plugins = load_plugins()
    assert not plugins.failures, plugins.failures
    return plugins.registries


def timm_recipe(encoder: dict, generator: dict | None = None, **train) -> dict:
    """A small UNIT recipe on the synthetic 32x32 shapes with the timm backbones (resnet18 up to stage 2)."""
    return {
        "name": "timm-test",
        "data": {"kind": "synthetic", "image_size": 32, "train_size": 16, "test_size": 4},
        "model": {
            "encoder": {"kind": "timm", "model": "resnet18", "stage": 2, **encoder},
            "generator": {"kind": "timm", "model": "resnet18", "stage": 2, "width": 16, **(generator or {})},
            "discriminator": {"kind": "multiscale-patch", "layers": 3, "scales": 2, "width": 16},
        },
        "train": {"device": "cpu", "batch_size": 2, **train},
    }


def write_recipe(folder: Path, recipe: dict) -> Path:
    path = folder / "recipe.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    return path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("unitkit-timm tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_pretrained_file_loads_through_the_recipe(tmp_path, registries, no_network):
    torch.manual_seed(1)
    saved = timm.create_model("resnet18", pretrained=False).state_dict()
    weights = tmp_path / "resnet18.safetensors"
    save_file(saved, str(weights))
    recipe_path = write_recipe(tmp_path, timm_recipe({"pretrained": True, "pretrained_file": str(weights)}))

    recipe = load_recipe(recipe_path, registries)
    model = build_model(recipe, registries, (3, 3), image_size=32)

    for encoder in (model.enc_a, model.enc_b):
        state = encoder.state_dict()
        assert len(state) > 50
        for key, value in state.items():
            # blocks.<i>.<timm module path>: the encoder keeps timm's own module names inside each block.
            assert torch.equal(value, saved[re.sub(r"^blocks\.\d+\.", "", key)]), key

    # timm adapts the RGB stem of the file to grey images (by summing over its input channels).
    grey = TimmEncoder(1, pretrained=True, pretrained_file=str(weights))
    assert torch.allclose(grey.blocks[0].conv1.weight, saved["conv1.weight"].sum(1, keepdim=True))


def test_pretrained_needs_a_file_and_never_downloads(tmp_path, registries, no_network):
    recipe = load_recipe(write_recipe(tmp_path, timm_recipe({"pretrained": True})), registries)
    with pytest.raises(RecipeError, match="pretrained = true needs pretrained_file.*no\\s+network access"):
        build_model(recipe, registries, (3, 3))

    missing = tmp_path / "nowhere" / "resnet18.safetensors"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        TimmEncoder(3, pretrained=True, pretrained_file=str(missing))

    foreign = tmp_path / "other.safetensors"
    save_file({"head.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(ValueError, match="has no weights for"):
        TimmEncoder(3, pretrained=True, pretrained_file=str(foreign))

    with pytest.raises(ValueError, match="pretrained = false"):
        TimmEncoder(3, pretrained_file=str(foreign))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model": "resnet81"}, "unknown timm model 'resnet81'; did you mean 'resnet18'"),
        ({"stage": 5}, r"has stages 0\.\.4 .*got stage = 5"),
        ({"model": "vit_tiny_patch16_224", "stage": 0}, "cannot be split into a list of stage blocks"),
    ],
)
def test_settings_timm_cannot_serve_are_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        TimmEncoder(3, **settings)
    with pytest.raises(ValueError, match=message):
        TimmGenerator(3, 64, **settings)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_generator_undoes_the_encoders_reduction(stage):
    encoder = TimmEncoder(3, stage=stage, latent_channels=32)
    generator = TimmGenerator(1, encoder.latent_channels, stage=stage, width=8)
    x = torch.randn(2, 3, 32, 32)
    h = encoder(x)
    assert h.shape == (2, 32, 32 // encoder.size_multiple, 32 // encoder.size_multiple)
    assert encoder.size_multiple == 2 ** (stage + 1)
    assert generator(h).shape == (2, 1, 32, 32)


@pytest.mark.parametrize(
    ("strategy", "settings", "shared_encoder", "shared_generator"),
    [
        ("shared-latent", {"encoder_blocks": 1, "generator_blocks": 1}, 1, 1),
        ("shared-latent", {"encoder_blocks": 2, "generator_blocks": 2}, 2, 2),
        ("all-but-ends", {}, 2, 3),  # resnet18 to stage 2: 3 encoder blocks, 3 + output generator blocks
    ],
)
def test_sharing_ties_the_deepest_stages_by_identity(registries, strategy, settings, shared_encoder, shared_generator):
    channels = (1, 3)  # different image channels: the stems and output blocks must stay per domain
    encoders = tuple(TimmEncoder(c, latent_channels=64) for c in channels)
    generators = tuple(TimmGenerator(c, 64, width=16) for c in channels)
    registries.sharing_strategies.get(strategy).factory(encoders, generators, **settings)

    def tied(pair) -> list[bool]:
        return [a is b for a, b in zip(pair[0].blocks, pair[1].blocks, strict=True)]

    unshared_encoder = len(encoders[0].blocks) - shared_encoder
    unshared_generator = len(generators[0].blocks) - shared_generator
    assert tied(encoders) == [False] * unshared_encoder + [True] * shared_encoder  # the last k encoder blocks
    assert tied(generators) == [True] * shared_generator + [False] * unshared_generator  # the first k
    assert encoders[0].blocks[-1].projection is encoders[1].blocks[-1].projection
    x = torch.randn(2, 3, 32, 32)
    assert generators[0](encoders[1](x)).shape == (2, 1, 32, 32)


def test_two_iterations_through_the_cli(tmp_path):
    recipe = timm_recipe({}, iterations=2, log_every=1, sample_every=2, sample_count=2, checkpoint_every=2)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["run", str(write_recipe(tmp_path, recipe)), "--out", str(run_dir), "--quiet"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "G/total" in r] == [1, 2]
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert 0 <= evaluation["pixel_accuracy_a2b"] <= 1 and 0 <= evaluation["pixel_accuracy_b2a"] <= 1
    assert (run_dir / "checkpoints" / "step_000000002.safetensors").is_file()


def test_list_plugins_shows_the_installed_package():
    from importlib.metadata import version

    result = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["list-plugins"], catch_exceptions=False)
    assert result.exit_code == 0
    rows = [line for line in result.output.splitlines() if "unitkit-timm" in line]
    assert any("encoder" in row and " timm " in row for row in rows), result.output
    assert any("generator" in row and " timm " in row for row in rows)
    assert all(version("unitkit-timm") in row for row in rows)
