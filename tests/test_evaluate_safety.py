"""`unitkit evaluate` and the device options: a run's evaluation is the run's own, its data can move, bad
devices and networks are one line, and a test set one file short of paired says so."""

from __future__ import annotations

import json
import shutil
import tomllib
import warnings
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import TINY_RECIPE, invoke, tiny_with_data
from PIL import Image

from unitkit.builtin.datasets import unpaired_folders
from unitkit.checkpoint import list_checkpoints
from unitkit.errors import UnitkitWarning, UsageError
from unitkit.train import resolve_device


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished tiny run on generated data (paired test set), with its evaluation.json."""
    folder = tmp_path_factory.mktemp("trained")
    recipe = folder / "tiny.toml"
    recipe.write_text(TINY_RECIPE, encoding="utf-8")
    result = invoke("run", recipe, "--out", folder / "run", "--quiet", "--set", "train.iterations=2")
    assert result.exit_code == 0, result.output
    return folder / "run"


@pytest.fixture
def run_dir(trained_run, tmp_path) -> Path:
    """A copy of the trained run that a test may change."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def edit_recipe(run_dir: Path, table: str, key: str, value) -> None:
    recipe = tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))
    recipe[table][key] = value
    (run_dir / "recipe.toml").write_text(tomli_w.dumps(recipe), encoding="utf-8")


# ------------------------------------------------------------------------ a checkpoint that is not the run's


def test_evaluate_refuses_a_checkpoint_trained_with_other_settings_than_the_run(run_dir):
    edit_recipe(run_dir, "train", "lr", 0.5)
    before = (run_dir / "evaluation.json").read_bytes()
    result = invoke("evaluate", run_dir, "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "train.lr" in result.stderr and "recipe.toml" in result.stderr and len(result.stderr.splitlines()) == 1
    assert (run_dir / "evaluation.json").read_bytes() == before
    # The way out the message names: the checkpoint file itself, with its JSON written where the user says.
    checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    assert str(checkpoint) in result.stderr
    elsewhere = run_dir.parent / "elsewhere.json"
    assert invoke("evaluate", checkpoint, "--device", "cpu", "--output", elsewhere).exit_code == 0
    assert json.loads(elsewhere.read_text())["iteration"] == 2
    assert (run_dir / "evaluation.json").read_bytes() == before


def test_evaluate_accepts_a_run_whose_recipe_changed_only_in_how_it_is_run(run_dir):
    edit_recipe(run_dir, "train", "iterations", 6)  # as a resumed run that went longer writes it
    result = invoke("evaluate", run_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "evaluation.json").read_text())["iteration"] == 2


# ------------------------------------------------------------------------------------------------- devices


def test_resolve_device_names_the_option_the_device_came_from():
    with pytest.raises(UsageError, match="train.device = 'banana'"):
        resolve_device("banana")
    with pytest.raises(UsageError, match="--device banana.*auto, cpu, cuda"):
        resolve_device("banana", "--device")
    with pytest.raises(UsageError, match="--device meta"):  # a torch device unitkit cannot train or evaluate on
        resolve_device("meta", "--device")
    assert resolve_device("cpu", "--device") == torch.device("cpu")


def device_commands(run_dir: Path, device: str) -> list[list]:
    checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    image = run_dir.parent / "in.png"
    Image.new("RGB", (16, 16)).save(image)
    return [
        ["evaluate", run_dir, "--device", device],
        ["translate", checkpoint, image, run_dir.parent / "out", "--direction", "a2b", "--device", device],
    ]


def test_an_unknown_device_is_a_usage_error_naming_the_option(run_dir):
    for command in device_commands(run_dir, "banana"):
        result = invoke(*command)
        assert result.exit_code == 2, result.output
        assert "--device banana" in result.stderr and "train.device" not in result.stderr
        assert "Traceback" not in result.output and len(result.stderr.splitlines()) == 1


