"""Metrics that judge a run: pixel accuracy against ground-truth pairs, the discriminators' classification
accuracy (domain adaptation) and, in :mod:`unitkit.fid`, FID/KID."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from unitkit.checkpoint import Checkpoint
from unitkit.components import DomainData, to_levels
from unitkit.data import build_data, cpu_seeded
from unitkit.errors import CheckpointError, UsageError
from unitkit.fid import InceptionFeatures, cached_features, frechet_distance, kernel_inception_distance
from unitkit.model import UNIT, evaluation_mode
from unitkit.recipe import Recipe, changes_on_resume, read_toml, validate
from unitkit.registry import Registries
from unitkit.report import plot_confusions, read_log
from unitkit.translator import Translator

#: A translated pixel counts as correct when every channel differs from the truth by less than this many levels
#: (of 255), as in the paper's map experiment.
PIXEL_TOLERANCE = 16


def pixel_accuracy(prediction: Tensor, target: Tensor, tolerance: int = PIXEL_TOLERANCE) -> float:
    """Fraction of pixels whose every channel differs from ``target`` by less than ``tolerance``/255.

    Both tensors are images in [-1, 1] of shape (N, C, H, W); they are compared at 8-bit precision.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"pixel accuracy needs equal shapes, got {tuple(prediction.shape)} and {tuple(target.shape)}")
    close = (to_levels(prediction) - to_levels(target)).abs() < tolerance
    return close.all(dim=1).float().mean().item()


