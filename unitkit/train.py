"""Training a UNIT model, top to bottom.

One iteration (:class:`UnitStep`, with the losses in :mod:`unitkit.objective`): encode both domains, reconstruct
and translate (once), update the discriminators on the detached translations, then update encoders and
generators against the freshly updated discriminators. The generator forward pass is shared by both updates: the
authors' code recomputes it for the discriminator.

:func:`train` is the loop: :func:`start_run` builds a :class:`Run`, the loop calls its step and then, by name, its
periodic actions (log, checkpoint, evaluate, sample), and :func:`finish_run` ends the run however the loop ended.

The same loop runs on one CPU, one GPU (mixed precision, channels_last, torch.compile as recipe switches) or
many processes under torchrun (DistributedDataParallel; see unitkit.distributed).
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from unitkit import checkpoint as ckpt
from unitkit import distributed, rundir
from unitkit.components import DomainData, GANLoss, Logger
from unitkit.data import build_data, endless_images, first_images
from unitkit.ema import WeightAverage, averaged_part
from unitkit.errors import CheckpointError, StoppedBeforeCheckpoint, TrainingError, UsageError
from unitkit.evaluate import best_logged, evaluate_run, fid_kid_if_asked, with_split
from unitkit.fid import MetricsError, find_inception
from unitkit.model import UNIT, build_model
from unitkit.objective import discriminator_loss, generator_losses, translate_both
from unitkit.recipe import ObjectiveSettings, Recipe, RecipeError, TrainSettings, changes_on_resume
from unitkit.registry import Registries
from unitkit.report import RunStatus, plot_losses, sample_grid, write_index


@dataclass
class RunResult:
    """Where :func:`train` left the run: its last iteration and checkpoint, and whether a signal stopped it."""

    run_dir: Path
    step: int
    checkpoint: Path  # the one saved last
    seconds: float  # this process's wall time
    interrupted: str = ""  # "SIGINT" or "SIGTERM" when a signal stopped the run early
    skipped_updates: int = 0


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """``auto`` → CUDA when present, else CPU; an unavailable CUDA device is an error, not a silent fallback.

    ``option`` is where the name came from (``train.device``, or a command's ``--device``); the errors name it.
    """
    asked = f"{option} {name}" if option.startswith("-") else f"{option} = {name!r}"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch lists every device type it knows, most of them not for unitkit
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{asked} is not a device unitkit runs on; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"{asked}, but this machine has no CUDA device; use 'auto' or 'cpu'")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise TrainingError(
            f"{asked}, but this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainingError(f"{asked}, but this machine has no Apple GPU (MPS); use 'auto' or 'cpu'")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (the CPU's and every GPU's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """No gradients for these modules' parameters inside the block (the generator step leaves D alone)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def rng_set_aside(device: torch.device) -> AbstractContextManager[None]:
    """Evaluation and sample grids may draw from the global RNGs (data loaders' seeds, random transforms); inside
    this block they leave training's random stream as it was. Otherwise a resumed run, which does not evaluate at
    the iteration it starts from, would draw different noise than the uninterrupted run, and under torchrun rank
    0's evaluations would leave the processes' RNGs disagreeing."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@contextmanager
def stop_requests(at_once: bool = False) -> Iterator[list[str]]:
    """Ctrl-C (SIGINT) and a cluster's preemption (SIGTERM) ask the loop to stop after this iteration and save.

    Yields the names of the signals received, in order. The handlers only record them: an exception raised from
    a handler can land in a weakref callback or ``__del__``, where Python prints and ignores it, and the run
    would go on. A second Ctrl-C raises KeyboardInterrupt, to leave at once. With ``at_once`` (work that can be
    abandoned, such as the final evaluation after the last checkpoint), either signal raises KeyboardInterrupt
    at once, after recording its name.
    """
    received: list[str] = []

    def handler(signum: int, frame: object) -> None:
        leave = at_once or (bool(received) and signum == signal.SIGINT)
        received.append(signal.Signals(signum).name)
        if leave:
            raise KeyboardInterrupt

    try:
        previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield received
        return
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _progress(console: Console) -> Progress | LineProgress:
    """A live bar on a terminal; in a log file or a pipe, a whole plain line per logged step."""
    if not (console.is_terminal or console.is_jupyter):  # a notebook shows rich's live bar too
        return LineProgress(console)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
        console=console,
        transient=False,
    )


class LineProgress:
    """Training progress for a log file or a pipe, with the part of rich's ``Progress`` interface the loop uses.

    There rich would draw nothing until the end, and then one bar cut to the console's width (80 columns unless
    COLUMNS says otherwise). This prints, for each update that brings losses (a logged step), one plain line
    that nothing cuts: the run's name, the step, seconds per iteration, time spent and left, and the losses.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.description, self.total, self.first, self.started = "", 0, 0, 0.0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def add_task(self, description: str, total: int, completed: int = 0, **fields: str) -> int:
        self.description, self.total, self.first = description, total, completed
        self.started = time.perf_counter()
        return 0

    def update(self, task: int, completed: int, losses: str = "", **fields: str) -> None:
        if not losses:  # an iteration that logged nothing
            return
        spent = time.perf_counter() - self.started
        per_step = spent / max(completed - self.first, 1)
        left = per_step * max(self.total - completed, 0)
        line = (
            f"{self.description}  step {completed:,}/{self.total:,}  {per_step:.3g} s/it  "
            f"elapsed {timedelta(seconds=round(spent))}  eta {timedelta(seconds=round(left))}  {losses}"
        )
        self.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)


