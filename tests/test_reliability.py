"""Never lose work: exact resume, atomic checkpoints under SIGKILL, signals, non-finite losses, failed writes."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import make_distribution

from unitkit import checkpoint as ckpt
from unitkit.errors import CheckpointError, TrainingError
from unitkit.plugins import load_plugins
from unitkit.recipe import load_recipe
from unitkit.sweep import result_row
from unitkit.train import UnitStep, train


def run(recipe_path, run_dir, *overrides, resume=False, plugins=None):
    registries = (plugins or load_plugins(autoload=False)).registries
    recipe = load_recipe(recipe_path, registries, list(overrides))
    return train(recipe, registries, run_dir, resume=resume, show_progress=False)


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_resume_is_bit_exact(tiny_recipe, tmp_path, ema):
    # The straight run evaluates and draws samples at iteration 3, the resumed one does not: they must not move
    # training's random stream. With train.ema, the weight average resumes exactly too.
    common = ["train.deterministic=true", "train.checkpoint_every=3", "train.keep_checkpoints=10",
              "train.eval_every=3", "train.sample_every=3", f"train.ema={ema}"]  # fmt: skip
    run(tiny_recipe, tmp_path / "straight", "train.iterations=6", *common)
    run(tiny_recipe, tmp_path / "halves", "train.iterations=3", *common)
    run(tiny_recipe, tmp_path / "halves", "train.iterations=6", *common, resume=True)
    straight = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "straight" / "checkpoints", 6))
    resumed = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "halves" / "checkpoints", 6))
    assert straight.model_state.keys() == resumed.model_state.keys()
    for name, tensor in straight.model_state.items():
        assert torch.equal(tensor, resumed.model_state[name]), name
    assert straight.averaged.keys() == resumed.averaged.keys() and bool(straight.averaged) == bool(ema)
    for name, tensor in straight.averaged.items():
        assert torch.equal(tensor, resumed.averaged[name]), name
    for which in ("generator", "discriminator"):
        a, b = straight.optimizers[which]["state"], resumed.optimizers[which]["state"]
        assert a.keys() == b.keys()
        for index in a:
            for key, value in a[index].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[index][key])), (which, index, key)
    assert torch.equal(straight.rng["tensors"]["rng/torch"], resumed.rng["tensors"]["rng/torch"])


def test_loss_scaler_state_survives_a_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizers = {"generator": torch.optim.Adam(model.parameters())}
    scalers = {"generator": torch.amp.GradScaler("cpu", init_scale=1024.0)}
    ckpt.save_checkpoint(tmp_path, 1, model, optimizers, {}, scalers, "", {}, torch.device("cpu"))
    state = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path, 1))
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(state.scalers["generator"])
    assert restored.get_scale() == 1024.0


def test_a_resumed_run_drops_what_was_logged_after_its_checkpoint(tiny_recipe, tmp_path):
    """After a crash between checkpoints, the log must not hold the lost iterations beside their redone ones."""
    common = ["train.iterations=4", "train.checkpoint_every=2", "train.log_every=1", "train.eval_every=1"]
    run(tiny_recipe, tmp_path / "run", *common)
    ckpt.checkpoint_path(tmp_path / "run" / "checkpoints", 4).unlink()  # the crash came before this save
    (tmp_path / "run" / "evaluation.json").unlink()
    with (tmp_path / "run" / "log.jsonl").open("a") as log:
        log.write('{"step": 4, "G/to')  # and tore the last line
    run(tiny_recipe, tmp_path / "run", *common, resume=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["step"] for r in records if "G/total" in r]
    evaluations = [r["step"] for r in records if any(k.startswith("eval/") for k in r)]
    assert losses == [1, 2, 3, 4]
    assert evaluations == [1, 2, 3, 4]


@pytest.mark.parametrize("earlier", [3600.0, None])
def test_a_resumed_run_counts_the_training_time_before_it(tiny_recipe, tmp_path, monkeypatch, earlier):
    """A sweep's results table reports a run's whole training time, not only its last process's; where that
    is unknown (a checkpoint from before checkpoints kept it), it stays unknown rather than looking small."""
    run(tiny_recipe, tmp_path, "train.iterations=2")
    first = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "checkpoints", 2))
    assert 0 < first.seconds == ckpt.read_seconds(first.path)
    read = ckpt.read_checkpoint
    monkeypatch.setattr(ckpt, "read_checkpoint", lambda path: dataclasses.replace(read(path), seconds=earlier))
    run(tiny_recipe, tmp_path, "train.iterations=4", resume=True)
    monkeypatch.undo()
    seconds = ckpt.read_seconds(ckpt.checkpoint_path(tmp_path / "checkpoints", 4))
    row = result_row(tmp_path)
    assert row["iterations"] == 4
    if earlier is None:
        assert seconds is None and row["seconds"] is None
    else:
        assert earlier < seconds < earlier + 600 and row["seconds"] == round(seconds)


def test_a_second_ctrl_c_mid_iteration_leaves_the_last_checkpoint_untouched(tiny_recipe, tmp_path, monkeypatch):
    common = ["train.deterministic=true", "train.checkpoint_every=1", "train.keep_checkpoints=10"]
    run(tiny_recipe, tmp_path / "straight", "train.iterations=2", *common)
    updates = []
    real_update = UnitStep.update

    def update(self, name, loss):
        updates.append(name)
        if len(updates) == 6:  # iteration 3's generator update, after its discriminator update
            raise KeyboardInterrupt
        return real_update(self, name, loss)

    monkeypatch.setattr(UnitStep, "update", update)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_recipe, tmp_path / "interrupted", "train.iterations=10", *common)
    kept = ckpt.list_checkpoints(tmp_path / "interrupted" / "checkpoints")
    assert [ckpt.read_checkpoint(path).step for path in kept] == [1, 2]
    straight = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "straight" / "checkpoints", 2)).model_state
    for name, tensor in ckpt.read_checkpoint(kept[-1]).model_state.items():
        assert torch.equal(tensor, straight[name]), name  # not iteration 3's half-made update


def _start_run(recipe: Path, run_dir: Path, *overrides: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "unitkit", "run", str(recipe), "--out", str(run_dir), "--quiet"]
    for override in overrides:
        args += ["--set", override]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# Runs `unitkit run` in a process that kills itself with SIGKILL inside the third checkpoint write: the temporary
# file is written and being fsynced, the rename has not happened.
KILLED_MID_WRITE = """
import os, signal, sys
from unitkit.cli import main
fsync, writes = os.fsync, []
def fsync_then_die(fd):
    writes.append(fd)
    if len(writes) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    fsync(fd)
