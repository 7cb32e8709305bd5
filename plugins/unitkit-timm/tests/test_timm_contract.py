from unitkit.testing import contract_tests

test_contract = contract_tests(plugin="unitkit-timm")
