"""The vault enclave refuses a KMS key whose policy would release its users' material beyond its own image."""

from __future__ import annotations

import json

import pytest

from enclavekit.errors import ConfigurationError
from enclavekit.kms import KeyPolicy
from enclavekit.services.vault.enclave_app import check_key_policy
from enclavekit.services.vault.stack import key_policy

PCR0 = bytes(range(48))


def test_policy_bound_to_the_vault_image_is_accepted() -> None:
    check_key_policy(key_policy(PCR0.hex()), PCR0)


def test_host_chosen_permissive_key_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="refused"):  # it allows kms:* to the account
        check_key_policy(KeyPolicy.default("111122223333").text, PCR0)


def test_key_that_also_releases_to_an_image_of_the_hosts_choosing_is_refused() -> None:
    document = json.loads(key_policy(PCR0.hex()))
    condition = document["Statement"][1]["Condition"]["StringEqualsIgnoreCase"]
    condition["kms:RecipientAttestation:ImageSha384"] = [PCR0.hex(), "ab" * 48]  # the host's debug build
    with pytest.raises(ConfigurationError, match="beyond this enclave image"):
        check_key_policy(json.dumps(document), PCR0)


def test_key_whose_policy_the_operator_can_change_is_refused() -> None:
    document = json.loads(key_policy(PCR0.hex()))
    document["Statement"][0]["Action"].append("kms:PutKeyPolicy")
    with pytest.raises(ConfigurationError, match="kms:PutKeyPolicy"):
        check_key_policy(json.dumps(document), PCR0)


def test_key_bound_to_another_image_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="beyond this enclave image"):
        check_key_policy(key_policy(bytes(48).hex().replace("00", "11", 1)), PCR0)
    operator_only = json.loads(key_policy(PCR0.hex()))
    del operator_only["Statement"][1]
    with pytest.raises(ConfigurationError, match="does not release"):
        check_key_policy(json.dumps(operator_only), PCR0)