os.fsync = fsync_then_die
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigkill_while_writing_leaves_a_loadable_checkpoint_that_resumes(tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["train.iterations=10", "train.checkpoint_every=1", "train.keep_checkpoints=10"]
    args = ["run", str(tiny_recipe), "--out", str(run_dir), "--quiet", *(f"--set={o}" for o in overrides)]
    process = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, *args], capture_output=True, timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert list((run_dir / "checkpoints").glob(".step_000000003.safetensors.tmp-*"))  # killed mid-write
    found = ckpt.list_checkpoints(run_dir / "checkpoints")
    assert [ckpt.read_checkpoint(path).step for path in found] == [1, 2]
    result = run(tiny_recipe, run_dir, *overrides[1:], "train.iterations=4", resume=True)
    assert result.step == 4


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(tiny_recipe, tmp_path, signum, code):
    run_dir = tmp_path / "run"
    process = _start_run(tiny_recipe, run_dir, "train.iterations=100000", "train.checkpoint_every=100000",
                         "train.log_every=1", "train.sample_every=100000")  # fmt: skip
    try:
        _wait_for(lambda: (run_dir / "log.jsonl").exists() and (run_dir / "log.jsonl").stat().st_size > 0)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    assert "--resume" in stdout and "checkpoint saved" in stdout
    assert ckpt.read_checkpoint(ckpt.list_checkpoints(run_dir / "checkpoints")[-1]).step >= 1


