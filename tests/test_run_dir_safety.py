"""Nothing a user types loses a run: --overwrite, failed starts, resumes, full disks and unexpected errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, invoke, snapshot, tiny_with_data

from unitkit import rundir
from unitkit.checkpoint import list_checkpoints
from unitkit.cli import BUG_EXIT_CODE


@pytest.fixture
def finished_run(tiny_recipe: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "good"
    assert invoke("run", tiny_recipe, "--out", run_dir, "--quiet").exit_code == 0
    return run_dir


def bad_first_batch_recipe(tmp_path: Path) -> Path:
    """A recipe whose data builds but whose first batch fails: every training image is unreadable."""
    root = tmp_path / "broken-data"
    for split in ("trainA", "trainB", "testA", "testB"):
        (root / split).mkdir(parents=True)
        for i in range(2):
            (root / split / f"{i}.png").write_text("not an image")
    path = tmp_path / "broken.toml"
    data = f'kind = "unpaired-folders"\nroot = "{root}"\nimage_size = 16\npaired_test = "no"\nbad_files = "error"'
    path.write_text(tiny_with_data(data).replace('name = "tiny"', 'name = "broken"'), encoding="utf-8")
    return path


def test_overwrite_that_fails_at_start_up_leaves_the_old_run_as_it_was(tiny_recipe, finished_run):
    before = snapshot(finished_run)
    result = invoke("run", tiny_recipe, "--out", finished_run, "--quiet", "--overwrite", "--set", "train.device=cuda:7")
    assert result.exit_code == 1 and "cuda:7" in result.output, result.output
    assert snapshot(finished_run) == before


def test_overwrite_that_fails_before_its_first_checkpoint_puts_the_old_run_back(tmp_path, finished_run):
    before = snapshot(finished_run)
    result = invoke("run", bad_first_batch_recipe(tmp_path), "--out", finished_run, "--quiet", "--overwrite")
    assert result.exit_code == 1 and "0.png" in result.output, result.output
    assert "put back" in result.output
    assert snapshot(finished_run) == before


def test_overwrite_replaces_only_what_unitkit_wrote(tiny_recipe, finished_run):
    (finished_run / "notes.txt").write_text("mine", encoding="utf-8")
    old_log = (finished_run / "log.jsonl").read_text()
    result = invoke("run", tiny_recipe, "--out", finished_run, "--quiet", "--overwrite", "--set", "train.seed=5")
    assert result.exit_code == 0, result.output
    assert (finished_run / "notes.txt").read_text() == "mine"
    assert (finished_run / "log.jsonl").read_text() != old_log
    assert not (finished_run / rundir.PREVIOUS).exists()  # discarded at the new run's first checkpoint


def test_overwrite_refuses_a_folder_unitkit_did_not_create(tmp_path, monkeypatch):
    # A user's own project folder, holding a recipe.toml: before, --overwrite deleted all of it.
    project = tmp_path / "thesis"
    (project / "data").mkdir(parents=True)
    (project / "data" / "scan.png").write_bytes(b"\x89PNG")
    (project / "thesis.txt").write_text("two years of work", encoding="utf-8")
    (project / "recipe.toml").write_text(TINY_RECIPE, encoding="utf-8")
    before = snapshot(project)
    monkeypatch.chdir(project)
    for extra in ((), ("--overwrite",)):
        result = invoke("run", "recipe.toml", "--out", ".", "--quiet", *extra)
        assert result.exit_code == 2 and "not a unitkit run directory" in result.output, result.output
    assert snapshot(project) == before


def test_overwrite_refuses_the_current_directory(finished_run, tiny_recipe, monkeypatch):
    monkeypatch.chdir(finished_run)
    before = snapshot(finished_run)
    result = invoke("run", tiny_recipe, "--out", ".", "--quiet", "--overwrite")
    assert result.exit_code == 2 and "current directory" in result.output, result.output
    assert snapshot(finished_run) == before


def test_a_run_that_failed_before_its_first_checkpoint_restarts_without_overwrite(tiny_recipe, tmp_path):
    run_dir = tmp_path / "r"
    failed = invoke("run", bad_first_batch_recipe(tmp_path), "--out", run_dir, "--quiet")
    assert failed.exit_code == 1 and (run_dir / "recipe.toml").exists() and not rundir.has_checkpoint(run_dir)
    resumed = invoke("run", tiny_recipe, "--out", run_dir, "--quiet", "--resume")
    assert resumed.exit_code == 1 and "without --resume" in resumed.output, resumed.output
    again = invoke("run", tiny_recipe, "--out", run_dir, "--quiet")
    assert again.exit_code == 0, again.output
    assert 'name = "tiny"' in (run_dir / "recipe.toml").read_text() and rundir.has_checkpoint(run_dir)


def test_a_nan_at_the_first_iteration_promises_no_checkpoint_and_can_be_rerun(tiny_recipe, tmp_path):
    run_dir = tmp_path / "r"
    result = invoke("run", tiny_recipe, "--out", run_dir, "--quiet", "--set", "objective.gan=1e300",
                    "--set", "objective.recon=1e300")  # fmt: skip
    assert result.exit_code == 1 and "by iteration 1 " in result.output, result.output
    assert "saved no checkpoint yet" in result.output and "checkpoint is kept" not in result.output
    assert invoke("run", tiny_recipe, "--out", run_dir, "--quiet").exit_code == 0


def test_resume_below_the_checkpoint_changes_nothing(finished_run, tiny_recipe):
    before = snapshot(finished_run)
    result = invoke("run", tiny_recipe, "--out", finished_run, "--quiet", "--resume", "--set", "train.iterations=2")
    assert result.exit_code == 2 and "past train.iterations = 2" in result.output, result.output
    assert snapshot(finished_run) == before


def test_resume_from_an_unreadable_newest_checkpoint_names_the_previous_one(finished_run, tiny_recipe):
    kept = list_checkpoints(finished_run / "checkpoints")
    assert len(kept) >= 2
    kept[-1].write_bytes(kept[-1].read_bytes()[:500])
    result = invoke("run", tiny_recipe, "--out", finished_run, "--quiet", "--resume", "--set", "train.iterations=6")
    assert result.exit_code == 1 and kept[-2].name in result.output and "mv " in result.output, result.output
    os.rename(kept[-1], f"{kept[-1]}.unreadable")  # what the message says to do
    assert invoke("run", tiny_recipe, "--out", finished_run, "--quiet", "--resume", "--set",
                  "train.iterations=6").exit_code == 0  # fmt: skip


def test_a_full_disk_while_writing_samples_saves_a_checkpoint_and_stops(tiny_recipe, tmp_path, monkeypatch):
    import unitkit.train

    def full_disk(model, x_a, x_b, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(unitkit.train, "sample_grid", full_disk)
    run_dir = tmp_path / "r"
    result = invoke("run", tiny_recipe, "--out", run_dir, "--quiet", "--set", "train.sample_every=1",
                    "--set", "train.checkpoint_every=4")  # fmt: skip
    assert result.exit_code == 1 and "No space left on device" in result.output and "--resume" in result.output
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_000000001.safetensors"]
    monkeypatch.undo()
    assert invoke("run", tiny_recipe, "--out", run_dir, "--quiet", "--resume").exit_code == 0


def test_a_read_only_file_system_is_one_line_naming_the_path(tiny_recipe, tmp_path, monkeypatch):
    def read_only(run_dir, start):
        raise OSError(errno.EROFS, "Read-only file system", str(run_dir))

    monkeypatch.setattr(rundir, "claim", read_only)
    result = invoke("run", tiny_recipe, "--out", tmp_path / "r", "--quiet")
    assert result.exit_code == 1, result.output
    assert f"{tmp_path / 'r'}: Read-only file system: the file system is read-only" in result.output
    assert "Traceback" not in result.output


def test_an_unexpected_error_is_a_bug_report_with_its_traceback_in_the_run_dir(tiny_recipe, tmp_path, monkeypatch):
    import unitkit.train

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in the loss plot")

    monkeypatch.setattr(unitkit.train, "plot_losses", broken)
    result = invoke("run", tiny_recipe, "--out", tmp_path / "r", "--quiet")
    assert result.exit_code == BUG_EXIT_CODE, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "this is a bug, please report it: ZeroDivisionError" in lines[0], result.stderr
    assert "ZeroDivisionError" in (tmp_path / "r" / "crash.log").read_text() and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [("--resume", "--overwrite"), ("--ablations", ","), ("--ablation", "no-sharing", "--all-ablations")],
    ids=["resume-and-overwrite", "empty-ablations", "two-ablation-options"],
)
def test_contradicting_options_are_usage_errors(tiny_recipe, tmp_path, args):
    result = invoke("run", tiny_recipe, "--out", tmp_path / "r", "--quiet", *args)
    assert result.exit_code == 2 and not (tmp_path / "r").exists(), result.output


def test_a_signal_before_the_first_checkpoint_of_an_overwrite_puts_the_old_run_back(
    tiny_recipe, finished_run, monkeypatch
):
    import unitkit.distributed

    monkeypatch.setattr(unitkit.distributed.Votes, "stop", lambda self, received: "SIGINT")  # Ctrl-C at once
    before = snapshot(finished_run)
    result = invoke("run", tiny_recipe, "--out", finished_run, "--quiet", "--overwrite", "--set", "train.seed=5")
    assert result.exit_code == 130 and "nothing of it is kept" in result.output, result.output
    assert snapshot(finished_run) == before


def test_a_run_directory_in_use_by_another_process_is_left_alone(finished_run, tiny_recipe):
    import fcntl

    before = snapshot(finished_run)
    with (finished_run / rundir.MARKER).open("a") as other_process:
        fcntl.flock(other_process, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for extra in (["--overwrite"], ["--resume", "--set", "train.iterations=6"]):
            result = invoke("run", tiny_recipe, "--out", finished_run, "--quiet", *extra)
            assert result.exit_code == 2 and "in use by another unitkit process" in result.output, result.output
    assert snapshot(finished_run) == before
    assert invoke("run", tiny_recipe, "--out", finished_run, "--quiet", "--resume", "--set",
                  "train.iterations=6").exit_code == 0  # fmt: skip


def test_an_ablation_named_like_the_base_variant_is_refused_in_a_sweep(tiny_recipe, tmp_path):
    recipe = tmp_path / "base-clash.toml"
    recipe.write_text(TINY_RECIPE + '[ablations.base]\n"train.seed" = 1\n', encoding="utf-8")
    result = invoke("run", recipe, "--out", tmp_path / "sweep", "--quiet", "--all-ablations")
    assert result.exit_code == 2 and "'base'" in result.output and not (tmp_path / "sweep").exists(), result.output


def test_a_checkpoint_missing_metadata_of_this_format_is_one_line(finished_run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    newest = list_checkpoints(finished_run / "checkpoints")[-1]
    with safe_open(newest, framework="pt") as file:
        metadata = file.metadata()
    del metadata["scalers"]  # as a development version before 0.1.0 wrote them
    older = tmp_path / newest.name
    save_file(load_file(newest), older, metadata=metadata)
    result = invoke("evaluate", older, "--device", "cpu", "--output", tmp_path / "e.json")
    assert result.exit_code == 1 and "lacks scalers" in result.output, result.output
