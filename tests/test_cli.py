"""The command line end to end: a real tiny training run, resume, translate, list-plugins and recipe errors."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_DIGITS, fake_inception
from PIL import Image
from rich.console import Console

from unitkit.checkpoint import list_checkpoints, read_checkpoint
from unitkit.cli import main
from unitkit.report import over_seeds
from unitkit.sweep import Request, job_devices, plan_runs

RUNNER = CliRunner()


def invoke(*args: str):
    return RUNNER.invoke(main, [str(a) for a in args], catch_exceptions=False)


def unitkit_process(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unitkit", *map(str, args)], capture_output=True, text=True, **kwargs)


def test_tiny_run_writes_everything_then_resumes_and_translates(tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    result = invoke("run", tiny_recipe, "--out", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    for name in ("recipe.toml", "log.jsonl", "index.html", "losses.png", "evaluation.json"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == ["step_000000002.png", "step_000000004.png"]
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_000000002.safetensors",
                                                                         "step_000000004.safetensors"]  # fmt: skip
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "G/total" in r] == [1, 2, 3, 4]
    assert all(set(r) - {"step", "time"} for r in records), "a record with nothing in it"
    assert "samples/step_000000004.png" in (run_dir / "index.html").read_text()
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert 0 <= evaluation["pixel_accuracy_a2b"] <= 1 and 0 <= evaluation["pixel_accuracy_floor_a2b"] <= 1

    # The run directory is never silently reused.
    again = invoke("run", tiny_recipe, "--out", run_dir, "--quiet")
    assert again.exit_code == 2 and "--resume" in again.output

    resumed = invoke("run", tiny_recipe, "--out", run_dir, "--resume", "--quiet", "--set", "train.iterations=6")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output and "at iteration 4" in resumed.output
    assert read_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1]).step == 6

    # Translate images of sizes the network does not take natively; sizes and names are kept.
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.new("RGB", (23, 17), (200, 30, 30)).save(inputs / "odd.png")
    Image.new("L", (16, 16), 128).save(inputs / "gray.png")
    checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    out = tmp_path / "translated"
    translated = invoke("translate", checkpoint, inputs, out, "--direction", "a2b", "--device", "cpu")
    assert translated.exit_code == 0, translated.output
    assert Image.open(out / "odd.png").size == (23, 17)
    assert Image.open(out / "gray.png").size == (16, 16)


def test_all_ablations_run_each_in_its_own_directory(tiny_recipe, tmp_path):
    result = invoke("run", tiny_recipe, "--all-ablations", "--out", tmp_path / "sweep", "--quiet",
                    "--set", "train.iterations=1", "--set", "train.sample_every=1")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sweep" / "base" / "index.html").exists()
    assert "ablation" in (tmp_path / "sweep" / "no-sharing" / "recipe.toml").read_text()
    # One results table for the sweep, as markdown, CSV and a bar chart, with each variant's metric.
    rows = (tmp_path / "sweep" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("variant,iterations,seconds,scene_accuracy_a2b") and "pixel_accuracy_a2b" in rows[0]
    assert [row.split(",")[0] for row in rows[1:]] == ["base", "no-sharing"]
    assert "| no-sharing | 1 |" in (tmp_path / "sweep" / "results.md").read_text()
    assert Image.open(tmp_path / "sweep" / "results.png").size[0] > 100
    # Printed to a pipe, the table is as wide as it needs: no cell is cut short.
    assert "pixel_accuracy_floor_a2b" in result.output and "…" not in result.output


def test_seeds_run_each_variant_per_seed_and_end_with_mean_and_deviation(tiny_recipe, tmp_path):
    sweep = tmp_path / "sweep"
    result = invoke("run", tiny_recipe, "--ablations", "no-sharing", "--seeds", "3,5", "--out", sweep, "--quiet",
                    "--set", "train.iterations=2")  # fmt: skip
    assert result.exit_code == 0, result.output
    labels = ["base-seed3", "base-seed5", "no-sharing-seed3", "no-sharing-seed5"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == labels
    assert "seed = 5" in (sweep / "no-sharing-seed5" / "recipe.toml").read_text()
    runs = list(csv.DictReader((sweep / "results.csv").open()))
    assert [(r["variant"], r["seed"]) for r in runs] == [("base", "3"), ("base", "5"), ("no-sharing", "3"),
                                                         ("no-sharing", "5")]  # fmt: skip
    means = list(csv.DictReader((sweep / "results_mean.csv").open()))
    assert [(m["variant"], m["seeds"]) for m in means] == [("base", "2"), ("no-sharing", "2")]
    values = [float(r["pixel_accuracy_a2b"]) for r in runs[:2]]
    assert float(means[0]["pixel_accuracy_a2b"]) == pytest.approx(statistics.fmean(values))
    assert float(means[0]["pixel_accuracy_a2b_std"]) == pytest.approx(statistics.stdev(values))
    weights = [read_checkpoint(list_checkpoints(sweep / f"base-seed{seed}" / "checkpoints")[-1]).weights("raw")
               for seed in (3, 5)]  # fmt: skip
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the seeds trained other models
    summary = (sweep / "results.md").read_text()
    assert "## Mean ± standard deviation over seeds" in summary and "## Each run" in summary and " ± " in summary
    assert "mean ± standard deviation over seeds" in result.output


def test_one_ablation_over_seeds_is_a_sweep_of_its_own_that_resumes_as_asked(tiny_recipe, tmp_path, monkeypatch,
                                                                              registries):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    request = Request(tiny_recipe, ("train.iterations=3",), ablation="no-sharing", seeds="1, 0,1")
    plan = plan_runs(request, registries, Console(quiet=True))
    assert [(v.label, v.recipe.train.seed) for v in plan.variants] == [("no-sharing-seed1", 1), ("no-sharing-seed0", 0)]
    assert plan.sweep_dir == Path("runs/tiny-no-sharing-seeds") and plan.title == "tiny [no-sharing]: seeds 1, 0"
    assert plan.resume_command == (f"unitkit run {tiny_recipe} --set train.iterations=3 --ablation no-sharing "
                                   "--seeds '1, 0,1' --out runs/tiny-no-sharing-seeds --resume")  # fmt: skip


def test_the_summary_over_seeds_is_the_mean_and_sample_deviation_of_each_number():
    rows = [{"variant": "base", "seed": 0, "iterations": 10, "acc": 0.5, "acc_best": 0.6, "acc_best_step": 4},
            {"variant": "base", "seed": 1, "iterations": 10, "acc": 0.7, "acc_best": 0.8, "acc_best_step": 8},
            {"variant": "narrow", "seed": 0, "iterations": 10, "acc": 0.4, "note": "text"}]  # fmt: skip
    base, narrow = over_seeds(rows)
    assert base == {"variant": "base", "seeds": 2, "iterations": 10, "iterations_std": 0.0, "acc": pytest.approx(0.6),
                    "acc_std": pytest.approx(0.1414, abs=1e-4), "acc_best": pytest.approx(0.7),
                    "acc_best_std": pytest.approx(0.1414, abs=1e-4)}  # fmt: skip
    assert narrow == {"variant": "narrow", "seeds": 1, "iterations": 10, "iterations_std": None, "acc": 0.4,
                      "acc_std": None}  # fmt: skip


def test_parallel_sweep_trains_variants_in_their_own_processes(tiny_recipe, tmp_path):
    sweep = tmp_path / "sweep"
    result = invoke("run", tiny_recipe, "--all-ablations", "--jobs", "2", "--out", sweep,
                    "--set", "train.iterations=2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "started base on cpu" in result.output and "started no-sharing on cpu" in result.output
    for variant in ("base", "no-sharing"):
        assert list_checkpoints(sweep / variant / "checkpoints")[-1].name == "step_000000002.safetensors"
        assert "unitkit run" in (sweep / f"{variant}.log").read_text()  # each process's own output
    rows = (sweep / "results.csv").read_text().splitlines()
    assert [row.split(",")[:2] for row in rows[1:]] == [["base", "2"], ["no-sharing", "2"]]


def test_parallel_slots_follow_the_gpus_or_the_jobs_asked_for():
    assert job_devices("auto", 0, cuda_count=4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert job_devices("auto", 0, cuda_count=1) == [] and job_devices("auto", 0, cuda_count=0) == []
    assert job_devices("cuda:2", 0, cuda_count=4) == []  # a pinned device runs the sweep in this process
    assert job_devices("cuda:2", 2, cuda_count=4) == ["cuda:2", "cuda:2"]
    assert job_devices("auto", 6, cuda_count=4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert job_devices("cpu", 2, cuda_count=4) == ["cpu", "cpu"] and job_devices("auto", 1, cuda_count=4) == []
    assert job_devices("cuda", 2, cuda_count=0) == ["cuda", "cuda"]  # the run reports the missing GPU


def test_recipe_error_exits_2_with_one_red_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nkind = "synthetic"\n[train]\nbatch_sise = 3\n')
    result = unitkit_process("show", bad)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "did you mean 'batch_size'" in result.stderr and "bad.toml" in result.stderr


def test_show_prints_resolved_recipe_and_parameter_counts(tiny_recipe):
    result = invoke("show", tiny_recipe)
    assert result.exit_code == 0, result.output
    assert 'kind = "shared-latent"' in result.output and "E+G total" in result.output


def test_list_plugins_shows_third_party_and_failures(third_party, tmp_path):
    from conftest import make_distribution

    broken = make_distribution(tmp_path / "broken", "unitkit-broken", "unitkit_broken", "raise RuntimeError('bad')")
    env_path = f"{third_party}:{broken}"
    import os

    env = {**os.environ, "PYTHONPATH": env_path, "COLUMNS": "200"}
    result = unitkit_process("list-plugins", env=env)
    assert result.returncode == 0, result.stderr
    assert "doubled-lsgan" in result.stdout and "unitkit-doubled" in result.stdout and "0.3.1" in result.stdout
    assert "failed" in result.stdout and "RuntimeError: bad" in result.stdout
    # Other commands warn in one line and keep working.
    shown = unitkit_process("show", Path(__file__).parents[1] / "recipes" / "quickstart.toml", env=env)
    assert shown.returncode == 0 and "warning: plugin 'unitkit-broken'" in shown.stderr


def test_third_party_component_is_usable_from_a_recipe(third_party, tiny_recipe, tmp_path):
    overrides = ["objective.gan_loss.kind=doubled-lsgan", "objective.gan_loss.factor=3.0", "train.iterations=1"]
    result = invoke("run", tiny_recipe, "--out", tmp_path / "r", "--quiet", *(f"--set={o}" for o in overrides))
    assert result.exit_code == 0, result.output
    assert "doubled-lsgan" in (tmp_path / "r" / "recipe.toml").read_text()


@pytest.mark.parametrize("command", ["run", "show", "list-plugins", "translate", "evaluate"])
def test_every_command_has_help_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Example" in result.output


@pytest.mark.slow
def test_evaluate_command_computes_fid_kid_and_pixel_accuracy(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    assert invoke("run", tiny_recipe, "--out", run_dir, "--quiet", "--set", "train.iterations=2").exit_code == 0
    network = fake_inception(tmp_path / "inception.pt")
    result = invoke("evaluate", run_dir, "--fid", "--inception", network, "--device", "cpu")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["iteration"] == 2 and evaluation["fid_images_a"] == evaluation["fid_images_b"] == 8
    for key in ("fid_a2b", "fid_b2a", "kid_a2b", "kid_b2a", "fid_untranslated", "pixel_accuracy_a2b"):
        assert key in evaluation
    for key in ("fid_a2b", "fid_b2a", "kid_a2b", "kid_b2a", "pixel_accuracy_a2b"):  # baselines: beside these
        assert key in result.output
    fid_line = next(line for line in result.output.splitlines() if "fid_a2b" in line)
    assert "untranslated" in fid_line
    assert evaluation["fid_a2b"] >= 0 and evaluation["fid_untranslated"] > 0
    assert len(list((tmp_path / "cache" / "unitkit" / "fid").glob("*.safetensors"))) == 2  # real A and B, cached

    # A checkpoint file works too; fewer images change the cache key, and the JSON goes beside the checkpoint.
    checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    again = invoke("evaluate", checkpoint, "--fid", "--fid-images", "4", "--inception", network, "--device", "cpu")
    assert again.exit_code == 0, again.output
    assert json.loads(checkpoint.with_suffix(".json").read_text())["fid_images_a"] == 4


def test_a_run_that_needs_fid_fails_before_training_without_the_network(tiny_recipe, tmp_path, monkeypatch):
    missing = tmp_path / "no-such-inception.pt"
    result = unitkit_process("run", tiny_recipe, "--out", tmp_path / "run", "--quiet", "--set", "evaluate.fid=true",
                             "--set", f"evaluate.inception={missing}")  # fmt: skip
    assert result.returncode == 1 and "not found at" in result.stderr
    assert not (tmp_path / "run" / "log.jsonl").exists()


DIGITS_RUN = (
    '[data]\nkind = "mnist-usps"\nroot = "${UNITKIT_DATA}"\n'
    + TINY_DIGITS
    + """
