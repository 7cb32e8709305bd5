"""Loggers: where a run's losses, metrics and sample grids go.

``jsonl`` needs nothing beyond unitkit. ``tensorboard`` and ``wandb`` need their libraries, installed with the
extra of the same name (``pip install 'unitkit[tensorboard]'``); they are imported when such a logger is built, at
the start of a run, so a missing one stops the run before it trains.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import time
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Literal

import numpy as np
from PIL import Image

from unitkit import Logger
from unitkit.errors import UnitkitError
from unitkit.recipe import RecipeError


class JsonlLogger(Logger):
    """One JSON object per logged step in RUN_DIR/log.jsonl (flushed per line, so a crash loses nothing)."""

    def __init__(self, run_dir: Path, filename: str = "log.jsonl") -> None:
        self.path = Path(run_dir) / filename
        self._file = self.path.open("a", encoding="utf-8")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        record = {"step": step, "time": round(time.time(), 3), **{k: float(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log_image(self, step: int, name: str, path: str) -> None:
        self._file.write(json.dumps({"step": step, "image": name, "path": str(path)}) + "\n")
        self._file.flush()

    def rewind(self, step: int) -> None:
        self._file.close()
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True)
                if _step_of(line) <= step]  # fmt: skip
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text("".join(kept), encoding="utf-8")
        temporary.replace(self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()


def _step_of(line: str) -> float:
    """The step of a log line; infinite for a torn line (a crash mid-write, no newline), which is dropped."""
    if not line.endswith("\n"):
        return math.inf
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class TensorBoardLogger(Logger):
    """Scalars, sample grids and the resolved recipe (as text) in TensorBoard event files in RUN_DIR/tensorboard;
    see them with `tensorboard --logdir RUN_DIR`. A resumed run hides what the stopped run logged after its checkpoint
    (TensorBoard's purge_step), so its curves describe one run. Needs `pip install 'unitkit[tensorboard]'`."""

    def __init__(self, run_dir: Path) -> None:
        _import_extra("tensorboard")
        self._summary = _import_extra("torch.utils.tensorboard", extra="tensorboard")  # refuses too old a tensorboard
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / "tensorboard"  # a fixed name: --overwrite sets aside what unitkit owns

    def rewind(self, step: int) -> None:
        # Each start writes a new event file whose first event hides the earlier files' events from step + 1 on;
        # the recipe goes there too, so each start shows the recipe it trained with, once.
        self._writer = self._summary.SummaryWriter(str(self.folder), purge_step=step + 1)
        recipe = (self.run_dir / "recipe.toml").read_text(encoding="utf-8")
        self._writer.add_text("recipe", f"```toml\n{recipe}\n```", step + 1)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def log_image(self, step: int, name: str, path: str) -> None:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        self._writer.add_image(name, pixels, step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbLogger(Logger):
    """Scalars, sample grids and the resolved recipe (as the run's config) in a Weights & Biases run kept in
    RUN_DIR/wandb, named after the run directory unless `name` says otherwise, in your default entity unless
    `entity` says otherwise. The default mode, offline, needs no account and no network:
    `wandb sync RUN_DIR/wandb/offline-run-*` uploads the run later. W&B's console output is silenced.

    A resumed run continues the same W&B run (its id is kept in RUN_DIR/wandb/run-id); offline, each start of the
    run writes a folder of its own, which `wandb sync` uploads into that run in order. W&B cannot drop what it
    was sent: for the iterations a resumed run does again (those the stopped run logged after its checkpoint),
    the stopped run's values stay and the redone ones are ignored. Needs `pip install 'unitkit[wandb]'`."""

    def __init__(
        self,
        run_dir: Path,
        project: str = "unitkit",
        mode: Literal["offline", "online", "disabled"] = "offline",
        name: str = "",
        entity: str = "",
    ) -> None:
        self._wandb = _import_extra("wandb")
        self.run_dir = Path(run_dir)
        self.project, self.mode, self.entity = project, mode, entity or None
        self.name = name or self.run_dir.name

    def rewind(self, step: int) -> None:
        wandb = self._wandb
        id_file = self.run_dir / "wandb" / "run-id"
        resumed = id_file.read_text(encoding="utf-8") if step and id_file.is_file() else None
        # W&B replaces sys.excepthook and sys.exit in every run it starts, and keeps a service process and the
        # settings of its session until torn down: close() puts all of it back as it was found.
        self._hooks = sys.excepthook, sys.exit
        self._owns_session = "WANDB_SERVICE" not in os.environ  # the service's address, for child processes
        settings = wandb.Settings(mode=self.mode, silent=True, console="off")
        if self._owns_session:
            wandb.setup(settings)  # W&B's telemetry follows the session's mode, not the run's
        recipe = tomllib.loads((self.run_dir / "recipe.toml").read_text(encoding="utf-8"))
        try:
            self._run = wandb.init(
                project=self.project,
                entity=self.entity,
                name=self.name,
                dir=self.run_dir,
                id=resumed,
                resume="allow" if resumed else None,
                config=recipe,
                allow_val_change=True,
                reinit="create_new",  # beside any run of the caller's, which stays wandb.run
                settings=settings,
            )
        except wandb.Error as error:
            self._end_session()
            raise UnitkitError(
                f"[[loggers]] kind = 'wandb' cannot start a W&B run in mode {self.mode!r}: {error} "
                "(mode = 'offline' needs no account and no network)"
            ) from error
        id_file.parent.mkdir(exist_ok=True)
        id_file.write_text(self._run.id, encoding="utf-8")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log(scalars, step=step)

    def log_image(self, step: int, name: str, path: str) -> None:
        self._run.log({name: self._wandb.Image(path)}, step=step)

    def close(self) -> None:
        self._run.finish()
        self._end_session()

    def _end_session(self) -> None:
        if self._owns_session:
            self._wandb.teardown()
        sys.excepthook, sys.exit = self._hooks


def _import_extra(module: str, extra: str = "") -> ModuleType:
    """The optional library ``module``, which the unitkit extra and the logger kind named ``extra`` (default: the
    module's name) need; a recipe error that says how to install it when it is missing or broken."""
    extra = extra or module
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise RecipeError(
            f"[[loggers]] kind = {extra!r} needs the {extra} library, which cannot be imported ({error}); "
            f"install it with pip install 'unitkit[{extra}]'"
        ) from error
