"""Registries and plugin loading: entry points, attribution, duplicate names, broken plugins, opt-out."""

from __future__ import annotations

import types

import pytest
from click.testing import CliRunner
from conftest import make_distribution

from unitkit import hookimpl
from unitkit.cli import main
from unitkit.hookspecs import HOOK_VERSION
from unitkit.plugins import load_plugins
from unitkit.registry import Provider, Registry, RegistryError

EXPECTED_BUILTINS = {
    "encoders": {"resnet", "digits32"},
    "generators": {"resnet", "digits32"},
    "discriminators": {"multiscale-patch", "patch", "digits32"},
    "gan_losses": {"lsgan", "vanilla", "hinge"},
    "reconstruction_losses": {"l1", "l2"},
    "sharing_strategies": {"none", "shared-latent", "all-but-ends"},
    "datasets": {"synthetic", "unpaired-folders", "mnist-usps", "svhn-mnist"},
    "loggers": {"jsonl"},
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
    message = load_plugins().registries.encoders.unknown_message("half-net")
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
