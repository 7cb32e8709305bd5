"""Precision, memory layout and compilation switches give the same training; torchrun with 1 or 2 CPU processes
(gloo) trains the same weights as one process with the same global batch, and writes one checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from unitkit import checkpoint as ckpt
from unitkit.data import endless_images
from unitkit.distributed import Shard
from unitkit.plugins import load_plugins
from unitkit.recipe import load_recipe
from unitkit.train import autocast_dtype, emulated_precision, train


class RandomDraws(Dataset):
    """Each item is what a random transform would draw for it (a flip's coin, a crop's offset)."""

    def __len__(self):
        return 40

    def __getitem__(self, index):
        return torch.rand(1), index


@pytest.mark.parametrize("shard, workers", [(Shard(1, 2), 0), (Shard(0, 1), 2)])
def test_augmentation_draws_follow_the_image_not_the_process_or_worker(shard, workers):
    """Under torchrun the processes' RNGs agree: the k-th image of each one's slice must still get its own flip."""
    torch.manual_seed(0)
    one_process = next(endless_images(RandomDraws(), 16, seed=3, start=5, num_workers=0, pin_memory=False))
    torch.manual_seed(0)
    draws, indices = next(endless_images(RandomDraws(), 16, 3, 5, workers, False, shard))
    assert torch.equal(indices, one_process[1][shard.slice(16)])
    assert torch.equal(draws, one_process[0][shard.slice(16)])


def test_seeding_each_image_leaves_the_gpus_random_streams_alone(monkeypatch):
    """Training noise on a GPU comes from the GPU's generator; reseeding it per image would tie it to the data."""

    def reseeded(seed):
        raise AssertionError("a GPU generator was reseeded while loading images")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded)
    next(endless_images(RandomDraws(), 4, seed=0, start=0, num_workers=0, pin_memory=False))


def losses(tiny_recipe, run_dir, *overrides):
    registries = load_plugins(autoload=False).registries
    recipe = load_recipe(tiny_recipe, registries, ["train.iterations=3", "train.sample_every=100", *overrides])
    train(recipe, registries, run_dir, show_progress=False)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in records if "G/total" in r]


def compare(a, b, rel):
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        for key in ("G/total", "G/gan", "G/recon", "D/total"):
            assert ra[key] == pytest.approx(rb[key], rel=rel), (ra["step"], key)


def test_auto_switches_resolve_per_device():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_bf16_autocast_matches_fp32_within_tolerance(tiny_recipe, tmp_path):
    compare(
        losses(tiny_recipe, tmp_path / "fp32"), losses(tiny_recipe, tmp_path / "bf16", "train.precision=bf16"), 0.05
    )


@pytest.mark.parametrize("has_kernels", [False, True])
def test_bf16_on_a_cpu_that_emulates_it_warns_before_training(tiny_recipe, tmp_path, monkeypatch, has_kernels):
    """On an AVX2-only CPU bf16 autocast made the digits iteration 15x slower than fp32, with no sign why."""
    from rich.console import Console

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: has_kernels)
    registries = load_plugins(autoload=False).registries
    recipe = load_recipe(tiny_recipe, registries, ["train.iterations=1", "train.precision=bf16"])
    console = Console(record=True, width=300)
    train(recipe, registries, tmp_path / "run", console=console, show_progress=False)
    warned = "autocast emulates it" in console.export_text()
    assert warned != has_kernels
    assert emulated_precision(None, torch.device("cpu")) is None


def test_channels_last_matches_contiguous(tiny_recipe, tmp_path):
    plain = losses(tiny_recipe, tmp_path / "plain", "train.channels_last=false")
    compare(plain, losses(tiny_recipe, tmp_path / "nhwc", "train.channels_last=true"), 1e-4)


@pytest.mark.slow
def test_compile_matches_eager(tiny_recipe, tmp_path):
    eager = losses(tiny_recipe, tmp_path / "eager")
    compare(eager, losses(tiny_recipe, tmp_path / "compiled", "train.compile=true"), 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_torchrun_processes_match_one_process(tiny_recipe, torchrun_tiny, tmp_path, processes):
    """One process under torchrun joins a process group too, and trains through DDP and the votes as each of two."""
    common = ["train.iterations=3", "train.batch_size=4", "train.checkpoint_every=3", "train.deterministic=true"]
    registries = load_plugins(autoload=False).registries
    train(load_recipe(tiny_recipe, registries, common), registries, tmp_path / "one", show_progress=False)

    process = torchrun_tiny(tmp_path / "torchrun", *common, processes=processes)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    checkpoints = tmp_path / "torchrun" / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(checkpoints)] == ["step_000000003.safetensors"]
    assert stdout.count("done 3 iterations") == 1  # rank 0 alone reports
    assert f"cpu × {processes} process" in (tmp_path / "torchrun" / "index.html").read_text(encoding="utf-8")

    one = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "one" / "checkpoints", 3)).model_state
    many = ckpt.read_checkpoint(ckpt.checkpoint_path(checkpoints, 3)).model_state
    assert one.keys() == many.keys()
    for name in one:
        torch.testing.assert_close(many[name], one[name], rtol=1e-4, atol=1e-5, msg=name)

    # Resume the torchrun run in one process: the world size may change between runs.
    resumed = load_recipe(tiny_recipe, registries, [*common, "train.iterations=4"])
    assert train(resumed, registries, tmp_path / "torchrun", resume=True, show_progress=False).step == 4
