"""Registries: a name → factory table per kind of component (:data:`KINDS`), remembering which plugin gave
each name."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from unitkit.errors import UsageError


class RegistryError(UsageError):
    """A name registered twice, or a name looked up that nobody registered."""


@dataclass(frozen=True)
class Kind:
    """One kind of component: its registry, the hook that fills it and the recipe table that picks from it.

    :data:`KINDS` is the one list of kinds: a new kind is one entry there, its hook specification (with the
    docstring plugin authors read) in :mod:`unitkit.hookspecs` and its check in :data:`unitkit.testing.CONTRACT_CHECKS`.
    """

    #: The registry's name (``registries.encoders``), also the end of its hook's name.
    name: str
    #: One component of this kind, in messages: ``"encoder backbone"``.
    label: str
    #: The recipe table whose ``kind`` key picks the component; for a ``repeated`` kind, the array of such tables.
    table: tuple[str, ...]
    #: Arguments unitkit passes to a factory itself; a recipe may not set them.
    provided: frozenset[str] = frozenset()
    #: A recipe holds any number of these components, one per table of an array (``[[loggers]]``).
    repeated: bool = False

    @property
    def hook(self) -> str:
        """The hook that fills this kind's registry (specified in :mod:`unitkit.hookspecs`)."""
        return f"unitkit_register_{self.name}"


#: Every kind of component, in the order a recipe lists their tables.
KINDS: tuple[Kind, ...] = (
    Kind("datasets", "dataset", ("data",)),
    Kind("encoders", "encoder backbone", ("model", "encoder"), frozenset({"in_channels"})),
    Kind("generators", "generator backbone", ("model", "generator"), frozenset({"out_channels", "latent_channels"})),
    Kind("discriminators", "discriminator", ("model", "discriminator"), frozenset({"in_channels", "num_classes"})),
    Kind("sharing_strategies", "sharing strategy", ("model", "sharing"), frozenset({"encoders", "generators"})),
    Kind("gan_losses", "GAN loss", ("objective", "gan_loss")),
    Kind("reconstruction_losses", "reconstruction loss", ("objective", "reconstruction_loss")),
    Kind("loggers", "logger", ("loggers",), frozenset({"run_dir"}), repeated=True),
)
#: Each kind's label by registry name (``KIND_LABELS["encoders"] == "encoder backbone"``), for messages.
KIND_LABELS: dict[str, str] = {kind.name: kind.label for kind in KINDS}
#: The arguments unitkit passes each kind's factories, by registry name.
PROVIDED_ARGUMENTS: dict[str, frozenset[str]] = {kind.name: kind.provided for kind in KINDS}


@dataclass(frozen=True)
class Provider:
    """Who registered a component: the plugin (entry-point) name and its distribution."""

    plugin: str
    package: str = ""
    version: str = ""

    def __str__(self) -> str:
        owner = f"{self.package} {self.version}".strip()
        return f"{self.plugin} ({owner})" if owner and owner != self.plugin else self.plugin


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    provider: Provider

    @property
    def summary(self) -> str:
        """First line of the factory's docstring."""
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""


@dataclass(frozen=True)
class Clash:
    """A registration refused because another plugin registered that name first."""

    kind: str
    name: str
    holder: Provider
    newcomer: Provider

    @property
    def component(self) -> str:
        """What was refused, e.g. ``encoder backbone 'resnet'``."""
        return f"{KIND_LABELS[self.kind]} {self.name!r}"

    def __str__(self) -> str:
        return (
            f"{self.component} is registered twice: by plugin {self.holder} and by plugin {self.newcomer}; "
            "the first is kept: uninstall one of them or rename the component"
        )


