"""Metrics that judge a run. Pixel accuracy lives here; FID/KID and domain-adaptation accuracy build on it."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from unitkit.components import DomainData
from unitkit.model import UNIT
from unitkit.report import translate_images

#: A translated pixel counts as correct when every channel is within this many levels (of 255) of the truth,
#: as in the paper's map experiment.
PIXEL_TOLERANCE = 16


def pixel_accuracy(prediction: Tensor, target: Tensor, tolerance: int = PIXEL_TOLERANCE) -> float:
    """Fraction of pixels whose every channel differs from ``target`` by less than ``tolerance``/255.

    Both tensors are images in [-1, 1] of shape (N, C, H, W); they are compared at 8-bit precision.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"pixel accuracy needs equal shapes, got {tuple(prediction.shape)} and {tuple(target.shape)}")
    to_levels = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    close = (to_levels(prediction) - to_levels(target)).abs() < tolerance
    return close.all(dim=1).float().mean().item()


@torch.no_grad()
def paired_pixel_accuracy(
    model: UNIT, data: DomainData, device: torch.device, batch_size: int = 64
) -> dict[str, float]:
    """Pixel accuracy of A→B and B→A translations of the paired test sets against their ground truth."""
    was_training = model.training
    model.eval()
    hits = {"a2b": 0.0, "b2a": 0.0}
    count = 0
    try:
        batches_a = DataLoader(data.test_a, batch_size=batch_size)
        batches_b = DataLoader(data.test_b, batch_size=batch_size)
        for (x_a, _), (x_b, _) in zip(batches_a, batches_b, strict=True):
            x_a, x_b = x_a.to(device), x_b.to(device)
            n = len(x_a)
            hits["a2b"] += pixel_accuracy(translate_images(model, x_a, "a")["translation"], x_b) * n
            hits["b2a"] += pixel_accuracy(translate_images(model, x_b, "b")["translation"], x_a) * n
            count += n
    finally:
        model.train(was_training)
    return {f"pixel_accuracy_{k}": v / count for k, v in hits.items()}


def evaluate_run(model: UNIT, data: DomainData, device: torch.device) -> dict[str, float]:
    """The metrics a finished run can compute from its own data (empty when none applies)."""
    results: dict[str, float] = {}
    if data.paired_test:
        results.update(paired_pixel_accuracy(model, data, device))
    return results
