"""A timm model cut after one feature stage as the UNIT encoder, and a decoder that mirrors it stage by stage."""

from __future__ import annotations

import difflib
import functools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import timm
import torch
from pydantic import Field
from timm.models import FeatureListNet, load_state_dict
from torch import nn

from unitkit import EncoderBackbone, GeneratorBackbone, init_weights

NonNegativeInt = Annotated[int, Field(ge=0)]


class Stage(NamedTuple):
    """One feature stage of a timm model: its output channels and its reduction of the image side."""

    channels: int
    reduction: int


@functools.cache
def feature_stages(model: str) -> tuple[Stage, ...]:
    """The feature stages of timm model ``model``, stem first, read without allocating its weights.

    Raises ValueError for an unknown model and for one whose features cannot be split into stage blocks.
    """
    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown timm model {model!r}{hint} (timm.list_models('resnet*') lists names)")
    try:
        try:
            with torch.device("meta"):
                net = timm.create_model(model, features_only=True, out_indices=(0,), pretrained=False)
        except (NotImplementedError, RuntimeError):  # an init that cannot run on meta tensors: pay for real ones
            net = timm.create_model(model, features_only=True, out_indices=(0,), pretrained=False)
    except Exception as exc:
        raise ValueError(f"timm model {model!r} has no features_only form: {exc}") from exc
    layout = getattr(net, "output_fmt", "NCHW")  # a str enum in timm 1.x, a plain str before
    layout = getattr(layout, "value", layout)
    if not isinstance(net, FeatureListNet) or layout != "NCHW":
        raise ValueError(
            f"timm model {model!r} extracts features with {type(net).__name__} ({layout} layout), which cannot "
            "be split into a list of stage blocks; use a CNN such as resnet*, convnext*, regnet*, densenet* or vgg*"
        )
    return tuple(Stage(info["num_chs"], info["reduction"]) for info in net.feature_info.info)