def test_a_missing_cuda_device_names_the_option(run_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in device_commands(run_dir, "cuda"):
        result = invoke(*command)
        assert result.exit_code == 1, result.output
        assert "--device cuda" in result.stderr and "no CUDA device" in result.stderr
        assert "train.device" not in result.stderr


# ------------------------------------------------------------------------------- a network that is not FID's


def scripted(network: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format the FID network ships in
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(network).save(str(path))
    return path


@pytest.mark.parametrize(
    ("network", "found"),
    [
        (torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()), "(1, 12)"),  # 12 features
        (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2048)), "fails on one 299x299 image"),
    ],
)
def test_a_torchscript_file_that_is_not_the_fid_network_is_refused_before_any_features(
    run_dir, tmp_path, monkeypatch, network, found
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    wrong = scripted(network, tmp_path / "wrong.pt")
    before = (run_dir / "evaluation.json").read_bytes()
    result = invoke("evaluate", run_dir, "--fid", "--inception", wrong, "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert str(wrong) in result.stderr and found in result.stderr and len(result.stderr.splitlines()) == 1
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # no features of the wrong network are cached
    assert (run_dir / "evaluation.json").read_bytes() == before


# -------------------------------------------------------------------------------------------- image folders


def make_folders(root: Path, test_a: list[str], test_b: list[str]) -> Path:
    splits = {"trainA": ["0", "1", "2", "3"], "trainB": ["0", "1", "2", "3"], "testA": test_a, "testB": test_b}
    for split, stems in splits.items():
        (root / split).mkdir(parents=True)
        for i, stem in enumerate(stems):
            Image.new("RGB", (20, 20), (i * 40, 100, 200)).save(root / split / f"{stem}.png")
    return root


def test_auto_pairing_warns_about_the_test_images_without_a_partner(tmp_path):
    stems = [f"{i:02d}" for i in range(12)]
    root = make_folders(tmp_path / "data", stems, stems[:2] + ["only_b"])  # 10 in A, 1 in B unmatched
    named = r"11 test image\(s\) without a partner.*: testA/02.png, testA/03.png, testA/04.png, testA/05.png, "
    with pytest.warns(UnitkitWarning, match=named + r"testA/06.png, \.\.\.; .* unpaired"):
        data = unpaired_folders(str(root), image_size=16)
    assert not data.paired_test
    with pytest.raises(ValueError, match=r"paired_test='yes'.*" + named):
        unpaired_folders(str(root), image_size=16, paired_test="yes")


def test_folders_that_share_no_stem_or_are_declared_unpaired_get_no_warning(tmp_path):
    disjoint = make_folders(tmp_path / "disjoint", ["a0", "a1"], ["b0", "b1", "b2"])
    numbered = make_folders(tmp_path / "numbered", ["0", "1", "2"], ["0", "1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnitkitWarning)
        assert not unpaired_folders(str(disjoint), image_size=16).paired_test
        assert not unpaired_folders(str(numbered), image_size=16, paired_test="no").paired_test


FOLDERS_DATA = 'kind = "unpaired-folders"\nroot = "{root}"\nimage_size = 16'


def test_run_and_evaluate_show_the_unpaired_warning_and_evaluate_reads_moved_data(tmp_path):
    root = make_folders(tmp_path / "data", ["0", "1", "2"], ["0", "1"])
    recipe = tmp_path / "folders.toml"
    recipe.write_text(tiny_with_data(FOLDERS_DATA.format(root=root)), encoding="utf-8")
    run_dir = tmp_path / "run"
    trained = invoke("run", recipe, "--out", run_dir, "--quiet", "--set", "train.iterations=2")
    assert trained.exit_code == 0, trained.output
    assert "warning:" in trained.stderr and "without a partner" in trained.stderr and "testA/2.png" in trained.stderr
    evaluated = invoke("evaluate", run_dir, "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output
    assert "without a partner" in evaluated.stderr

    moved = root.rename(tmp_path / "moved")
    lost = invoke("evaluate", run_dir, "--device", "cpu")
    assert lost.exit_code == 1 and str(root) in lost.stderr, lost.output
    found = invoke("evaluate", run_dir, "--device", "cpu", "--data-root", moved)
    assert found.exit_code == 0, found.output
    assert json.loads((run_dir / "evaluation.json").read_text())["iteration"] == 2


def test_data_root_for_a_dataset_without_a_root_is_a_usage_error(run_dir, tmp_path):
    result = invoke("evaluate", run_dir, "--device", "cpu", "--data-root", tmp_path)
    assert result.exit_code == 2, result.output
    assert "--data-root" in result.stderr and "synthetic" in result.stderr and len(result.stderr.splitlines()) == 1