def floor_colour(dataset: Dataset, limit: int = 256, candidates: int = 64, tolerance: int = PIXEL_TOLERANCE) -> Tensor:
    """The one colour that most pixels of the first ``limit`` images lie within ``tolerance`` of, shape (C, 1, 1).

    Painting every image in it is the floor for pixel accuracy: the best one colour for the training images.
    The per-channel median is not that colour on label maps: facade labels are exact class colours, mostly wall
    blue, and their median is none of them (0.6 % of the 64x64 test pixels, against 27 % for this colour).
    Candidates are the median and the mean colours of the most populated cells of a colour grid as fine as the
    tolerance; each is scored on a sample of about 200,000 pixels, drawn evenly from the images. Training sets
    apply random flips and crops; a fixed seed makes the floor the same at every evaluation.
    """
    count = min(limit, len(dataset))
    samples = []
    with cpu_seeded(0):
        for index in range(count):
            pixels = to_levels(dataset[index][0].float().cpu()).flatten(1).T  # (pixels, channels)
            samples.append(pixels[torch.randperm(len(pixels))[: max(1, 200_000 // count)]])
    pixels = torch.cat(samples)
    cells, cell_of, counts = torch.unique(
        torch.div(pixels, tolerance, rounding_mode="floor"), dim=0, return_inverse=True, return_counts=True
    )
    # Sums of whole levels in float64 are exact, so the means cannot depend on the order of the additions.
    sums = torch.zeros(len(cells), pixels.shape[1], dtype=torch.float64).index_add_(0, cell_of, pixels.double())
    means = (sums / counts[:, None]).float()
    populated = counts.argsort(descending=True, stable=True)[:candidates]
    choices = torch.cat([pixels.median(dim=0).values[None], means[populated]]).round()
    hits = torch.stack([((pixels - colour).abs() < tolerance).all(dim=1).sum() for colour in choices])
    return (choices[hits.argmax()] / 127.5 - 1).view(-1, 1, 1)


def paired_accuracy(model: UNIT, data: DomainData, device: torch.device, batch_size: int = 64) -> dict[str, float]:
    """How A→B and B→A translations of the paired test sets match their ground truth, beside trivial baselines.

    ``pixel_accuracy_*``, with ``pixel_accuracy_floor_*``: the accuracy of painting every image in the one colour
    that most of the target domain's training pixels are close to (:func:`floor_colour`). On mostly-uniform targets
    (maps, label maps) this constant scores high, and a translation is only worth its pixel accuracy above it.
    Where the data knows its test scenes (``data.judge_scenes``), also ``scene_accuracy_*``: the share of
    translations that show their scene, with the same judgement of the untranslated input
    (``scene_accuracy_untranslated_*``) and of that one colour (``scene_accuracy_constant_*``).
    """
    judge = data.judge_scenes
    colours = {"a": floor_colour(data.train_a).to(device), "b": floor_colour(data.train_b).to(device)}
    sums: dict[str, float] = {}

    def add(name: str, value: float) -> None:
        sums[name] = sums.get(name, 0.0) + value

    count = 0
    with evaluation_mode(model):
        batches_a = DataLoader(data.test_a, batch_size=batch_size)
        batches_b = DataLoader(data.test_b, batch_size=batch_size)
        for (x_a, _), (x_b, _) in zip(batches_a, batches_b, strict=True):
            x = {"a": x_a.to(device), "b": x_b.to(device)}
            indices = torch.arange(count, count + len(x_a))
            directions = {"a2b": ("a", "b"), "b2a": ("b", "a")}
            translated = {d: model.translate(x[source], source) for d, (source, _) in directions.items()}
            constant = {d: colours[target].expand_as(x[target]) for d, (_, target) in directions.items()}
            if judge is not None:  # the headline where there is one, so first
                for d, (source, target) in directions.items():
                    for name, images in (("", translated[d]), ("untranslated_", x[source]), ("constant_", constant[d])):
                        add(f"scene_accuracy_{name}{d}", judge(images, indices, target).sum().item())
            for d, (_, target) in directions.items():
                add(f"pixel_accuracy_{d}", pixel_accuracy(translated[d], x[target]) * len(indices))
                add(f"pixel_accuracy_floor_{d}", pixel_accuracy(constant[d], x[target]) * len(indices))
            count += len(indices)
    return {name: total / count for name, total in sums.items()}


def confusion_matrices(model: UNIT, data: DomainData, device: torch.device, batch_size: int = 500) -> dict[str, Tensor]:
    """How each test image was classified: (true class, predicted class) counts, for three readings.

    ``a`` and ``b``: each domain's test set through its own stem, the shared trunk and the head, which is trained
    on labelled domain-A images only (``b`` is the domain-adaptation result, the paper's Table 1). ``b2a``:
    domain B's test images translated to A and read by A's classifier, i.e. whether translation keeps the class,
    which the feature-consistency term relies on.
    """
    classes = data.num_classes
    counts = {name: torch.zeros(classes, classes, dtype=torch.long) for name in ("a", "b", "b2a")}

    def count(name: str, labels: Tensor, domain: str, x: Tensor) -> None:
        dis = model.discriminator(domain)
        predicted = dis.classify(dis.features(x)).argmax(1).cpu()
        counts[name] += torch.bincount(labels * classes + predicted, minlength=classes**2).view(classes, classes)

    with evaluation_mode(model):
        for x, labels in DataLoader(data.test_a, batch_size=batch_size):
            count("a", labels, "a", x.to(device))
        for x, labels in DataLoader(data.test_b, batch_size=batch_size):
            x = x.to(device)
            count("b", labels, "b", x)
            count("b2a", labels, "a", model.translate(x, "b"))
    return counts


def classification_accuracy(confusions: dict[str, Tensor]) -> dict[str, float]:
    """``accuracy_NAME`` of each confusion matrix: the fraction on its diagonal (far below chance for ``b2a``
    means the translations swap classes consistently)."""
    return {f"accuracy_{name}": (matrix.trace() / matrix.sum()).item() for name, matrix in confusions.items()}


def evaluate_run(
    model: UNIT, data: DomainData, device: torch.device, confusion_figure: Path | None = None
) -> dict[str, float]:
    """The metrics a run can compute from its own data during training (empty when none applies).

    With ``confusion_figure``, a domain-adaptation run also draws its confusion matrices there (a PNG).
    """
    results: dict[str, float] = {}
    if data.paired_test:
        results.update(paired_accuracy(model, data, device))
    if model.dis_a.num_classes and data.num_classes:
        confusions = confusion_matrices(model, data, device)
        accuracies = classification_accuracy(confusions)
        results.update(accuracies)
        if confusion_figure is not None:
            plot_confusions(confusions, accuracies, confusion_figure)
    return results


def _first(dataset: Dataset, count: int) -> Dataset:
    return Subset(dataset, range(min(count, len(dataset)))) if count else dataset


def fid_kid(
    model: UNIT,
    data: DomainData,
    device: torch.device,
    inception: InceptionFeatures,
    data_key: dict,
    max_images: int = 0,
    batch_size: int = 50,
    show_progress: bool = True,
) -> dict[str, float]:
    """FID and KID of each direction's test translations against the real test images of the target domain.

    Also reports them for the untranslated source images (``*_untranslated``): the floor a translation must beat
    (FID is symmetric, so one number serves both directions). ``data_key`` identifies the data (the resolved
    ``[data]`` table) for the cache of real-image features. ``max_images`` (0: all) caps each test set; FID
    is biased by the number of images, so compare runs only at equal counts.
    """
    tests = {"a": _first(data.test_a, max_images), "b": _first(data.test_b, max_images)}

    def images(domain: str):
        return (x for x, _ in DataLoader(tests[domain], batch_size=batch_size))

    def real(domain: str) -> Tensor:
        key = {"data": data_key, "domain": domain, "images": len(tests[domain]), "network": inception.identity}
        return cached_features(
            key,
            lambda: inception.of_batches(
                images(domain), len(tests[domain]), f"FID: real {domain.upper()}", show_progress
            ),
        )

    real_features = {domain: real(domain) for domain in ("a", "b")}
    results: dict[str, float] = {}
    with evaluation_mode(model):
        for source, target in (("a", "b"), ("b", "a")):
            translated = (model.translate(x.to(device), source) for x in images(source))
            features = inception.of_batches(
                translated, len(tests[source]), f"FID: {source.upper()}→{target.upper()}", show_progress
            )
            results[f"fid_{source}2{target}"] = frechet_distance(features, real_features[target])
            results[f"kid_{source}2{target}"] = kernel_inception_distance(features, real_features[target])[0]
    results["fid_untranslated"] = frechet_distance(real_features["a"], real_features["b"])
    results["kid_untranslated"] = kernel_inception_distance(real_features["a"], real_features["b"])[0]
    results["fid_images_a"], results["fid_images_b"] = len(tests["a"]), len(tests["b"])
    return results


#: Metrics logged during training whose best value is the highest (FID and KID are lower-is-better, so they
#: get no "best").
HIGHER_IS_BETTER = {
    "accuracy_a",
    "accuracy_b",
    "accuracy_b2a",
    "pixel_accuracy_a2b",
    "pixel_accuracy_b2a",
    "scene_accuracy_a2b",
    "scene_accuracy_b2a",
}


def best_logged(log_path: Path, prefix: str = "eval/") -> dict[str, float]:
    """For each accuracy logged during training under ``prefix``: its best value and the iteration it came at.

    Picking the best of many test-set evaluations selects on the test set (the authors' way to report
    domain adaptation); it is reported only beside the final value.
    """
    best: dict[str, tuple[float, int]] = {}
    for record in read_log(log_path):
        for key, value in record.items():
            name = key.removeprefix(prefix)
            if key.startswith(prefix) and name in HIGHER_IS_BETTER and (name not in best or value > best[name][0]):
                best[name] = (value, record["step"])
    results: dict[str, float] = {}
    for name, (value, step) in best.items():
        results[f"best_{name}"] = value
        results[f"best_{name}_step"] = step
    return results


def fid_kid_if_asked(
    model: UNIT,
    data: DomainData,
    device: torch.device,
    recipe: Recipe,
    *,
    fid: bool | None = None,
    inception: str | None = None,
    max_images: int | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """FID/KID as the recipe's ``[evaluate]`` table asks, unless the arguments say otherwise ({} when off)."""
    settings = recipe.evaluate
    if not (settings.fid if fid is None else fid):
        return {}
    network = InceptionFeatures(inception or settings.inception or None, device)
    count = settings.fid_images if max_images is None else max_images
    return fid_kid(model, data, device, network, recipe.resolved["data"], count, show_progress=show_progress)


def with_split(results: dict, data: DomainData) -> dict:
    """``results``, led by ``"split": "validation"`` where they were measured on images held out of the training
    sets (a dataset's ``validation`` setting), so that no one reads them as test scores."""
    return results if data.evaluation_split == "test" else {"split": data.evaluation_split} | results


def evaluate_checkpoint(
    translator: Translator,
    run_dir: Path | None = None,
    *,
    confusion_figure: Path | None = None,
    fid: bool | None = None,
    inception: str | None = None,
    max_images: int | None = None,
    data_root: Path | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """Every metric that applies to a loaded checkpoint's model and data, on the translator's device.

    The dataset and the ``[evaluate]`` settings come from the recipe stored in the checkpoint; the keyword
    arguments override those settings, and ``data_root`` the dataset's ``root`` (data moved since the run). With
    ``run_dir``, the run the checkpoint is evaluated as part of, a checkpoint trained with other settings than the
    run's recipe.toml is refused (:func:`check_checkpoint_of_run`), and the best values of the run's periodic
    evaluations are added when they translated with the same weights (``evaluate.weights``). With
    ``confusion_figure``, a domain-adaptation model's confusion matrices are drawn.
    """
    model, state, recipe, device = translator.model, translator.checkpoint, translator.recipe, translator.device
    if run_dir is not None:
        check_checkpoint_of_run(state, run_dir)
    if data_root is not None:
        recipe = with_data_root(recipe, data_root, translator.registries, origin=f"{state.path} (stored recipe)")
    data = build_data(recipe, translator.registries)
    # FID/KID first: a network file that is not the FID network is refused before the other metrics take time.
    distances = fid_kid_if_asked(model, data, device, recipe, fid=fid, inception=inception, max_images=max_images,
                                 show_progress=show_progress)  # fmt: skip
    results = {"iteration": state.step, **evaluate_run(model, data, device, confusion_figure), **distances}
    # The run's periodic evaluations translated with its evaluate.weights: their best goes beside the same kind only.
    same_weights = translator.weights == recipe.evaluate.weights or not translator.has_average
    if recipe.train.eval_every and run_dir is not None and same_weights:
        results |= best_logged(run_dir / "log.jsonl")
    return with_split(results, data)


def check_checkpoint_of_run(state: Checkpoint, run_dir: Path) -> None:
    """Refuse a checkpoint whose stored recipe differs from ``run_dir``'s recipe.toml in what is trained (it was
    copied in from another run, or recipe.toml was edited): its metrics would be filed as the run's own.

    Settings a resumed run may change (:data:`unitkit.recipe.RESUMABLE_SETTINGS`) may differ.
    """
    recipe_file = run_dir / "recipe.toml"
    if not recipe_file.is_file():  # nothing says what the run trained
        return
    if changed := changes_on_resume(state.recipe(), read_toml(recipe_file)):
        raise CheckpointError(
            f"{state.path} was trained with other settings than {recipe_file} says ({'; '.join(changed)}), so its "
            f"metrics are not this run's; evaluate the checkpoint file itself instead: unitkit evaluate {state.path} "
            "--output FILE"
        )


def with_data_root(recipe: Recipe, root: Path, registries: Registries, origin: str) -> Recipe:
    """``recipe`` with its dataset read from ``root`` (``--data-root``); a dataset without a ``root`` setting
    is a usage error."""
    data = recipe.resolved["data"]
    if "root" not in data:
        raise UsageError(
            f"--data-root: [data] kind = {data['kind']!r} has no root setting to point elsewhere; drop --data-root"
        )
    moved = {**recipe.resolved, "data": {**data, "root": str(root.expanduser().absolute())}}
    return validate(moved, registries, origin=f"{origin} with --data-root {root}")
