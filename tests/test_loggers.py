"""The tensorboard and wandb loggers, read back from what they wrote: the run's scalars at the steps log.jsonl
has, its sample grids and its recipe, one value per step after a resume, and nothing left running."""

from __future__ import annotations

import json
import os
import struct
import sys
import tomllib
from collections import defaultdict
from contextlib import suppress
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, invoke
from PIL import Image

from unitkit import checkpoint as ckpt
from unitkit.errors import UnitkitError

ALL_STEPS = ["train.iterations=4", "train.checkpoint_every=2", "train.sample_every=2", "train.log_every=1"]


def run_tiny(tmp_path: Path, loggers: str, *overrides: str, resume: bool = False) -> Path:
    """The tiny recipe with ``loggers`` (a TOML array of tables), trained into tmp_path/run."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f"loggers = {loggers}\n{TINY_RECIPE}", encoding="utf-8")
    run_dir = tmp_path / "run"
    result = invoke("run", recipe, "--out", run_dir, "--quiet", *(f"--set={o}" for o in overrides),
                    *(["--resume"] if resume else []))  # fmt: skip
    assert result.exit_code == 0, result.output
    return run_dir


def jsonl_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """log.jsonl's scalars: name → step → value."""
    scalars: dict[str, dict[int, float]] = defaultdict(dict)
    for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for name, value in record.items():
            if name not in ("step", "time", "image", "path"):
                scalars[name][record["step"]] = value
    return scalars