class Synced(nn.Module):
    """Runs ``function`` as the forward of ``networks``, so DistributedDataParallel sees the pass and averages
    exactly those networks' gradients (shared blocks included once) across processes."""

    def __init__(self, networks: list[nn.Module], function: Callable[..., object]) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.function = function

    def forward(self, *args: object) -> object:
        return self.function(*args)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on a GPU that has it, else fp16 (with loss scaling) on CUDA; fp32 on CPU. None means fp32."""
    if precision == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "fp32" if device.type != "cuda" else "bf16" if bf16 else "fp16"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def emulated_precision(dtype: torch.dtype | None, device: torch.device) -> str | None:
    """Why ``dtype`` autocast would be slow on ``device``: a CPU without oneDNN kernels for it emulates the type.

    Measured on an AVX2-only CPU (2 cores), the MNIST->USPS iteration took 195 s in bf16 against 13 s in fp32.
    """
    kernels = {torch.bfloat16: ("bf16", torch.ops.mkldnn._is_mkldnn_bf16_supported),
               torch.float16: ("fp16", torch.ops.mkldnn._is_mkldnn_fp16_supported)}  # fmt: skip
    if device.type != "cpu" or dtype not in kernels or kernels[dtype][1]():
        return None
    name, capability = kernels[dtype][0], torch.backends.cpu.get_cpu_capability()
    return (
        f"train.precision = {name!r} on a CPU without {name} kernels (torch reports {capability}): autocast "
        f"emulates it, often 10x slower than fp32; --set train.precision=fp32 (or auto) trains faster"
    )


def speed_switches(cfg: TrainSettings, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype and whether to use channels_last, with ``auto`` resolved for this device."""
    channels_last = device.type == "cuda" if cfg.channels_last == "auto" else bool(cfg.channels_last)
    return autocast_dtype(cfg.precision, device), channels_last


