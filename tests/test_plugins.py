"""Registries and plugin loading: the kinds, entry points, UNITKIT_PLUGINS, attribution, duplicate names, broken
plugins, opt-out, and hooks called through pluggy."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY_RECIPE, make_distribution

from unitkit import hookimpl, hookspecs
from unitkit.cli import main
from unitkit.hookspecs import HOOK_VERSION, hookspec
from unitkit.plugins import load_plugins
from unitkit.registry import KINDS, Provider, Registries, Registry, RegistryError

EXPECTED_BUILTINS = {
    "encoders": {"resnet", "digits32"},
    "generators": {"resnet", "digits32"},
    "discriminators": {"multiscale-patch", "patch", "digits32"},
    "gan_losses": {"lsgan", "vanilla", "hinge"},
    "reconstruction_losses": {"l1", "l2"},
    "sharing_strategies": {"none", "shared-latent", "all-but-ends"},
    "datasets": {"synthetic", "unpaired-folders", "mnist-usps", "svhn-mnist"},
    "loggers": {"jsonl", "tensorboard", "wandb"},
}


def test_builtins_register_through_the_entry_point(registries):
    for kind, names in EXPECTED_BUILTINS.items():
        assert names <= set(registries[kind].names()), kind
        for entry in registries[kind]:
            if entry.name in names:
                assert entry.provider.plugin == "builtin"
                assert entry.provider.package == "unitkit"


def test_registry_rejects_a_name_twice_naming_both_plugins():
    registry = Registry("encoders")
    with registry.provided_by(Provider("first-plugin")):
        registry.register("x", object)
    with registry.provided_by(Provider("second-plugin")), pytest.raises(RegistryError) as err:
        registry.register("x", object)
    assert "first-plugin" in str(err.value) and "second-plugin" in str(err.value)


def test_unknown_name_suggests_the_nearest(registries):
    with pytest.raises(RegistryError, match="did you mean 'resnet'"):
        registries.encoders.get("resnte")


def _plugin(**hooks):
    module = types.ModuleType("fake_plugin")
    for name, function in hooks.items():
        setattr(module, name, hookimpl(function))
    return module


def test_duplicate_from_two_plugins_is_reported_and_others_keep_working():
    def clash(registry):
        registry.register("resnet", object)

    plugins = load_plugins({"clashing": _plugin(unitkit_register_encoders=clash)}, autoload=False)
    assert len(plugins.failures) == 1
    message = str(plugins.failures[0])
    assert "clashing" in message and "builtin" in message and "registered twice" in message
    assert plugins.registries.encoders.get("resnet").provider.plugin == "builtin"
    assert "lsgan" in plugins.registries.gan_losses


def test_plugin_that_raises_while_registering_is_reported():
    def broken(registry):
        raise RuntimeError("boom")

    plugins = load_plugins({"broken": _plugin(unitkit_register_datasets=broken)}, autoload=False)
    assert [f.plugin for f in plugins.failures] == ["broken"]
    assert "RuntimeError: boom" in plugins.failures[0].error
    assert "synthetic" in plugins.registries.datasets


def test_plugin_for_a_newer_hook_version_is_refused_with_a_message():
    module = _plugin()
    module.unitkit_hook_version = HOOK_VERSION + 1
    plugins = load_plugins({"future": module}, autoload=False)
    assert "upgrade unitkit" in plugins.failures[0].error


def test_third_party_distribution_is_found_through_its_entry_point(third_party):
    plugins = load_plugins()
    entry = plugins.registries.gan_losses.get("doubled-lsgan")
    assert entry.provider.package == "unitkit-doubled" and entry.provider.version == "0.3.1"


def test_autoload_can_be_disabled_by_environment(third_party, monkeypatch):
    monkeypatch.setenv("UNITKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = load_plugins()
    assert "doubled-lsgan" not in plugins.registries.gan_losses
    assert "resnet" in plugins.registries.encoders


def test_plugin_failing_at_import_is_reported(tmp_path, monkeypatch):
    folder = make_distribution(
        tmp_path / "site", "unitkit-broken", "unitkit_broken", "raise ImportError('no torch_xyz')"
    )
    monkeypatch.syspath_prepend(str(folder))
    plugins = load_plugins()
    failure = next(f for f in plugins.failures if f.package == "unitkit-broken")
    assert "no torch_xyz" in failure.error
    assert "resnet" in plugins.registries.encoders


def test_a_plugin_sorting_first_with_a_builtin_name_leaves_every_builtin_in_place(rival_plugins):
    plugins = load_plugins()
    for kind, names in EXPECTED_BUILTINS.items():
        for name in names:
            assert plugins.registries[kind].get(name).provider.plugin == "builtin", (kind, name)
    mine = plugins.registries.encoders.get("my-net").provider
    assert (mine.package, mine.version) == ("a-backbones", "1.0")
    clash = next(f for f in plugins.failures if f.package == "a-backbones")
    assert "'resnet'" in str(clash) and "builtin" in str(clash) and "a-backbones" in str(clash)
    assert clash.component and "other components of plugin a-backbones are loaded" in clash.outcome
    assert "a-backbones" in [p.package for p in plugins.providers]


def test_a_plugin_that_raises_while_registering_leaves_nothing_behind(rival_plugins):
    plugins = load_plugins()
    failure = next(f for f in plugins.failures if f.package == "a-broken")
    assert "RuntimeError: disk on fire" in failure.error and not failure.component
    assert "half-net" not in plugins.registries.encoders and "half-data" not in plugins.registries.datasets
    assert "a-broken" not in [p.package for p in plugins.providers]
    assert plugins.manager.get_plugin("a-broken") is None


def test_builtins_load_before_every_entry_point(rival_plugins):
    assert [p.plugin for p in load_plugins().providers][0] == "builtin"


def test_a_clash_rejects_only_that_name_of_a_plugin_given_as_a_module():
    def clash_then_more(registry):
        registry.register("resnet", object)
        registry.register("resnet-extra", object)

    plugins = load_plugins({"clashing": _plugin(unitkit_register_encoders=clash_then_more)}, autoload=False)
    assert plugins.registries.encoders.get("resnet-extra").provider.plugin == "clashing"
    assert plugins.registries.encoders.get("resnet").provider.plugin == "builtin"
    assert [f.component for f in plugins.failures] == ["encoder backbone 'resnet'"]


def test_cli_lists_and_shows_with_a_warning_when_a_plugin_clashes(rival_plugins, tiny_recipe):
    listing = CliRunner().invoke(main, ["list-plugins"], catch_exceptions=False)
    assert listing.exit_code == 0, listing.output
    assert "my-net" in listing.stdout and "synthetic" in listing.stdout
    assert "a-backbones" in listing.stdout and "disk on fire" in listing.stdout
    shown = CliRunner().invoke(main, ["show", str(tiny_recipe)], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    warnings = [line for line in shown.stderr.splitlines() if line.startswith("warning:")]
    assert any("'resnet'" in line and "a-backbones" in line and "builtin" in line for line in warnings), warnings
    assert any("a-broken" in line and "disk on fire" in line for line in warnings), warnings


def test_unknown_name_names_the_failed_plugin_that_provides_it(rival_plugins):
    message = load_plugins().registries.datasets.unknown_message("half-data")  # registered, then its hook raised
    assert "a-broken" in message and "disk on fire" in message and "\n" not in message


def test_unknown_name_lists_the_plugins_that_failed(rival_plugins):
    message = load_plugins().registries.datasets.unknown_message("nowhere")
    assert "a-broken" in message and "list-plugins" in message and "\n" not in message


def test_unknown_name_mentions_the_autoload_switch_when_it_is_set(third_party, monkeypatch):
    monkeypatch.setenv("UNITKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    with pytest.raises(RegistryError) as err:
        load_plugins().registries.gan_losses.get("doubled-lsgan")
    assert "UNITKIT_DISABLE_PLUGIN_AUTOLOAD" in str(err.value) and "unitkit-doubled" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_name_does_not_mention_the_autoload_switch_when_it_is_unset(monkeypatch):
    monkeypatch.delenv("UNITKIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    assert "UNITKIT_DISABLE_PLUGIN_AUTOLOAD" not in load_plugins().registries.encoders.unknown_message("x")


def test_the_registries_are_the_kinds_in_order():
    registries = Registries()
    assert [registry.kind for registry in registries] == [kind.name for kind in KINDS]
    assert registries.encoders is registries["encoders"]
    with pytest.raises(AttributeError, match="no registry 'encoder'; the registries are datasets, encoders"):
        registries.encoder  # noqa: B018


def test_the_design_page_tables_every_kind():
    design = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text(encoding="utf-8")
    rows = [line.split(" | ") for line in design.splitlines() if line.startswith("| `") and line.count("|") == 5]
    documented = [[cell.strip("| ") for cell in row] for row in rows]
    expected = []
    for kind in KINDS:
        table = ".".join(kind.table)
        table = f"`[[{table}]]`, any number" if kind.repeated else f"`[{table}]`"
        expected.append([f"`{kind.name}`", kind.label, table, ", ".join(f"`{a}`" for a in sorted(kind.provided))])
    assert documented == expected


def test_a_kind_and_its_hook_specification_come_together(monkeypatch):
    monkeypatch.delattr(hookspecs, "unitkit_register_loggers")
    with pytest.raises(ImportError, match=r"kinds without a hook specification \['unitkit_register_loggers'\]"):
        hookspecs._check_every_kind_has_one_hook()
    monkeypatch.undo()
    monkeypatch.setattr(hookspecs, "unitkit_register_samplers", hookspec(lambda registry: None), raising=False)
    with pytest.raises(ImportError, match=r"hook specifications without a kind \['unitkit_register_samplers'\]"):
        hookspecs._check_every_kind_has_one_hook()


def _module(name, *implementations):
    """A plugin module holding ``implementations`` (hookimpl-marked functions) under their own names."""
    module = types.ModuleType(name)
    for function in implementations:
        setattr(module, function.__name__, function)
    return module


def test_a_tryfirst_implementation_runs_before_the_plugins_others():
    @hookimpl(specname="unitkit_register_encoders", tryfirst=True)
    def define_net(registry):
        registry.register("my-net", object)

    @hookimpl(specname="unitkit_register_encoders")
    def name_an_alias(registry):  # without tryfirst pluggy would call this first: it is registered later, by name
        registry.register("my-net-alias", registry.get("my-net").factory)

    plugins = load_plugins({"ordered": _module("ordered", define_net, name_an_alias)}, autoload=False)
    assert not plugins.failures, plugins.failures
    assert plugins.registries.encoders.get("my-net-alias").factory is object


def test_a_hook_wrapper_runs_around_the_plugins_implementations():
    @hookimpl(specname="unitkit_register_encoders")
    def define_net(registry):
        registry.register("my-net", object)

    @hookimpl(specname="unitkit_register_encoders", wrapper=True)
    def name_an_alias(registry):
        result = yield
        registry.register("my-net-alias", registry.get("my-net").factory)
        return result

    plugins = load_plugins({"wrapping": _module("wrapping", define_net, name_an_alias)}, autoload=False)
    assert not plugins.failures, plugins.failures
    assert plugins.registries.encoders.get("my-net-alias").provider.plugin == "wrapping"


LOOSE_MODULE = '''
"""Backbones tried without packaging: a module on the Python path, named in UNITKIT_PLUGINS."""
from unitkit import hookimpl
from unitkit.builtin.networks import ResnetEncoder


class LooseEncoder(ResnetEncoder):
    """The ResNet encoder, from a module on the path."""


@hookimpl
def unitkit_register_encoders(registry):
    registry.register("loose-resnet", LooseEncoder)
'''


@pytest.fixture
def loose_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A module ``loose_backbones`` on sys.path, named in UNITKIT_PLUGINS, not installed; yields its file."""
    path = tmp_path / "loose" / "loose_backbones.py"
    path.parent.mkdir()
    path.write_text(LOOSE_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(path.parent))
    monkeypatch.setenv("UNITKIT_PLUGINS", "loose_backbones")
    yield path
    sys.modules.pop("loose_backbones", None)