def _preempt(monkeypatch, name: str) -> None:
    """Make ``unitkit.train.NAME`` receive a SIGTERM, then take 30 s unless the signal interrupts it."""
    import unitkit.train

    function = getattr(unitkit.train, name)

    def preempted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this at once
        return function(*args, **kwargs)

    monkeypatch.setattr(unitkit.train, name, preempted)


def test_a_signal_during_the_final_evaluation_abandons_it_and_resume_evaluates(tiny_recipe, tmp_path, monkeypatch):
    """The last checkpoint is saved before the final evaluation, which with FID takes minutes: a preemption
    then must not wait for it, nor be reported as a finished run."""
    _preempt(monkeypatch, "evaluate_run")
    started = time.monotonic()
    result = run(tiny_recipe, tmp_path, "train.iterations=2")
    assert time.monotonic() - started < 30
    assert result.interrupted == "SIGTERM" and result.step == 2
    assert not (tmp_path / "evaluation.json").exists()
    assert ckpt.read_checkpoint(result.checkpoint).step == 2
    monkeypatch.undo()
    resumed = run(tiny_recipe, tmp_path, "train.iterations=2", resume=True)
    assert not resumed.interrupted and resumed.step == 2
    assert "pixel_accuracy_a2b" in json.loads((tmp_path / "evaluation.json").read_text())


def test_a_final_evaluation_interrupted_after_its_first_metrics_logs_them_once(tiny_recipe, tmp_path, monkeypatch):
    """Pixel accuracy comes before FID: a signal during FID must not leave it logged twice once resumed."""
    _preempt(monkeypatch, "fid_kid_if_asked")
    assert run(tiny_recipe, tmp_path, "train.iterations=2").interrupted == "SIGTERM"
    monkeypatch.undo()
    run(tiny_recipe, tmp_path, "train.iterations=2", resume=True)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/pixel_accuracy_a2b" in r] == [2]


