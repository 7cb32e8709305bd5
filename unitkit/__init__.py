"""unitkit: unsupervised image-to-image translation (UNIT) with pluggable components.

The public API a plugin or a script uses is re-exported here; everything else is internal.
"""

from unitkit.components import (
    IMAGE_SUFFIXES,
    Backbone,
    Discriminator,
    DomainData,
    EncoderBackbone,
    GANLoss,
    GeneratorBackbone,
    Logger,
    count_parameters,
    init_weights,
    squared_distance,
    tie_blocks,
    tie_submodule,
)
from unitkit.hookspecs import HOOK_VERSION, hookimpl
from unitkit.registry import Registries, Registry, RegistryError
from unitkit.translator import Translator

__version__ = "0.1.0"

__all__ = [
    "HOOK_VERSION",
    "IMAGE_SUFFIXES",
    "Backbone",
    "Discriminator",
    "DomainData",
    "EncoderBackbone",
    "GANLoss",
    "GeneratorBackbone",
    "Logger",
    "Registries",
    "Registry",
    "RegistryError",
    "Translator",
    "count_parameters",
    "hookimpl",
    "init_weights",
    "squared_distance",
    "tie_blocks",
    "tie_submodule",
]
