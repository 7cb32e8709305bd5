"""Data-loading speed of the unpaired-folders dataset: decoding and augmentation timed apart, then the
DataLoader's throughput with and without worker processes, against what a training iteration consumes.

    python benchmarks/data_speed.py                                   # maps (256x256 JPEG) and cifar_cat2dog
    python benchmarks/data_speed.py --root /data/horse2zebra --image-size 256

Prints one JSON line per measurement. Real data comes from $UNITKIT_DATA (default ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from unitkit.builtin.datasets import unpaired_folders
from unitkit.data import endless_images
from unitkit.recipe import data_root


def per_image_ms(function, items: list, repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean milliseconds per item."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            function(item)
        runs.append((time.perf_counter() - start) / len(items) * 1e3)
    return statistics.median(runs)


def measure(root: Path, image_size: int, batch_size: int, count: int) -> list[dict]:
    data = unpaired_folders(str(root), image_size=image_size)
    dataset = data.train_a
    paths = dataset.paths[:count]
    decoded = []

    def decode(path: Path):
        from PIL import Image

        with Image.open(path) as image:
            decoded.append(image.convert("RGB"))

    decode_ms = per_image_ms(decode, paths, repeats=1)
    augment_ms = per_image_ms(dataset.transform, decoded[:count])
    rows = [{"dataset": root.name, "image_size": image_size, "decode_ms_per_image": round(decode_ms, 3),
             "augment_ms_per_image": round(augment_ms, 3)}]  # fmt: skip
    for workers in (0, 2):
        stream = endless_images(dataset, batch_size, seed=0, start=0, num_workers=workers, pin_memory=False)
        next(stream)  # start-up (worker processes) is paid once per run, not per batch
        batches = max(4, count // batch_size)
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        seconds = time.perf_counter() - start
        rows.append({"dataset": root.name, "image_size": image_size, "num_workers": workers, "batch_size": batch_size,
                     "images_per_sec": round(batches * batch_size / seconds, 1)})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, action="append", help="CycleGAN-layout folder(s)")
    parser.add_argument("--image-size", type=int, default=0, help="crop size (default: 256 for maps, 32 otherwise)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--count", type=int, default=200, help="images timed per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    roots = args.root or [data_root() / "maps", data_root() / "cifar_cat2dog"]
    for root in roots:
        if not root.is_dir():
            print(json.dumps({"dataset": str(root), "skipped": "not found; set UNITKIT_DATA"}))
            continue
        size = args.image_size or (256 if root.name == "maps" else 32)
        for row in measure(root, size, args.batch_size, args.count):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