def test_a_signal_whose_exception_is_swallowed_still_stops_the_final_evaluation(tiny_recipe, tmp_path, monkeypatch):
    """An exception raised from a signal handler inside a ``__del__`` is printed and ignored by Python; the
    recorded signal must still make the run report itself interrupted rather than done."""
    import unitkit.train

    evaluate_run = unitkit.train.evaluate_run

    def preempted_inside_a_destructor(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        except KeyboardInterrupt:  # as Python does with an exception raised in __del__
            pass
        return evaluate_run(*args, **kwargs)

    monkeypatch.setattr(unitkit.train, "evaluate_run", preempted_inside_a_destructor)
    result = run(tiny_recipe, tmp_path, "train.iterations=2")
    assert result.interrupted == "SIGTERM"
    assert not (tmp_path / "evaluation.json").exists()


def _worker(parent: int, rank: int) -> int:
    """The pid of torchrun's worker process with this rank (read from /proc, as Linux shows it)."""
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):  # not a process, or it ended meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    raise AssertionError(f"no worker of rank {rank} under process {parent}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers through /proc")
def test_a_signal_to_one_of_two_processes_stops_both_and_saves(torchrun_tiny, tmp_path):
    """A preemption reaches torchrun's processes one by one; rank 1 alone leaving would strand rank 0."""
    run_dir = tmp_path / "run"
    process = torchrun_tiny(run_dir, "train.iterations=100000", "train.checkpoint_every=100000",
                            "train.log_every=1", "train.sample_every=100000", "train.batch_size=4")  # fmt: skip
    _wait_for(lambda: (run_dir / "log.jsonl").exists() and (run_dir / "log.jsonl").stat().st_size > 0)
    os.kill(_worker(process.pid, rank=1), signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert "checkpoint saved" in stdout and "--resume" in stdout, stderr[-3000:]
    assert ckpt.read_checkpoint(ckpt.list_checkpoints(run_dir / "checkpoints")[-1]).step >= 1
    assert not (run_dir / "evaluation.json").exists()  # rank 0 knows the run was interrupted


EXPLODING_LOSS = textwrap.dedent('''
    import os
    import signal

    import torch.nn.functional as F
    from unitkit import hookimpl

    calls = {"n": 0}

    def explodes_late():
        """L1 until the 9th call, then NaN; with $EXPLODES_AND_STOPS set, the 9th call also sends a SIGTERM."""
        def loss(output, target):
            calls["n"] += 1
            if calls["n"] == 9 and os.environ.get("EXPLODES_AND_STOPS"):
                os.kill(os.getpid(), signal.SIGTERM)
            return F.l1_loss(output, target) * (float("nan") if calls["n"] >= 9 else 1.0)
        return loss

    @hookimpl
    def unitkit_register_reconstruction_losses(registry):
        registry.register("explodes-late", explodes_late)
''')


@pytest.fixture
def exploding_plugins(tmp_path):
    import importlib.util

    source = tmp_path / "exploding.py"
    source.write_text(EXPLODING_LOSS)
    spec = importlib.util.spec_from_file_location("exploding", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return load_plugins({"exploding": module}, autoload=False)


def test_non_finite_loss_stops_naming_term_and_iteration(tiny_recipe, tmp_path, exploding_plugins):
    # An iteration calls the reconstruction loss 4 times (recon and cycle, both domains): NaN from iteration 3.
    with pytest.raises(TrainingError) as err:
        run(tiny_recipe, tmp_path / "r", "objective.reconstruction_loss.kind=explodes-late", "train.iterations=8",
            "train.checkpoint_every=2", "train.log_every=1", plugins=exploding_plugins)  # fmt: skip
    assert "G/recon" in str(err.value) and "iteration 3" in str(err.value)
    kept = ckpt.list_checkpoints(tmp_path / "r" / "checkpoints")
    assert [ckpt.read_checkpoint(p).step for p in kept] == [2]
    assert all(torch.isfinite(t).all() for t in ckpt.read_checkpoint(kept[0]).model_state.values())


def test_a_signal_between_log_steps_does_not_save_non_finite_weights(
    tiny_recipe, tmp_path, exploding_plugins, monkeypatch
):
    # NaN from iteration 3, which also brings a SIGTERM; no log step until 100, so the stop's save is the first
    # place that reads the losses.
    monkeypatch.setenv("EXPLODES_AND_STOPS", "1")
    with pytest.raises(TrainingError, match="iteration 3"):
        run(tiny_recipe, tmp_path / "r", "objective.reconstruction_loss.kind=explodes-late", "train.iterations=8",
            "train.checkpoint_every=2", "train.log_every=100", plugins=exploding_plugins)  # fmt: skip
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "r" / "checkpoints")] == ["step_000000002.safetensors"]


def test_non_finite_loss_can_skip_updates_and_count_them(tiny_recipe, tmp_path, exploding_plugins):
    result = run(tiny_recipe, tmp_path / "r", "objective.reconstruction_loss.kind=explodes-late",
                 "train.iterations=6", "train.on_nonfinite=skip", plugins=exploding_plugins)  # fmt: skip
    assert result.step == 6 and result.skipped_updates == 4
    state = ckpt.read_checkpoint(result.checkpoint)
    assert all(torch.isfinite(t).all() for t in state.model_state.values())


RANK_ONE_EXPLODES = """
import os

import torch.nn.functional as F
from unitkit import hookimpl

calls = {"n": 0}


def rank_one_explodes():
    \"\"\"L1, but NaN in torchrun's rank 1 from its 9th call on.\"\"\"
    def loss(output, target):
        calls["n"] += 1
        nan = os.environ.get("RANK") == "1" and calls["n"] >= 9
        return F.l1_loss(output, target) * (float("nan") if nan else 1.0)
    return loss


@hookimpl
def unitkit_register_reconstruction_losses(registry):
    registry.register("rank-one-explodes", rank_one_explodes)
"""


