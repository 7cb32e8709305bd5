"""A walk of bad inputs through the real CLI. Each one must end in its documented exit code with one line on
stderr and no traceback, and must leave a finished run directory beside it byte for byte as it was."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RECIPE, invoke, snapshot
from PIL import Image

from unitkit.checkpoint import list_checkpoints


@dataclass(frozen=True)
class Case:
    args: str  # split on spaces after {placeholders} are filled in from the arena
    code: int
    says: str  # a part of the one line on stderr


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A finished run, its checkpoint, and the files the bad inputs point at; placeholders for Case.args."""
    root = tmp_path_factory.mktemp("walk")
    tiny = root / "tiny.toml"
    tiny.write_text(TINY_RECIPE, encoding="utf-8")
    good = root / "good"
    assert invoke("run", tiny, "--out", good, "--quiet").exit_code == 0
    checkpoint = list_checkpoints(good / "checkpoints")[-1]
    Image.new("RGB", (16, 16), (200, 40, 40)).save(root / "image.png")
    Image.fromarray(np.full((8, 8), 255.0, np.float32), mode="F").save(root / "float-0-255.tif")
    Image.new("RGB", (2049, 2048)).save(root / "huge.png")
    (root / "text.png").write_text("not an image", encoding="utf-8")
    (root / "empty").mkdir()
    (root / "afile").write_text("a file", encoding="utf-8")
    (root / "truncated.safetensors").write_bytes(checkpoint.read_bytes()[:1000])
    (root / "zip.safetensors").write_bytes(b"PK\x03\x04 this is a zip, as torch.save writes")
    (root / "not-toml.toml").write_text("[train\niterations = ", encoding="utf-8")
    (root / "latin1.toml").write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    (root / "escape.toml").write_text(TINY_RECIPE.replace('name = "tiny"', 'name = "../../x"'), encoding="utf-8")
    (root / "missing-data.toml").write_text(
        '[data]\nkind = "unpaired-folders"\nroot = "/nowhere/at/all"\nimage_size = 16\n', encoding="utf-8"
    )
    project = root / "project"  # a user's own folder that happens to hold a recipe.toml
    project.mkdir()
    (project / "recipe.toml").write_text(TINY_RECIPE, encoding="utf-8")
    (project / "thesis.txt").write_text("two years of work", encoding="utf-8")
    other = root / "other-recipe"  # a run directory holding a checkpoint trained with another recipe
    shutil.copytree(good, other)
    (other / "recipe.toml").write_text((good / "recipe.toml").read_text().replace("lr = 0.0001", "lr = 0.5"))
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is what FID networks ship as
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(torch.nn.Flatten()).save(str(root / "not-inception.pt"))
    (root / "text.pt").write_text("hello", encoding="utf-8")
    return {"root": str(root), "tiny": str(tiny), "good": str(good), "ckpt": str(checkpoint), "out": str(root / "o")}