@dataclass
class UnitStep:
    """Everything one training iteration touches; calling it runs the iteration (the heart of this file)."""

    model: UNIT
    generator_pass: nn.Module  # E/G forward (DDP-wrapped under torchrun)
    discriminator_pass: nn.Module  # D loss (DDP-wrapped under torchrun)
    gan: GANLoss
    reconstruction: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    weights: ObjectiveSettings
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    scalers: dict[str, torch.amp.GradScaler]
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: fp32
    memory_format: torch.memory_format
    on_nonfinite: str
    votes: distributed.Votes  # decisions all processes take together under torchrun
    average: WeightAverage | None = None  # train.ema's average of the encoder and generator weights

    def __call__(
        self, x_a: torch.Tensor, x_b: torch.Tensor, labels_a: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
        """One iteration on a batch of each domain; returns the generator terms, the D terms, skipped updates."""
        x_a = x_a.to(self.device, memory_format=self.memory_format, non_blocking=True)
        x_b = x_b.to(self.device, memory_format=self.memory_format, non_blocking=True)
        with self.autocast():
            t = self.generator_pass(x_a, x_b)

        # Discriminators: real images against the (detached) translations, plus the domain-adaptation terms.
        terms_d: dict[str, torch.Tensor] = {}
        skipped = 0
        if self.weights.gan or self.weights.classify or self.weights.feature:
            self.optimizers["discriminator"].zero_grad(set_to_none=True)
            with self.autocast():
                terms_d = self.discriminator_pass(t, labels_a.to(self.device, non_blocking=True))
            skipped += not self.update("discriminator", terms_d["total"])

        # Encoders and generators: VAE, GAN and cycle terms against the updated discriminators.
        self.optimizers["generator"].zero_grad(set_to_none=True)
        with frozen(self.model.dis_a, self.model.dis_b):
            with self.autocast():
                terms = generator_losses(self.model, t, self.gan, self.reconstruction, self.weights)
            skipped += not self.update("generator", terms["total"])
        for scheduler in self.schedulers.values():
            scheduler.step()
        return terms, terms_d, skipped

    def autocast(self) -> torch.autocast:
        """The recipe's mixed precision (``train.precision``) for a forward pass; off for fp32."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def update(self, name: str, loss: torch.Tensor) -> bool:
        """Backward and step one optimiser (loss scaling under fp16); False when a bad loss was skipped."""
        self.scalers[name].scale(loss).backward()
        if not update_allowed(self.on_nonfinite, loss, self.votes):
            return False
        self.scalers[name].step(self.optimizers[name])
        self.scalers[name].update()
        return True


def build_step(
    recipe: Recipe,
    registries: Registries,
    channels: tuple[int, int],
    image_size: int,
    device: torch.device,
    shard: distributed.Shard = distributed.SINGLE_PROCESS,
    num_classes: int = 0,
) -> UnitStep:
    """Networks, losses, optimisers and speed switches of a recipe, ready to train on ``device``.

    ``num_classes`` > 0 gives the discriminators a classifier head (for ``objective.classify``).
    """
    cfg, weights = recipe.train, recipe.objective
    dtype, channels_last = speed_switches(cfg, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(recipe, registries, channels, num_classes=num_classes, image_size=image_size)
    model = model.to(device=device, memory_format=memory_format)
    average = WeightAverage(model, cfg.ema) if cfg.ema else None  # before compiling: evaluation needs no speed
    if cfg.compile:
        # In place, so parameter names (and checkpoints) stay the same. Encoders and generators compile block
        # by block, since the model runs their blocks itself (shared blocks once for both domains).
        blocks = {id(b): b for net in model.translation_networks() for b in net.blocks}
        for network in (*blocks.values(), model.dis_a, model.dis_b):
            network.compile()
    gan = registries.gan_losses.get(recipe.gan_loss.kind).factory(**recipe.gan_loss.settings)
    reconstruction = registries.reconstruction_losses.get(recipe.reconstruction_loss.kind).factory(
        **recipe.reconstruction_loss.settings
    )
    adam = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "weight_decay": cfg.weight_decay}
    optimizers = {
        "generator": torch.optim.Adam(model.generator_parameters(), **adam),
        "discriminator": torch.optim.Adam(model.discriminator_parameters(), **adam),
    }
    schedulers = {
        name: torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step or 2**62, gamma=cfg.lr_gamma)
        for name, opt in optimizers.items()
    }
    # fp16 needs loss scaling; for bf16 and fp32 the scalers are disabled and pass everything through.
    scalers = {name: torch.amp.GradScaler(device.type, enabled=dtype == torch.float16) for name in optimizers}

    # The generator pass and the discriminator loss are module forwards so DDP can sync their gradients.
    generator_pass: nn.Module = Synced(
        model.translation_networks(),
        lambda x_a, x_b: translate_both(model, x_a, x_b, weights, shard),
    )
    discriminator_pass: nn.Module = Synced(
        [model.dis_a, model.dis_b], lambda t, labels_a: discriminator_loss(model, t, gan, weights, labels_a)
    )
    if shard.joined:
        ids = [device.index] if device.type == "cuda" else None
        generator_pass = DistributedDataParallel(generator_pass, device_ids=ids)
        discriminator_pass = DistributedDataParallel(discriminator_pass, device_ids=ids)
    return UnitStep(
        model, generator_pass, discriminator_pass, gan, reconstruction, weights, optimizers, schedulers, scalers,
        device, dtype, memory_format, cfg.on_nonfinite, distributed.Votes(shard), average,
    )  # fmt: skip


def train(
    recipe: Recipe,
    registries: Registries,
    run_dir: Path,
    *,
    resume: bool = False,
    start: rundir.Start = "fresh",
    console: Console | None = None,
    show_progress: bool = True,
) -> RunResult:
    """Train (or, with ``resume``, continue) the run described by ``recipe`` in ``run_dir``.

    ``start`` says what to do with a run already in ``run_dir`` (:func:`unitkit.rundir.check_start` decides):
    it is done only once the data, networks and device are known to work. Under torchrun every process calls
    this; rank 0 alone writes the run directory.
    """
    run = start_run(recipe, registries, Path(run_dir), resume, start, console or Console(), show_progress)
    cfg, unit = recipe.train, run.unit
    stopped_by, write_error = "", None
    with ExitStack() as cleanup:
        cleanup.callback(distributed.stop)
        cleanup.callback(rundir.release, run.run_dir)
        for logger in run.loggers:
            cleanup.callback(logger.close)
        signals = cleanup.enter_context(stop_requests())
        if run.progress:
            cleanup.enter_context(run.progress)
        with page_on_failure(run):
            while run.step < cfg.iterations and not (stopped_by := unit.votes.stop(signals)):
                with out_of_memory_advice(cfg.batch_size, run.data.image_size, unit.device):
                    (x_a, labels_a), (x_b, _) = next(run.stream_a), next(run.stream_b)
                    terms, terms_d, skipped = unit(x_a, x_b, labels_a)
                run.skipped_updates += skipped
                run.step += 1
                if unit.average:
                    unit.average.update(run.step)

                # Reading a loss synchronises with the device, so it happens only at log steps.
                if run.step % cfg.log_every == 0 or run.step % cfg.checkpoint_every == 0 or run.step == cfg.iterations:
                    run.log(terms, terms_d)
                elif run.progress:
                    run.progress.update(run.task, completed=run.step)
                if run.step % cfg.checkpoint_every == 0:
                    run.checkpoint()
                if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < cfg.iterations:
                    run.evaluate()  # the last iteration's is the final evaluation, after the loop
                if run.step % cfg.sample_every == 0:  # after the evaluation, which the loss plot then shows
                    write_error = run.sample()
                    if not unit.votes.everywhere(write_error is None):
                        break
        if run.start_step < run.step < cfg.iterations:  # stopped between log steps: the weights to save are unchecked
            run.losses(terms, terms_d)
        return finish_run(run, signals, stopped_by, write_error)


def start_run(
    recipe: Recipe,
    registries: Registries,
    run_dir: Path,
    resume: bool,
    start: rundir.Start,
    console: Console,
    show_progress: bool,
) -> Run:
    """Everything before the first iteration: the checks that fail fast, the data, the networks, the resumed
    state, the run directory (claimed only once all of these worked), the data streams and the loggers."""
    cfg = recipe.train
    shard, device = distributed.start(resolve_device(cfg.device))
    if cfg.batch_size % shard.world:
        raise TrainingError(f"train.batch_size = {cfg.batch_size} must be divisible by the {shard.world} processes")
    if recipe.evaluate.fid:
        find_inception(recipe.evaluate.inception or None)  # fail now, not after hours of training
    seed_everything(cfg.seed)
    torch.use_deterministic_algorithms(cfg.deterministic)

    data = build_data(recipe, registries)
    head_classes = data.num_classes if recipe.objective.classify else 0
    if recipe.objective.classify and not head_classes:
        raise TrainingError(
            f"objective.classify needs labelled data; [data] kind = {recipe.data.kind!r} has no classes"
        )
    unit = build_step(recipe, registries, data.channels, data.image_size, device, shard, head_classes)
    state = resumed_checkpoint(run_dir / "checkpoints", recipe) if resume else None
    if shard.is_main:  # only now: a recipe that cannot build or resume leaves the run directory as it was
        if slow := emulated_precision(unit.dtype, device):
            console.print(f"[yellow]warning:[/] {escape(slow)}")
        rundir.claim(run_dir, start)
        if start == "restart":
            console.print(f"{run_dir} holds a run that stopped before its first checkpoint; starting it afresh")
        if start == "replace":
            console.print(f"replacing the run in {run_dir}; the old one stays in {run_dir / rundir.PREVIOUS} until "
                          "this run's first checkpoint, and comes back if this run fails before it")  # fmt: skip
        (run_dir / "recipe.toml").write_text(recipe.to_toml(), encoding="utf-8")
    step, earlier_seconds = 0, 0.0
    if state:
        load_training_state(unit, state)
        step, earlier_seconds = state.step, state.seconds
        if shard.is_main:
            console.print(f"resumed from {state.path} at iteration {step:,}")

    pin = device.type == "cuda"
    stream_a = endless_images(data.train_a, cfg.batch_size, cfg.seed, step, cfg.num_workers, pin, shard)
    stream_b = endless_images(data.train_b, cfg.batch_size, cfg.seed + 1, step, cfg.num_workers, pin, shard)
    fixed_a = first_images(data.test_a, cfg.sample_count).to(device)
    fixed_b = first_images(data.test_b, cfg.sample_count).to(device)
    loggers = (
        [registries.loggers.get(c.kind).factory(run_dir=run_dir, **c.settings) for c in recipe.loggers]
        if shard.is_main
        else []
    )
    for logger in loggers:  # a resumed run redoes what came after its checkpoint; a fresh one starts empty
        logger.rewind(step)
    data_info = {"channels": list(data.channels), "image_size": data.image_size, "num_classes": data.num_classes,
                 "paired_test": data.paired_test, "head_classes": head_classes}  # fmt: skip
    progress = _progress(console) if show_progress and shard.is_main else None
    task = progress.add_task(recipe.name, total=cfg.iterations, completed=step, speed="", losses="") if progress else 0
    unit.model.train()
    return Run(recipe, run_dir, unit, data, data_info, shard, stream_a, stream_b, fixed_a, fixed_b, loggers, console,
               progress, task, step, earlier_seconds)  # fmt: skip


def load_training_state(unit: UnitStep, state: ckpt.Checkpoint) -> None:
    """Continue from ``state``: the weights and their average, the optimisers', schedulers' and loss scalers'
    states, the RNGs."""
    ckpt.load_model_state(unit.model, state.model_state, state.path)
    if unit.average:  # a checkpoint of a run without train.ema starts the average from its weights
        unit.average.load(state.averaged or averaged_part(unit.model), state.path)
    for name, optimizer in unit.optimizers.items():
        optimizer.load_state_dict(state.optimizers[name])
        unit.schedulers[name].load_state_dict(state.schedulers[name])
        if state.scalers[name]:  # empty when saved disabled (bf16, fp32): an fp16 resume starts a fresh scale
            unit.scalers[name].load_state_dict(state.scalers[name])
    ckpt.restore_rng(state.rng["tensors"], state.rng["meta"], unit.device)


@dataclass
class Run:
    """A run as its loop sees it: the step it trains, its data, where its records go, and its counters.

    Built by :func:`start_run`; its methods are the loop's periodic actions. Under torchrun every process has
    one, and only rank 0's writes anything.
    """

    recipe: Recipe
    run_dir: Path
    unit: UnitStep
    data: DomainData
    data_info: dict[str, object]  # stored in each checkpoint: what the networks were built for
    shard: distributed.Shard
    stream_a: Iterator[tuple[torch.Tensor, torch.Tensor]]  # endless training batches (images, labels)
    stream_b: Iterator[tuple[torch.Tensor, torch.Tensor]]
    fixed_a: torch.Tensor  # the test images every sample grid translates
    fixed_b: torch.Tensor
    loggers: list[Logger]
    console: Console
    progress: Progress | LineProgress | None
    task: int  # the progress bar's task
    step: int
    earlier_seconds: float | None  # training time before this process; None when its checkpoint lacks it
    skipped_updates: int = 0
    loop_seconds: float | None = None  # the loop's wall time once it ended, for the page's seconds per iteration
    start_step: int = field(init=False)  # where this process began
    started: float = field(init=False)  # and when (perf_counter)

    def __post_init__(self) -> None:
        self.start_step, self.started = self.step, time.perf_counter()

    @property
    def replacing(self) -> bool:
        """Whether this run replaces an older one that waits, set aside, for this run's first checkpoint."""
        return self.shard.is_main and (self.run_dir / rundir.PREVIOUS).is_dir()

    @property
    def checkpoint_dir(self) -> Path:
        """Where the run's checkpoints are."""
        return self.run_dir / "checkpoints"

    def seconds(self) -> float | None:
        """Training wall seconds over the run and its resumptions; None when a resumed checkpoint lacks them."""
        return None if self.earlier_seconds is None else self.earlier_seconds + time.perf_counter() - self.started

    def losses(self, terms: dict[str, torch.Tensor], terms_d: dict[str, torch.Tensor]) -> dict[str, float]:
        """This iteration's losses as floats; a non-finite one stops the run (see :func:`losses_as_floats`)."""
        policy = self.recipe.train.on_nonfinite
        return losses_as_floats(terms, terms_d, self.step, policy, self.unit.votes, self.checkpoint_dir)

    def log(self, terms: dict[str, torch.Tensor], terms_d: dict[str, torch.Tensor]) -> None:
        """Log the losses, learning rate and skipped updates, and show the losses beside the progress bar."""
        scalars = self.losses(terms, terms_d)
        scalars["lr"] = self.unit.optimizers["generator"].param_groups[0]["lr"]
        scalars["skipped_updates"] = self.skipped_updates
        for logger in self.loggers:
            logger.log_scalars(self.step, scalars)
        if self.progress:
            rate = (self.step - self.start_step) / (time.perf_counter() - self.started)
            shown = " ".join(f"{k}={v:.3g}" for k, v in scalars.items() if k.startswith(("G/", "D/")))
            self.progress.update(self.task, completed=self.step, speed=f"{rate:.2f} it/s", losses=shown)

    @property
    def shown_model(self) -> UNIT:
        """What sample grids and evaluations translate with: the weight average unless evaluate.weights = "raw"."""
        average = self.unit.average
        return average.model if average and self.recipe.evaluate.weights == "ema" else self.unit.model

    def checkpoint(self) -> Path:
        """Save this iteration's checkpoint (rank 0); the first one discards the run an --overwrite set aside."""
        path = ckpt.checkpoint_path(self.checkpoint_dir, self.step)
        if self.shard.is_main:
            unit, keep = self.unit, self.recipe.train.keep_checkpoints
            averaged = unit.average.state() if unit.average else None
            ckpt.save_checkpoint(self.checkpoint_dir, self.step, unit.model, unit.optimizers, unit.schedulers,
                                 unit.scalers, self.recipe.to_toml(), self.data_info, unit.device, keep,
                                 seconds=self.seconds(), averaged=averaged)  # fmt: skip
            rundir.discard_previous(self.run_dir)
        return path

    def evaluate(self) -> None:
        """Evaluate on the test sets and log the metrics (rank 0)."""
        if self.shard.is_main:
            self.log_evaluation(self.measure())

    def sample(self, state: str = "running") -> OSError | None:
        """A sample grid, the loss plot and the page (rank 0). A write error (a full disk) is returned, not
        raised: the run then stops with its weights saved rather than losing the iterations since the last
        checkpoint."""
        if not self.shard.is_main:
            return None
        try:
            with rng_set_aside(self.unit.device):
                grid = self.run_dir / "samples" / f"step_{self.step:09d}.png"
                path = sample_grid(self.shown_model, self.fixed_a, self.fixed_b, grid)
            for logger in self.loggers:
                logger.log_image(self.step, "samples", str(path))
            plot_losses(self.run_dir / "log.jsonl", self.run_dir / "losses.png")
            self.page(state)
        except OSError as exc:
            return exc
        return None

    def page(self, state: str, note: str = "") -> None:
        """Write index.html with the run's state, pace and device (rank 0 calls it)."""
        done, seconds = self.step - self.start_step, self.loop_seconds or time.perf_counter() - self.started
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.unit.dtype, "fp32")
        device = self.unit.device
        world = self.shard.world
        where = f"{device} × {world} process{'es' if world > 1 else ''}" if self.shard.joined else str(device)
        status = RunStatus(state, self.step, self.recipe.train.iterations, seconds / done if done else None,
                           self.seconds(), where, precision, note)  # fmt: skip
        write_index(self.run_dir, self.recipe.name, status)

    def measure(self) -> dict[str, float]:
        """The recipe's metrics on the data's evaluation images (the test sets, or a validation split), leaving
        training's random stream as it was."""
        with rng_set_aside(self.unit.device):
            return evaluate_run(self.shown_model, self.data, self.unit.device, self.run_dir / "confusion.png")

    def log_evaluation(self, results: dict[str, float]) -> None:
        """Log metrics as ``eval/NAME`` scalars of this iteration."""
        for logger in self.loggers if results else []:
            logger.log_scalars(self.step, {f"eval/{k}": v for k, v in results.items()})

    def final_evaluation(self) -> dict[str, float]:
        """The finished run's metrics, with FID/KID where the recipe asks for them; a failed FID keeps the rest."""
        results = self.measure()
        try:
            distances = fid_kid_if_asked(self.shown_model, self.data, self.unit.device, self.recipe,
                                         show_progress=self.progress is not None)  # fmt: skip
        except (MetricsError, RuntimeError) as exc:  # a broken network file, or out of memory: keep the rest
            self.console.print(f"[yellow]FID/KID failed:[/] {escape(str(exc))}; the other metrics are kept")
            distances = {}
        return results | distances

    def write_evaluation(self, results: dict[str, float]) -> None:
        """Log the final metrics and write them, with the best of the periodic evaluations, to evaluation.json.

        Logged only now, complete: a resumed run redoes an interrupted evaluation, and its first half must not
        stay in the log beside the redone one."""
        if not results:
            return
        self.log_evaluation(results)
        if self.recipe.train.eval_every:
            results |= best_logged(self.run_dir / "log.jsonl")
        results = with_split(results, self.data)
        (self.run_dir / "evaluation.json").write_text(json.dumps(results, indent=2), encoding="utf-8")


