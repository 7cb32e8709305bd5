"""What a person looks at: sample grids, loss curves and the run's index.html."""

from __future__ import annotations

import html
import json
import math
import statistics
import time
from dataclasses import dataclass
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


#: Sample grid tiles are enlarged (nearest neighbour, by a whole factor) to at least this many pixels a side, so
#: 32×32 digits are readable in the PNG itself, wherever it is shown.
MIN_TILE = 128


def sample_grid(model: UNIT, x_a: Tensor, x_b: Tensor, path: Path) -> Path:
    """Write a PNG: for A→B (left) and B→A (right), rows of input | translation | reconstruction | cycle.

    Images smaller than :data:`MIN_TILE` pixels are enlarged by the smallest whole factor that reaches it.
    """
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
    grid = torch.cat([halves[0], spacer, halves[1]], dim=2)
    factor = math.ceil(MIN_TILE / min(*x_a.shape[-2:], *x_b.shape[-2:]))
    if factor > 1:  # the whole grid at once, so padding and spacer keep their proportions
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=factor, mode="nearest")[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
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


@dataclass
class RunStatus:
    """Where a run stands, for the header of its page (index.html)."""

    state: str  # "running", "evaluating" (the final evaluation), "finished", "stopped" or "failed"
    step: int
    iterations: int
    seconds_per_iteration: float | None = None  # wall time per iteration of this process; None before the first
    elapsed: float | None = None  # over the run and its resumptions; None when a resumed-from checkpoint lacks it
    device: str = ""
    precision: str = ""  # of the forward passes: "fp32", "bf16" or "fp16"
    note: str = ""  # why the run stopped or failed

    @property
    def remaining(self) -> float | None:
        """Seconds until the last iteration at this process's pace, while iterations remain to be run."""
        if self.state != "running" or self.seconds_per_iteration is None:
            return None
        return self.seconds_per_iteration * max(self.iterations - self.step, 0)


#: Page states in which the run is still writing: the page reloads itself (a meta refresh) in those alone.
LIVE_STATES = ("running", "evaluating")
#: Seconds between reloads of a live page.
REFRESH_SECONDS = 30

#: The baselines a metric family is read against ("{}": the metric's direction, such as a2b): scores that an
#: untranslated image or one constant colour already get, so a translation is worth only what it adds to them.
BASELINES: dict[str, tuple[str, ...]] = {
    "pixel_accuracy": ("pixel_accuracy_floor_{}",),
    "scene_accuracy": ("scene_accuracy_untranslated_{}", "scene_accuracy_constant_{}"),
    "fid": ("fid_untranslated",),
    "kid": ("kid_untranslated",),
}


def baselines_of(metric: str) -> list[str]:
    """The keys of ``metric``'s baselines (see :data:`BASELINES`): ``fid_a2b`` → ``["fid_untranslated"]``;
    ``[]`` for a metric without any, such as a baseline itself or ``accuracy_b``."""
    family, _, direction = metric.rpartition("_")
    found = [template.format(direction) for template in BASELINES.get(family, ())]
    return [baseline for baseline in found if baseline != metric]  # fid_untranslated is no baseline of itself


def baseline_label(metric: str, baseline: str) -> str:
    """A baseline's name without its metric's family and direction: ``scene_accuracy_constant_a2b`` → ``constant``."""
    family, _, direction = metric.rpartition("_")
    return baseline.removeprefix(f"{family}_").removesuffix(f"_{direction}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _header(title: str, status: RunStatus) -> str:
    share = status.step / status.iterations if status.iterations else 0.0
    facts = {
        "status": f"<span class='state {html.escape(status.state)}'>{html.escape(status.state)}</span>",
        "iteration": f"{status.step:,} / {status.iterations:,} ({share:.0%})",
        "s/iteration": "–" if status.seconds_per_iteration is None else f"{status.seconds_per_iteration:.3g}",
        "elapsed": _duration(status.elapsed),
        "remaining": _duration(status.remaining),
        "device": html.escape(status.device or "–"),
        "precision": html.escape(status.precision or "–"),
        "page written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    cells = "".join(
        f"<div><dt>{name}</dt><dd id='field-{name.replace('/', '-').replace(' ', '-')}'>{value}</dd></div>"
        for name, value in facts.items()
    )
    note = f"<p class='note {html.escape(status.state)}'>{html.escape(status.note)}</p>" if status.note else ""
    bar = f"<div class='bar {html.escape(status.state)}'><span style='width:{min(share, 1):.1%}'></span></div>"
    return f"<header><h1>{html.escape(title)}</h1><dl class='facts'>{cells}</dl>{bar}{note}</header>"


def _latest_evaluation(run_dir: Path) -> tuple[dict[str, float], str]:
    """The metrics to show and what they are: the final evaluation.json of a finished run, else the newest
    evaluation logged during training (with the best so far)."""
    from unitkit.evaluate import best_logged  # evaluate draws its figures with this module: imported late

    records = [r for r in read_log(run_dir / "log.jsonl") if any(k.startswith("eval/") for k in r)]
    if not records:
        return {}, ""
    metrics = {k.removeprefix("eval/"): v for k, v in records[-1].items() if k.startswith("eval/")}
    return metrics | best_logged(run_dir / "log.jsonl"), f"latest evaluation, iteration {records[-1]['step']:,}"


def _metrics_table(metrics: dict[str, float | int]) -> str:
    """One row per metric: its value, its baselines (:func:`baselines_of`) and its best, in columns that only
    appear when some metric has them."""
    paired = {m: [b for b in baselines_of(m) if b in metrics] for m in metrics}
    bests = [k for k in metrics if k.startswith("best_")]
    shown_elsewhere = {b for found in paired.values() for b in found} | set(bests)
    has_baselines = any(paired.values())
    columns = ["metric", "value"] + ["floor / baseline"] * has_baselines + ["best (iteration)"] * bool(bests)
    rows = []
    for metric, value in metrics.items():
        if metric in shown_elsewhere:
            continue
        cells = [f"<td class='name'>{html.escape(metric)}</td>", f"<td class='num'>{format_cell(value)}</td>"]
        if has_baselines:
            found = [
                f"<span title='{html.escape(b)}'>{format_cell(metrics[b])} "
                f"<small>{html.escape(baseline_label(metric, b))}</small></span>"
                for b in paired[metric]
            ]
            cells.append(f"<td>{'<br>'.join(found)}</td>")
        if bests:
            best, step = metrics.get(f"best_{metric}"), metrics.get(f"best_{metric}_step")
            at = f" <small>({step:,})</small>" if isinstance(step, int) else ""
            cells.append(f"<td class='num'>{format_cell(best)}{at}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{c}</th>" for c in columns)
    legend = (
        "<p class='muted'>floor / baseline: what the untranslated input or one constant colour scores, which a "
        "translation has to beat.</p>" * has_baselines
    )
    return f"<table id='metrics'><tr>{head}</tr>{''.join(rows)}</table>{legend}"


_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2330;margin:0}
header{background:#f4f6f9;border-bottom:1px solid #dde1e8;padding:1.2em 2em}
main{padding:.5em 2em 2em;max-width:1400px}
h1{font-size:1.45em;margin:0 0 .5em}h2{font-size:1.15em;margin:1.6em 0 .5em}
.facts{display:flex;flex-wrap:wrap;gap:.5em 2.2em;margin:0}
dt{font-size:.72em;text-transform:uppercase;letter-spacing:.05em;color:#5b6475}
dd{margin:0;font-weight:600;font-variant-numeric:tabular-nums}
.state{display:inline-block;padding:0 .6em;border-radius:1em;color:#fff;background:#4a5568}
.state.running,.state.evaluating{background:#2b6cb0}.state.finished{background:#2f855a}
.state.stopped{background:#b7791f}.state.failed{background:#c53030}
.bar{height:6px;background:#dde1e8;border-radius:3px;margin-top:.9em;max-width:640px}
.bar span{display:block;height:100%;background:#2b6cb0;border-radius:3px}.bar.finished span{background:#2f855a}
.bar.stopped span{background:#b7791f}.bar.failed span{background:#c53030}
.note{margin:.8em 0 0;font-weight:600}.note.failed{color:#c53030}.note.stopped{color:#975a16}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:.3em 1em;border-bottom:1px solid #dde1e8;text-align:left;vertical-align:top}
th{font-size:.8em;color:#5b6475;font-weight:600}td.num{text-align:right}td.name{font-family:ui-monospace,monospace}
small,.muted{color:#5b6475}
img{max-width:100%;height:auto}img.grid{image-rendering:pixelated;border:1px solid #dde1e8}
select{font:inherit;padding:.15em .3em;margin-left:.4em}
details{margin-top:1.6em}summary{cursor:pointer;font-weight:600;font-size:1.15em}
pre{background:#f4f6f9;padding:1em;overflow:auto;font-size:.85em}
"""

# Shows the sample grid picked in the selector, and keeps the pick in the address (#step_...) across reloads.
_GRID_SCRIPT = """
const pick = document.getElementById('grid-step'), grid = document.getElementById('grid');
function show() {
  grid.src = 'samples/' + pick.value + '.png';
  grid.alt = 'sample grid, ' + pick.selectedOptions[0].text;
}
pick.addEventListener('change', () => { show(); history.replaceState(null, '', '#' + pick.value); });
const wanted = decodeURIComponent(location.hash.slice(1));
if ([...pick.options].some(o => o.value === wanted)) { pick.value = wanted; show(); }
"""


def _samples(samples: list[Path]) -> str:
    """The newest sample grid, with a selector for the older ones (newest first)."""
    intro = ("<h2>Samples</h2><p class='muted'>Left: A→B, right: B→A. Columns: " + " | ".join(GRID_COLUMNS)
             + " (fixed test images).</p>")  # fmt: skip
    if not samples:
        return intro + "<p class='muted'>No sample grid yet.</p>"
    options = "".join(
        f"<option value='{html.escape(s.stem)}'>iteration {int(s.stem.split('_')[1]):,}{' (newest)' * (i == 0)}"
        "</option>"
        for i, s in enumerate(samples)
    )
    newest = samples[0]
    return (
        f"{intro}<p><label>Grid at<select id='grid-step'>{options}</select></label></p>"
        f"<img id='grid' class='grid' src='samples/{html.escape(newest.name)}' alt='sample grid, iteration "
        f"{int(newest.stem.split('_')[1]):,}'><script>{_GRID_SCRIPT}</script>"
    )


def write_index(run_dir: Path, title: str, status: RunStatus) -> Path:
    """Write RUN_DIR/index.html, a self-contained page to keep open beside a run: a header with its state, pace
    and device, the metrics beside their baselines, the loss curves, the newest sample grid (older ones behind a
    selector), confusion matrices when classifying, and the resolved recipe, folded. While the run is live the
    page reloads itself every :data:`REFRESH_SECONDS` seconds."""
    run_dir = Path(run_dir)
    samples = sorted((run_dir / "samples").glob("step_*.png"), reverse=True)
    recipe = (run_dir / "recipe.toml").read_text(encoding="utf-8") if (run_dir / "recipe.toml").exists() else ""
    evaluation = run_dir / "evaluation.json"
    if status.state == "finished" and evaluation.exists():
        metrics, about = json.loads(evaluation.read_text(encoding="utf-8")), "final evaluation"
    else:
        metrics, about = _latest_evaluation(run_dir)
    refresh = f"<meta http-equiv='refresh' content='{REFRESH_SECONDS}'>" if status.state in LIVE_STATES else ""
    parts = [
        f"<!doctype html><html lang='en'><meta charset='utf-8'>{refresh}",
        f"<meta name='viewport' content='width=device-width'><title>{html.escape(title)} · {status.state}</title>",
        f"<style>{_STYLE}</style>",
        _header(title, status),
        "<main>",
        "<h2>Metrics</h2>",
        f"<p class='muted'>{html.escape(about)}</p>{_metrics_table(metrics)}"
        if metrics
        else "<p class='muted'>No evaluation yet.</p>",
    ]
    if (run_dir / "losses.png").exists():
        parts.append("<h2>Losses</h2><img id='losses' src='losses.png' alt='loss curves'>")
    parts.append(_samples(samples))
    if (run_dir / "confusion.png").exists():
        parts.append("<h2>Classification (latest evaluation)</h2><img src='confusion.png' alt='confusion matrices'>")
    parts.append(f"<details id='recipe'><summary>Recipe (resolved)</summary><pre>{html.escape(recipe)}</pre></details>")
    parts.append("</main></html>")
    path = run_dir / "index.html"
    partial = path.with_name(".index.html.tmp")  # a browser reloading the page never reads it half-written
    partial.write_text("\n".join(parts), encoding="utf-8")
    partial.replace(path)
    return path


def format_cell(value: object) -> str:
    """A table cell: floats to 4 significant digits, a missing value empty."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


#: Columns of a results table that describe the run rather than measure it, or that only qualify another.
_NOT_PLOTTED = ("variant", "seed", "seeds", "iterations", "seconds", "iteration", "fid_images_a", "fid_images_b")
#: The suffix of a column holding another column's standard deviation over seeds.
SPREAD = "_std"


def write_results(rows: list[dict[str, float | int | str]], out_dir: Path, title: str) -> list[Path]:
    """Write a sweep's results as OUT_DIR/results.md, results.csv and a bar chart per metric (results.png).

    Each row is one run: ``variant``, ``seed`` where the sweep went over seeds, ``iterations``, ``seconds`` and
    its evaluation metrics. Over seeds, each variant is also summarised (:func:`over_seeds`): results.md opens
    with each number's mean ± standard deviation, results_mean.csv holds them, and the chart shows the means
    with the deviations as error bars.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_csv(rows, out_dir / "results.csv")]
    lines = [f"# {title}", "", *markdown_table(rows)]
    plotted = rows
    if any("seed" in row for row in rows):
        plotted = over_seeds(rows)
        written.append(write_csv(plotted, out_dir / "results_mean.csv"))
        lines[2:2] = ["## Mean ± standard deviation over seeds", "", *markdown_table(plotted), "", "## Each run", ""]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    written.insert(0, out_dir / "results.md")

    columns = dict.fromkeys(key for row in plotted for key in row)
    metrics = [c for c in columns if c not in _NOT_PLOTTED and not c.endswith(("_step", SPREAD))]
    metrics = [m for m in metrics if any(isinstance(row.get(m), float | int) for row in plotted)]
    if metrics:
        plot_results(plotted, metrics, out_dir / "results.png", title)
        written.append(out_dir / "results.png")
    return written


def over_seeds(rows: list[dict]) -> list[dict]:
    """One row per variant of a sweep over seeds: how many seeds finished, then for each number of its runs the
    mean and, in ``NAME_std``, the sample standard deviation (n − 1; empty for one seed). The iterations of best
    values (``*_step``) and the seeds themselves are left out."""
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(str(row["variant"]), []).append(row)
    summary = []
    for variant, runs in by_variant.items():
        entry: dict = {"variant": variant, "seeds": len(runs)}
        for column in dict.fromkeys(key for run in runs for key in run):
            values = [run[column] for run in runs if isinstance(run.get(column), float | int)]
            if column in ("variant", "seed") or column.endswith("_step") or not values:
                continue
            entry[column] = statistics.fmean(values)
            entry[column + SPREAD] = statistics.stdev(values) if len(values) > 1 else None
        summary.append(entry)
    return summary


def markdown_table(rows: list[dict]) -> list[str]:
    """The lines of a markdown table of ``rows``; a column's ``NAME_std`` joins its cell as "mean ± std"."""
    columns = [c for c in dict.fromkeys(key for row in rows for key in row) if not c.endswith(SPREAD)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(format_with_spread(row, c) for c in columns) + " |" for row in rows]


def format_with_spread(row: dict, column: str) -> str:
    """``row``'s cell of ``column`` (:func:`format_cell`), as "mean ± std" where the row has ``column``_std."""
    spread = row.get(column + SPREAD)
    return format_cell(row.get(column)) + ("" if spread is None else f" ± {format_cell(spread)}")


def write_csv(rows: list[dict], path: Path) -> Path:
    """``rows`` as a CSV file with a header of every key, in order of appearance."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_results(rows: list[dict], metrics: list[str], path: Path, title: str) -> Path:
    """One horizontal bar chart per metric, a bar per variant, with the metric's baselines (:data:`BASELINES`)
    dashed where it has them, and error bars where the rows have the metric's standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baselines = {baseline for metric in metrics for baseline in baselines_of(metric)}
    metrics = [metric for metric in metrics if metric not in baselines]
    variants = [str(row["variant"]) for row in rows]
    columns = 2 if len(metrics) in (2, 4) else min(3, len(metrics))
    lines = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns + 1, (0.3 * len(rows) + 1.2) * lines),
                             squeeze=False, sharey=True)  # fmt: skip
    for ax, metric in zip(axes.flat, metrics, strict=False):
        values = [row.get(metric) for row in rows]
        heights = [v if isinstance(v, float | int) else math.nan for v in values]  # a missing value: no bar
        spreads = [row.get(metric + SPREAD) or 0 for row in rows]  # over seeds: error bars of ± one deviation
        bars = ax.barh(range(len(rows)), heights, xerr=spreads if any(spreads) else None, color="#4c72b0")
        for bar, value in zip(bars, values, strict=True):
            if isinstance(value, float | int):
                ax.annotate(f"{value:.3g}", (bar.get_width(), bar.get_y() + bar.get_height() / 2), fontsize=7,
                            xytext=(2, 0), textcoords="offset points", va="center")  # fmt: skip
        floors = [(baseline_label(metric, b), rows[0][b]) for b in baselines_of(metric)
                  if isinstance(rows[0].get(b), float | int)]  # fmt: skip
        for (_, floor), colour in zip(floors, ("#c44e52", "#dd8452", "#8172b3"), strict=False):
            ax.axvline(floor, color=colour, linestyle="--", linewidth=1)
        dashed = ", ".join(f"{label} {floor:.3g}" for label, floor in floors)
        ax.set_title(f"{metric} (dashed: {dashed})" if floors else metric, fontsize=9)
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
