"""Recipe inheritance: ``base = "other.toml"`` builds a recipe on another, and ``unitkit show --origin`` says
where each resolved value comes from."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, invoke

from unitkit.recipe import RecipeError, ablation_names, load_recipe

#: The end of the chain: the tiny recipe (name "tiny", a "patch" discriminator of width 4) with a second ablation.
RECIPE_A = TINY_RECIPE + '[ablations.no-cycle]\n"objective.cycle" = 0.0\n"objective.kl_cycle" = 0.0\n'
#: Builds on A: another learning rate, a description of its own, A's no-cycle replaced and an ablation added.
RECIPE_B = """
base = "a.toml"
description = "b"
[train]
lr = 2e-4
[ablations.no-cycle]
"objective.cycle" = 0.0
[ablations.narrow]
"model.encoder.width" = 2
"""
#: Builds on B from a folder below it: a wider encoder and a discriminator of another kind.
RECIPE_C = """
base = "../b.toml"
[model.encoder]
width = 6
[model.discriminator]
kind = "multiscale-patch"
layers = 2
scales = 2
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """Recipes a.toml <- b.toml <- sub/c.toml, read from a working directory that holds none of them."""
    monkeypatch.chdir(write(tmp_path / "elsewhere" / "x", "").parent)
    a = write(tmp_path / "a.toml", RECIPE_A)
    b = write(tmp_path / "b.toml", RECIPE_B)
    return a, b, write(tmp_path / "sub" / "c.toml", RECIPE_C)


def recipe_error(path: Path, registries) -> str:
    with pytest.raises(RecipeError) as error:
        load_recipe(path, registries)
    return str(error.value)


def test_a_recipe_is_its_base_with_its_own_values_applied(chain, registries):
    a, b, _ = chain
    base = load_recipe(a, registries).resolved
    assert base["train"]["lr"] != 2e-4
    assert load_recipe(b, registries).resolved == {
        **base,
        "name": "b",
        "description": "b",
        "train": {**base["train"], "lr": 2e-4},
    }


def test_bases_chain_each_named_from_the_folder_of_its_recipe(chain, registries):
    recipe = load_recipe(chain[2], registries)  # sub/c.toml names "../b.toml", which names "a.toml"
    assert recipe.train.lr == 2e-4  # from b
    assert recipe.data.settings["image_size"] == 16  # from a
    assert recipe.encoder.settings["width"] == 6 and recipe.encoder.settings["res_blocks"] == 1  # from c and a


def test_a_component_of_another_kind_starts_from_that_kinds_defaults(chain, registries, tmp_path):
    a, _, c = chain
    assert load_recipe(a, registries).discriminator.settings["width"] == 4
    alone = write(tmp_path / "alone.toml", TINY_RECIPE.split("[model.encoder]")[0] + RECIPE_C.split("\n", 2)[2])
    assert load_recipe(alone, registries).discriminator.settings["width"] != 4
    assert load_recipe(c, registries).discriminator == load_recipe(alone, registries).discriminator
    # The same kind keeps the base's settings.
    same = write(tmp_path / "same.toml", 'base = "a.toml"\n[model.discriminator]\nkind = "patch"\nlayers = 3\n')
    assert load_recipe(same, registries).discriminator.settings == {"width": 4, "layers": 3, "padding": "reflect"}


def test_ablations_are_inherited_replaced_and_added(chain, registries):
    a, b, c = chain
    assert ablation_names(a) == ["no-sharing", "no-cycle"]
    assert ablation_names(c) == ["no-sharing", "no-cycle", "narrow"]  # what `run --all-ablations` runs
    assert load_recipe(c, registries, ablation="no-sharing").sharing.kind == "none"  # a's, two bases up
    assert load_recipe(c, registries, ablation="narrow").encoder.settings["width"] == 2
    replaced = load_recipe(b, registries, ablation="no-cycle").objective  # b's table replaces a's whole
    assert replaced.cycle == 0.0 and replaced.kl_cycle == load_recipe(a, registries).objective.kl_cycle > 0


def test_name_and_description_are_never_inherited(chain, registries):
    a, b, c = chain
    assert load_recipe(a, registries).name == "tiny"
    assert (load_recipe(b, registries).name, load_recipe(b, registries).description) == ("b", "b")
    assert (load_recipe(c, registries).name, load_recipe(c, registries).description) == ("c", "")