CASES = {
    # run: recipes and overrides (exit 2)
    "missing-recipe": Case("run {root}/missing.toml", 2, "missing.toml"),
    "not-toml": Case("run {root}/not-toml.toml", 2, "not-toml.toml"),
    "not-utf8": Case("run {root}/latin1.toml", 2, "UTF-8"),
    "name-escapes-runs": Case("run {root}/escape.toml", 2, "name"),
    "zero-iterations": Case("run {tiny} --set train.iterations=0", 2, "[train] iterations = 0"),
    "unknown-key": Case("run {tiny} --set nonsense.key=1", 2, "nonsense"),
    "override-without-value": Case("run {tiny} --set train", 2, "KEY=VALUE"),
    "wrong-type": Case("run {tiny} --set train.lr=fast", 2, "[train] lr"),
    "negative-weight": Case("run {tiny} --set objective.gan=-1", 2, "[objective] gan = -1"),
    "unknown-encoder": Case("run {tiny} --set model.encoder.kind=resnt", 2, "resnet"),
    "unknown-ablation": Case("run {tiny} --ablation nope", 2, "nope"),
    "empty-ablation-list": Case("run {tiny} --ablations ,", 2, "--ablations"),
    "two-ablation-options": Case("run {tiny} --ablation no-sharing --all-ablations", 2, "--ablation"),
    "seeds-not-numbers": Case("run {tiny} --seeds 0,one", 2, "--seeds '0,one'"),
    "seeds-and-a-seed": Case("run {tiny} --seeds 0,1 --set train.seed=3", 2, "leave out --set train.seed"),
    "huge-image-size": Case("run {tiny} --set data.image_size=100000", 2, "image_size"),
    "tiny-image-size": Case("run {tiny} --set data.image_size=9", 2, "image_size"),
    "device-typo": Case("run {tiny} --set train.device=banana", 2, "[train] device = 'banana'"),
    "zero-sample-count": Case("run {tiny} --set train.sample_count=0", 2, "sample_count"),
    "negative-jobs": Case("run {tiny} --jobs -1", 2, "--jobs"),
    "no-recipe": Case("run", 2, "RECIPE"),
    # run: run directories
    "existing-run": Case("run {tiny} --out {good}", 2, "--resume"),
    "resume-and-overwrite": Case("run {tiny} --out {good} --resume --overwrite", 2, "--overwrite"),
    "resume-changes-training": Case("run {tiny} --out {good} --resume --set model.encoder.width=6", 2, "width"),
    "resume-below-checkpoint": Case("run {tiny} --out {good} --resume --set train.iterations=2", 2, "past"),
    "resume-nothing": Case("run {tiny} --out {root}/never --resume", 1, "without --resume"),
    "out-is-a-file": Case("run {tiny} --out {root}/afile", 2, "is a file"),
    "out-is-a-user-folder": Case("run {tiny} --out {root}/project --overwrite", 2, "not a unitkit run"),
    "absent-device": Case("run {tiny} --out {root}/gpu --set train.device=cuda:7", 1, "cuda:7"),
    "missing-data": Case("run {root}/missing-data.toml --out {root}/m", 1, "/nowhere/at/all"),
    # show
    "show-missing": Case("show {root}/missing.toml", 2, "missing.toml"),
    "show-schema-and-recipe": Case("show --schema {tiny}", 2, "--schema"),
    "show-nothing": Case("show", 2, "RECIPE"),
    "show-mismatched-downsampling": Case("show {tiny} --set model.encoder.downsamplings=2", 2, "downsampl"),
    "show-unknown-ablation": Case("show {tiny} --ablation nope", 2, "nope"),
    # evaluate
    "evaluate-nowhere": Case("evaluate {root}/nowhere", 2, "nowhere"),
    "evaluate-not-a-run": Case("evaluate {root}/empty", 1, "no checkpoints"),
    "evaluate-other-recipe": Case("evaluate {root}/other-recipe --device cpu", 1, "train.lr"),
    "evaluate-device-typo": Case("evaluate {good} --device banana", 2, "--device banana"),
    "evaluate-absent-device": Case("evaluate {good} --device cuda:7", 1, "--device cuda:7"),
    "evaluate-wrong-network": Case(
        "evaluate {good} --device cpu --fid --inception {root}/not-inception.pt --output {root}/e.json", 1, "output"
    ),
    "evaluate-text-network": Case(
        "evaluate {good} --device cpu --fid --inception {root}/text.pt --output {root}/e.json", 1, "text.pt"
    ),
    "evaluate-negative-images": Case("evaluate {good} --fid-images -1", 2, "--fid-images"),
    "evaluate-data-root-without-root": Case(
        "evaluate {good} --device cpu --data-root {root} --output {root}/e.json", 2, "--data-root"
    ),
    # translate
    "translate-direction": Case("translate {ckpt} {root}/image.png {out} --direction sideways", 2, "--direction"),
    "translate-truncated-checkpoint": Case(
        "translate {root}/truncated.safetensors {root}/image.png {out} --direction a2b", 1, "truncated"
    ),
    "translate-foreign-checkpoint": Case(
        "translate {root}/zip.safetensors {root}/image.png {out} --direction a2b", 1, "another format"
    ),
    "translate-missing-checkpoint": Case(
        "translate {root}/none.safetensors {root}/image.png {out} --direction a2b", 1, "none.safetensors"
    ),
    "translate-text-file": Case("translate {ckpt} {root}/text.png {out} --direction a2b", 1, "text.png"),
    "translate-float-range": Case("translate {ckpt} {root}/float-0-255.tif {out} --direction a2b", 1, "0..1"),
    "translate-huge-image": Case("translate {ckpt} {root}/huge.png {out} --direction a2b", 1, "pixels"),
    "translate-empty-folder": Case("translate {ckpt} {root}/empty {out} --direction a2b", 1, "no images"),
    "translate-into-a-file": Case("translate {ckpt} {root}/image.png {root}/afile --direction a2b", 2, "afile"),
    "translate-device-typo": Case(
        "translate {ckpt} {root}/image.png {out} --direction a2b --device banana", 2, "--device banana"
    ),
    "translate-bad-files-choice": Case(
        "translate {ckpt} {root}/image.png {out} --direction a2b --bad-files x", 2, "--bad-files"
    ),
    # the command line itself
    "unknown-command": Case("trian {tiny}", 2, "trian"),
    "unknown-option": Case("list-plugins --colour", 2, "--colour"),
    "unknown-main-option": Case("--verbose run {tiny}", 2, "--verbose"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_bad_input_is_one_line_and_changes_no_finished_run(arena, case):
    good = Path(arena["good"])
    before = snapshot(good)
    result = invoke(*case.args.format(**arena).split())
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == case.code, (result.exit_code, result.output)
    assert len(lines) == 1 and case.says in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert snapshot(good) == before
