"""The run page (index.html) of a real tiny run, read by headless Chromium, and the sample grids it shows."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_RECIPE
from PIL import Image

from unitkit.cli import main
from unitkit.report import MIN_TILE, RunStatus, baselines_of, format_cell, write_index

#: Run in the page after it loaded: reads what a person would look at, switches the grid selector to the oldest
#: grid, and writes what it found as JSON into <pre id="probe">, for --dump-dom to return.
PROBE = """
<script>
window.addEventListener('load', async () => {
  const found = {};
  try {
    const text = id => document.getElementById(id).textContent.trim();
    for (const field of ['status', 'iteration', 'device', 'precision']) found[field] = text('field-' + field);
    const rows = [...document.getElementById('metrics').rows];
    found.columns = [...rows[0].cells].map(c => c.textContent);
    found.metrics = Object.fromEntries(rows.slice(1).map(r => [r.cells[0].textContent,
                                                               [...r.cells].slice(1).map(c => c.textContent)]));
    found.losses = document.getElementById('losses').naturalWidth;
    const grid = document.getElementById('grid'), pick = document.getElementById('grid-step');
    found.newest = [grid.getAttribute('src'), grid.naturalWidth];
    found.choices = [...pick.options].map(o => o.textContent);
    // The load event, not decode(): headless Chromium's virtual time does not wait for a decode.
    const loaded = new Promise(done => grid.addEventListener('load', done, {once: true}));
    pick.selectedIndex = pick.options.length - 1;
    pick.dispatchEvent(new Event('change'));
    await loaded;
    found.older = [grid.getAttribute('src'), grid.naturalWidth];
    const recipe = document.getElementById('recipe'), toml = recipe.querySelector('pre');
    const folded = toml.checkVisibility();
    recipe.querySelector('summary').click();
    found.recipe = [folded, toml.checkVisibility(), toml.textContent];
    found.refresh = document.querySelector('meta[http-equiv=refresh]') !== null;
  } catch (error) {
    found.error = String(error);
  }
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify(found);
  document.body.append(out);
});
</script>
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium executable (before the run is made, so a machine without it skips at once)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("headless Chromium not found; install it with: apt-get install -y chromium")
    return found


def browse(chromium: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a local page, offline, with a fresh profile; it runs the page's scripts first."""
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args, page.as_uri()]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-iteration run of the tiny recipe, with sample grids at iterations 2 and 4."""
    folder = tmp_path_factory.mktemp("page")
    (folder / "tiny.toml").write_text(TINY_RECIPE, encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(folder / "tiny.toml"), "--out", str(folder / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    return folder / "run"


@pytest.mark.slow
def test_run_page_in_a_browser_shows_status_metrics_losses_grids_and_recipe(chromium, tiny_run, tmp_path):
    probe = tiny_run / "probe.html"  # beside index.html, so its relative image paths resolve
    probe.write_text((tiny_run / "index.html").read_text(encoding="utf-8") + PROBE, encoding="utf-8")
    result = browse(chromium, probe, tmp_path / "profile", "--dump-dom")
    match = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.DOTALL)
    assert match, f"the probe did not run; chromium said: {result.stderr[-2000:]}"
    found = json.loads(html.unescape(match.group(1)))
    assert "error" not in found, found["error"]

    assert (found["status"], found["iteration"]) == ("finished", "4 / 4 (100%)")
    assert (found["device"], found["precision"]) == ("cpu", "fp32")
    assert not found["refresh"], "a finished run's page must not reload itself"

    evaluation = json.loads((tiny_run / "evaluation.json").read_text())
    assert found["columns"][:3] == ["metric", "value", "floor / baseline"]
    for direction in ("a2b", "b2a"):
        value, baselines = found["metrics"][f"pixel_accuracy_{direction}"]
        assert value == format_cell(evaluation[f"pixel_accuracy_{direction}"])
        assert baselines == f"{format_cell(evaluation[f'pixel_accuracy_floor_{direction}'])} floor"
        assert f"pixel_accuracy_floor_{direction}" not in found["metrics"]  # beside its metric, not a row

    assert found["losses"] > 0
    assert found["choices"] == ["iteration 4 (newest)", "iteration 2"]
    assert found["newest"] == ["samples/step_000000004.png", Image.open(tiny_run / found["newest"][0]).width]
    assert found["older"][0] == "samples/step_000000002.png" and found["older"][1] > 0

    visible, unfolded, text = found["recipe"]
    assert not visible and unfolded, "the recipe is folded, and a click unfolds it"
    assert text == (tiny_run / "recipe.toml").read_text() and 'name = "tiny"' in text


def test_sample_grid_tiles_are_enlarged_by_a_whole_factor(tiny_run):
    grid = np.asarray(Image.open(tiny_run / "samples" / "step_000000004.png").convert("RGB"))
    factor = math.ceil(MIN_TILE / 16)  # the tiny recipe's images are 16 px a side
    # Two rows (sample_count) of 16-px tiles with 2-px padding, at native size: 2 * 18 + 2 pixels high.
    assert grid.shape[0] == (2 * 18 + 2) * factor and 16 * factor >= MIN_TILE
    native = grid[::factor, ::factor]
    assert (np.repeat(np.repeat(native, factor, axis=0), factor, axis=1) == grid).all(), "not nearest-neighbour"


class _Cells(HTMLParser):
    """Each table row's cell texts, and the page's visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self.in_cell = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.rows[-1].append("")
            self.in_cell = True

    def handle_endtag(self, tag: str) -> None:
        self.in_cell = self.in_cell and tag not in ("td", "th")

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.in_cell:
            self.rows[-1][-1] += data