@dataclass
class Registry:
    """Maps names to component factories for one kind of component (``registry.kind``, e.g. ``"encoders"``).

    Plugins call :meth:`register` from their hook implementations::

        @unitkit.hookimpl
        def unitkit_register_encoders(registry):
            registry.register("my-backbone", MyEncoder)
    """

    kind: str
    _entries: dict[str, Entry] = field(default_factory=dict)
    _provider: Provider = field(default=Provider("<direct>"))
    #: Set on a staging copy (see :meth:`staging`): a taken name is recorded here instead of raising.
    _clashes: list[Clash] | None = None
    #: Names that a plugin registered before it failed, with why they are missing (for :meth:`unknown_message`).
    _withheld: dict[str, str] = field(default_factory=dict)
    #: Why components may be missing at all (plugins that failed or were skipped), for :meth:`unknown_message`.
    _missing_hint: str = ""

    def register(self, name: str, factory: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``factory`` under ``name``; registering a taken name raises, naming both plugins."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{KIND_LABELS[self.kind]} names must be non-empty strings, got {name!r}")
        if not callable(factory):
            raise RegistryError(f"{KIND_LABELS[self.kind]} {name!r}: factory {factory!r} is not callable")
        if name in self._entries:
            clash = Clash(self.kind, name, self._entries[name].provider, self._provider)
            if self._clashes is None:
                raise RegistryError(str(clash))
            self._clashes.append(clash)
            return factory
        self._entries[name] = Entry(name, factory, self._provider)
        return factory

    def get(self, name: str) -> Entry:
        """The entry registered under ``name``; an unknown name raises with the nearest valid names."""
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """One line: ``name`` is unknown, the nearest registered names, and why a plugin's names may be missing."""
        label = KIND_LABELS[self.kind]
        close = difflib.get_close_matches(str(name), self.names(), n=3, cutoff=0.4)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        why_missing = self._withheld.get(name, self._missing_hint) if isinstance(name, str) else self._missing_hint
        return f"unknown {label} {name!r}{hint} (registered: {', '.join(self.names()) or 'none'})" + (
            f"; {why_missing}" if why_missing else ""
        )

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)

    @contextmanager
    def provided_by(self, provider: Provider) -> Iterator[None]:
        """Attribute registrations made inside the block to ``provider``."""
        previous, self._provider = self._provider, provider
        try:
            yield
        finally:
            self._provider = previous

    def staging(self, provider: Provider) -> Registry:
        """A copy that attributes registrations to ``provider`` and records taken names instead of raising.

        What a plugin registers there reaches this registry only through :meth:`adopt`, so a plugin that fails
        halfway can be dropped whole.
        """
        return Registry(self.kind, dict(self._entries), provider, [])

    def _added_in(self, staged: Registry) -> list[Entry]:
        return [entry for name, entry in staged._entries.items() if name not in self._entries]

    def adopt(self, staged: Registry) -> None:
        """Take over the entries registered in ``staged``, a :meth:`staging` copy of this registry."""
        for entry in self._added_in(staged):
            self._entries[entry.name] = entry

    def withhold(self, staged: Registry, reason: str) -> None:
        """Leave out what was registered in ``staged``; a later lookup of one of those names gives ``reason``."""
        for entry in self._added_in(staged):
            self._withheld[entry.name] = reason

    @property
    def clashes(self) -> list[Clash]:
        """On a :meth:`staging` copy, the registrations refused because their name was taken."""
        return list(self._clashes or [])


class Registries:
    """One :class:`Registry` per kind of :data:`KINDS`, as filled by the plugin manager: ``registries.encoders`` or
    ``registries["encoders"]``; iterating gives them in :data:`KINDS` order."""

    def __init__(self, registries: dict[str, Registry] | None = None) -> None:
        self._registries = registries or {kind.name: Registry(kind.name) for kind in KINDS}

    def __getattr__(self, name: str) -> Registry:
        registries = self.__dict__.get("_registries", {})  # absent while a copy is being made
        if name not in registries:
            raise AttributeError(f"no registry {name!r}; the registries are {', '.join(registries)}")
        return registries[name]

    def __getitem__(self, kind: str) -> Registry:
        return self._registries[kind]

    def __iter__(self) -> Iterator[Registry]:
        return iter(self._registries.values())

    def staging(self, provider: Provider) -> Registries:
        """A :meth:`Registry.staging` copy of every registry, for one plugin to register into."""
        return Registries({kind: registry.staging(provider) for kind, registry in self._registries.items()})

    def adopt(self, staged: Registries) -> None:
        """Take over what was registered in ``staged`` (see :meth:`staging`)."""
        for registry in self:
            registry.adopt(staged[registry.kind])

    def withhold(self, staged: Registries, reason: str) -> None:
        """Leave out what was registered in ``staged``; a later lookup of one of those names gives ``reason``."""
        for registry in self:
            registry.withhold(staged[registry.kind], reason)

    @property
    def clashes(self) -> list[Clash]:
        """On a :meth:`staging` copy, the registrations refused because their name was taken."""
        return [clash for registry in self for clash in registry.clashes]

    def note_missing(self, hint: str) -> None:
        """Set the one-line reason every unknown-name message gives for components that may be missing."""
        for registry in self:
            registry._missing_hint = hint
