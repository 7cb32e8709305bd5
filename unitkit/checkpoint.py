"""Checkpoints: one safetensors file holding weights, optimiser state, schedulers, step, RNG and the recipe.

Nothing is unpickled: tensors go through safetensors, everything else through JSON in the file's metadata.
Shared weights are stored once (under their first name) and re-tied on load by the model's own structure.
Writes are atomic: a temporary file in the same folder, flushed and fsynced, then renamed over the target.
"""

from __future__ import annotations

import json
import os
import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import nn

from unitkit.errors import CheckpointError

FORMAT = "unitkit-checkpoint/1"
_NAME = re.compile(r"^step_(\d+)\.safetensors$")
#: Metadata every checkpoint of this format holds.
_REQUIRED = ("step", "recipe", "data", "rng", "schedulers", "scalers")
_MAX_HEADER = 100_000_000  # safetensors' own limit; a garbage length must not allocate gigabytes


@dataclass
class Checkpoint:
    """The parts of a checkpoint file, as read back."""

    step: int
    recipe_toml: str
    data_info: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optimizers: dict[str, dict[str, Any]]
    schedulers: dict[str, dict[str, Any]]
    scalers: dict[str, dict[str, Any]]  # fp16 loss scaling; empty states for bf16 and fp32
    rng: dict[str, Any]
    path: Path
    #: Training wall seconds up to this checkpoint, over the run and its resumptions; None where unknown (a
    #: checkpoint written before 2026-12-02, or a run resumed from one).
    seconds: float | None = None
    #: The ``train.ema`` average of the encoder and generator tensors (model state names); empty without one.
    averaged: dict[str, torch.Tensor] = field(default_factory=dict)

    def weights(self, which: str = "ema") -> dict[str, torch.Tensor]:
        """The model state to translate with: ``"ema"``, the average where the run kept one (else the raw
        weights); ``"raw"``, the weights as the last iteration left them."""
        return self.model_state | self.averaged if which == "ema" else self.model_state

    def recipe(self) -> dict[str, Any]:
        """The resolved recipe the checkpoint was trained with, as a dict."""
        try:
            return tomllib.loads(self.recipe_toml)
        except tomllib.TOMLDecodeError as exc:
            raise CheckpointError(f"{self.path}: its stored recipe is not valid TOML ({exc})") from None


def unique_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict with each shared tensor kept once, under the first name it appears with."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict(keep_vars=False).items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else (id(tensor), 0)
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous().cpu()
    return out


def _optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}/{index}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, json.dumps({"param_groups": state["param_groups"], "scalars": scalars})


def _optimizer_state(prefix: str, tensors: dict[str, torch.Tensor], meta: str) -> dict[str, Any]:
    info = json.loads(meta)
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith(prefix + "/"):
            index, key = name[len(prefix) + 1 :].split("/", 1)
            state.setdefault(int(index), {})[key] = tensor
    for index, values in info["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": info["param_groups"]}


def rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], str]:
    """The torch (CPU, and the training ``device`` if a GPU), numpy and Python RNG states, as tensors and JSON.

    Only the training GPU's: reading every visible GPU's would open a context on each (and torchrun's processes
    draw alike on their own GPUs)."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, py_gauss = random.getstate()
    meta = {"numpy": [kind, pos, has_gauss, gauss], "python": [version, list(internal), py_gauss]}
    return tensors, json.dumps(meta)


def restore_rng(tensors: dict[str, torch.Tensor], meta: str, device: torch.device) -> None:
    """Set the RNGs ``rng_state`` saved; the GPU state goes to the training ``device`` (a CPU run skips it)."""
    info = json.loads(meta)
    torch.set_rng_state(tensors["rng/torch"])
    if device.type == "cuda" and "rng/cuda" in tensors:  # absent from a checkpoint a CPU run saved
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)
    kind, pos, has_gauss, gauss = info["numpy"]
    np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = info["python"]
    random.setstate((version, tuple(internal), py_gauss))


def checkpoint_path(folder: Path, step: int) -> Path:
    """Where the checkpoint of iteration ``step`` lives in ``folder``."""
    return Path(folder) / f"step_{step:09d}.safetensors"


def checkpoint_step(path: Path) -> int:
    """The iteration a checkpoint file was saved at, from its name."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not named like a unitkit checkpoint (step_NNNNNNNNN.safetensors)")
    return int(match.group(1))


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (temporary files of an interrupted write are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=checkpoint_step)


