"""Every registered component passes the contract tests plugin authors run on theirs."""

from types import SimpleNamespace

import pytest

from unitkit.builtin.networks import ResnetEncoder
from unitkit.registry import KINDS
from unitkit.testing import CONTRACT_CHECKS, check_encoder, contract_tests

test_contract = contract_tests()


class DriftingEncoder(ResnetEncoder):
    """Its forward computes something its blocks do not: training, which runs the blocks, would never see it."""

    def forward(self, x):
        return super().forward(x) + 1


def test_a_forward_that_differs_from_the_blocks_breaks_the_contract():
    with pytest.raises(AssertionError, match="forward differs from applying its blocks"):
        check_encoder(SimpleNamespace(name="drifting", factory=DriftingEncoder))


def test_every_kind_of_component_has_a_contract_check():
    assert list(CONTRACT_CHECKS) == [kind.name for kind in KINDS]
