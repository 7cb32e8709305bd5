"""An exponential moving average of the encoder and generator weights (``train.ema``).

Averaged weights smooth out the oscillation of adversarial training, and often translate better than the weights
of any one iteration, which is why StyleGAN and NVlabs imaginaire keep such an average. It costs one fused update
per iteration and a copy of the encoders and generators; it never feeds back into training, so a run trains
exactly as without it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor

from unitkit.checkpoint import unique_state
from unitkit.errors import CheckpointError
from unitkit.model import UNIT


class WeightAverage:
    """An exponential moving average with ``decay`` of each encoder and generator tensor (a shared block once, as
    the model itself holds it), bias-corrected as Adam corrects its moments: after ``t`` iterations it is
    ``sum_i decay^(t-i) w_i / sum_i decay^(t-i)`` over the weights ``w_1..w_t`` of every iteration so far. Without
    the correction the average would start from the random initial weights and still hold ``decay^t`` of them,
    37 % after 1,000 iterations at ``decay = 0.999``.

    ``model`` is a :class:`~unitkit.model.UNIT` whose encoders and generators hold the average and whose
    discriminators are the trained ones (a domain-adaptation evaluation classifies with them).
    """

    def __init__(self, trained: UNIT, decay: float) -> None:
        self.decay = decay
        # The memo makes the copy take the discriminators as they are; deepcopy keeps the shared blocks shared.
        self.model = copy.deepcopy(trained, memo={id(trained.dis_a): trained.dis_a, id(trained.dis_b): trained.dis_b})
        for network in self.model.translation_networks():
            network.requires_grad_(False)
        self._averages, self._weights = self.model.generator_parameters(), trained.generator_parameters()
        self._buffers = [
            (mine, theirs)
            for own, network in zip(self.model.translation_networks(), trained.translation_networks(), strict=True)
            for mine, theirs in zip(own.buffers(), network.buffers(), strict=True)
        ]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights of iteration ``step`` (1 for the first); buffers (batch-norm statistics) are copied,
        not averaged."""
        torch._foreach_lerp_(self._averages, self._weights, (1.0 - self.decay) / (1.0 - self.decay**step))
        for mine, theirs in self._buffers:
            mine.copy_(theirs)

    def state(self) -> dict[str, Tensor]:
        """The averaged tensors by their model state names (what a checkpoint stores under ``ema/``)."""
        return averaged_part(self.model)

    def load(self, state: dict[str, Tensor], source: Path) -> None:
        """Continue from the averaged tensors of the checkpoint ``source``."""
        expected = {name: tuple(t.shape) for name, t in self.state().items()}
        if {name: tuple(t.shape) for name, t in state.items()} != expected:
            raise CheckpointError(f"{source}: its train.ema average does not fit the model's encoders and generators")
        own = self.model.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor)


def averaged_part(model: UNIT) -> dict[str, Tensor]:
    """The encoder and generator entries of ``model``'s state, each shared tensor once (as checkpoints store it)."""
    return {k: t for k, t in unique_state(model).items() if k.split(".", 1)[0] in UNIT.TRANSLATION_NETWORKS}