def stages_up_to(model: str, stage: int) -> tuple[Stage, ...]:
    """Stages 0..``stage`` of ``model``; an out-of-range stage raises ValueError listing the valid ones."""
    stages = feature_stages(model)
    if not 0 <= stage < len(stages):
        reductions = ", ".join(f"{i}: 1/{s.reduction}" for i, s in enumerate(stages))
        raise ValueError(f"timm model {model!r} has stages 0..{len(stages) - 1} ({reductions}); got stage = {stage}")
    return stages[: stage + 1]


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Put the Hugging Face hub in offline mode for the block (belt and braces: a local file needs no hub)."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    # huggingface_hub reads the variable once, when imported (timm imports it), so set its constant as well.
    constants = sys.modules.get("huggingface_hub.constants")
    was_offline = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = was_offline
        if previous is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _create_pretrained(model: str, pretrained_file: str, **kwargs: Any) -> nn.Module:
    """Build ``model`` with timm's pretrained loading pointed at a local file; nothing is downloaded."""
    if not pretrained_file:
        raise ValueError(
            f"pretrained = true needs pretrained_file: unitkit-timm never downloads weights (runs may have no "
            f"network access). Save the weights once where there is network, e.g. safetensors.torch.save_file("
            f"timm.create_model({model!r}, pretrained=True).state_dict(), '{model}.safetensors'), and set "
            "pretrained_file to that .safetensors (or .pth/.bin) file"
        )
    path = Path(pretrained_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained_file {str(path)!r} not found (unitkit-timm reads weights from local files)"
        )
    # A hub-hosted model's config may say source = 'hf-hub', which timm prefers over `file`; clear it.
    overlay = {"file": str(path), "source": ""}
    with _hub_offline():
        net = timm.create_model(model, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    # A features-only model loads non-strictly (its classifier is dropped), so weights of another architecture
    # would load as nothing at all without a word; compare names (flattened stages use '_' for '.').
    available = {key.replace(".", "_") for key in load_state_dict(str(path))}
    wanted = list(net.state_dict())
    missing = [key for key in wanted if key.replace(".", "_") not in available]
    if missing:
        raise ValueError(
            f"pretrained_file {str(path)!r} has no weights for {len(missing)} of the {len(wanted)} tensors of "
            f"timm model {model!r} (first: {missing[0]!r}); is it a state_dict of {model!r}?"
        )
    return net


def _split_into_stages(net: FeatureListNet) -> list[nn.Sequential]:
    """The modules of a features-only timm model grouped into one ``nn.Sequential`` per feature stage."""
    # FeatureListNet runs its children in order and taps the outputs named in return_layers: each tap ends a stage.
    blocks, current = [], nn.Sequential()
    for name, module in net.named_children():
        current.add_module(name, module)
        if name in net.return_layers:
            blocks.append(current)
            current = nn.Sequential()
    return blocks


class TimmEncoder(EncoderBackbone):
    """A timm CNN (resnet18 by default) cut after one of its feature stages, as the UNIT encoder.

    ``stage`` picks the stage (resnet18: 0..4; stage 2 = 1/8 of the image side). ``blocks`` = [stem (stage 0),
    stage 1, ..., stage ``stage``], timm's own modules; ``shared-latent`` with k encoder blocks shares the last k
    stages, and the stem is always per domain. ``latent_channels`` = 0 keeps the stage's channels, another value
    appends a 1x1 projection to the last block. ``pretrained = true`` loads ``pretrained_file`` (a local
    .safetensors/.pth/.bin state_dict of ``model``) through timm; nothing is downloaded.
    """

    def __init__(
        self,
        in_channels: int,
        model: str = "resnet18",
        stage: NonNegativeInt = 2,
        latent_channels: NonNegativeInt = 0,
        pretrained: bool = False,
        pretrained_file: str = "",
    ):
        super().__init__()
        stages = stages_up_to(model, stage)
        options = {"features_only": True, "out_indices": tuple(range(stage + 1)), "in_chans": in_channels}
        if pretrained:
            net = _create_pretrained(model, pretrained_file, **options)
        elif pretrained_file:
            raise ValueError(
                f"pretrained_file = {pretrained_file!r} is set, but pretrained = false; set both or neither"
            )
        else:
            net = timm.create_model(model, pretrained=False, **options)
        blocks = _split_into_stages(net)
        if latent_channels:
            projection = nn.Conv2d(stages[-1].channels, latent_channels, 1)
            init_weights(projection, "kaiming")
            blocks[-1].add_module("projection", projection)
        self.blocks = nn.ModuleList(blocks)
        self.latent_channels = latent_channels or stages[-1].channels
        self.size_multiple = stages[-1].reduction


def _upsampling_block(cin: int, cout: int, factor: int) -> nn.Sequential:
    """log2(factor) times nearest 2x upsampling + 3x3 conv + norm + ReLU (one conv without upsampling if 1)."""
    doublings = factor.bit_length() - 1
    layers: list[nn.Module] = []
    for step in range(max(doublings, 1)):
        if step < doublings:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        # GroupNorm(1, C) normalises each sample on its own, like the reference decoder's LayerNorm: shared blocks
        # see both domains' batches at once, and batch statistics would mix them.
        layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.GroupNorm(1, cout), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers)


class TimmGenerator(GeneratorBackbone):
    """Decoder mirroring the 'timm' encoder of the same model and stage, from the latent back to an image.

    ``blocks`` = [mirror of stage ``stage``, ..., mirror of the stem, output 7x7 conv + tanh]; each mirror block
    undoes its stage's downsampling with nearest upsampling + 3x3 conv + GroupNorm + ReLU. ``shared-latent``
    with k generator blocks shares the mirrors of the deepest k stages; the output block is per domain.
    ``width`` = 0 gives each block the channels of the encoder stage it leads back to; another value gives the
    last mirror block ``width`` channels, doubling towards the latent.
    """

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        model: str = "resnet18",
        stage: NonNegativeInt = 2,
        width: NonNegativeInt = 0,
    ):
        super().__init__()
        stages = stages_up_to(model, stage)
        blocks: list[nn.Module] = []
        cin = latent_channels
        for depth, s in enumerate(reversed(range(len(stages)))):
            below = stages[s - 1] if s else Stage(stages[0].channels, 1)
            factor, remainder = divmod(stages[s].reduction, below.reduction)
            if factor < 1 or remainder or factor & (factor - 1):
                raise ValueError(
                    f"TimmGenerator: stage {s} of timm model {model!r} reduces the image side by "
                    f"{stages[s].reduction / below.reduction:g}, not a power of 2, so it cannot be mirrored"
                )
            cout = width * 2 ** (len(stages) - 1 - depth) if width else below.channels
            blocks.append(_upsampling_block(cin, cout, factor))
            cin = cout
        blocks.append(nn.Sequential(nn.Conv2d(cin, out_channels, 7, 1, 3), nn.Tanh()))
        self.blocks = nn.ModuleList(blocks)
        init_weights(self, "kaiming")


__all__ = ["Stage", "TimmEncoder", "TimmGenerator", "feature_stages", "stages_up_to"]