def test_a_module_named_in_unitkit_plugins_loads_after_the_entry_points(loose_module, third_party, monkeypatch):
    monkeypatch.setenv("UNITKIT_PLUGINS", " loose_backbones, ,loose_backbones")  # blanks and repeats ignored
    plugins = load_plugins()
    assert not plugins.failures, plugins.failures
    loaded = [p.plugin for p in plugins.providers]
    assert loaded[0] == "builtin" and "unitkit-doubled" in loaded and loaded[-1] == "loose_backbones", loaded
    entry = plugins.registries.encoders.get("loose-resnet")
    assert entry.provider.package == f"UNITKIT_PLUGINS:{loose_module}"


def test_the_autoload_switch_keeps_the_modules_named_in_unitkit_plugins(loose_module, third_party, monkeypatch):
    monkeypatch.setenv("UNITKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = load_plugins()
    assert "loose-resnet" in plugins.registries.encoders and "doubled-lsgan" not in plugins.registries.gan_losses


def test_list_plugins_and_show_use_a_module_named_in_unitkit_plugins(loose_module, tmp_path):
    listing = CliRunner().invoke(main, ["list-plugins"], catch_exceptions=False)
    assert listing.exit_code == 0, listing.output
    rows = [line for line in listing.stdout.splitlines() if "loose-resnet" in line]
    assert len(rows) == 1 and f"UNITKIT_PLUGINS:{loose_module}" in rows[0], listing.stdout
    recipe = tmp_path / "loose.toml"
    encoder = '[model.encoder]\nkind = "resnet"'
    recipe.write_text(TINY_RECIPE.replace(encoder, encoder.replace("resnet", "loose-resnet")), encoding="utf-8")
    shown = CliRunner().invoke(main, ["show", str(recipe)], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert '[model.encoder]\nkind = "loose-resnet"' in shown.stdout and "warning" not in shown.stderr


def test_a_module_named_in_unitkit_plugins_that_fails_to_import_is_one_warning(tiny_recipe, tmp_path, monkeypatch):
    (tmp_path / "needs_more.py").write_text("import torch_xyz\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("UNITKIT_PLUGINS", "nowhere_to_be_found,needs_more")
    missing, needy = load_plugins().failures
    assert (missing.plugin, missing.package) == ("nowhere_to_be_found", "UNITKIT_PLUGINS")
    assert missing.error.endswith("add its folder to PYTHONPATH")
    assert needy.error == "ModuleNotFoundError: No module named 'torch_xyz'"  # found, but its dependency is not
    monkeypatch.setenv("UNITKIT_PLUGINS", "nowhere_to_be_found")
    shown = CliRunner().invoke(main, ["show", str(tiny_recipe)], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert [line for line in shown.stderr.splitlines() if "nowhere_to_be_found" in line] == [
        "warning: plugin 'nowhere_to_be_found' (UNITKIT_PLUGINS) failed: ModuleNotFoundError: no module named "
        "'nowhere_to_be_found': add its folder to PYTHONPATH; the other plugins are loaded"
    ]
