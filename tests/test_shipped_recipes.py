"""The recipes ship inside the package: a command names one (`unitkit run quickstart`), `unitkit recipes` lists
them and `unitkit recipes copy` writes one out to edit, in a checkout and in a unitkit installed from its wheel."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT, TINY_RECIPE, invoke
from rich.console import Console

from unitkit import sweep
from unitkit.plugins import load_plugins
from unitkit.recipe import (
    SHIPPED_RECIPES,
    RecipeError,
    ablation_names,
    find_recipe,
    load_recipe,
    read_toml,
    shipped_recipes,
    standalone_toml,
)

#: Shipped recipes that build on another, by name.
WITH_BASE = [name for name, path in shipped_recipes().items() if "base" in read_toml(path)]


def test_the_checkout_recipes_folder_is_the_shipped_one():
    assert (ROOT / "recipes").resolve() == SHIPPED_RECIPES
    assert {"quickstart", "cats", "dog_breeds"} <= set(shipped_recipes())


def test_a_file_wins_over_a_shipped_recipe_of_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("quickstart").write_text('[data]\nkind = "synthetic"\n', encoding="utf-8")
    Path("cats").mkdir()  # a folder of images is not a recipe: the shipped one is meant
    assert find_recipe("quickstart") == Path("quickstart")
    assert find_recipe("cats") == find_recipe("cats.toml") == SHIPPED_RECIPES / "cats.toml"
    assert find_recipe(Path("dog_breeds")) == SHIPPED_RECIPES / "dog_breeds.toml"


def test_a_name_that_is_neither_a_file_nor_a_shipped_recipe_is_one_line_listing_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "quickstrat")
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "did you mean 'quickstart'?" in message
    assert all(name in message for name in shipped_recipes())
    # A documented checkout path, typed outside a checkout, points to the name that works anywhere.
    with pytest.raises(RecipeError, match="recipes/cats.toml: no such recipe file.*did you mean 'cats'"):
        find_recipe("recipes/cats.toml")


def test_run_by_name_plans_the_shipped_recipe_and_resumes_by_name(tmp_path, monkeypatch, registries):
    monkeypatch.chdir(tmp_path)
    request = sweep.Request(Path("quickstart"), ("train.iterations=5",), all_ablations=True, out=Path("sweep"))
    plan = sweep.plan_runs(request, registries, Console(quiet=True))
    assert [v.label for v in plan.variants] == ["base", *ablation_names("quickstart")]
    assert plan.variants[0].recipe.source == str(SHIPPED_RECIPES / "quickstart.toml")
    assert plan.resume_command == "unitkit run quickstart --set train.iterations=5 --all-ablations --out sweep --resume"


def test_show_takes_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("show", "quickstart", "--origin")
    assert result.exit_code == 0, result.output
    origins = dict(line.split("\t")[::-1] for line in result.output.splitlines() if "\t" in line)
    assert origins["train.iterations = 1_300"].strip() == str(SHIPPED_RECIPES / "quickstart.toml")


def test_recipes_lists_each_shipped_recipe_with_its_description():
    result = invoke("recipes")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert list(rows) == list(shipped_recipes())
    for name, path in shipped_recipes().items():
        assert read_toml(path)["description"][:30] in rows[name]  # cut to the terminal's width


@pytest.mark.parametrize("command", [["recipes"], ["recipes", "copy"]])
def test_recipes_commands_have_help_with_an_example(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "unitkit recipes copy" in result.output and "Example" in result.output


def test_copy_writes_a_recipe_without_base_as_it_is_and_keeps_an_existing_file(tmp_path):
    dest = tmp_path / "mine.toml"
    assert invoke("recipes", "copy", "quickstart", dest).exit_code == 0
    original = (SHIPPED_RECIPES / "quickstart.toml").read_text(encoding="utf-8")
    # word for word, comments included, but named after the copy: its runs go to runs/mine, not runs/quickstart
    assert dest.read_text(encoding="utf-8") == original.replace('name = "quickstart"', f'name = "{dest.stem}"')
    dest.write_text("# my edits\n", encoding="utf-8")
    refused = invoke("recipes", "copy", "cats", dest)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert dest.read_text(encoding="utf-8") == "# my edits\n"
    assert invoke("recipes", "copy", "cats", dest, "--overwrite").exit_code == 0
    assert read_toml(dest) == read_toml(SHIPPED_RECIPES / "cats.toml") | {"name": dest.stem}


@pytest.mark.parametrize("name", WITH_BASE)
def test_a_copy_of_a_recipe_with_a_base_stands_alone_and_resolves_as_the_recipe(name, tmp_path):
    registries = load_plugins().registries  # with the plugins in plugins/, which dev.sh installs
    copy = tmp_path / "copy.toml"
    assert invoke("recipes", "copy", name, copy).exit_code == 0
    text = copy.read_text(encoding="utf-8")
    base = read_toml(shipped_recipes()[name])["base"]
    assert text.startswith(f"# {name}.toml with its base {base} merged in") and "base" not in read_toml(copy)
    assert ablation_names(copy) == ablation_names(name)
    for ablation in ["", *ablation_names(name)]:
        assert load_recipe(copy, registries, ablation=ablation).resolved == (
            load_recipe(name, registries, ablation=ablation).resolved | {"name": "copy"}
        )


def test_a_copy_merges_every_base_of_a_chain(tmp_path, registries):
    (tmp_path / "a.toml").write_text(TINY_RECIPE, encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.toml").write_text('base = "../a.toml"\n[model.discriminator]\nkind = "multiscale-patch"\n')
    (tmp_path / "sub" / "c.toml").write_text('base = "b.toml"\n[ablations.narrow]\n"model.encoder.width" = 2\n')
    copy = tmp_path / "copy.toml"
    copy.write_text(standalone_toml(tmp_path / "sub" / "c.toml", "copy"), encoding="utf-8")
    assert copy.read_text().startswith("# c.toml with its bases b.toml, ../a.toml merged in")
    for ablation in ["", "no-sharing", "narrow"]:
        original = load_recipe(tmp_path / "sub" / "c.toml", registries, ablation=ablation).resolved
        # c.toml sets no name, so it is named by its file, as a recipe without a name is; the copy by its own
        assert load_recipe(copy, registries, ablation=ablation).resolved == original | {"name": "copy"}


# ---------------------------------------------------------------------------------------------------------------
# As a user meets it: unitkit installed from its wheel into a fresh virtual environment, away from the checkout.


def _is_this_checkouts(entry: str) -> bool:
    """Whether a site-packages entry is unitkit's or its plugins' (their editable installs point at the checkout)."""
    return fnmatch.fnmatch(entry, "unitkit*") or fnmatch.fnmatch(entry, "__editable__*unitkit*")


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment outside the checkout holding unitkit installed from a wheel of the checkout; its
    dependencies are this interpreter's, reached through links that leave out this interpreter's unitkit."""
    root = tmp_path_factory.mktemp("installed").resolve()
    assert not root.is_relative_to(ROOT)
    # The wheel is built from a copy, so that the build's folders stay out of the checkout and none of their stale
    # files get into the wheel.
    source = root / "source"
    shutil.copytree(ROOT / "unitkit", source / "unitkit", ignore=shutil.ignore_patterns("__pycache__"))
    for path in ROOT.iterdir():
        if path.is_file():
            shutil.copy(path, source)
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root, source], check=True)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    wheel = next(root.glob("unitkit-*.whl"))
    subprocess.run([*pip, "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", wheel], check=True)
    dependencies = root / "dependencies"
    dependencies.mkdir()
    for site_packages in {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}:
        for entry in site_packages.iterdir():
            if not _is_this_checkouts(entry.name) and not (dependencies / entry.name).exists():
                (dependencies / entry.name).symlink_to(entry)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (venv / "lib" / version / "site-packages" / "dependencies.pth").write_text(f"{dependencies}\n", encoding="utf-8")
    return venv


