"""Finds plugins (entry points of group ``unitkit``, and modules named in ``UNITKIT_PLUGINS``) and lets each fill
the registries.

A manager is built per call (:func:`load_plugins`), never at import time, so a test can build one with only the
plugins it names. unitkit's built-in components load first, so an installed plugin cannot take their names. A
plugin that fails to import or to register is recorded in :attr:`PluginSet.failures`, leaves nothing of itself in
the registries, and the others keep working. A plugin registering a name that is taken loses that component only
(also recorded in :attr:`PluginSet.failures`); its other components are used.
"""

from __future__ import annotations

import importlib
import os
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata

import pluggy

from unitkit import hookspecs
from unitkit.hookspecs import HOOK_VERSION, PROJECT
from unitkit.registry import KINDS, Clash, Provider, Registries

#: Set to 1 to ignore installed third-party plugins (entry points); modules named in UNITKIT_PLUGINS still load.
DISABLE_AUTOLOAD_ENV = "UNITKIT_DISABLE_PLUGIN_AUTOLOAD"
#: Modules to import as plugins without packaging them, comma-separated (``UNITKIT_PLUGINS=my_backbones``).
PLUGINS_ENV = "UNITKIT_PLUGINS"
BUILTIN_DISTRIBUTION = "unitkit"
BUILTIN_ENTRY_POINT = "builtin"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be used, or one of its components that was refused, and why (one line)."""

    plugin: str
    package: str
    error: str
    #: The refused component (e.g. ``encoder backbone 'resnet'``) when only that one is lost; empty when the
    #: whole plugin is.
    component: str = ""

    @classmethod
    def from_clash(cls, clash: Clash) -> PluginFailure:
        """The newcomer's side of a name clash: its component is refused, the rest of it is used."""
        return cls(clash.newcomer.plugin, clash.newcomer.package, str(clash), clash.component)

    @property
    def outcome(self) -> str:
        """What is still used despite this failure, for a warning."""
        return (
            f"the other components of plugin {self.plugin} are loaded"
            if self.component
            else "the other plugins are loaded"
        )

    def __str__(self) -> str:
        if self.component:
            return self.error  # a clash message names both plugins already
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


def _package(ep: metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist else "?"


def _is_builtin(ep: metadata.EntryPoint) -> bool:
    return _package(ep) == BUILTIN_DISTRIBUTION and ep.name == BUILTIN_ENTRY_POINT


def _entry_points() -> list[metadata.EntryPoint]:
    """unitkit's built-ins first (so their names are taken before any plugin's), then by distribution and name."""
    return sorted(metadata.entry_points(group=PROJECT), key=lambda ep: (not _is_builtin(ep), _package(ep), ep.name))


def _autoload_disabled_by_environment() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def load_plugins(
    modules: dict[str, types.ModuleType | object] | None = None,
    *,
    autoload: bool | None = None,
) -> PluginSet:
    """Build a plugin manager, load plugins and fill a fresh set of registries.

    The plugins load in this order: unitkit's built-in components (its ``builtin`` entry point, always loaded),
    the other entry points of group ``unitkit``, the modules named in ``UNITKIT_PLUGINS``, then ``modules``.

    Args:
        modules: extra plugin objects to register by name (tests use this to add a plugin without installing
            it).
        autoload: load third-party entry points of group ``unitkit``. ``None`` means yes unless the environment
            variable ``UNITKIT_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value. Modules named in
            ``UNITKIT_PLUGINS`` load either way: they were asked for by name.

    Example::

        plugins = load_plugins()
        encoder_cls = plugins.registries.encoders.get("resnet").factory
    """
    if autoload is None:
        autoload = not _autoload_disabled_by_environment()
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    result = PluginSet(Registries(), manager)

    candidates: list[tuple[Provider, object]] = []
    skipped: list[str] = []
    for ep in _entry_points():
        package = _package(ep)
        if not autoload and not _is_builtin(ep):
            skipped.append(package)
            continue
        provider = Provider(ep.name, package, ep.dist.version if ep.dist else "")
        if (module := _import(result, provider, ep.load)) is not None:
            candidates.append((provider, module))
    for name in _named_in_environment():
        if (module := _import(result, Provider(name, PLUGINS_ENV), partial(_import_named, name))) is not None:
            candidates.append((Provider(name, f"{PLUGINS_ENV}:{getattr(module, '__file__', None) or name}"), module))
    for name, module in (modules or {}).items():
        candidates.append((Provider(name, getattr(module, "__name__", name)), module))

    for provider, module in candidates:
        _register_one(result, provider, module)
    result.registries.note_missing(_why_components_may_be_missing(result.failures, skipped, autoload))
    return result


def _import(result: PluginSet, provider: Provider, load: Callable[[], object]) -> object | None:
    """The plugin's module, or None with the failure recorded: a broken plugin must not take the toolkit down."""
    try:
        return load()
    except Exception as exc:
        result.failures.append(PluginFailure(provider.plugin, provider.package, _one_line(exc)))
        return None


def _named_in_environment() -> list[str]:
    """The module names in ``UNITKIT_PLUGINS``, each once, in order."""
    names = (name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(","))
    return list(dict.fromkeys(name for name in names if name))


def _import_named(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not f"{name}.".startswith(f"{exc.name}."):
            raise  # the module was found; something it imports was not
        raise ModuleNotFoundError(f"no module named {name!r}: add its folder to PYTHONPATH") from exc


def _why_components_may_be_missing(failures: list[PluginFailure], skipped: list[str], autoload: bool) -> str:
    """One line for unknown-name messages: the plugins that failed or were skipped may provide the name."""
    reasons = []
    failed = sorted({failure.package for failure in failures if not failure.component})
    if failed:
        reasons.append(f"plugins that failed to load may provide it: {', '.join(failed)} (see unitkit list-plugins)")
    by_environment = _autoload_disabled_by_environment()
    not_loaded = f"third-party plugins were not loaded ({', '.join(sorted(set(skipped))) or 'none installed'})"
    if not autoload and by_environment:
        reasons.append(f"{DISABLE_AUTOLOAD_ENV} is set, so {not_loaded}: unset it to load them")
    elif not autoload and skipped:
        reasons.append(not_loaded)
    return "; ".join(reasons)


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
    # Each hook is called through pluggy (so tryfirst, trylast and wrappers work) for this plugin alone, so an
    # error is charged to the plugin that raised it, and into staging copies of the registries, so a plugin that
    # raises halfway leaves nothing of itself behind.
    others = [plugin for plugin in result.manager.get_plugins() if plugin is not module]
    staged = result.registries.staging(provider)
    try:
        for kind in KINDS:
            result.manager.subset_hook_caller(kind.hook, remove_plugins=others)(registry=staged[kind.name])
    except Exception as exc:
        failure = PluginFailure(provider.plugin, provider.package, _one_line(exc))
        result.failures.append(failure)
        result.registries.withhold(staged, f"plugin {provider} provides it but failed to load: {failure.error}")
        result.manager.unregister(module)
        return
    result.registries.adopt(staged)
    result.failures.extend(PluginFailure.from_clash(clash) for clash in staged.clashes)
    result.providers.append(provider)