@contextmanager
def page_on_failure(run: Run) -> Iterator[None]:
    """An error, or a second Ctrl-C, that leaves the loop still gets the page's header saying so (rank 0)."""
    try:
        yield
    except KeyboardInterrupt:  # a second Ctrl-C: it may have landed mid-update, so nothing is saved
        if run.shard.is_main:
            kept = ckpt.list_checkpoints(run.checkpoint_dir)
            run.console.print(f"[yellow]left at once[/]; the newest checkpoint is {kept[-1] if kept else 'none'}")
            with suppress(Exception):  # the page must not turn the exit into another error
                run.page("stopped", "left at once (a second Ctrl-C); the newest checkpoint is kept")
        raise
    except Exception as exc:
        if run.shard.is_main:
            with suppress(Exception):  # the page must not hide the error (one raised here would replace it)
                run.page("failed", str(exc))
        raise


def finish_run(run: Run, signals: list[str], stopped_by: str, write_error: OSError | None) -> RunResult:
    """The end of a run, however its loop ended: the last checkpoint, samples and page, then the final
    evaluation unless a signal stopped the run. Every process calls it; rank 0 alone writes.

    ``signals`` are the ones this process received, ``stopped_by`` the one that stopped the loop in any process,
    ``write_error`` a failed write of samples that stopped it.
    """
    run.loop_seconds = time.perf_counter() - run.started
    if stopped_by and not run.unit.votes.everywhere(not run.replacing):
        # A few iterations of a new run do not replace a run with checkpoints: the old run comes back.
        raise StoppedBeforeCheckpoint(stopped_by)
    path = run.checkpoint()
    write_error = write_error or run.sample("stopped" if stopped_by else "evaluating")
    run.unit.votes.barrier()
    if write_error:
        raise TrainingError(
            f"cannot write {write_error.filename or run.run_dir} ({write_error.strerror or write_error}); the run "
            f"stopped at iteration {run.step:,} and saved {path}: make room, then continue it with --resume"
        )
    interrupted = stopped_by
    if run.shard.is_main:
        unreadable = sum(getattr(d, "skipped", 0) for d in (run.data.train_a, run.data.train_b))
        if unreadable:
            run.console.print(f"[yellow]skipped {unreadable} unreadable image file(s)[/] (data.bad_files = 'skip')")
            for logger in run.loggers:
                logger.log_scalars(run.step, {"data/skipped_files": unreadable})
        # A signal to any process in the loop, or to rank 0 in the final save, leaves the evaluation to the
        # resumed run.
        interrupted = stopped_by or next(iter(signals), "")
        if not interrupted:
            # The last checkpoint is saved, so a signal abandons the evaluation (FID can take minutes) at once
            # instead of being noticed after it; the resumed run evaluates again.
            with stop_requests(at_once=True) as stop_now, suppress(KeyboardInterrupt):
                results = {} if signals else run.final_evaluation()
            # Read the records, not the exception: it can be lost in a __del__, and a signal can land in
            # `signals` between the loop's last check and the evaluation's handlers.
            interrupted = next(iter(signals + stop_now), "")
        if interrupted:
            run.page("stopped", f"stopped by {interrupted}; continue it with --resume")
        else:
            run.write_evaluation(results)
            run.page("finished")
    return RunResult(run.run_dir, run.step, path, time.perf_counter() - run.started, interrupted, run.skipped_updates)


