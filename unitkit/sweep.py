"""Plan and run what ``unitkit run`` is asked: one run, or a sweep of a recipe's base and ablations, each over
one or several seeds.

A plan validates every variant's recipe and checks every run directory before the first variant trains. The
variants then train one after another in this process, or side by side (one per GPU, or several CPU jobs that
split the cores), each in its own ``unitkit run --ablation NAME`` process so that CUDA contexts, thread pools and
crashes stay apart, with its output in ``SWEEP_DIR/NAME.log``. A sweep ends with its results table, one row per
finished variant, and over seeds a second table of each metric's mean and standard deviation per ablation.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from unitkit import rundir
from unitkit.checkpoint import checkpoint_step, list_checkpoints, read_seconds
from unitkit.distributed import is_main_process, launched_by_torchrun
from unitkit.errors import CheckpointError, UsageError
from unitkit.recipe import Recipe, ablation_names, load_recipe
from unitkit.registry import Registries
from unitkit.report import write_results
from unitkit.train import RunResult, train

#: The base recipe's name in a sweep: its folder, log and row.
BASE_VARIANT = "base"


@dataclass(frozen=True)
class Request:
    """What ``unitkit run`` is asked, option by option (see ``unitkit run --help``)."""

    recipe: Path
    overrides: tuple[str, ...] = ()
    ablation: str = ""  # --ablation NAME: that variant alone
    all_ablations: bool = False
    chosen: str = ""  # --ablations A,B,...
    out: Path | None = None
    resume: bool = False
    overwrite: bool = False
    jobs: int = 0
    seeds: str = ""  # --seeds S,T,...: each variant once per seed

    @property
    def is_sweep(self) -> bool:
        return self.all_ablations or bool(self.chosen) or bool(self.seeds)


@dataclass
class Variant:
    """One run of a plan: its ablation ("" for the base recipe), resolved recipe and run directory, and how it
    starts there."""

    ablation: str
    seed: int | None  # --seeds: this variant's train.seed; None: the recipe's
    recipe: Recipe
    run_dir: Path
    resume: bool = False
    start: rundir.Start = "fresh"
    # Where it trains in a process of its own (run_parallel): the process, when it started, and its output.
    process: subprocess.Popen | None = field(default=None, repr=False)
    started: float = 0.0
    log: Path | None = None

    @property
    def label(self) -> str:
        """The run's name in its sweep: its folder, log and console lines."""
        return variant_label(self.ablation, self.seed)


@dataclass
class Plan:
    """The runs ``unitkit run`` trains, decided and checked before the first one starts."""

    request: Request
    variants: list[Variant]
    sweep_dir: Path | None  # a sweep's folder (its variants' folders, logs and results table); None for one run
    devices: list[str]  # the devices of the parallel slots (see job_devices); empty: one variant after another here

    @property
    def title(self) -> str:
        """A sweep's results title: the recipe, and what the sweep goes over."""
        request, recipe = self.request, self.variants[0].recipe
        over = ["base and ablations"] if request.all_ablations or request.chosen else []
        over += [f"seeds {', '.join(map(str, variant_seeds(request)))}"] if request.seeds else []
        return f"{recipe.name}{f' [{recipe.ablation}]' if recipe.ablation else ''}: {', '.join(over)}"

    @property
    def resume_command(self) -> str:
        """The command that continues the plan after an interrupt."""
        request = self.request
        again = ["unitkit", "run", str(request.recipe), *(f"--set {shlex.quote(o)}" for o in request.overrides)]
        again += ["--ablation", request.ablation] if request.ablation else []
        if request.all_ablations or request.chosen:
            again += ["--all-ablations"] if request.all_ablations else [f"--ablations {shlex.quote(request.chosen)}"]
        again += [f"--seeds {shlex.quote(request.seeds)}"] if request.seeds else []
        again += ["--out", str(self.sweep_dir or self.variants[0].run_dir)]
        again += [f"--jobs {request.jobs}"] if request.jobs and self.sweep_dir is not None else []
        return " ".join([*again, "--resume"])


