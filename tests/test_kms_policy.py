"""Key policies: AWS semantics for the attestation condition keys, failing closed where AWS's would not."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from enclavekit.kms.errors import AccessDenied, MalformedPolicyDocument
from enclavekit.kms.policy import KeyPolicy, RequestContext
from tests.test_kms_fixtures import policy, statement

PCR0 = bytes(range(48))
PCR8 = bytes(48 * [0xAB])
OTHER = bytes(48 * [0x11])
ATTESTED = RequestContext.build(pcrs={0: PCR0, 1: OTHER, 8: PCR8})
NOT_ATTESTED = RequestContext.build()


def _policy(*statements: dict[str, Any]) -> KeyPolicy:
    return KeyPolicy.from_json(policy(*statements))


def _enclave(condition: dict[str, Any], effect: str = "Allow") -> KeyPolicy:
    return _policy(statement(effect, "kms:Decrypt", condition))


def test_matching_pcr0_is_allowed_case_insensitively() -> None:
    rule = _enclave({"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0.hex().upper()}})
    assert rule.evaluate("kms:Decrypt", ATTESTED).allowed


def test_other_pcr0_is_denied() -> None:
    rule = _enclave({"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": OTHER.hex()}})
    decision = rule.evaluate("kms:Decrypt", ATTESTED)
    assert not decision.allowed
    assert "ImageSha384" in decision.reason.lower() or "imagesha384" in decision.reason
    with pytest.raises(AccessDenied) as caught:
        rule.authorize("kms:Decrypt", ATTESTED, resource="arn:aws:kms:us-east-1:111122223333:key/x")
    assert caught.value.aws_type == "AccessDeniedException"


def test_string_equals_is_case_sensitive_as_on_aws() -> None:
    rule = _enclave({"StringEquals": {"kms:RecipientAttestation:PCR0": PCR0.hex().upper()}})
    assert not rule.evaluate("kms:Decrypt", ATTESTED).allowed
    rule = _enclave({"StringEquals": {"kms:RecipientAttestation:PCR0": PCR0.hex()}})
    assert rule.evaluate("kms:Decrypt", ATTESTED).allowed


def test_every_pinned_pcr_must_match() -> None:
    both = {
        "StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:PCR0": PCR0.hex(),
            "kms:RecipientAttestation:PCR8": OTHER.hex(),
        }
    }
    assert not _enclave(both).evaluate("kms:Decrypt", ATTESTED).allowed
    both["StringEqualsIgnoreCase"]["kms:RecipientAttestation:PCR8"] = PCR8.hex()
    assert _enclave(both).evaluate("kms:Decrypt", ATTESTED).allowed


def test_several_values_are_alternatives_for_a_rolling_upgrade() -> None:
    rule = _enclave({"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": [OTHER.hex(), PCR0.hex()]}})
    assert rule.evaluate("kms:Decrypt", ATTESTED).allowed


def test_attestation_condition_without_a_recipient_is_denied() -> None:
    rule = _enclave({"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0.hex()}})
    decision = rule.evaluate("kms:Decrypt", NOT_ATTESTED)
    assert not decision.allowed
    assert "attestation document" in decision.reason


@pytest.mark.parametrize(
    "operator",
    ["StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "StringEqualsIfExists", "StringLikeIfExists"],
)
def test_negated_or_if_exists_attestation_allow_never_grants_without_a_recipient(operator: str) -> None:
    """On AWS an absent key satisfies these operators; here an Allow naming attestation needs a document."""
    value = OTHER.hex() if "Not" in operator else PCR0.hex()
    if "Like" in operator:
        value = "0011*" if "Not" not in operator else "ffff*"
    rule = _enclave({operator: {"kms:RecipientAttestation:ImageSha384": value}})
    assert not rule.evaluate("kms:Decrypt", NOT_ATTESTED).allowed


def test_deny_unless_pcr0_blocks_requests_without_a_recipient() -> None:
    rule = _policy(
        statement("Allow", "kms:*"),
        statement(
            "Deny", "kms:Decrypt", {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0.hex()}}
        ),
    )
    assert not rule.evaluate("kms:Decrypt", NOT_ATTESTED).allowed
    assert rule.evaluate("kms:Decrypt", ATTESTED).allowed
    assert not rule.evaluate("kms:Decrypt", RequestContext.build(pcrs={0: OTHER})).allowed
    assert rule.evaluate("kms:Encrypt", NOT_ATTESTED).allowed


def test_explicit_deny_wins_over_allow() -> None:
    rule = _policy(statement("Allow", "kms:*"), statement("Deny", "kms:Decrypt"))
    decision = rule.evaluate("kms:Decrypt", ATTESTED)
    assert not decision.allowed
    assert "explicitly denied" in decision.reason


def test_no_matching_statement_is_a_denial() -> None:
    rule = _policy(statement("Allow", "kms:Encrypt"))
    assert not rule.evaluate("kms:Decrypt", ATTESTED).allowed


def test_action_wildcards_match_case_insensitively() -> None:
    rule = _policy(statement("Allow", "KMS:Generate*"))
    assert rule.evaluate("kms:GenerateDataKey", NOT_ATTESTED).allowed
    assert not rule.evaluate("kms:Decrypt", NOT_ATTESTED).allowed


def test_string_like_matches_a_prefix() -> None:
    rule = _enclave({"StringLike": {"kms:RecipientAttestation:PCR0": PCR0.hex()[:10] + "*"}})
    assert rule.evaluate("kms:Decrypt", ATTESTED).allowed


def test_encryption_context_conditions() -> None:
    rule = _policy(statement("Allow", "kms:Decrypt", {"StringEquals": {"kms:EncryptionContext:tenant": "acme"}}))
    assert rule.evaluate("kms:Decrypt", RequestContext.build(encryption_context={"tenant": "acme"})).allowed
    assert not rule.evaluate("kms:Decrypt", RequestContext.build(encryption_context={"tenant": "evil"})).allowed
    assert not rule.evaluate("kms:Decrypt", RequestContext.build(encryption_context={"Tenant": "acme"})).allowed


def test_null_condition_tests_presence() -> None:
    rule = _policy(statement("Allow", "kms:Decrypt", {"Null": {"kms:EncryptionContext:tenant": "false"}}))
    assert rule.evaluate("kms:Decrypt", RequestContext.build(encryption_context={"tenant": "a"})).allowed
    assert not rule.evaluate("kms:Decrypt", NOT_ATTESTED).allowed


def test_default_policy_allows_the_account_everything() -> None:
    rule = KeyPolicy.default("111122223333")
    assert rule.evaluate("kms:Decrypt", NOT_ATTESTED).allowed
    assert json.loads(rule.text)["Statement"][0]["Principal"] == {"AWS": "arn:aws:iam::111122223333:root"}


def test_pathological_wildcards_evaluate_in_linear_time() -> None:
    rule = _enclave({"StringLike": {"kms:RecipientAttestation:PCR0": "*a" * 2000 + "*b"}})
    started = time.perf_counter()
    assert not rule.evaluate("kms:Decrypt", RequestContext.build(pcrs={0: b"\xaa" * 48})).allowed
    assert time.perf_counter() - started < 1.0


# --- documents refused when parsed ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ("not json", "valid JSON"),
        ("[]", "JSON object"),
        (json.dumps({"Version": "2012-10-17", "Statement": []}), "empty policy"),
        (json.dumps({"Version": "2012-10-17"}), "no Statement"),
        (json.dumps({"Version": "2099-01-01", "Statement": [statement("Allow", "kms:*")]}), "Version"),
        (policy({**statement("Allow", "kms:*"), "Effect": "allow"}), "Effect"),
        (policy({k: v for k, v in statement("Allow", "kms:*").items() if k != "Principal"}), "Principal"),
        (policy({**statement("Allow", "kms:*"), "NotAction": "kms:Decrypt"}), "NotAction"),
        (policy(statement("Allow", "kms:*", {"StringEquals": {"aws:PrincipalArn": "x"}})), "not evaluated"),
        (
            policy(statement("Allow", "kms:*", {"StringEquals": {"kms:RecipientAttestation:PCR32": "x"}})),
            "not evaluated",
        ),
        (policy(statement("Allow", "kms:*", {"NumericEquals": {"kms:EncryptionContext:a": "1"}})), "operator"),
        (
            policy(statement("Allow", "kms:*", {"ForAnyValue:StringEquals": {"kms:EncryptionContext:a": "1"}})),
            "set operators",
        ),
        (policy(statement("Allow", "kms:*", {"StringEquals": {"kms:RecipientAttestation:PCR0": "abc"}})), "96 hex"),
        (policy(statement("Allow", "kms:*", {"StringEquals": {"kms:RecipientAttestation:PCR0": [{}]}})), "strings"),
        (policy(statement("Allow", [])), "Action"),
        ("x" * 40000, "characters"),
        ("[" * 30000, "valid JSON"),
    ],
)
def test_policies_the_emulator_cannot_evaluate_faithfully_are_refused(document: str, match: str) -> None:
    with pytest.raises(MalformedPolicyDocument, match=match) as caught:
        KeyPolicy.from_json(document)
    assert caught.value.aws_type == "MalformedPolicyDocumentException"


def test_condition_key_names_are_case_insensitive() -> None:
    rule = _enclave({"StringEqualsIgnoreCase": {"KMS:recipientattestation:IMAGESHA384": PCR0.hex()}})
    assert rule.evaluate("kms:Decrypt", ATTESTED).allowed
