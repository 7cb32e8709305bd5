"""What a person looks at: sample grids, loss curves and the run's index.html."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

from unitkit.model import UNIT, evaluation_mode

GRID_COLUMNS = ("input", "translation", "reconstruction", "cycle")


def _rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def translate_images(model: UNIT, x: Tensor, source: str) -> dict[str, Tensor]:
    """Deterministic (noise-free) translation of ``x`` from domain ``source``, with reconstruction and cycle."""
    target = "b" if source == "a" else "a"
    h = model.encoder(source).encode_mean(x)
    translation = model.generator(target)(h)
    return {
        "input": x,
        "translation": translation,
        "reconstruction": model.generator(source)(h),
        "cycle": model.translate(translation, target),
    }


def sample_grid(model: UNIT, x_a: Tensor, x_b: Tensor, path: Path) -> Path:
    """Write a PNG: for A→B (left) and B→A (right), rows of input | translation | reconstruction | cycle."""
    halves = []
    with evaluation_mode(model):
        for source, x in (("a", x_a), ("b", x_b)):
            out = translate_images(model, x, source)
            rows = torch.stack([_rgb(out[c]) for c in GRID_COLUMNS], dim=1).flatten(0, 1)
            grid = make_grid(rows.float().cpu(), nrow=len(GRID_COLUMNS), padding=2, pad_value=1.0, normalize=True,
                             value_range=(-1, 1))  # fmt: skip
            halves.append(grid)
    height = max(h.shape[1] for h in halves)
    halves = [torch.nn.functional.pad(h, (0, 0, 0, height - h.shape[1]), value=1.0) for h in halves]
    spacer = torch.ones(3, height, 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([halves[0], spacer, halves[1]], dim=2), path)
    return path


def read_log(path: Path) -> list[dict]:
    """Scalar records of a run's log.jsonl (image records are skipped; a torn last line is ignored)."""
    records = []
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "image" not in record:
            records.append(record)
    return records


def plot_losses(log_path: Path, out_path: Path) -> Path | None:
    """Plot every logged scalar against the step, one panel per group (G/..., D/...), as a PNG."""
    records = read_log(log_path)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k in r if k not in ("step", "time") and isinstance(r[k], float | int)})
    series = {k: [(r["step"], r[k]) for r in records if k in r] for k in keys}
    series = {k: v for k, v in series.items() if len({y for _, y in v}) > 1}  # a constant says nothing
    if not series:
        return None
    groups: dict[str, list[str]] = {}
    for key in series:
        groups.setdefault(key.split("/")[0] if "/" in key else "other", []).append(key)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.5), squeeze=False)
    for ax, (group, members) in zip(axes[0], groups.items(), strict=True):
        values = [y for key in members for _, y in series[key] if math.isfinite(y)]
        for key in members:
            ax.plot([x for x, _ in series[key]], [y for _, y in series[key]], label=key, linewidth=1)
        ax.set_title(group)
        ax.set_xlabel("iteration")
        if values and min(values) > 0 and max(values) / min(values) > 20:  # terms spanning decades
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path


#: What each confusion matrix of :func:`unitkit.evaluate.confusion_matrices` reads.
CONFUSION_TITLES = {
    "a": "A's test set, A's classifier",
    "b": "B's test set via D_b's stem (accuracy_b)",
    "b2a": "B's test set translated to A, A's classifier",
}