@dataclass
class Outcome:
    """How a plan's runs ended."""

    rows: list[dict] = field(default_factory=list)  # the finished variants' result rows (see result_row)
    failed: list[str] = field(default_factory=list)  # labels of the variants that failed in their own processes
    interrupted: str = ""  # "SIGINT" or "SIGTERM" when a signal stopped the plan
    stopped: RunResult | None = None  # the run a signal stopped in this process, with the checkpoint it saved
    written: list[Path] = field(default_factory=list)  # a sweep's results table (markdown, CSV, chart)


def plan_runs(request: Request, registries: Registries, console: Console) -> Plan:
    """Which variants train, in which run directories, and how each starts; nothing trains yet.

    Every variant's recipe is validated and every run directory checked (:func:`unitkit.rundir.check_start`)
    before the first variant trains, so a typo in the last ablation costs nothing; each directory is changed
    only once its run has passed its own start-up checks. A run that an --overwrite killed before its first
    checkpoint had set aside is put back first, and ``console`` says so.
    """
    seeds = variant_seeds(request)
    keys = [(name, seed) for name in variant_names(request) for seed in seeds]
    recipes = [load_recipe(request.recipe, registries, [*request.overrides, *seed_overrides(seed)], name)
               for name, seed in keys]  # fmt: skip
    names, first = [name for name, _ in keys], recipes[0]
    if request.is_sweep:
        if BASE_VARIANT in names:
            raise UsageError(
                f"an ablation named {BASE_VARIANT!r} would share the base recipe's folder in a sweep; rename it"
            )
        what = "ablations" if request.all_ablations or request.chosen else "seeds"
        sweep_dir = request.out or Path("runs") / "-".join(filter(None, (first.name, first.ablation, what)))
        run_dirs = [sweep_dir / variant_label(*key) for key in keys]
    else:
        sweep_dir = None
        run_dirs = [request.out or Path("runs") / "-".join(filter(None, (first.name, first.ablation)))]
    torchrun = launched_by_torchrun()
    if torchrun and request.jobs > 1:
        raise UsageError("--jobs runs a sweep's variants as separate processes; it cannot run under torchrun")
    devices: list[str] = []
    if sweep_dir is not None and len(keys) > 1 and not torchrun:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = job_devices(first.train.device, request.jobs, cuda_count)
    main_process = is_main_process()  # under torchrun, rank 0 alone owns the run directories
    for run_dir in run_dirs if main_process else []:
        if rundir.restore(run_dir):
            console.print(f"put back the run in {run_dir} that an --overwrite killed before its first checkpoint "
                          "had set aside", highlight=False)  # fmt: skip
    # A resumed sweep continues the variants it had started and starts the others.
    resumes = [request.resume and (sweep_dir is None or rundir.has_checkpoint(d)) for d in run_dirs]
    starts = [rundir.check_start(d, resume, request.overwrite) if main_process else "fresh"
              for d, resume in zip(run_dirs, resumes, strict=True)]  # fmt: skip
    variants = [Variant(*key, *rest) for key, *rest in zip(keys, recipes, run_dirs, resumes, starts, strict=True)]
    return Plan(request, variants, sweep_dir, devices)


def variant_names(request: Request) -> list[str]:
    """The ablations the request trains, "" standing for the base recipe (which a sweep trains first)."""
    if request.all_ablations:
        return ["", *ablation_names(request.recipe)]
    if not request.chosen:
        return [request.ablation]
    names = ["", *dict.fromkeys(name.strip() for name in request.chosen.split(",") if name.strip())]
    if len(names) == 1:
        raise UsageError(f"--ablations {request.chosen!r} names no ablation; give A,B,... or use --all-ablations")
    return names


def variant_seeds(request: Request) -> list[int | None]:
    """The seeds of --seeds S,T,... in order, or [None]: each variant once, with its recipe's train.seed."""
    if not request.seeds:
        return [None]
    if any(override.partition("=")[0].strip() == "train.seed" for override in request.overrides):
        raise UsageError("--seeds sets train.seed for each run: leave out --set train.seed")
    try:
        seeds = list(dict.fromkeys(int(seed) for seed in request.seeds.split(",") if seed.strip()))
    except ValueError:
        seeds = []
    if not seeds:
        raise UsageError(f"--seeds {request.seeds!r}: give integers separated by commas, such as --seeds 0,1")
    return seeds