def resumed_checkpoint(checkpoints: Path, recipe: Recipe) -> ckpt.Checkpoint:
    """The newest checkpoint in ``checkpoints``, once it is clear that ``recipe`` may continue it."""
    found = ckpt.list_checkpoints(checkpoints)
    if not found:
        raise TrainingError(f"--resume: no checkpoint in {checkpoints}; start the run without --resume")
    try:
        state = ckpt.read_checkpoint(found[-1])
    except CheckpointError as exc:
        if len(found) < 2:
            raise
        raise CheckpointError(
            f"{exc}. To resume from the previous checkpoint, {found[-2].name}, move this one aside: "
            f"mv {found[-1]} {found[-1]}.unreadable"
        ) from exc
    if state.step > recipe.train.iterations:
        raise RecipeError(
            f"--resume: {state.path} is at iteration {state.step:,}, past train.iterations = "
            f"{recipe.train.iterations:,}; a resumed run only goes further (unitkit evaluate scores the checkpoint)"
        )
    if changed := changes_on_resume(state.recipe(), recipe.resolved):
        raise RecipeError(
            f"--resume: {state.path} was trained with other settings ({'; '.join(changed)}). Resume with the "
            "settings it was trained with, or start a new run with --out; a resumed run may change only how long "
            "it goes and how it is run, logged and stored"
        )
    return state