def _user(venv: Path, cwd: Path, *command: object) -> subprocess.CompletedProcess:
    """``command`` run by the virtual environment's ``bin/`` in folder ``cwd``, as a user's shell would."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "UNITKIT_PLUGINS")}
    env |= {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    name, *args = map(str, command)
    done = subprocess.run([venv / "bin" / name, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_installed_package_holds_the_recipes_and_finds_their_bases(installed, tmp_path):
    script = "import unitkit, unitkit.recipe as r; print(unitkit.__file__); print(r.standalone_toml('dog_breeds', 'x'))"
    printed = _user(installed, tmp_path, "python", "-c", script).stdout
    package = Path(printed.splitlines()[0]).resolve().parent
    assert package.is_relative_to(installed) and (package / "recipes" / "quickstart.toml").is_file()
    # dog_breeds.toml's base, cats.toml, read beside it in the installed package
    assert "with its base cats.toml merged in" in printed and 'kind = "unpaired-folders"' in printed


def test_an_installed_unitkit_runs_a_shipped_recipe_by_name(installed, tmp_path):
    quick = ["train.iterations=2", "train.batch_size=2", "train.log_every=1", "train.sample_every=2",
             "train.sample_count=2", "train.checkpoint_every=2", "data.train_size=8", "data.test_size=8",
             "train.device=cpu"]  # fmt: skip
    _user(installed, tmp_path, "unitkit", "run", "quickstart", "--quiet", *(f"--set={o}" for o in quick))
    run_dir = tmp_path / "runs" / "quickstart"
    assert (run_dir / "checkpoints" / "step_000000002.safetensors").is_file()
    assert (run_dir / "evaluation.json").is_file() and len((run_dir / "log.jsonl").read_text().splitlines()) >= 2


def test_an_installed_unitkit_lists_and_copies_its_recipes(installed, tmp_path):
    listed = _user(installed, tmp_path, "unitkit", "recipes").stdout
    assert any(line.split()[:1] == ["quickstart"] and "Synthetic shapes" in line for line in listed.splitlines())
    _user(installed, tmp_path, "unitkit", "recipes", "copy", "cats", "x.toml")
    shown = _user(installed, tmp_path, "unitkit", "show", "x.toml").stdout
    assert 'name = "x"' in shown and "E+G total" in shown
