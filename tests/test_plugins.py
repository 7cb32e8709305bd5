"""Registries and plugin loading: entry points, attribution, duplicate names, broken plugins, opt-out."""

from __future__ import annotations

import types

import pytest
from conftest import make_distribution

from unitkit import hookimpl
from unitkit.hookspecs import HOOK_VERSION
from unitkit.plugins import load_plugins
from unitkit.registry import Registry, RegistryError

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
    from unitkit.registry import Provider

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