def save_checkpoint(
    folder: Path,
    step: int,
    model: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    scalers: dict[str, torch.amp.GradScaler],
    recipe_toml: str,
    data_info: dict[str, Any],
    device: torch.device,
    keep: int = 3,
    seconds: float | None = None,
    averaged: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically and delete all but the ``keep`` newest ones.

    ``seconds`` is the run's training wall time so far, over the run and its resumptions (None: unknown);
    ``averaged`` the ``train.ema`` average (:meth:`unitkit.ema.WeightAverage.state`), if the run keeps one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v for k, v in unique_state(model).items()}
    tensors |= {f"ema/{k}": v for k, v in (averaged or {}).items()}
    metadata = {"format": FORMAT, "step": str(step), "recipe": recipe_toml, "data": json.dumps(data_info)}
    if seconds is not None:
        metadata["seconds"] = f"{seconds:.3f}"
    for name, optimizer in optimizers.items():
        opt_tensors, opt_meta = _optimizer_tensors(f"optim/{name}", optimizer)
        tensors.update(opt_tensors)
        metadata[f"optim/{name}"] = opt_meta
    metadata["schedulers"] = json.dumps({name: s.state_dict() for name, s in schedulers.items()})
    metadata["scalers"] = json.dumps({name: s.state_dict() for name, s in scalers.items()})
    rng_tensors, metadata["rng"] = rng_state(device)
    tensors.update(rng_tensors)

    target = checkpoint_path(folder, step)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        payload = save_bytes(tensors, metadata=metadata)
        with temporary.open("wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write checkpoint {target}: {exc.strerror or exc}; earlier checkpoints are intact"
        ) from exc
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return target


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint file; anything that is not a complete unitkit checkpoint raises CheckpointError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    metadata = _metadata(raw, path)
    try:
        tensors = load_bytes(raw)
    except (SafetensorError, ValueError, OverflowError) as exc:
        raise _unreadable(path, exc) from None
    if missing := [key for key in _REQUIRED if key not in metadata]:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}: it was written by a development version of unitkit before 0.1.0; "
            "read it with that version"
        )
    optimizers = {
        key.split("/", 1)[1]: _optimizer_state(key, tensors, value)
        for key, value in metadata.items()
        if key.startswith("optim/")
    }
    rng = {"tensors": {k: v for k, v in tensors.items() if k.startswith("rng/")}, "meta": metadata["rng"]}
    return Checkpoint(
        step=int(metadata["step"]),
        recipe_toml=metadata["recipe"],
        data_info=json.loads(metadata["data"]),
        model_state={k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")},
        optimizers=optimizers,
        schedulers=json.loads(metadata["schedulers"]),
        scalers=json.loads(metadata["scalers"]),
        rng=rng,
        path=path,
        seconds=_seconds_in(metadata),
        averaged={k.removeprefix("ema/"): v for k, v in tensors.items() if k.startswith("ema/")},
    )


def read_seconds(path: Path) -> float | None:
    """A checkpoint's training wall seconds (see ``Checkpoint.seconds``), from its header alone."""
    try:
        with Path(path).open("rb") as file:
            head = file.read(8)
            header = head + file.read(min(int.from_bytes(head, "little"), _MAX_HEADER))
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    return _seconds_in(_metadata(header, Path(path)))


def _seconds_in(metadata: dict[str, str]) -> float | None:
    return float(metadata["seconds"]) if "seconds" in metadata else None


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors file (truncated or another format): {exc}")


def _metadata(raw: bytes, path: Path) -> dict[str, str]:
    """The metadata of a unitkit checkpoint from the start of its file (the 8-byte length and the JSON header)."""
    try:
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {})
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise _unreadable(path, exc) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a unitkit checkpoint (format {metadata.get('format')!r})"
        )
    return metadata


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy checkpoint weights into ``model``; a different architecture raises, listing mismatched tensors."""
    expected = {k: tuple(v.shape) for k, v in unique_state(model).items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k} {s}" for k, s in expected.items() if k not in given]
    problems += [f"unexpected {k} {s}" for k, s in given.items() if k not in expected]
    problems += [
        f"{k}: checkpoint {given[k]} vs model {s}" for k, s in expected.items() if k in given and given[k] != s
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(f"{source} was saved from a different architecture: {shown}")
    with torch.no_grad():
        own = model.state_dict(keep_vars=True)
        for name, tensor in state.items():
            own[name].copy_(tensor)