def variant_label(ablation: str, seed: int | None) -> str:
    """A sweep's name for a run: "base" or the ablation's name, and "-seedN" where --seeds sets its seed."""
    name = ablation or BASE_VARIANT
    return name if seed is None else f"{name}-seed{seed}"


def seed_overrides(seed: int | None) -> list[str]:
    """The --set override of a run's seed; none where the recipe's own seed stands."""
    return [] if seed is None else [f"train.seed={seed}"]


def run_plan(plan: Plan, registries: Registries, console: Console, show_progress: bool = True) -> Outcome:
    """Train the plan's variants, side by side where it has parallel slots, and write a sweep's results table
    unless a signal stopped it. ``console`` hears of each variant's start and end."""
    if plan.devices:
        outcome = run_parallel(plan, console)
    else:
        outcome = run_in_process(plan.variants, registries, console, show_progress)
    if plan.sweep_dir is not None and not outcome.interrupted and is_main_process():
        outcome.written = write_results(outcome.rows, plan.sweep_dir, plan.title)
    return outcome


def run_in_process(variants: list[Variant], registries: Registries, console: Console, show_progress: bool) -> Outcome:
    """Train ``variants`` one after another in this process (under torchrun, in every process together); a
    signal ends the plan with the variant it stopped. A variant that fails before its first checkpoint puts back
    the run its --overwrite had set aside."""
    outcome = Outcome()
    for variant in variants:
        recipe = variant.recipe
        label = recipe.name + (f" [{recipe.ablation}]" if recipe.ablation else "")
        console.print(f"[bold]unitkit run[/] {escape(label)} → {escape(str(variant.run_dir))}", highlight=False)
        try:
            result = train(recipe, registries, variant.run_dir, resume=variant.resume, start=variant.start,
                           console=console, show_progress=show_progress)  # fmt: skip
        except BaseException:
            if is_main_process() and rundir.restore(variant.run_dir):
                console.print(f"the run that was in {variant.run_dir} is put back", highlight=False)
            raise
        if result.interrupted:
            outcome.interrupted, outcome.stopped = result.interrupted, result
            return outcome
        done = f"{result.step:,} iterations in {result.seconds:.0f} s; open {variant.run_dir / 'index.html'}"
        console.print(f"[green]done[/] {done}", highlight=False)
        if is_main_process():  # rank 0 alone wrote evaluation.json
            outcome.rows.append(result_row(variant.run_dir, variant.ablation, variant.seed))
    return outcome


def job_devices(device: str, jobs: int, cuda_count: int) -> list[str]:
    """The ``train.device`` of each parallel slot; no slots (an empty list) means run in this process.

    ``jobs`` = 0 picks for the machine: one slot per GPU when ``device`` leaves the GPU open ("auto" or "cuda")
    and there are several, else one. Open-GPU slots go round the GPUs, ``cuda:(k % cuda_count)``; any other
    device ("cpu", a pinned "cuda:N") is every slot's, and a device the machine lacks is the run's error to
    report, not a reason to fall back.
    """
    open_gpu = device in ("auto", "cuda") and cuda_count > 0
    if jobs == 0:
        jobs = cuda_count if open_gpu else 1
    if jobs <= 1:
        return []
    return [f"cuda:{k % cuda_count}" for k in range(jobs)] if open_gpu else [device] * jobs