def test_a_paper_symbol_replaces_the_setting_it_stands_for(chain, registries, tmp_path):
    base = write(tmp_path / "gan.toml", 'base = "a.toml"\n[objective]\ngan = 2.0\nlambda4 = 3.0\n')
    child = write(tmp_path / "child.toml", 'base = "gan.toml"\n[objective]\nlambda0 = 5.0\ncycle = 7.0\n')
    objective = load_recipe(child, registries).objective
    assert (objective.gan, objective.cycle) == (5.0, 7.0)
    assert load_recipe(base, registries, ["objective.lambda0=6.0"]).objective.gan == 6.0
    assert load_recipe(child, registries).origins["objective.gan"] == str(child)


def test_an_empty_table_in_a_child_keeps_its_base_values(chain, registries, tmp_path):
    # A bare [train] header (with only comments under it, say) must not reset the base's whole table.
    child = write(tmp_path / "bare.toml", 'base = "a.toml"\n[train]\n# nothing changes here yet\n')
    assert load_recipe(child, registries).train == load_recipe(chain[0], registries).train


def test_a_cycle_of_bases_is_an_error_naming_the_chain(tmp_path, registries):
    a = write(tmp_path / "a.toml", 'base = "b.toml"\n')
    b = write(tmp_path / "b.toml", 'base = "a.toml"\n')
    assert f"{a} -> {b} -> {a}" in recipe_error(a, registries)
    with pytest.raises(RecipeError, match="cycle"):
        ablation_names(a)
    shown = invoke("show", a, "--origin")
    assert shown.exit_code == 2 and f"{a} -> {b} -> {a}" in shown.output
    write(a, 'base = "a.toml"\n')
    assert f"{a} -> {a}" in recipe_error(a, registries)


def test_a_missing_or_malformed_base_is_an_error_naming_it(tmp_path, registries):
    write(tmp_path / "cats.toml", TINY_RECIPE)
    child = write(tmp_path / "child.toml", 'base = "cat.toml"\n')
    message = recipe_error(child, registries)
    assert str(child) in message and str(tmp_path / "cat.toml") in message and "did you mean 'cats.toml'" in message
    write(child, "base = 3\n")
    assert "base = 3" in recipe_error(child, registries)
    write(child, 'base = "cats.toml"\n[train]\nbatch_sise = 4\n')
    assert "did you mean 'batch_size'" in recipe_error(child, registries)


def test_show_origin_says_where_each_value_comes_from(chain, registries):
    a, b, c = chain
    result = invoke("show", c, "--origin", "--ablation", "narrow", "--set", "train.iterations=3")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "\t" in line]
    assert len({line.index("\t") for line in lines}) == 1, "origins are padded to one width"
    origins = {}
    for line in lines:
        origin, setting = line.split("\t")
        key, value = setting.split(" = ", 1)
        origins[key] = (origin.rstrip(), value)
    assert origins["train.iterations"] == ("--set", "3")
    assert origins["model.encoder.width"] == (f"{b} [ablations.narrow]", "2")
    assert origins["ablation"] == (f"{b} [ablations.narrow]", '"narrow"')
    assert origins["model.encoder.res_blocks"] == (str(a), "1")
    assert origins["train.lr"] == (str(b), "0.0002")
    assert origins["model.discriminator.kind"] == (str(c), '"multiscale-patch"')
    assert origins["model.discriminator.width"][0] == "default"  # a's width went with a's kind
    assert origins["train.seed"][0] == "default"
    assert origins["name"] == ("default", '"c"') and origins["description"] == ("default", '""')
    # Without the origins, the lines are the resolved recipe as TOML.
    resolved = load_recipe(c, registries, ["train.iterations=3"], "narrow").resolved
    assert tomllib.loads("\n".join(line.split("\t")[1] for line in lines)) == resolved
    assert invoke("show", "--schema", "--origin").exit_code == 2


def test_a_run_saves_its_recipe_resolved_without_base(chain, registries, tmp_path):
    c = chain[2]
    result = invoke("run", c, "--out", tmp_path / "run", "--quiet", "--set", "train.iterations=1")
    assert result.exit_code == 0, result.output
    saved = tomllib.loads((tmp_path / "run" / "recipe.toml").read_text(encoding="utf-8"))
    assert "base" not in saved and saved == load_recipe(c, registries, ["train.iterations=1"]).resolved
