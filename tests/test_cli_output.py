"""What the command line prints into a pipe or a log file: whole names, whole lines, and JSON for scripts."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_distribution
from rich.console import Console

from unitkit import cli, train
from unitkit.plugins import load_plugins
from unitkit.registry import KIND_LABELS
from unitkit.report import baseline_label, baselines_of, format_cell


def piped(*args: str, columns: int = 80, stdout=subprocess.PIPE, **env: str) -> subprocess.CompletedProcess:
    """Run ``unitkit ARGS`` with its output going to a pipe (or a file), as in ``unitkit ... | grep x``."""
    # Variables that would make rich treat the pipe as a terminal are left out.
    clean = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    clean |= {"COLUMNS": str(columns), "OMP_NUM_THREADS": "1", **env}
    command = [sys.executable, "-m", "unitkit", *map(str, args)]
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=clean, check=True)


def whole(word: str, line: str) -> bool:
    """``word`` stands in ``line`` on its own, not as part of a longer name."""
    return re.search(rf"(?<!\S){re.escape(word)}(?!\S)", line) is not None


def test_list_plugins_in_a_pipe_keeps_each_component_on_one_whole_line():
    lines = piped("list-plugins").stdout.splitlines()
    assert [line for line in lines if "multiscale-patch" in line]  # what `| grep patch` has to find
    for registry in load_plugins().registries:
        for entry in registry:
            rows = [line for line in lines if whole(entry.name, line) and KIND_LABELS[registry.kind] in line]
            assert len(rows) == 1, (entry.name, lines)
            assert whole(entry.provider.package, rows[0]) and whole(entry.provider.version, rows[0]), rows[0]
    # Descriptions are cut to the 80 columns, not wrapped onto lines of their own.
    assert max(len(line) for line in lines) <= 80
    assert any(line.rstrip().endswith("…") for line in lines)
    body = lines[2:]  # after the title and the header
    assert all(line.startswith(tuple(KIND_LABELS.values())) for line in body), lines


def invoke(monkeypatch: pytest.MonkeyPatch, columns: int, *args: str | Path) -> str:
    """Run ``unitkit ARGS`` in this process with its output going to a pipe ``columns`` wide (as COLUMNS says)."""
    monkeypatch.setattr(cli.console, "width", columns)  # the console read COLUMNS when it was made
    result = CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_list_plugins_leaves_out_descriptions_where_they_do_not_fit(monkeypatch):
    lines = invoke(monkeypatch, 30, "list-plugins").splitlines()
    assert "description" not in lines[1]
    assert any(whole("multiscale-patch", line) and whole("unitkit", line) for line in lines)


def test_list_plugins_json_lists_the_same_components_and_the_failures(tmp_path, monkeypatch):
    broken = make_distribution(tmp_path / "broken", "unitkit-broken", "unitkit_broken", "raise RuntimeError('bad')")
    monkeypatch.syspath_prepend(str(broken))
    listing = json.loads(invoke(monkeypatch, 80, "list-plugins", "--json"))
    table = invoke(monkeypatch, 80, "list-plugins")
    components = [item for item in listing if item["error"] is None]
    expected = [(r.kind, e.name, e.provider.package) for r in load_plugins().registries for e in r]
    assert [(c["kind"], c["name"], c["package"]) for c in components] == expected
    patch = next(c for c in components if c["name"] == "multiscale-patch")
    assert patch["plugin"] == "builtin" and patch["version"] and "PatchGAN" in patch["description"]
    assert [(f["plugin"], f["error"]) for f in listing if f["error"]] == [("unitkit-broken", "RuntimeError: bad")]
    assert all(whole(c["name"], table) for c in components)
    assert "failed: RuntimeError: bad" in table  # printed whole below the table
    assert "--json" in invoke(monkeypatch, 80, "list-plugins", "--help")


def test_show_prints_its_recipe_and_table_whole_in_a_narrow_pipe(tiny_recipe, monkeypatch):
    lines = invoke(monkeypatch, 30, "show", tiny_recipe).splitlines()
    assert '    { kind = "jsonl", filename = "log.jsonl" },' in lines  # the TOML is not folded
    for label in ("shared by E/G of both domains", "E+G total (shared once)", "D total (shared once)"):
        assert any(label in line for line in lines), (label, lines)


def test_sweep_results_table_keeps_names_whole_in_a_narrow_terminal(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=screen, width=40, force_terminal=True, color_system=None))
    cli.print_results([{"variant": "no-discriminator-sharing", "iterations": 400, "pixel_accuracy_floor_a2b": 0.25,
                        "best_accuracy_b": 0.5, "best_accuracy_b_step": 300}])  # fmt: skip
    lines = screen.getvalue().splitlines()
    for text in ("no-discriminator-sharing", "pixel_accuracy_floor_a2b", "best_accuracy_b"):
        assert any(whole(text, line) for line in lines), (text, lines)
    assert "best_accuracy_b_step" not in screen.getvalue()


def test_metrics_table_keeps_a_long_title_whole_and_pairs_baselines(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=screen, width=30, color_system=None, soft_wrap=True))
    title = "final evaluation (runs/a-long-run-name-no-cycle/evaluation.json)"
    cli.print_metrics({"fid_a2b": 40.5, "fid_untranslated": 90.25, "accuracy_b": 0.5}, title)
    lines = screen.getvalue().splitlines()
    assert lines[0] == title
    assert [line for line in lines if "fid_a2b" in line and "untranslated 90.25" in line]
    assert not [line for line in lines if whole("fid_untranslated", line)]  # beside fid_a2b, not a row


def test_line_progress_of_a_resumed_run_paces_only_the_iterations_it_ran(monkeypatch):
    clock = iter([100.0, 120.0])  # add_task, then the one update that prints
    monkeypatch.setattr(train.time, "perf_counter", lambda: next(clock))
    screen = io.StringIO()
    progress = train.LineProgress(Console(file=screen, width=20))
    task = progress.add_task("resumed", total=1000, completed=900)
    progress.update(task, completed=905)  # a step that logged nothing prints nothing
    progress.update(task, completed=910, losses="G/total=1.5 D/total=0.25")
    # 20 s over the 10 iterations since the resume: 2 s each, 90 left; one line, wider than the console.
    assert screen.getvalue() == (
        "resumed  step 910/1,000  2 s/it  elapsed 0:00:20  eta 0:03:00  G/total=1.5 D/total=0.25\n"
    )


def test_training_logged_to_a_file_prints_whole_progress_lines(tiny_recipe, tmp_path, monkeypatch):
    log = tmp_path / "train.log"
    run_dir = tmp_path / "run"
    with log.open("w") as out:
        piped("run", tiny_recipe, "--out", run_dir, "--set", "train.log_every=2", stdout=out)
    lines = log.read_text().splitlines()
    assert lines[0] == f"unitkit run tiny → {run_dir}"
    progress = [line for line in lines if line.startswith("tiny  step ")]
    assert [line.split()[2] for line in progress] == ["2/4", "4/4"], lines
    for line in progress:
        assert re.search(r"  [\d.e-]+ s/it  elapsed \d+:\d\d:\d\d  eta \d+:\d\d:\d\d  ", line), line
        for loss in ("G/gan", "G/recon", "G/cycle", "G/total", "D/gan", "D/total"):
            assert re.search(rf" {re.escape(loss)}=[-\d.e+]+( |$)", line), (loss, line)
    assert max(len(line) for line in progress) > 80 and "…" not in log.read_text()

    evaluated = invoke(monkeypatch, 30, "evaluate", run_dir, "--device", "cpu").splitlines()
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    beside = {b: m for m in evaluation for b in baselines_of(m) if b in evaluation}  # baseline → its metric
    for metric, value in evaluation.items():
        if metric in beside:  # on its metric's line, by its label: "floor 0.25"
            shown = f"{baseline_label(beside[metric], metric)} {format_cell(value)}"
            assert any(whole(beside[metric], line) and shown in line for line in evaluated), (metric, evaluated)
        else:
            assert any(whole(metric, line) for line in evaluated), (metric, evaluated)
