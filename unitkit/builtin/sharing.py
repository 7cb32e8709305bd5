"""Weight-sharing strategies: which encoder and generator blocks the two domains have in common."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from unitkit import EncoderBackbone, GeneratorBackbone, tie_blocks


def _check_count(what: str, count: int, available: int) -> None:
    if count > available:
        raise ValueError(f"cannot share {count} {what} blocks: the backbone has only {available}")


def no_sharing(
    encoders: tuple[EncoderBackbone, EncoderBackbone], generators: tuple[GeneratorBackbone, GeneratorBackbone]
) -> None:
    """Four independent networks: nothing is shared (the ablation without a shared latent space)."""


def shared_latent(
    encoders: tuple[EncoderBackbone, EncoderBackbone],
    generators: tuple[GeneratorBackbone, GeneratorBackbone],
    encoder_blocks: Annotated[int, Field(ge=0)] = 1,
    generator_blocks: Annotated[int, Field(ge=0)] = 1,
) -> None:
    """Share the last k encoder blocks and the first k generator blocks (the paper's default: 1 and 1)."""
    enc_a, enc_b = encoders
    gen_a, gen_b = generators
    _check_count("encoder", encoder_blocks, len(enc_a.blocks))
    _check_count("generator", generator_blocks, len(gen_a.blocks))
    tie_blocks(enc_a, enc_b, range(len(enc_a.blocks) - encoder_blocks, len(enc_a.blocks)))
    tie_blocks(gen_a, gen_b, range(generator_blocks))


def all_but_ends(
    encoders: tuple[EncoderBackbone, EncoderBackbone], generators: tuple[GeneratorBackbone, GeneratorBackbone]
) -> None:
    """Share everything except each domain's first encoder block (stem) and last generator block (output)."""
    shared_latent(encoders, generators, len(encoders[0].blocks) - 1, len(generators[0].blocks) - 1)
