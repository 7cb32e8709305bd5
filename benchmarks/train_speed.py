"""Training speed and memory of unitkit at fixed configurations, one JSON line per configuration.

Each configuration runs in a fresh process (so peak memory is its own): it builds the recipe's networks, times
full iterations (discriminator update + encoder/generator update, exactly the trainer's UnitStep) on random
tensors, and reports min/median seconds per iteration, images/s, peak memory, parameters, FLOPs per iteration
(torch.utils.flop_counter), the achieved FLOP/s, and the measured fp32 matmul FLOP/s of the host (or, with
--device cuda, the GPU) as the practical ceiling.

    python benchmarks/train_speed.py                      # every configuration, fp32 and the CPU switches
    python benchmarks/train_speed.py --only ref-128-b1    # one configuration
    python benchmarks/train_speed.py --threads 2 --timed 10 --warmup 2
    python benchmarks/train_speed.py --device cuda --only ref-128-b1 --set model.encoder.width=32   # and overrides

Configurations: the reference UNIT architecture (recipes/cats.toml: generator width 64, 2 downsamplings,
4 residual blocks in encoder and decoder; discriminator 4 layers x 3 scales; LSGAN; every loss term on) at
128x128 batch 1, 256x256 batch 1 and 128x128 batch 8; the 32x32 digits networks at batch 64; and the full
MNIST->USPS domain-adaptation recipe (recipes/mnist2usps.toml) at its batch of 64.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unitkit.recipe import Recipe
    from unitkit.train import UnitStep

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ["data.image_size={size}", "train.batch_size={batch}"]
DIGITS = [
    "data.image_size=32", "train.batch_size=64", "model.encoder.kind=digits32", "model.generator.kind=digits32",
    "model.discriminator.kind=digits32", "model.sharing.kind=all-but-ends", "model.share_discriminators=true",
]  # fmt: skip
CONFIGS = {
    "ref-128-b1": ("cats.toml", [o.format(size=128, batch=1) for o in REFERENCE], (3, 3)),
    "ref-256-b1": ("cats.toml", [o.format(size=256, batch=1) for o in REFERENCE], (3, 3)),
    "ref-128-b8": ("cats.toml", [o.format(size=128, batch=8) for o in REFERENCE], (3, 3)),
    "digits-32-b64": ("cats.toml", DIGITS, (1, 1)),
    "mnist2usps-b64": ("mnist2usps.toml", [], (1, 1)),
}
SWITCHES = {
    "fp32": ["train.precision=fp32", "train.channels_last=false"],
    "fp32-channels_last": ["train.precision=fp32", "train.channels_last=true"],
    "bf16-channels_last": ["train.precision=bf16", "train.channels_last=true"],
    "bf16-channels_last-compile": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
}


def matmul_flops(threads: int, device: str = "cpu", repeats: int = 10) -> float:
    """Measured fp32 matmul FLOP/s on ``device``: the practical ceiling for the host and thread count, or the GPU."""
    import torch

    torch.set_num_threads(threads)
    size = 8192 if device.startswith("cuda") else 2048  # a GPU needs a larger product to reach its rate
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    finish = torch.cuda.synchronize if a.is_cuda else (lambda: None)  # GPU kernels return before they finish
    torch.mm(a, b)
    finish()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    finish()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def peak_memory_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def random_batch_step(
    recipe_file: str | Path, overrides: list[str], channels: tuple[int, int] | None, device_name: str
) -> tuple[Recipe, UnitStep, Callable[[], None]]:
    """The recipe's networks and trainer step, built as the trainer builds them, and a function that runs one
    iteration of that step on a fixed random batch per domain (with labels for a classifier term) and waits for
    the device to finish it. ``channels`` None: the recipe's ``data.channels`` in both domains (3 if unset)."""
    import torch

    from unitkit.plugins import load_plugins
    from unitkit.recipe import load_recipe
    from unitkit.train import build_step, resolve_device, seed_everything

    registries = load_plugins(autoload=False).registries
    device = resolve_device(device_name)
    recipe = load_recipe(recipe_file, registries, [*overrides, f"train.device={device_name}"])
    seed_everything(0)
    size, batch = recipe.data.settings["image_size"], recipe.train.batch_size
    channels = channels or (recipe.data.settings.get("channels", 3),) * 2
    classes = 10 if recipe.objective.classify else 0  # the digits' classes, for recipes with a classifier term
    step = build_step(recipe, registries, channels, size, device, num_classes=classes)
    x_a, x_b = (torch.rand(batch, c, size, size) * 2 - 1 for c in channels)
    labels_a = torch.randint(0, max(classes, 1), (batch,))

    def iteration() -> None:
        step(x_a, x_b, labels_a)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return recipe, step, iteration


def measure(name: str, switch: str, threads: int, warmup: int, timed: int, device_name: str, extra: list[str]) -> dict:
    """Run one configuration in this process, with the ``extra`` recipe overrides last, and return its figures."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    recipe_file, overrides, channels = CONFIGS[name]
    recipe, step, iteration = random_batch_step(
        ROOT / "recipes" / recipe_file, [*overrides, *SWITCHES[switch], *extra], channels, device_name
    )
    device, size, batch = step.device, recipe.data.settings["image_size"], recipe.train.batch_size
    for _ in range(warmup):
        iteration()
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - start)
    peak = peak_memory_bytes(device)  # before FLOP counting, whose dispatch layer holds extra tensors
    with FlopCounterMode(display=False) as counter:
        iteration()
    flops = counter.get_total_flops()
    median = statistics.median(times)
    return {
        "config": name,
        "switches": switch,
        "device": str(device),
        "threads": threads,
        "image_size": size,
        "batch_size": batch,
        "sec_per_iter_min": round(min(times), 4),
        "sec_per_iter_median": round(median, 4),
        "images_per_sec": round(2 * batch / median, 2),  # a batch of each domain per iteration
        "peak_memory_gb": round(peak / 1e9, 3),
        "parameters": sum(p.numel() for p in step.model.parameters()),
        "gflop_per_iter": round(flops / 1e9, 1),
        "achieved_gflops": round(flops / median / 1e9, 1),
        "timed_iterations": timed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append", help="configuration(s) to run")
    parser.add_argument("--switches", choices=sorted(SWITCHES), action="append", help="switch set(s) to run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override applied after the configuration's and the switches' (toy sizes)",
    )
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "SWITCHES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        figures = measure(*args.child, args.threads, args.warmup, args.timed, args.device, args.extra)
        print(json.dumps(figures), flush=True)
        return
    ceiling = matmul_flops(args.threads, args.device)
    import torch

    # bf16 autocast runs on oneDNN kernels where the CPU has them (AVX-512, AMX) and is emulated elsewhere
    print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": args.threads,
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "cpu_bf16_kernels": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                      "matmul_fp32_gflops": round(ceiling / 1e9, 1)}), flush=True)  # fmt: skip
    for name in args.only or CONFIGS:
        for switch in args.switches or SWITCHES:
            command = [sys.executable, __file__, "--child", name, switch, "--threads", str(args.threads),
                       "--warmup", str(args.warmup), "--timed", str(args.timed), "--device", args.device,
                       *(f"--set={o}" for o in args.extra)]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                print(json.dumps({"config": name, "switches": switch, "error": result.stderr.strip()[-500:]}))
                continue
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            figures["fraction_of_matmul_peak"] = round(figures["achieved_gflops"] * 1e9 / ceiling, 3)
            print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
