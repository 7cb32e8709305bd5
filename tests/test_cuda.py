"""The GPU paths: mixed precision (fp16 with loss scaling, bf16), channels_last, torch.compile, checkpoints that
move between GPU and CPU, ``train.device = "auto"``, DistributedDataParallel over NCCL, translate and evaluate.

Every test here is marked ``cuda`` and runs on the GPU when there is one. Without one they are skipped, unless
UNITKIT_CUDA_TESTS_ON=cpu runs them on the CPU: a dry run of the same code that checks the tests' own logic (the
CPU then stands wherever a test says GPU, and "auto" resolves to the CPU's settings).

The fp32 reference runs are true fp32: cuDNN computes fp32 convolutions in TF32 (10-bit mantissa) by default, and
the tolerances below would then measure TF32 rather than the switch under test. What the comments report as
measured on the CPU was measured in the dry run on 2 cores of an AVX2-only AMD EPYC, which emulates fp16 and bf16.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import fake_inception, free_port, invoke
from PIL import Image
from torch.nn.parallel import DistributedDataParallel

from unitkit import distributed
from unitkit.checkpoint import checkpoint_path, list_checkpoints, read_checkpoint, unique_state
from unitkit.components import DomainData
from unitkit.data import build_data, first_images
from unitkit.recipe import load_recipe
from unitkit.registry import Registries
from unitkit.train import UnitStep, build_step, resolve_device, seed_everything, speed_switches

#: Set to "cpu" to run these tests on the CPU where there is no CUDA GPU.
ON_CPU = "UNITKIT_CUDA_TESTS_ON"


def _test_device() -> torch.device | None:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu") if os.environ.get(ON_CPU) == "cpu" else None


DEVICE = _test_device()
ON_GPU = DEVICE is not None and DEVICE.type == "cuda"
GPU = DEVICE.type if DEVICE else "cuda"  # as --device and train.device spell it

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE is None, reason=f"needs a CUDA GPU; {ON_CPU}=cpu runs them on the CPU as a dry run"),
]

#: Training iterations each equivalence test compares, on the same fixed batches from the same initial weights.
STEPS = 4


@pytest.fixture(autouse=True)
def true_fp32() -> Iterator[None]:
    """fp32 convolutions in fp32, not TF32 (see the module's docstring), through the switch torch >= 2.9 reads
    (mixing it with the older allow_tf32 flag is an error there)."""
    convolutions = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(convolutions, "fp32_precision"):
        switch, name, fp32 = convolutions, "fp32_precision", "ieee"
    else:
        switch, name, fp32 = torch.backends.cudnn, "allow_tf32", False
    before = getattr(switch, name)
    setattr(switch, name, fp32)
    try:
        yield
    finally:
        setattr(switch, name, before)


@dataclass
class Trained:
    """Where ``STEPS`` iterations took a model: each step's losses and the weights before and after."""

    losses: torch.Tensor  # (steps, 2): the encoders' and generators' total, the discriminators' total
    start: torch.Tensor  # every weight, flattened, before the first step
    end: torch.Tensor  # and after the last


@pytest.fixture
def tiny_step(tiny_recipe: Path, registries: Registries) -> Callable[..., tuple[UnitStep, DomainData]]:
    """The tiny recipe's training step on ``device``, seeded alike each time, and its data: contiguous fp32 (the
    reference each switch is compared with; "auto" would pick bf16 and channels_last on a GPU) unless
    ``overrides`` say otherwise."""

    def build(
        *overrides: str, device: torch.device = DEVICE, shard: distributed.Shard = distributed.SINGLE_PROCESS
    ) -> tuple[UnitStep, DomainData]:
        reference = ["train.precision=fp32", "train.channels_last=false"]
        recipe = load_recipe(tiny_recipe, registries, [*reference, *overrides])
        data = build_data(recipe, registries)
        seed_everything(recipe.train.seed)
        return build_step(recipe, registries, data.channels, data.image_size, device, shard), data

    return build


def flat_weights(unit: UnitStep) -> torch.Tensor:
    return torch.cat([tensor.flatten().float() for tensor in unique_state(unit.model).values()])


def train_steps(unit: UnitStep, data: DomainData, steps: int = STEPS) -> Trained:
    """Train ``steps`` iterations on the first images of the training sets, two a batch."""
    start = flat_weights(unit)
    x_a, x_b = first_images(data.train_a, 2 * steps), first_images(data.train_b, 2 * steps)
    losses = []
    for batch_a, batch_b in zip(x_a.split(2), x_b.split(2), strict=True):
        terms, terms_d, _ = unit(batch_a, batch_b, torch.zeros(2, dtype=torch.long))
        losses.append([terms["total"].item(), terms_d["total"].item()])
    return Trained(torch.tensor(losses, dtype=torch.float64), start, flat_weights(unit))


def assert_trains_alike(trained: Trained, reference: Trained, loss_rtol: float, weights_rtol: float) -> None:
    """The same losses at every step within ``loss_rtol``, and weights that differ from the reference's by at most
    ``weights_rtol`` of how far the reference's training moved them (the weights themselves hardly move in a few
    steps, so their own relative error would say nothing)."""
    assert torch.equal(trained.start, reference.start), "the runs must start from the same weights"
    torch.testing.assert_close(trained.losses, reference.losses, rtol=loss_rtol, atol=0)
    moved = (reference.end - reference.start).norm()
    apart = (trained.end - reference.end).norm()
    assert apart <= weights_rtol * moved, f"weights {apart / moved:.3g} of the training's movement apart"


def test_auto_device_trains_on_the_gpu_in_bf16_and_channels_last(tiny_step, tiny_recipe, registries):
    recipe = load_recipe(tiny_recipe, registries, ["train.device=auto"])
    assert (recipe.train.precision, recipe.train.channels_last) == ("auto", "auto")
    device = resolve_device(recipe.train.device)
    expected = ("cuda", torch.bfloat16, True) if ON_GPU else ("cpu", None, False)  # an H200 has bf16
    assert (device.type, *speed_switches(recipe.train, device)) == expected
    unit, data = tiny_step("train.precision=auto", "train.channels_last=auto", device=device)
    convolutions = [p for p in unit.model.parameters() if p.ndim == 4]
    assert all(p.is_contiguous(memory_format=unit.memory_format) for p in convolutions)
    assert unit.dtype is expected[1] and (unit.memory_format is torch.channels_last) == expected[2]
    assert torch.isfinite(train_steps(unit, data, steps=1).losses).all()


#: A loss scale at which this model's fp16 gradients do not overflow. The scaler starts at 2**16, where they do on
#: the CPU: it skipped 3 of 4 updates there, backing off to 2**13. Skipped updates are the scaler doing its job, but
#: they would make the fp16 run train other weights than the fp32 one; a resumed run starts at its saved scale too.
#: Rounding is the same at any power of two, so this compares only precision.
SETTLED_SCALE = 2.0**8


def test_fp16_autocast_with_loss_scaling_matches_fp32(tiny_step):
    reference = train_steps(*tiny_step("train.precision=fp32"))
    unit, data = tiny_step("train.precision=fp16")
    assert unit.dtype is torch.float16
    for scaler in unit.scalers.values():
        assert scaler.is_enabled()
        scaler.load_state_dict(scaler.state_dict() | {"scale": SETTLED_SCALE})
    half = train_steps(unit, data)
    # Each skipped update halves the scale (it grows only after 2,000 good ones): so no update was skipped.
    assert [scaler.get_scale() for scaler in unit.scalers.values()] == [SETTLED_SCALE] * 2
    # On the CPU the losses differed by at most 1.2e-4 relative and the weights by 0.10 of the training's movement
    # (Adam's first steps move each weight by about lr whatever its gradient's size, so weights with tiny gradients
    # follow fp16's rounding). 1e-3 leaves room for the GPU's other kernels and stays below the 1e-2 that skipped
    # updates made; 0.3 stays below what skipping one update in four does.
    assert_trains_alike(half, reference, loss_rtol=1e-3, weights_rtol=0.3)


# A skipped first update makes torch warn that the learning-rate schedule stepped before the optimiser.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
def test_fp16_loss_scale_backs_off_to_a_finite_power_of_two_and_training_goes_on(tiny_step):
    unit, data = tiny_step("train.precision=fp16")
    steps = 8  # 3 updates were skipped from the initial scale on the CPU
    trained = train_steps(unit, data, steps)
    assert torch.isfinite(trained.losses).all() and torch.isfinite(trained.end).all()
    for name, scaler in unit.scalers.items():
        scale = scaler.get_scale()
        assert math.isfinite(scale) and 1 <= scale <= 2.0**16 and math.log2(scale).is_integer(), (name, scale)
        # Each skipped update halved the scale; Adam counted the others.
        updates = steps - round(math.log2(2.0**16 / scale))
        assert updates >= 1, f"every {name} update was skipped"
        assert {int(state["step"]) for state in unit.optimizers[name].state.values()} == {updates}, name


def test_bf16_autocast_matches_fp32(tiny_step):
    reference = train_steps(*tiny_step("train.precision=fp32"))
    # bf16 keeps 8 significant bits to fp16's 11. On the CPU the losses differed by at most 1.1e-3 relative and the
    # weights by 0.20 of the training's movement; 1e-2 and 0.5 leave room for the GPU's kernels.
    assert_trains_alike(train_steps(*tiny_step("train.precision=bf16")), reference, loss_rtol=1e-2, weights_rtol=0.5)


def test_channels_last_matches_contiguous(tiny_step):
    reference = train_steps(*tiny_step("train.channels_last=false"))
    unit, data = tiny_step("train.channels_last=true")
    convolutions = [p for p in unit.model.parameters() if p.ndim == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert not all(p.is_contiguous() for p in convolutions)  # 1x1 kernels are both; the others must have moved
    # The same fp32 arithmetic in another order (other kernels). On the CPU: 1.2e-7 relative in the losses, 8e-6 of
    # the training's movement in the weights. The GPU may pick other cuDNN algorithms for each layout (Winograd's
    # error is near 1e-5), hence 1e-4 and 1e-2.
    assert_trains_alike(train_steps(unit, data), reference, loss_rtol=1e-4, weights_rtol=1e-2)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes: bit for bit, where equal values may still differ (0.0 and -0.0)."""
    return tensor.reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("written_on, resumed_on", [(GPU, "cpu"), ("cpu", GPU)], ids=["gpu-to-cpu", "cpu-to-gpu"])
def test_a_checkpoint_resumes_bit_for_bit_on_the_other_device(tiny_recipe, tmp_path, written_on, resumed_on):
    run_dir = tmp_path / "run"
    common = ["--out", run_dir, "--quiet", "--set", "train.checkpoint_every=2", "--set", "train.sample_every=100"]
    written = invoke("run", tiny_recipe, *common, "--set", "train.iterations=2", "--set", f"train.device={written_on}")
    assert written.exit_code == 0, written.output
    path = checkpoint_path(run_dir / "checkpoints", 2)
    saved = read_checkpoint(path)
    assert ("rng/cuda" in saved.rng["tensors"]) == (written_on == "cuda")  # written by a run on that device

    # Resumed at the iteration it was saved at, the run loads the checkpoint and saves it again, untrained.
    resume = [*common, "--resume", "--set", f"train.device={resumed_on}"]
    reloaded = invoke("run", tiny_recipe, *resume, "--set", "train.iterations=2")
    assert reloaded.exit_code == 0, reloaded.output
    loaded = read_checkpoint(path)
    assert ("rng/cuda" in loaded.rng["tensors"]) == (resumed_on == "cuda")
    assert saved.model_state.keys() == loaded.model_state.keys()
    for name, tensor in saved.model_state.items():
        assert torch.equal(bits(tensor), bits(loaded.model_state[name])), name
    for which, optimizer in saved.optimizers.items():
        for index, state in optimizer["state"].items():
            for key, value in state.items():
                assert torch.equal(bits(value), bits(loaded.optimizers[which]["state"][index][key])), (which, key)

    # And it trains on there (the optimiser's state moved to that device with the weights).
    resumed = invoke("run", tiny_recipe, *resume, "--set", "train.iterations=3")
    assert resumed.exit_code == 0, resumed.output
    assert read_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1]).step == 3


def test_a_process_torchrun_started_alone_trains_through_ddp(tiny_step, monkeypatch):
    for name in (*distributed.TORCHRUN_ENV, "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.start(DEVICE) == (distributed.SINGLE_PROCESS, DEVICE)  # a plain run joins no group
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)  # what a cluster's launcher may export for a plain process
    assert distributed.start(DEVICE) == (distributed.SINGLE_PROCESS, DEVICE)
    assert not dist.is_initialized()

    # What torchrun --nproc_per_node 1 sets for its process.
    torchrun = {"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}  # fmt: skip
    for name, value in torchrun.items():
        monkeypatch.setenv(name, value)
    shard, device = distributed.start(DEVICE)
    try:
        assert shard.joined and shard.world == 1 and shard.is_main
        assert dist.get_backend() == ("nccl" if ON_GPU else "gloo")
        unit, data = tiny_step(device=device, shard=shard)
        assert isinstance(unit.generator_pass, DistributedDataParallel)
        assert isinstance(unit.discriminator_pass, DistributedDataParallel)
        assert torch.isfinite(train_steps(unit, data, steps=2).losses).all()  # gradients all-reduced over the group
    finally:
        distributed.stop()


def test_torchrun_with_one_process_trains_and_checkpoints(torchrun_tiny, tmp_path):
    run_dir = tmp_path / "run"
    process = torchrun_tiny(run_dir, f"train.device={GPU}", processes=1)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_000000002.safetensors",
                                                                         "step_000000004.safetensors"]  # fmt: skip
    # The page names the process group the run joined (NCCL on the GPU, as the test above checks).
    assert f"{'cuda:0' if ON_GPU else 'cpu'} × 1 process" in (run_dir / "index.html").read_text(encoding="utf-8")


def test_translate_and_evaluate_run_on_the_gpu(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where FID caches the real images' features
    run_dir = tmp_path / "run"
    overrides = ["--set", "train.iterations=2", "--set", f"train.device={GPU}"]
    assert invoke("run", tiny_recipe, "--out", run_dir, "--quiet", *overrides).exit_code == 0
    checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.new("RGB", (20, 12), (200, 30, 30)).save(inputs / "red.png")
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(noise).save(inputs / "noise.png")
    translated = {}
    for role, device in (("gpu", GPU), ("cpu", "cpu")):
        out = tmp_path / f"translated-on-{role}"
        result = invoke("translate", checkpoint, inputs, out, "--direction", "a2b", "--device", device)
        assert result.exit_code == 0, result.output
        translated[role] = {p.name: np.asarray(Image.open(p), dtype=int) for p in out.iterdir()}
    assert translated["gpu"].keys() == translated["cpu"].keys() == {"red.png", "noise.png"}
    for name, image in translated["gpu"].items():
        # fp32 on either device, in another order: a value near a level's edge may round to the next 8-bit level.
        assert np.abs(image - translated["cpu"][name]).max() <= 1, name

    inception = fake_inception(tmp_path / "inception.pt")  # the real FID network is not needed to run the path
    result = invoke("evaluate", run_dir, "--fid", "--fid-images", 4, "--inception", inception, "--device", GPU)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run_dir / "evaluation.json").read_text(encoding="utf-8"))
    assert evaluation["fid_images_a"] == evaluation["fid_images_b"] == 4
    assert all(math.isfinite(evaluation[key]) for key in ("fid_a2b", "fid_b2a", "kid_a2b", "kid_b2a"))


def test_compile_matches_eager(tiny_step):  # last: compiling takes the longest
    from torch._dynamo.utils import counters

    reference = train_steps(*tiny_step("train.compile=false"))
    graphs = counters["stats"]["unique_graphs"]
    compiled = train_steps(*tiny_step("train.compile=true"))
    assert counters["stats"]["unique_graphs"] > graphs, "nothing was compiled"
    # Compiled kernels fuse and reorder fp32 arithmetic. On the CPU: 1.2e-7 relative in the losses, 1.1e-5 of the
    # training's movement in the weights; 1e-4 and 1e-2 as for channels_last.
    assert_trains_alike(compiled, reference, loss_rtol=1e-4, weights_rtol=1e-2)