def plot_confusions(confusions: dict[str, Tensor], accuracies: dict[str, float], path: Path) -> Path:
    """Draw confusion matrices side by side as a PNG: rows are true classes, each row in % of its images.

    ``accuracies`` holds ``accuracy_NAME`` for each matrix, shown in its title. A class swap (a translation
    drawing every 3 as a 4) shows as one bright cell off the diagonal.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(confusions), figsize=(4.2 * len(confusions), 4.4), squeeze=False)
    for ax, (name, counts) in zip(axes[0], confusions.items(), strict=True):
        rows = counts.float() / counts.sum(1, keepdim=True).clamp_min(1)
        ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
        for true, row in enumerate(rows.tolist()):
            for predicted, share in enumerate(row):
                if share >= 0.01:
                    colour = "white" if share > 0.6 else "black"
                    ax.text(predicted, true, f"{share:.0%}", ha="center", va="center", fontsize=6, color=colour)
        title = CONFUSION_TITLES.get(name, name)
        ax.set_title(f"{title}\naccuracy {accuracies[f'accuracy_{name}']:.4f}", fontsize=9)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticks(range(len(rows)))
        ax.set_yticks(range(len(rows)))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_index(run_dir: Path, title: str, status: str) -> Path:
    """Write RUN_DIR/index.html: status, loss curves, confusion matrices, the newest sample grids first, and the
    recipe."""
    run_dir = Path(run_dir)
    samples = sorted((run_dir / "samples").glob("step_*.png"), reverse=True)
    recipe = (run_dir / "recipe.toml").read_text(encoding="utf-8") if (run_dir / "recipe.toml").exists() else ""
    evaluation = run_dir / "evaluation.json"
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}img{image-rendering:pixelated;"
        "max-width:100%}figure{margin:1em 0}pre{background:#f4f4f4;padding:1em;overflow:auto}</style>",
        f"<h1>{html.escape(title)}</h1><p>{html.escape(status)}</p>",
    ]
    if evaluation.exists():
        parts.append(f"<h2>Evaluation</h2><pre>{html.escape(evaluation.read_text(encoding='utf-8'))}</pre>")
    if (run_dir / "losses.png").exists():
        parts.append("<h2>Losses</h2><img src='losses.png' alt='loss curves'>")
    if (run_dir / "confusion.png").exists():
        parts.append("<h2>Classification (latest evaluation)</h2><img src='confusion.png' alt='confusion matrices'>")
    parts.append(
        "<h2>Samples</h2><p>Left: A→B, right: B→A. Columns: " + " | ".join(GRID_COLUMNS) + " (fixed test images).</p>"
    )
    for sample in samples:
        step = int(sample.stem.split("_")[1])
        parts.append(f"<figure><figcaption>iteration {step:,}</figcaption><img src='samples/{sample.name}'></figure>")
    parts.append(f"<h2>Recipe</h2><pre>{html.escape(recipe)}</pre>")
    path = run_dir / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def format_cell(value: object) -> str:
    """A table cell: floats to 4 significant digits, a missing value empty."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


#: Columns of a results table that describe the run rather than measure it, or that only qualify another.
_NOT_PLOTTED = ("variant", "iterations", "seconds", "iteration", "fid_images_a", "fid_images_b")


def write_results(rows: list[dict[str, float | int | str]], out_dir: Path, title: str) -> list[Path]:
    """Write a sweep's results as OUT_DIR/results.md, results.csv and a bar chart per metric (results.png).

    Each row is one variant: ``variant``, ``iterations``, ``seconds`` and its evaluation metrics.
    """
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with (out_dir / "results.csv").open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |" for row in rows]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    metrics = [c for c in columns if c not in _NOT_PLOTTED and not c.endswith("_step")]
    metrics = [m for m in metrics if any(isinstance(row.get(m), float | int) for row in rows)]
    written = [out_dir / "results.md", out_dir / "results.csv"]
    if metrics:
        plot_results(rows, metrics, out_dir / "results.png", title)
        written.append(out_dir / "results.png")
    return written


def floor_of(metric: str) -> str:
    """The metric a translation must beat to be worth its score: untranslated images for FID/KID, one
    constant colour for pixel accuracy ("" when there is none)."""
    if metric.startswith(("fid_", "kid_")):
        return f"{metric.split('_')[0]}_untranslated"
    if metric.startswith("pixel_accuracy_"):
        return metric.replace("pixel_accuracy_", "pixel_accuracy_floor_", 1)
    return ""


def plot_results(rows: list[dict], metrics: list[str], path: Path, title: str) -> Path:
    """One horizontal bar chart per metric, a bar per variant, with the metric's floor dashed where it has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floors = {floor_of(metric) for metric in metrics}
    metrics = [metric for metric in metrics if metric not in floors]
    variants = [str(row["variant"]) for row in rows]
    columns = 2 if len(metrics) in (2, 4) else min(3, len(metrics))
    lines = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns + 1, (0.3 * len(rows) + 1.2) * lines),
                             squeeze=False, sharey=True)  # fmt: skip
    for ax, metric in zip(axes.flat, metrics, strict=False):
        values = [row.get(metric) for row in rows]
        heights = [v if isinstance(v, float | int) else math.nan for v in values]  # a missing value: no bar
        bars = ax.barh(range(len(rows)), heights, color="#4c72b0")
        for bar, value in zip(bars, values, strict=True):
            if isinstance(value, float | int):
                ax.annotate(f"{value:.3g}", (bar.get_width(), bar.get_y() + bar.get_height() / 2), fontsize=7,
                            xytext=(2, 0), textcoords="offset points", va="center")  # fmt: skip
        floor = rows[0].get(floor_of(metric))
        if isinstance(floor, float | int):
            ax.axvline(floor, color="#c44e52", linestyle="--", linewidth=1)
            ax.set_title(f"{metric} (dashed: floor, {floor:.3g})", fontsize=9)
        else:
            ax.set_title(metric, fontsize=9)
        ax.margins(x=0.15)
        ax.set_yticks(range(len(rows)), variants, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    axes[0][0].invert_yaxis()  # the axes share y: invert once, so the first variant is on top
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
