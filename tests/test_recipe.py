"""Recipe validation: every kind of mistake is reported with file, table, key, value and the nearest name."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from unitkit.recipe import RecipeError, apply_overrides, changes_on_resume, load_recipe, parse_override, validate

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error(tmp_path, registries, text: str, overrides=(), ablation="") -> str:
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text), registries, overrides, ablation)
    return str(err.value)


def test_defaults_are_filled_in(tiny_recipe, registries):
    recipe = load_recipe(tiny_recipe, registries)
    assert recipe.train.lr == 1e-4 and recipe.objective.cycle == 10.0
    assert recipe.sharing.kind == "shared-latent" and recipe.sharing.settings == {
        "encoder_blocks": 1,
        "generator_blocks": 1,
    }
    assert recipe.resolved["model"]["encoder"] == {"kind": "resnet", "width": 4, "downsamplings": 1, "res_blocks": 1,
                                                   "padding": "reflect"}  # fmt: skip
    assert "lr = 0.0001" in recipe.to_toml()


def test_malformed_toml_reports_line_and_column(tmp_path, registries):
    message = error(tmp_path, registries, '[data]\nkind = "synthetic"\nimage_size = = 3\n')
    assert "r.toml" in message and "line 3" in message and "column" in message


def test_unknown_key_names_table_key_and_nearest(tmp_path, registries):
    message = error(tmp_path, registries, '[data]\nkind="synthetic"\n[train]\nbatch_sise = 4\n')
    assert "[train]" in message and "'batch_sise'" in message and "did you mean 'batch_size'" in message


def test_unknown_component_setting_names_nearest(tmp_path, registries):
    message = error(tmp_path, registries, '[data]\nkind="synthetic"\n[model.encoder]\nkind="resnet"\nwidht=3\n')
    assert "[model.encoder]" in message and "did you mean 'width'" in message and "3" in message


def test_unknown_kind_lists_nearest_valid_names(tmp_path, registries):
    message = error(tmp_path, registries, '[data]\nkind="synthetc"\n')
    assert "[data]" in message and "did you mean 'synthetic'" in message


def test_wrong_type(tmp_path, registries):
    message = error(tmp_path, registries, '[data]\nkind="synthetic"\n[train]\nbatch_size = "8"\n')
    assert "[train] batch_size = '8'" in message and "integer" in message


def test_out_of_range_value(tmp_path, registries):
    message = error(tmp_path, registries, '[data]\nkind="synthetic"\n[train]\nlr = -0.1\n')
    assert "lr = -0.1" in message and "greater than 0" in message
    message = error(tmp_path, registries, '[data]\nkind="synthetic"\n[model.encoder]\nkind="resnet"\nwidth=0\n')
    assert "width = 0" in message


def test_missing_data_table(tmp_path, registries):
    assert "missing required key 'data'" in error(tmp_path, registries, "[train]\niterations = 3\n")


def test_component_without_kind(tmp_path, registries):
    assert "has no 'kind'" in error(tmp_path, registries, "[data]\nimage_size = 3\n")


def test_provided_argument_cannot_be_set(tmp_path, registries):
    message = error(tmp_path, registries, '[data]\nkind="synthetic"\n[model.encoder]\nkind="resnet"\nin_channels=3\n')
    assert "set by unitkit" in message


def test_paper_lambda_aliases(tmp_path, registries):
    path = write(tmp_path, '[data]\nkind="synthetic"\n[objective]\nlambda0 = 10.0\nlambda2 = 100.0\n')
    recipe = load_recipe(path, registries)
    assert recipe.objective.gan == 10.0 and recipe.objective.recon == 100.0


def test_overrides_and_ablations(tiny_recipe, registries):
    recipe = load_recipe(tiny_recipe, registries, ["train.iterations=9", "model.encoder.width=6", "train.lr=2e-4"])
    assert recipe.train.iterations == 9 and recipe.encoder.settings["width"] == 6 and recipe.train.lr == 2e-4
    ablated = load_recipe(tiny_recipe, registries, ablation="no-sharing")
    assert ablated.sharing.kind == "none" and ablated.sharing.settings == {}
    assert ablated.resolved["ablation"] == "no-sharing"
    # What a run stores reads back (evaluate and translate rebuild the model from it).
    stored = validate(tomllib.loads(ablated.to_toml()), registries, "stored")
    assert stored.ablation == "no-sharing" and stored.resolved == ablated.resolved


def test_bad_override_and_unknown_ablation(tiny_recipe, registries):
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(tiny_recipe, registries, ["train.iterations"])
    with pytest.raises(RecipeError, match="is a value, not a table"):
        load_recipe(tiny_recipe, registries, ["train.iterations.x=3"])
    with pytest.raises(RecipeError, match="did you mean 'no-sharing'"):
        load_recipe(tiny_recipe, registries, ablation="no-shring")


def test_an_ablation_name_with_a_dot_says_to_quote_it(tmp_path, registries):
    path = write(tmp_path, '[data]\nkind = "synthetic"\n[ablations.kl-0.1]\n"objective.kl" = 0.1\n')
    with pytest.raises(RecipeError, match=r'quote it: \[ablations."kl-0.1"\]'):
        load_recipe(path, registries, ablation="kl-0")
    path.write_text('[data]\nkind = "synthetic"\n[ablations."kl-0.1"]\n"objective.kl" = 0.1\n', encoding="utf-8")
    assert load_recipe(path, registries, ablation="kl-0.1").objective.kl == 0.1


def test_parse_override_values():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=/data/x y") == ("a", "/data/x y")
    assert parse_override('a="quoted"') == ("a", "quoted")


def test_unitkit_data_expansion(tmp_path, registries, monkeypatch):
    monkeypatch.setenv("UNITKIT_DATA", str(tmp_path))
    path = write(tmp_path, '[data]\nkind="unpaired-folders"\nroot="${UNITKIT_DATA}/cats"\n')
    assert load_recipe(path, registries).data.settings["root"] == f"{tmp_path}/cats"


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_and_ablation_validates(recipe):
    from unitkit.plugins import load_plugins
    from unitkit.recipe import ablation_names

    registries = load_plugins().registries  # with the plugins in plugins/, which dev.sh installs

    for name in ["", *ablation_names(recipe)]:
        load_recipe(recipe, registries, ablation=name)


@pytest.mark.parametrize(
    "base, overrides, expected",
    [
        # an ablation table may list a setting before the kind it belongs to
        ({"kind": "none"}, {"model.sharing.encoder_blocks": 2, "model.sharing.kind": "shared-latent"},
         {"kind": "shared-latent", "encoder_blocks": 2}),
        # a table without a kind has the schema's default kind: naming that kind keeps its settings
        ({"encoder_blocks": 2}, {"model.sharing.kind": "shared-latent"},
         {"kind": "shared-latent", "encoder_blocks": 2}),
        # another kind drops them: they belong to the old kind
        ({"encoder_blocks": 2}, {"model.sharing.kind": "none"}, {"kind": "none"}),
    ],
)  # fmt: skip
def test_overriding_a_kind_keeps_exactly_the_settings_of_the_new_kind(base, overrides, expected):
    recipe = apply_overrides({"model": {"sharing": base}}, overrides, "test")
    assert recipe["model"]["sharing"] == expected


def test_a_resume_may_change_how_a_run_goes_but_not_what_it_trains(tiny_recipe, registries):
    trained = load_recipe(tiny_recipe, registries).resolved
    harmless = ["train.iterations=40", "train.precision=bf16", "train.log_every=7", "evaluate.fid=true"]
    assert changes_on_resume(trained, load_recipe(tiny_recipe, registries, harmless).resolved) == []
    changed = load_recipe(tiny_recipe, registries, ["train.lr=0.5", "model.sharing.kind=none"]).resolved
    assert changes_on_resume(trained, changed) == [
        "model.sharing.kind: 'shared-latent' -> 'none'",
        f"train.lr: {trained['train']['lr']!r} -> 0.5",
    ]
    # A setting that only one side has comes from another unitkit or plugin version, not from the user.
    older = {**trained, "train": {k: v for k, v in trained["train"].items() if k != "lr_gamma"}}
    assert changes_on_resume(older, load_recipe(tiny_recipe, registries, ["train.lr_gamma=0.25"]).resolved) == []
    retired = {**trained, "objective": {**trained["objective"], "retired_weight": 1.0}}
    assert changes_on_resume(retired, trained) == []