@pytest.mark.slow
def test_a_non_finite_loss_in_one_process_skips_the_update_in_all(torchrun_tiny, tmp_path, monkeypatch):
    """The gradients are averaged: had rank 0 stepped with rank 1's NaN, its weights would be NaN."""
    site = make_distribution(tmp_path / "site", "unitkit-rank-one", "unitkit_rank_one", RANK_ONE_EXPLODES)
    monkeypatch.setenv("PYTHONPATH", str(site))
    run_dir = tmp_path / "run"
    process = torchrun_tiny(run_dir, "objective.reconstruction_loss.kind=rank-one-explodes", "train.iterations=6",
                            "train.on_nonfinite=skip", "train.batch_size=4")  # fmt: skip
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    state = ckpt.read_checkpoint(ckpt.list_checkpoints(run_dir / "checkpoints")[-1])
    assert state.step == 6 and all(torch.isfinite(t).all() for t in state.model_state.values())
    logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_updates"] for r in logged if "skipped_updates" in r][-1] == 4  # rank 0 skipped them too


@pytest.mark.slow
def test_a_non_finite_loss_in_one_process_stops_all_before_rank_0_saves(torchrun_tiny, tmp_path, monkeypatch):
    """Rank 1's NaN at iteration 3 (a checkpoint step) reached rank 0's weights through the averaged gradients."""
    site = make_distribution(tmp_path / "site", "unitkit-rank-one", "unitkit_rank_one", RANK_ONE_EXPLODES)
    monkeypatch.setenv("PYTHONPATH", str(site))
    run_dir = tmp_path / "run"
    process = torchrun_tiny(run_dir, "objective.reconstruction_loss.kind=rank-one-explodes", "train.iterations=6",
                            "train.checkpoint_every=1", "train.keep_checkpoints=10", "train.batch_size=4")  # fmt: skip
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0 and "by iteration 3" in stderr, stderr[-3000:]
    kept = [ckpt.read_checkpoint(p) for p in ckpt.list_checkpoints(run_dir / "checkpoints")]
    assert [state.step for state in kept] == [1, 2]
    assert all(torch.isfinite(t).all() for state in kept for t in state.model_state.values())


def test_failed_write_is_a_clear_error_and_keeps_the_previous_checkpoint(tiny_recipe, tmp_path, monkeypatch):
    result = run(tiny_recipe, tmp_path / "r", "train.iterations=2")
    before = ckpt.list_checkpoints(tmp_path / "r" / "checkpoints")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*intact"):
        run(tiny_recipe, tmp_path / "r", "train.iterations=4", resume=True)
    after = ckpt.list_checkpoints(tmp_path / "r" / "checkpoints")
    assert after == before and ckpt.read_checkpoint(after[-1]).step == result.step
    assert not [p for p in (tmp_path / "r" / "checkpoints").iterdir() if ".tmp" in p.name]


def test_out_of_memory_names_batch_and_image_size(tiny_recipe, tmp_path, monkeypatch):
    import unitkit.train

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(unitkit.train, "translate_both", oom)
    with pytest.raises(TrainingError, match=r"batch_size = 2 and image size 16; lower train.batch_size"):
        run(tiny_recipe, tmp_path / "r")


def test_nothing_is_unpickled():
    package = Path(__file__).resolve().parents[1] / "unitkit"
    for source in package.rglob("*.py"):
        for line in source.read_text().splitlines():
            assert not re.search(r"import pickle|pickle\.loads?\(|(?<![.\w])exec\(|(?<![.\w])eval\(", line), (
                source,
                line,
            )
            if "torch.load(" in line:
                assert "weights_only=True" in line, (source, line)
