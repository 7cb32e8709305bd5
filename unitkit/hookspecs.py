"""The plugin contract: one hook per kind of component (:data:`unitkit.registry.KINDS`), checked on import.

A plugin is a module (named by an entry point in group ``unitkit``) that implements any of these hooks with
``@unitkit.hookimpl``. Each hook receives the :class:`unitkit.registry.Registry` for one kind of component and
registers factories in it. A factory is usually a class; its keyword arguments are its recipe settings (see
:mod:`unitkit.components` for the interface each kind implements and :data:`unitkit.registry.PROVIDED_ARGUMENTS`
for the arguments unitkit passes itself).

A plugin module may set ``unitkit_hook_version = N``: the version of this contract it was written for. The
core refuses (and reports) a plugin written for a newer version than :data:`HOOK_VERSION`.
"""

from __future__ import annotations

import pluggy

from unitkit.registry import KINDS, Registry

PROJECT = "unitkit"
#: Version of the hook contract. Bumped when a hook's arguments or a component interface change.
HOOK_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def unitkit_register_datasets(registry: Registry) -> None:
    """Register datasets: factories ``(**settings) -> DomainData`` (two domains, train and test splits)."""


@hookspec
def unitkit_register_encoders(registry: Registry) -> None:
    """Register encoder backbones: factories ``(in_channels, **settings) -> EncoderBackbone``.

    The encoder maps an image to the mean of q(z|x); its ``blocks`` are what ``shared-latent`` sharing ties
    (the last k blocks of the two domains' encoders become one module).
    """


@hookspec
def unitkit_register_generators(registry: Registry) -> None:
    """Register generator backbones: factories ``(out_channels, latent_channels, **settings) -> GeneratorBackbone``.

    The generator (decoder) maps a latent tensor to an image in [-1, 1]; sharing ties its first k ``blocks``.
    """


@hookspec
def unitkit_register_discriminators(registry: Registry) -> None:
    """Register discriminators: factories ``(in_channels, num_classes, **settings) -> Discriminator``.

    ``num_classes`` is 0 unless the run trains a classifier head (domain adaptation). The domain-adaptation
    terms (``objective.classify``, ``objective.feature``) also need ``features``, ``score`` and ``classify``
    (see :class:`unitkit.Discriminator`); the built-in ``digits32`` implements them.
    """


@hookspec
def unitkit_register_sharing_strategies(registry: Registry) -> None:
    """Register weight-sharing strategies: functions ``(encoders, generators, **settings) -> None``.

    ``encoders`` and ``generators`` are pairs (domain A, domain B) of freshly built backbones; the strategy
    ties blocks in place by assigning domain A's block module into domain B's ``blocks`` list.
    """


@hookspec
def unitkit_register_gan_losses(registry: Registry) -> None:
    """Register adversarial losses: factories ``(**settings) -> GANLoss``."""


@hookspec
def unitkit_register_reconstruction_losses(registry: Registry) -> None:
    """Register reconstruction losses: factories ``(**settings) -> callable(output, target) -> scalar``."""


@hookspec
def unitkit_register_loggers(registry: Registry) -> None:
    """Register loggers: factories ``(run_dir, **settings) -> Logger`` that receive a run's scalars."""


def _check_every_kind_has_one_hook() -> None:
    """A kind without its hook could never be filled, and a hook without its kind would never be called."""
    specified = {name for name, value in globals().items() if hasattr(value, f"{PROJECT}_spec")}  # pluggy's mark
    wanted = {kind.hook for kind in KINDS}
    if specified != wanted:
        raise ImportError(
            "unitkit.hookspecs and unitkit.registry.KINDS disagree: kinds without a hook specification "
            f"{sorted(wanted - specified)}, hook specifications without a kind {sorted(specified - wanted)}"
        )


_check_every_kind_has_one_hook()
