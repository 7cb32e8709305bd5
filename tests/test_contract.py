"""Every registered component passes the contract tests plugin authors run on theirs."""

from unitkit.testing import contract_tests

test_contract = contract_tests()
