"""unitkit's built-in components, registered through the ``unitkit`` entry point like any third-party plugin.

This module is the template a plugin author copies: one hook implementation per registry it adds to, each
registering factories that use only the public ``unitkit`` API.
"""

from __future__ import annotations

from unitkit import Registry, hookimpl
from unitkit.builtin import datasets, losses, networks, sharing
from unitkit.builtin.loggers import JsonlLogger, TensorBoardLogger, WandbLogger

unitkit_hook_version = 1


@hookimpl
def unitkit_register_encoders(registry: Registry) -> None:
    registry.register("resnet", networks.ResnetEncoder)
    registry.register("digits32", networks.Digits32Encoder)


@hookimpl
def unitkit_register_generators(registry: Registry) -> None:
    registry.register("resnet", networks.ResnetGenerator)
    registry.register("digits32", networks.Digits32Generator)


@hookimpl
def unitkit_register_discriminators(registry: Registry) -> None:
    registry.register("multiscale-patch", networks.MultiscalePatchDiscriminator)
    registry.register("patch", networks.PatchDiscriminator)
    registry.register("digits32", networks.Digits32Discriminator)


@hookimpl
def unitkit_register_gan_losses(registry: Registry) -> None:
    registry.register("lsgan", losses.LSGAN)
    registry.register("vanilla", losses.VanillaGAN)
    registry.register("hinge", losses.HingeGAN)


@hookimpl
def unitkit_register_reconstruction_losses(registry: Registry) -> None:
    registry.register("l1", losses.l1)
    registry.register("l2", losses.l2)


@hookimpl
def unitkit_register_sharing_strategies(registry: Registry) -> None:
    registry.register("none", sharing.no_sharing)
    registry.register("shared-latent", sharing.shared_latent)
    registry.register("all-but-ends", sharing.all_but_ends)


@hookimpl
def unitkit_register_datasets(registry: Registry) -> None:
    registry.register("synthetic", datasets.synthetic)
    registry.register("unpaired-folders", datasets.unpaired_folders)
    registry.register("mnist-usps", datasets.mnist_usps)
    registry.register("svhn-mnist", datasets.svhn_mnist)


@hookimpl
def unitkit_register_loggers(registry: Registry) -> None:
    registry.register("jsonl", JsonlLogger)
    registry.register("tensorboard", TensorBoardLogger)
    registry.register("wandb", WandbLogger)