def update_allowed(policy: str, loss: torch.Tensor, votes: distributed.Votes) -> bool:
    """With ``on_nonfinite = "skip"``, refuse an update whose loss is NaN or infinite (a sync per step).

    Under torchrun the gradients were averaged across processes, so one process's NaN spoils them all: every
    process skips when any loss is non-finite.
    """
    return policy != "skip" or votes.everywhere(bool(torch.isfinite(loss.detach())))


@contextmanager
def out_of_memory_advice(batch_size: int, image_size: int, device: torch.device) -> Iterator[None]:
    """Turn an out-of-memory error into a message naming the batch and image size and what to change."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise TrainingError(
            f"out of memory on {device} at train.batch_size = {batch_size} and image size {image_size}; lower "
            "train.batch_size or data.image_size, or use a smaller model (e.g. model.encoder.width)"
        ) from exc


def losses_as_floats(
    terms: dict[str, torch.Tensor],
    terms_d: dict[str, torch.Tensor],
    step: int,
    policy: str,
    votes: distributed.Votes,
    checkpoints: Path,
) -> dict[str, float]:
    """The losses as floats; under the "stop" policy a non-finite one stops the run, naming term and iteration
    and the newest checkpoint in ``checkpoints`` (saved at a log step, so its losses were finite).

    Under torchrun every process stops when any loss is non-finite: rank 0's own losses may still be finite
    while its weights already took the other process's NaN, and it must not save them.
    """
    scalars = {f"G/{k}": v.item() for k, v in terms.items()} | {f"D/{k}": v.item() for k, v in terms_d.items()}
    if policy == "stop":
        bad = [name for name, value in scalars.items() if not math.isfinite(value)]
        if not votes.everywhere(not bad):
            what = f"loss {bad[0]} became {scalars[bad[0]]}" if bad else "a loss of another process became non-finite"
            kept = ckpt.list_checkpoints(checkpoints)
            kept_text = f"its last good checkpoint {kept[-1]} is kept" if kept else "it had saved no checkpoint yet"
            raise TrainingError(
                f"{what} by iteration {step:,} (losses are read at log steps); the run stopped and {kept_text}. "
                "Lower train.lr, or check the data"
            )
    return scalars