def run_parallel(plan: Plan, console: Console) -> Outcome:
    """Train the plan's variants, each in its own process, with at most ``len(plan.devices)`` at a time, slot k
    on ``plan.devices[k]``.

    The outcome has the result rows of the finished variants (as :func:`run_in_process` makes them), the labels
    of the variants that failed, and the signal if the sweep was interrupted; an interrupt reaches every running
    variant, which saves a checkpoint as a single run does.
    """
    variants, devices, sweep_dir = plan.variants, plan.devices, plan.sweep_dir
    sweep_dir.mkdir(parents=True, exist_ok=True)  # for the variants' logs
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    waiting, running, finished, failed = list(variants), {}, set(), []
    interrupted = ""

    def stop(signum: int, _frame: object) -> None:
        # The children run in their own sessions (a terminal's Ctrl-C reaches only this process), so each
        # signal is passed on once: a second Ctrl-C makes them leave at once, as it does a single run.
        nonlocal interrupted
        interrupted = signal.Signals(signum).name
        for variant in running.values():
            variant.process.send_signal(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        while waiting or running:
            free = [slot for slot in range(len(devices)) if slot not in running]
            while waiting and free and not interrupted:
                slot, variant = free.pop(0), waiting.pop(0)
                _start(plan.request, variant, devices[slot], threads, sweep_dir)
                running[slot] = variant
                where = f"{devices[slot]} (log: {variant.log})"
                console.print(f"started {escape(variant.label)} on {escape(where)}", highlight=False)
            time.sleep(0.5)
            for slot, variant in list(running.items()):
                code = variant.process.poll()
                if code is None:
                    continue
                del running[slot]
                seconds = time.perf_counter() - variant.started
                if code == 0:
                    finished.add(variant.label)
                    console.print(f"[green]done[/] {escape(variant.label)} in {seconds:.0f} s", highlight=False)
                elif code in (130, 143) and interrupted:
                    console.print(f"[yellow]interrupted[/] {escape(variant.label)}", highlight=False)
                else:
                    failed.append(variant.label)
                    tail = variant.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
                    console.print(f"[red]failed[/] {escape(variant.label)} (exit {code}):", highlight=False)
                    for line in tail:
                        console.print(f"  {escape(line)}", highlight=False)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    rows = [result_row(v.run_dir, v.ablation, v.seed) for v in variants if v.label in finished]
    return Outcome(rows, failed, interrupted)


def _start(request: Request, variant: Variant, device: str, threads: int, sweep_dir: Path) -> None:
    env = dict(os.environ)
    if device.startswith("cuda:"):
        # The child sees its GPU alone, so nothing it does touches GPU 0 (CUDA's default device).
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        index = int(device.split(":")[1])
        env["CUDA_VISIBLE_DEVICES"] = visible[index] if index < len(visible) else str(index)
        device = "cuda"
    elif device != "cuda":  # on CPU the slots share the cores instead of each starting a thread per core
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "unitkit", "run", str(request.recipe), "--out", str(variant.run_dir), "--quiet"]
    command += [arg for override in [*request.overrides, *seed_overrides(variant.seed)] for arg in ("--set", override)]
    command += ["--set", f"train.device={device}"]
    command += ["--ablation", variant.ablation] if variant.ablation else []
    # A variant an interrupt caught before its first checkpoint starts afresh in its directory without --overwrite.
    command += ["--resume"] if variant.resume else ["--overwrite"] if variant.start == "replace" else []
    variant.log = sweep_dir / f"{variant.label}.log"
    with variant.log.open("a" if variant.resume else "w", encoding="utf-8") as log:  # a resumed variant adds
        variant.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    variant.started = time.perf_counter()


def result_row(run_dir: Path, ablation: str = "", seed: int | None = None) -> dict:
    """A run's row of the sweep's results table: its ablation ("base" for the base recipe) and seed where
    --seeds set it, its last checkpoint's iteration and training wall seconds (over the run and its resumptions;
    setup and the final evaluation left out), then its evaluation.json.

    Seconds are None (an empty cell) where unknown: an old or unreadable checkpoint, which must not stop the
    table of the others.
    """
    last = list_checkpoints(run_dir / "checkpoints")
    iterations = checkpoint_step(last[-1]) if last else 0
    try:
        seconds = read_seconds(last[-1]) if last else None
    except CheckpointError:
        seconds = None
    seconds = None if seconds is None else round(seconds)
    evaluation = run_dir / "evaluation.json"
    metrics = json.loads(evaluation.read_text(encoding="utf-8")) if evaluation.exists() else {}
    seeded = {} if seed is None else {"seed": seed}
    return {"variant": variant_label(ablation, None), **seeded, "iterations": iterations, "seconds": seconds} | metrics
