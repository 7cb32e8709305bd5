"""unitkit-timm: timm CNNs as UNIT encoder backbones, with a decoder that mirrors them ("timm" in a recipe)."""

from __future__ import annotations

from unitkit import Registry, hookimpl
from unitkit_timm.backbones import TimmEncoder, TimmGenerator

__version__ = "0.1.0"
unitkit_hook_version = 1


@hookimpl
def unitkit_register_encoders(registry: Registry) -> None:
    registry.register("timm", TimmEncoder)


@hookimpl
def unitkit_register_generators(registry: Registry) -> None:
    # The same name as the encoder: a recipe pairs them, and the contract tests check them together.
    registry.register("timm", TimmGenerator)


__all__ = ["TimmEncoder", "TimmGenerator", "unitkit_hook_version"]
