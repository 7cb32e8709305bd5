"""Finds plugins through entry points of group ``unitkit`` and lets each fill the registries.

A manager is built per call (:func:`load_plugins`), never at import time, so a test can build one with only the
plugins it names. A plugin that fails to import or to register is recorded in :attr:`PluginSet.failures` and
the others keep working.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from unitkit import hookspecs
from unitkit.hookspecs import HOOK_VERSION, HOOKS, PROJECT
from unitkit.registry import Provider, Registries

#: Set to 1 to load only unitkit's own built-in components (third-party entry points are ignored).
DISABLE_AUTOLOAD_ENV = "UNITKIT_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DISTRIBUTION = "unitkit"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be used, and why (one line)."""

    plugin: str
    package: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} ({self.package}) failed: {self.error}"


@dataclass
class PluginSet:
    """What loading plugins produced: the filled registries, the plugins used and the ones that failed."""

    registries: Registries
    manager: pluggy.PluginManager
    providers: list[Provider] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=PROJECT), key=lambda ep: (ep.dist.name if ep.dist else "", ep.name))


def load_plugins(
    modules: dict[str, types.ModuleType | object] | None = None,
    *,
    autoload: bool | None = None,
) -> PluginSet:
    """Build a plugin manager, load plugins and fill a fresh set of registries.

    Args:
        modules: extra plugin objects to register by name (tests use this to add a plugin without installing
            it). They are registered after the entry-point plugins.
        autoload: load third-party entry points of group ``unitkit``. ``None`` means yes unless the environment
            variable ``UNITKIT_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value. unitkit's own built-in
            components (its ``builtin`` entry point) always load.

    Example::

        plugins = load_plugins()
        encoder_cls = plugins.registries.encoders.get("resnet").factory
    """
    if autoload is None:
        autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    result = PluginSet(Registries(), manager)

    candidates: list[tuple[Provider, object]] = []
    for ep in _entry_points():
        package = ep.dist.name if ep.dist else "?"
        if package != BUILTIN_DISTRIBUTION and not autoload:
            continue
        provider = Provider(ep.name, package, ep.dist.version if ep.dist else "")
        try:
            candidates.append((provider, ep.load()))
        except Exception as exc:  # a broken third-party package must not take the toolkit down
            result.failures.append(PluginFailure(ep.name, package, _one_line(exc)))
    for name, module in (modules or {}).items():
        candidates.append((Provider(name, getattr(module, "__name__", name)), module))

    for provider, module in candidates:
        _register_one(result, provider, module)
    return result


def _register_one(result: PluginSet, provider: Provider, module: object) -> None:
    wanted = getattr(module, "unitkit_hook_version", 1)
    if not isinstance(wanted, int) or wanted > HOOK_VERSION:
        result.failures.append(
            PluginFailure(
                provider.plugin,
                provider.package,
                f"written for unitkit hook version {wanted}, but this unitkit provides version {HOOK_VERSION}; "
                "upgrade unitkit (pip install -U unitkit)",
            )
        )
        return
    try:
        result.manager.register(module, name=provider.plugin)
    except Exception as exc:
        result.failures.append(PluginFailure(provider.plugin, provider.package, _one_line(exc)))
        return
    # Call each hook of this plugin alone, so an error is charged to the plugin that raised it.
    try:
        for kind, hook_name in HOOKS.items():
            registry = result.registries[kind]
            for impl in getattr(result.manager.hook, hook_name).get_hookimpls():
                if impl.plugin is module:
                    with registry.provided_by(provider):
                        impl.function(registry=registry)
    except Exception as exc:
        result.failures.append(PluginFailure(provider.plugin, provider.package, _one_line(exc)))
        return
    result.providers.append(provider)
