"""benchmarks/profile_step.py charges every FLOP of a training iteration to the right pass and network, and leaves
the trainer as it found it."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
from conftest import ROOT
from torch.utils.flop_counter import FlopCounterMode

import unitkit.objective
import unitkit.train

NARROW = ["model.encoder.width=2", "model.generator.width=2", "model.discriminator.width=2", "train.batch_size=2"]
PATCHED = {  # what the ledger wraps for a while, as the trainer had it
    (unitkit.objective, "fooling"): unitkit.objective.fooling,
    (unitkit.objective, "dropout_off"): unitkit.objective.dropout_off,
    (unitkit.train, "generator_losses"): unitkit.train.generator_losses,
}


def parts(step) -> dict:
    """What the ledger wraps on a step for a while."""
    wrapped = {"generator_pass": step.generator_pass, "discriminator_pass": step.discriminator_pass}
    wrapped |= {"update": step.update, "classify": step.model.dis_a.classify}
    return wrapped | {f"{name}.step": optimizer.step for name, optimizer in step.optimizers.items()}


@pytest.fixture(scope="module")
def digits():
    """One MNIST->USPS iteration (networks narrowed) under the ledger, its FLOPs by (pass, network, direction),
    and the step's own parts before the ledger wrapped them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "benchmarks"))
        profile_step = importlib.import_module("profile_step")
    _, step, iteration = profile_step.random_batch_step(ROOT / "recipes" / "mnist2usps.toml", NARROW, None, "cpu")
    before = parts(step)
    with FlopCounterMode(display=False) as counter, profile_step.ledger_of(step, counter) as ledger:
        iteration()
    flops, counted = {key: cost.flop for key, cost in ledger.costs.items()}, counter.get_total_flops()
    return SimpleNamespace(step=step, iteration=iteration, counted=counted, flops=flops, before=before)


def total(flops, name=None, network=None) -> int:
    return sum(f for (p, n, _), f in flops.items() if name in (None, p) and network in (None, n))


def test_every_flop_lands_in_a_named_pass_and_network(digits):
    assert total(digits.flops) == digits.counted > 0
    assert total(digits.flops, network="other") == 0  # every convolution ran inside a labelled block
    assert {p for (p, _, _), f in digits.flops.items() if f} == {
        "translate_both",
        "discriminator_loss",
        "discriminator_loss: classify",
        "discriminator_loss: feature",
        "update(discriminator): backward",
        "generator_losses: fooling",
        "update(generator): backward",
    }


def test_backward_flops_go_to_the_block_whose_forward_made_them(digits):
    flops = digits.flops
    for network in ("E_a+E_b shared", "G_a+G_b shared", "G_a", "G_b"):  # weight and input gradients: twice forward
        forward = total(flops, "translate_both", network)
        assert total(flops, "update(generator): backward", network) == 2 * forward > 0
    for network in ("E_a", "E_b"):  # the stems' inputs are the images, which need no gradient
        forward = total(flops, "translate_both", network)
        assert total(flops, "update(generator): backward", network) == forward > 0
    # The generator step leaves the discriminators' weights alone: input gradients only, one forward's worth.
    fooling = total(flops, "generator_losses: fooling", "D_a+D_b shared")
    assert total(flops, "update(generator): backward", "D_a+D_b shared") == fooling > 0
    assert total(flops, "update(generator): backward", "classifier") == 0
    assert total(flops, "update(discriminator): backward", "classifier") > 0


def test_the_trainer_is_left_as_it_was(digits):
    for (module, name), original in PATCHED.items():
        assert getattr(module, name) is original
    assert parts(digits.step) == digits.before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in digits.step.model.modules())
    digits.iteration()  # and it still trains