[train]
iterations = 4
batch_size = 8
eval_every = 2
log_every = 2
sample_every = 4
checkpoint_every = 4
device = "cpu"
"""
)


def test_a_run_on_a_validation_split_says_so_beside_its_accuracies(shared_data, tmp_path):
    recipe = tmp_path / "digits.toml"
    recipe.write_text(DIGITS_RUN, encoding="utf-8")
    result = invoke("run", recipe, "--out", tmp_path / "run", "--quiet", "--set", "data.validation=200")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert list(evaluation)[0] == "split" and evaluation["split"] == "validation" and "accuracy_b" in evaluation
    assert "validation" in result.output  # the printed final evaluation says it too
    again = invoke("evaluate", tmp_path / "run", "--device", "cpu", "--output", tmp_path / "again.json")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again.json").read_text())["split"] == "validation"


@pytest.mark.parametrize("learned_scale", [False, True])
def test_domain_adaptation_run_reports_last_and_best_accuracy(shared_data, tmp_path, learned_scale):
    recipe = tmp_path / "digits.toml"
    recipe.write_text(DIGITS_RUN, encoding="utf-8")
    run_dir = tmp_path / "run"
    scale = f"model.encoder.learned_scale={str(learned_scale).lower()}"
    result = invoke("run", recipe, "--out", run_dir, "--quiet", "--set", scale)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    logged = [(r["step"], r["eval/accuracy_b"]) for r in records if "eval/accuracy_b" in r]
    assert [step for step, _ in logged] == [2, 4]
    assert evaluation["accuracy_b"] == logged[-1][1] and 0 <= evaluation["accuracy_b"] <= 1
    best_step, best = max(logged, key=lambda pair: pair[1])
    assert evaluation["best_accuracy_b"] == best and evaluation["best_accuracy_b_step"] == best_step
    assert any("D/classify" in r for r in records) and any("D/feature" in r for r in records)
    assert 0 <= evaluation["accuracy_b2a"] <= 1 and evaluation["best_accuracy_b2a_step"] in (2, 4)

    assert (run_dir / "confusion.png").stat().st_size > 0 and "confusion.png" in (run_dir / "index.html").read_text()

    (run_dir / "confusion.png").unlink()
    evaluated = invoke("evaluate", run_dir, "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((run_dir / "evaluation.json").read_text())["accuracy_b"] == evaluation["accuracy_b"]
    assert (run_dir / "confusion.png").exists()


def test_domain_adaptation_terms_need_a_discriminator_with_trunk_features(tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    result = unitkit_process("run", tiny_recipe, "--out", run_dir, "--set", "objective.feature=1e-4")
    assert result.returncode == 2 and "exposes its trunk features" in result.stderr and "'patch'" in result.stderr
    assert not run_dir.exists()  # nothing half-made to --overwrite later


def test_a_sweep_over_chosen_ablations_and_its_mistakes(tiny_recipe, tmp_path):
    result = invoke("run", tiny_recipe, "--ablations", "no-sharing", "--out", tmp_path / "sweep", "--quiet",
                    "--set", "train.iterations=1")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [r.split(",")[0] for r in (tmp_path / "sweep" / "results.csv").read_text().splitlines()[1:]] == [
        "base", "no-sharing"]  # fmt: skip
    unknown = invoke("run", tiny_recipe, "--ablations", "no-sharing,no-shareing", "--out", tmp_path / "other")
    assert unknown.exit_code == 2 and "no-shareing" in unknown.output and not (tmp_path / "other").exists()
    both = invoke("run", tiny_recipe, "--ablations", "no-sharing", "--all-ablations")
    assert both.exit_code == 2 and "one of" in both.output