def parse(page: Path) -> _Cells:
    parser = _Cells()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def test_baselines_pair_by_family_and_direction():
    assert baselines_of("pixel_accuracy_a2b") == ["pixel_accuracy_floor_a2b"]
    assert baselines_of("scene_accuracy_b2a") == ["scene_accuracy_untranslated_b2a", "scene_accuracy_constant_b2a"]
    assert baselines_of("fid_b2a") == ["fid_untranslated"] and baselines_of("kid_a2b") == ["kid_untranslated"]
    assert baselines_of("pixel_accuracy_floor_a2b") == baselines_of("accuracy_b") == []
    assert baselines_of("fid_untranslated") == baselines_of("kid_untranslated") == []


def test_finished_page_pairs_metrics_with_baselines_and_best_and_escapes_text(tmp_path):
    (tmp_path / "recipe.toml").write_text('name = "<script>alert(1)</script>"\n', encoding="utf-8")
    evaluation = {"scene_accuracy_a2b": 0.75, "scene_accuracy_untranslated_a2b": 0.125,
                  "scene_accuracy_constant_a2b": 0.0625, "fid_a2b": 40.5, "fid_untranslated": 90.25,
                  "accuracy_b": 0.5, "best_accuracy_b": 0.625, "best_accuracy_b_step": 2000}  # fmt: skip
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation), encoding="utf-8")
    status = RunStatus("finished", 4000, 4000, 0.25, 1000.0, "cuda:0", "bf16")
    page = parse(write_index(tmp_path, "<b>digits & co</b>", status))

    header, *rows = [row for row in page.rows if row]
    assert header == ["metric", "value", "floor / baseline", "best (iteration)"]
    assert rows == [
        ["scene_accuracy_a2b", "0.75", "0.125 untranslated0.0625 constant", ""],
        ["fid_a2b", "40.5", "90.25 untranslated", ""],
        ["accuracy_b", "0.5", "", "0.625 (2,000)"],
    ]
    source = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<script>alert" not in source and "<b>digits" not in source and "<b>digits & co</b>" in "".join(page.text)
    assert "http-equiv='refresh'" not in source
    assert "No sample grid yet." in page.text


def test_live_page_shows_the_latest_logged_evaluation_and_reloads_itself(tmp_path):
    log = [{"step": 10, "G/total": 1.0}, {"step": 10, "eval/accuracy_b": 0.25}, {"step": 20, "eval/accuracy_b": 0.125}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log), encoding="utf-8")
    (tmp_path / "evaluation.json").write_text('{"accuracy_b": 0.99}', encoding="utf-8")  # of an earlier finish
    status = RunStatus("running", 20, 100, 2.0, 40.0, "cpu", "fp32")
    page = parse(write_index(tmp_path, "run", status))
    assert [row for row in page.rows if row][1:] == [["accuracy_b", "0.125", "0.25 (10)"]]
    assert "latest evaluation, iteration 20" in page.text
    assert "2:40" in page.text  # 80 iterations left at 2 s each
    assert "http-equiv='refresh'" in (tmp_path / "index.html").read_text(encoding="utf-8")