def jsonl_image_steps(run_dir: Path) -> list[int]:
    """The steps log.jsonl has a sample grid of."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    return sorted({r["step"] for r in records if r.get("image") == "samples"})


def child_processes() -> set[int]:
    """The processes whose parent is this one (Linux's /proc)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):  # a process that ended meanwhile
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(os.getpid()):
                children.add(int(stat.parent.name))
    return children


# TensorBoard


def event_accumulator(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    return events.Reload()


def test_tensorboard_holds_the_scalars_of_log_jsonl_the_samples_and_the_recipe(tmp_path):
    run_dir = run_tiny(tmp_path, '[{ kind = "jsonl" }, { kind = "tensorboard" }]', *ALL_STEPS)
    events = event_accumulator(run_dir)
    logged = jsonl_scalars(run_dir)
    assert {"G/gan", "D/total", "lr", "eval/pixel_accuracy_a2b"} <= set(logged)
    assert set(events.Tags()["scalars"]) == set(logged)
    for name, values in logged.items():
        written = {e.step: e.value for e in events.Scalars(name)}
        assert written == pytest.approx(values, rel=1e-6), name
    grids = events.Images("samples")
    assert sorted({grid.step for grid in grids}) == jsonl_image_steps(run_dir) == [2, 4]
    with Image.open(run_dir / "samples" / "step_000000002.png") as written:
        assert (grids[0].width, grids[0].height) == written.size
    [recipe] = events.Tensors("recipe/text_summary")
    assert recipe.step == 1
    assert (run_dir / "recipe.toml").read_text(encoding="utf-8") in recipe.tensor_proto.string_val[0].decode()


def test_a_resumed_run_leaves_tensorboard_one_value_per_step(tmp_path):
    """A crash between checkpoints: the resumed run redoes iterations 3 and 4, and TensorBoard must show them
    once, and not the final evaluation the stopped run logged at iteration 4."""
    loggers = '[{ kind = "jsonl" }, { kind = "tensorboard" }]'
    run_dir = run_tiny(tmp_path, loggers, *ALL_STEPS)
    ckpt.checkpoint_path(run_dir / "checkpoints", 4).unlink()
    run_tiny(tmp_path, loggers, *ALL_STEPS[1:], "train.iterations=6", resume=True)
    events = event_accumulator(run_dir)
    logged = jsonl_scalars(run_dir)
    assert [e.step for e in events.Scalars("G/gan")] == [1, 2, 3, 4, 5, 6]
    assert {e.step for e in events.Scalars("eval/pixel_accuracy_a2b")} == set(logged["eval/pixel_accuracy_a2b"]) == {6}
    for name, values in logged.items():
        assert {e.step: e.value for e in events.Scalars(name)} == pytest.approx(values, rel=1e-6), name
    assert [e.step for e in events.Tensors("recipe/text_summary")] == [1, 3]  # each start's recipe, once


# Weights & Biases

BLOCK = 32 * 1024  # a .wandb file is LevelDB's log format: 32 KiB blocks of checksummed, possibly split records


def wandb_records(path: Path) -> list:
    """The protobuf records of a .wandb file, as W&B's sync reads them."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    records, parts, offset = [], [], 7  # after the file header
    while len(data) - offset >= 7:
        if BLOCK - offset % BLOCK < 7:  # too little room left in the block for a record header: padding
            offset += BLOCK - offset % BLOCK
            continue
        _checksum, length, part = struct.unpack_from("<IHB", data, offset)
        parts.append(data[offset + 7 : offset + 7 + length])
        offset += 7 + length
        if part in (1, 4):  # a whole record, or the last part of one
            records.append(Record.FromString(b"".join(parts)))
            parts = []
    return records


def wandb_history(path: Path) -> dict[int, dict[str, object]]:
    """The history rows of a .wandb file: step → name → value (nested values flattened to NAME/KEY)."""
    rows = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            rows[record.history.step.num] = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
    return rows


def wandb_config(path: Path) -> dict[str, object]:
    [run] = [r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run"]
    return {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"}


def test_wandb_offline_holds_the_scalars_of_log_jsonl_the_samples_and_the_recipe(tmp_path):
    hooks, children = (sys.excepthook, sys.exit), child_processes()
    run_dir = run_tiny(tmp_path, '[{ kind = "jsonl" }, { kind = "wandb" }]', *ALL_STEPS)
    [started] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_history(started)
    for name, values in jsonl_scalars(run_dir).items():
        assert {step: row[name] for step, row in history.items() if name in row} == pytest.approx(values), name
    assert [step for step, row in history.items() if row.get("samples/_type") == "image-file"] == [2, 4]
    recipe = tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))
    assert wandb_config(started) == recipe
    assert (sys.excepthook, sys.exit) == hooks and "WANDB_SERVICE" not in os.environ
    assert child_processes() == children

    run_tiny(tmp_path, '[{ kind = "jsonl" }, { kind = "wandb" }]', *ALL_STEPS[1:], "train.iterations=6", resume=True)
    [resumed] = set((run_dir / "wandb").glob("offline-run-*/run-*.wandb")) - {started}
    assert resumed.name == started.name  # the same W&B run, continued
    assert list(wandb_history(resumed)) == [5, 6]
    assert child_processes() == children


def test_wandb_leaves_a_session_it_did_not_start_running(tmp_path):
    import wandb

    from unitkit.builtin.loggers import WandbLogger

    (tmp_path / "recipe.toml").write_text('name = "guest"\n', encoding="utf-8")
    wandb.setup(wandb.Settings(mode="offline", silent=True))
    try:
        service = os.environ["WANDB_SERVICE"]
        logger = WandbLogger(tmp_path)
        logger.rewind(0)
        logger.log_scalars(1, {"G/total": 1.0})
        logger.close()
        assert os.environ.get("WANDB_SERVICE") == service
    finally:
        wandb.teardown()
    [written] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert wandb_history(written)[1]["G/total"] == 1.0


def test_a_wandb_run_that_cannot_start_is_a_runtime_error_that_leaves_nothing_behind(tmp_path, monkeypatch):
    import wandb

    from unitkit.builtin.loggers import WandbLogger

    def refuse(**arguments):
        raise wandb.Error("the disk is full")

    monkeypatch.setattr(wandb, "init", refuse)
    (tmp_path / "recipe.toml").write_text('name = "refused"\n', encoding="utf-8")
    hooks, children = (sys.excepthook, sys.exit), child_processes()
    with pytest.raises(
        UnitkitError, match=r"^\[\[loggers\]\] kind = 'wandb' cannot start a W&B run .*: the disk is full"
    ):
        WandbLogger(tmp_path).rewind(0)
    assert (sys.excepthook, sys.exit) == hooks and "WANDB_SERVICE" not in os.environ
    assert child_processes() == children


# Both


@pytest.mark.parametrize("kind", ["tensorboard", "wandb"])
def test_a_missing_library_is_a_recipe_error_naming_the_extra_before_training(tmp_path, monkeypatch, kind):
    monkeypatch.setitem(sys.modules, kind, None)  # what importing a library that is not installed does
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f'loggers = [{{ kind = "{kind}" }}]\n{TINY_RECIPE}', encoding="utf-8")
    result = invoke("run", recipe, "--out", tmp_path / "run")
    assert result.exit_code == 2
    error = result.output.splitlines()[-1]
    assert error.startswith("error: [[loggers]]") and f"pip install 'unitkit[{kind}]'" in error, result.output
    assert not (tmp_path / "run" / "checkpoints").exists()
