"""benchmarks/gpu_check.py end to end in its dry run: packed into a temporary folder (without the wheels, which
need the package index), then run on the CPU at toy sizes, it writes what a GPU run writes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from unitkit.recipe import data_root

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"

pytestmark = pytest.mark.slow


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


gpu_check = load_script()


def run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder a dry run wrote, once it exited 0."""
    reference = gpu_check.reference_root()
    if not (reference / "bench_reference.py").is_file():
        pytest.skip(f"the authors' code and its harness not found at {reference}; set {gpu_check.REFERENCE_ENV}")
    if missing := [s for s in gpu_check.DIGIT_SETS if not (data_root() / s).is_dir()]:
        pytest.skip(f"{', '.join(missing)} not found under {data_root()}; set UNITKIT_DATA to the shared/data folder")
    folder = tmp_path_factory.mktemp("gpu_check")
    packed = run("pack", "--into", folder / "pack", "--no-wheels")
    assert packed.returncode == 0, packed.stdout + packed.stderr
    checked = run("run", folder / "out", "--dry-run", "--pack-dir", folder / "pack")
    assert checked.returncode == 0, checked.stdout[-5000:] + checked.stderr[-5000:]
    return folder / "out"


def test_writes_its_files_at_most_eight_and_each_small_enough_to_come_back(out):
    assert {p.name for p in out.iterdir()} == set(gpu_check.OUTPUT_FILES) and len(gpu_check.OUTPUT_FILES) <= 8
    assert all(p.is_file() and p.stat().st_size < gpu_check.MAX_FILE_BYTES for p in out.iterdir())


def test_summary_has_the_environment_tests_speed_and_digits(out):
    summary = (out / "summary.md").read_text(encoding="utf-8")
    for title in ("Environment", "Tests", "Speed", "Digits"):
        assert f"\n## {title}\n" in summary


def test_every_result_line_is_a_json_object(out):
    for name in ("tests.jsonl", "speed.jsonl", "digits.jsonl"):
        assert all(isinstance(record, dict) for record in read_jsonl(out / name))
    assert all({"name", "outcome", "seconds"} <= record.keys() for record in read_jsonl(out / "tests.jsonl"))


def test_speed_sets_unitkit_beside_the_authors_at_the_same_size_and_batch(out):
    records = read_jsonl(out / "speed.jsonl")
    authors = {(r["image_size"], r["batch_size"]): r for r in records if r["source"] == "authors"}
    assert authors and not any("error" in r for r in authors.values())
    compared = [r for r in records if r["source"] == "unitkit" and "speedup_vs_authors" in r]
    assert compared
    for ours in compared:
        theirs = authors[ours["image_size"], ours["batch_size"]]
        speedup = theirs["sec_per_iter_median"] / ours["sec_per_iter_median"]
        assert ours["speedup_vs_authors"] == pytest.approx(speedup, abs=0.01)
        assert ours["memory_vs_authors"] == pytest.approx(ours["peak_memory_gb"] / theirs["peak_memory_gb"], abs=0.01)


def test_digits_runs_report_how_far_they_got_and_a_stopped_run_is_never_finished(out):
    records = {r["recipe"]: r for r in read_jsonl(out / "digits.jsonl")}
    finished, stopped = records["mnist2usps"], records["usps2mnist"]  # the dry run stops usps2mnist at a cap
    assert finished["status"] == gpu_check.FINISHED
    assert finished["iterations"] == finished["iterations_planned"] == finished["last_evaluation_step"]
    assert 0 <= finished["accuracy_b"] <= 1 and 0 <= finished["best_accuracy_b"] <= 1
    assert stopped["status"] == gpu_check.STOPPED
    assert stopped["iterations"] < stopped["iterations_planned"]
