"""`unitkit show` rejects what `unitkit run` rejects, and a recipe cannot reach outside where it should: its
image size is bounded, its name stays inside runs/, its file is read as UTF-8 (with or without a BOM), and data
is looked for in a folder that exists for a checkout and for an installed unitkit alike."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import tomli_w
import torch
from conftest import TINY_DIGITS, TINY_RECIPE, invoke
from torch import nn

from unitkit import recipe as recipe_module
from unitkit.model import build_model, check_shapes
from unitkit.recipe import DATA_ENV, MAX_IMAGE_SIZE, RecipeError, ablation_names, data_root, load_recipe


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def sets(*overrides: str) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


# Each recipe change that the tiny recipe (16 px, encoder and generator with one downsampling, a 2-layer patch
# discriminator) cannot take, and what the error says.
MISFITS = {
    "odd image size": (["data.image_size=9"], "[data] image_size = 9 is not divisible by 2"),
    "encoder deeper than generator": (["model.encoder.downsamplings=2"], "[model.generator] produces images of shape"),
    "discriminator too deep": (["model.discriminator.layers=5"], "[model.discriminator] does not fit"),
    "feature term without features": (["objective.feature=0.1"], "need a discriminator that exposes its trunk"),
}


@pytest.mark.parametrize("command", ["show", "run"])
@pytest.mark.parametrize(("overrides", "message"), MISFITS.values(), ids=MISFITS.keys())
def test_show_rejects_what_run_rejects(command, overrides, message, tiny_recipe, tmp_path):
    out = ["--out", tmp_path / "r", "--quiet"] if command == "run" else []
    result = invoke(command, tiny_recipe, *sets(*overrides), *out)
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(error_lines(result.output)) == 1
    assert not (tmp_path / "r").exists()


class RecordingDiscriminator(nn.Module):
    """Tells ``record`` the device of every image it judges; ``reads_values`` makes it fail on meta tensors."""

    def __init__(self, record: Callable[[str], None], reads_values: bool = False) -> None:
        super().__init__()
        self.record, self.reads_values = record, reads_values  # a function: a copy of the model shares it

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.record(x.device.type)
        if self.reads_values and x.sum().item() > 0:  # .item() has no value to give on the meta device
            raise AssertionError("the images are zeros")
        return [x.mean((1, 2, 3))]


@pytest.mark.parametrize(("reads_values", "devices"), [(False, ["meta", "meta"]), (True, ["meta", "cpu", "cpu"])])
def test_shapes_are_checked_on_the_meta_device_else_with_real_tensors(reads_values, devices, tiny_recipe, registries):
    # At MAX_IMAGE_SIZE a dry pass with real tensors would take minutes and gigabytes; a component that meta
    # tensors cannot run is checked with real ones, at a small size here.
    seen: list[str] = []
    model = build_model(load_recipe(tiny_recipe, registries), registries, (3, 3))
    model.dis_a = model.dis_b = RecordingDiscriminator(lambda device: seen.append(device), reads_values)
    check_shapes(model, (3, 3), 16 if reads_values else MAX_IMAGE_SIZE)
    assert seen == devices


def test_an_image_size_beyond_the_bound_is_a_recipe_error(tiny_recipe, tmp_path):
    for command, out in (("show", []), ("run", ["--out", tmp_path / "r", "--quiet"])):
        result = invoke(command, tiny_recipe, *sets("data.image_size=100000"), *out)
        assert result.exit_code == 2, result.output
        [line] = error_lines(result.output)
        assert "[data] image_size = 100000" in line and str(MAX_IMAGE_SIZE) in line
    assert not (tmp_path / "r").exists()


# Every built-in dataset with the settings it requires.
BUILTIN_DATASETS = {
    "synthetic": {},
    "unpaired-folders": {"root": "/data/cats"},
    "mnist-usps": {"root": "/data"},
    "svhn-mnist": {"root": "/data"},
}


def test_every_builtin_dataset_shares_the_image_size_bound(registries, tmp_path):
    assert set(BUILTIN_DATASETS) == set(registries.datasets.names())
    for kind, settings in BUILTIN_DATASETS.items():
        path = tmp_path / f"{kind}.toml"
        path.write_text(tomli_w.dumps({"data": {"kind": kind, **settings}}), encoding="utf-8")
        assert load_recipe(path, registries, [f"data.image_size={MAX_IMAGE_SIZE}"]).data.settings["image_size"]
        with pytest.raises(RecipeError, match=rf"image_size = {MAX_IMAGE_SIZE + 1}: .*{MAX_IMAGE_SIZE}"):
            load_recipe(path, registries, [f"data.image_size={MAX_IMAGE_SIZE + 1}"])


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "runs/x", "a\\b", "", "..", ".", "C:x", "a\nb"])
def test_a_run_name_cannot_leave_the_runs_folder(name, tiny_recipe, registries):
    with pytest.raises(RecipeError, match=r"top level name = .*one folder name"):
        load_recipe(tiny_recipe, registries, [f"name={json.dumps(name)}"])


def test_run_with_an_escaping_name_creates_nothing(tiny_recipe, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = invoke("run", tiny_recipe, *sets('name="../../escaped"'), "--quiet")
    assert result.exit_code == 2 and "name" in result.output, result.output
    assert not (tmp_path / "escaped").exists() and not (work / "runs").exists()


def test_names_of_one_folder_are_kept(tiny_recipe, registries):
    for name in ("cat2dog_32", "chats-été", "v1.2", ".hidden", "a b"):
        assert load_recipe(tiny_recipe, registries, [f"name={json.dumps(name)}"]).name == name


def test_a_file_name_that_would_leave_the_runs_folder_needs_a_name(tmp_path, registries):
    path = tmp_path / "...toml"  # its stem is ".."
    path.write_text('[data]\nkind = "synthetic"\n', encoding="utf-8")
    with pytest.raises(RecipeError, match="give the recipe a name"):
        load_recipe(path, registries)
    assert load_recipe(path, registries, ["name=dots"]).name == "dots"


def test_an_ablation_name_cannot_leave_the_runs_folder(tmp_path, registries):
    path = tmp_path / "r.toml"
    path.write_text('[data]\nkind = "synthetic"\n[ablations."../../x"]\n"objective.kl" = 0.1\n', encoding="utf-8")
    with pytest.raises(RecipeError, match=r"\[ablations\.\"\.\./\.\./x\"\].*one folder name"):
        ablation_names(path)
    with pytest.raises(RecipeError, match="one folder name"):
        load_recipe(path, registries, ablation="../../x")
    with pytest.raises(RecipeError, match="one folder name"):
        load_recipe(path, registries)


def test_a_recipe_with_a_byte_order_mark_is_read(tmp_path, registries):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + TINY_RECIPE.encode("utf-8"))
    assert load_recipe(path, registries).name == "tiny"
    assert invoke("show", path).exit_code == 0


def test_a_recipe_that_is_not_utf8_is_named_so(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(TINY_RECIPE.replace('name = "tiny"', 'name = "café"').encode("latin-1"))
    result = invoke("show", path)
    assert result.exit_code == 2
    [line] = error_lines(result.output)
    assert str(path) in line and "not UTF-8" in line and "save it as UTF-8" in line


def test_data_root_of_a_source_checkout_is_shared_data_beside_it(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / "unitkit").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("[project]\nname = 'unitkit'\n")
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(recipe_module, "PACKAGE_DIR", checkout / "unitkit")
    assert data_root() == tmp_path / "shared" / "data"


def test_data_root_of_an_installed_unitkit_is_in_the_users_cache(tmp_path, monkeypatch):
    (tmp_path / "site-packages" / "unitkit").mkdir(parents=True)
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(recipe_module, "PACKAGE_DIR", tmp_path / "site-packages" / "unitkit")
    assert data_root() == tmp_path / "home" / ".cache" / "unitkit" / "data"
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "mine"))
    assert data_root() == tmp_path / "mine"


MISSING_DATA = {
    "digits": f'[data]\nkind = "mnist-usps"\nroot = "{{root}}"\n{TINY_DIGITS}',
    "folders": '[data]\nkind = "unpaired-folders"\nroot = "{root}"\nimage_size = 16\n',
}


@pytest.mark.parametrize("text", MISSING_DATA.values(), ids=MISSING_DATA.keys())
def test_missing_data_names_the_folder_and_how_to_point_at_it(text, tmp_path):
    nowhere = tmp_path / "nowhere"
    path = tmp_path / "r.toml"
    path.write_text(text.format(root=nowhere) + '[train]\ndevice = "cpu"\niterations = 1\n', encoding="utf-8")
    result = invoke("run", path, "--out", tmp_path / "r", "--quiet")
    assert result.exit_code == 1, result.output
    [line] = error_lines(result.output)
    assert str(nowhere) in line and "--set data.root=" in line and DATA_ENV in line


@pytest.mark.parametrize("command", ["show", "run"])
def test_a_fixed_size_encoder_names_the_size_it_takes(command, tmp_path):
    path = tmp_path / "digits.toml"
    data = '[data]\nkind = "synthetic"\nimage_size = 64\ntrain_size = 8\ntest_size = 4\n'
    path.write_text(data + TINY_DIGITS + '[train]\ndevice = "cpu"\niterations = 1\n', encoding="utf-8")
    out = ["--out", tmp_path / "r", "--quiet"] if command == "run" else []
    result = invoke(command, path, *out)
    assert result.exit_code == 2, result.output
    [line] = error_lines(result.output)
    assert "[data] image_size = 64" in line and "32x32" in line and "data.image_size = 32" in line
