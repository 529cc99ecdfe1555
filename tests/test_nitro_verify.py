"""The Nitro verifier against real AWS documents, and every way we know to tamper with one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import cbor2
import pytest

from enclavekit.attestation import nitro
from enclavekit.attestation.chain import ChainVerifier
from enclavekit.attestation.errors import (
    AttestationError,
    CertificateExpired,
    CertificateNotYetValid,
    ChainUntrusted,
    DebugMode,
    Malformed,
    MeasurementMismatch,
    NonceMismatch,
    PolicyInvalid,
    PublicKeyMismatch,
    SignatureInvalid,
    Stale,
    TimestampInFuture,
    UnsupportedAlgorithm,
    UnsupportedEvidence,
    UserDataMismatch,
)
from enclavekit.attestation.nitro import AttestationDocument, NitroPolicy, UnsafePolicyWarning
from enclavekit.attestation.roots import aws_nitro_root
from tests import forge
from tests.nitro_samples import Sample, rebuild, sample, samples, split, valid_samples

ANY = NitroPolicy(unsafe_any_measurements=True)


def any_debug() -> NitroPolicy:
    with pytest.warns(UnsafePolicyWarning):
        return NitroPolicy(unsafe_any_measurements=True, allow_debug=True)


def _ids(items: list[Sample]) -> list[str]:
    return [s.name for s in items]


def _code(document: bytes, policy: NitroPolicy, now: datetime) -> str | None:
    result = nitro.report(document, policy, now=now)
    return None if result.error is None else result.error.code


# --- real documents -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", valid_samples(), ids=_ids(valid_samples()))
def test_real_document_verifies_at_its_own_timestamp_with_the_facts_recorded(s: Sample) -> None:
    result = nitro.verify(s.data, any_debug(), now=s.at)
    assert result.module_id == s.facts["module_id"]
    assert result.timestamp == datetime.fromisoformat(s.facts["timestamp_utc"])
    assert result.debug is s.facts["debug_mode"]
    for index, value in s.facts["pcrs"].items():
        assert result.pcrs[int(index)].hex() == value
        assert result.measurements[f"pcr{index}"].hex() == value
    for name in ("public_key", "user_data", "nonce"):
        value = getattr(result, name)
        assert (None if value is None else len(value)) == s.facts[f"{name}_len"]
    assert len(result.chain) == 5
    assert result.chain[0] == aws_nitro_root()


@pytest.mark.parametrize("s", valid_samples(), ids=_ids(valid_samples()))
def test_expired_chain_is_rejected_at_todays_date(s: Sample) -> None:
    with pytest.raises(CertificateExpired):
        nitro.verify(s.data, any_debug(), now=datetime(2026, 11, 27, tzinfo=UTC))


def test_corrupt_published_document_is_rejected_as_malformed() -> None:
    corrupt = next(s for s in samples() if not s.valid)
    with pytest.raises(Malformed):
        nitro.verify(corrupt.data, ANY, now=datetime(2026, 1, 3, 20, 41, tzinfo=UTC))


@pytest.mark.parametrize(
    "s",
    [s for s in valid_samples() if s.facts["debug_mode"]],
    ids=_ids([s for s in valid_samples() if s.facts["debug_mode"]]),
)
def test_debug_mode_document_rejected_by_default(s: Sample) -> None:
    with pytest.raises(DebugMode):
        nitro.verify(s.data, ANY, now=s.at)
    assert nitro.verify(s.data, any_debug(), now=s.at).debug


def test_indefinite_length_payload_map_is_accepted() -> None:
    s = sample("base_2026-01-03_nondebug")
    assert s.facts["payload_map"] == "indefinite-length"
    assert nitro.verify(s.data, ANY, now=s.at).module_id == s.facts["module_id"]


def test_tagged_cose_sign1_is_accepted() -> None:
    s = sample("base_2024-11-30")
    tagged = cbor2.dumps(cbor2.CBORTag(18, cbor2.loads(s.data)))
    assert nitro.verify(tagged, ANY, now=s.at).module_id == s.facts["module_id"]


# --- tampering -------------------------------------------------------------------------------------------------

BASE = "base_2024-11-30"


def test_flipped_signature_bit_is_rejected() -> None:
    s = sample(BASE)
    cose, _ = split(s.data)
    cose[3] = bytes([cose[3][0] ^ 0x01]) + cose[3][1:]
    assert _code(rebuild(cose), ANY, s.at) == SignatureInvalid.code


def test_flipped_payload_bit_is_rejected() -> None:
    s = sample(BASE)
    cose, decoded = split(s.data)
    payload = bytearray(cose[2])
    payload[payload.find(decoded["pcrs"][3]) + 7] ^= 0x01  # inside PCR3: still parses, no longer signed
    cose[2] = bytes(payload)
    assert _code(rebuild(cose), ANY, s.at) == SignatureInvalid.code


def test_altered_pcr_is_rejected() -> None:
    s = sample(BASE)
    cose, payload = split(s.data)
    payload["pcrs"][0] = bytes(48)
    assert _code(rebuild(cose, payload), ANY, s.at) == SignatureInvalid.code


def test_altered_user_data_is_rejected() -> None:
    s = sample("base_2026-01-03_nondebug")
    cose, payload = split(s.data)
    payload["user_data"] = b"attacker's data....."
    assert _code(rebuild(cose, payload), ANY, s.at) == SignatureInvalid.code


def test_protected_header_naming_another_algorithm_is_rejected() -> None:
    s = sample(BASE)
    cose, _ = split(s.data)
    cose[0] = cbor2.dumps({1: -7})  # ES256
    assert _code(rebuild(cose), ANY, s.at) == UnsupportedAlgorithm.code


def test_protected_header_with_extra_parameters_is_rejected() -> None:
    s = sample(BASE)
    cose, _ = split(s.data)
    cose[0] = cbor2.dumps({1: -35, 4: b"kid"})
    assert _code(rebuild(cose), ANY, s.at) == UnsupportedAlgorithm.code


def test_algorithm_in_unprotected_header_is_rejected() -> None:
    s = sample(BASE)
    cose, _ = split(s.data)
    cose[1] = {1: -35}
    assert _code(rebuild(cose), ANY, s.at) == UnsupportedAlgorithm.code


def test_protected_header_re_encoded_changes_the_signed_bytes() -> None:
    """Sig_structure uses the protected bytes as received: an equivalent re-encoding breaks the signature."""
    s = sample(BASE)
    cose, _ = split(s.data)
    cose[0] = bytes.fromhex("a1013900" + "22")  # {1: -35} with a non-shortest integer encoding
    assert _code(rebuild(cose), ANY, s.at) in (SignatureInvalid.code, Malformed.code)


def test_chain_from_another_enclave_is_rejected() -> None:
    s, other = sample(BASE), sample("blocky_2024-09-07_nondebug")
    cose, payload = split(s.data)
    payload["cabundle"] = split(other.data)[1]["cabundle"]
    assert _code(rebuild(cose, payload), ANY, s.at) == ChainUntrusted.code


def test_reordered_cabundle_is_rejected() -> None:
    s = sample(BASE)
    cose, payload = split(s.data)
    bundle = payload["cabundle"]
    payload["cabundle"] = [bundle[0], bundle[2], bundle[1], bundle[3]]
    assert _code(rebuild(cose, payload), ANY, s.at) == ChainUntrusted.code


def test_truncated_cabundle_is_rejected() -> None:
    s = sample(BASE)
    cose, payload = split(s.data)
    payload["cabundle"] = payload["cabundle"][:2] + payload["cabundle"][3:]
    assert _code(rebuild(cose, payload), ANY, s.at) == ChainUntrusted.code


def test_leaf_swapped_for_an_intermediate_is_rejected() -> None:
    s = sample(BASE)
    cose, payload = split(s.data)
    payload["certificate"] = payload["cabundle"][-1]
    payload["cabundle"] = payload["cabundle"][:-1]
    assert _code(rebuild(cose, payload), ANY, s.at) == ChainUntrusted.code


def test_cabundle_root_is_ignored_in_favour_of_the_pinned_root() -> None:
    """What the document says its root is carries no weight: replacing it changes nothing (nor does it help)."""
    s = sample(BASE)
    cose, payload = split(s.data)
    payload["cabundle"][0] = b"\x30\x03\x02\x01\x00"  # garbage in cabundle[0]
    # The payload changed, so the signature must fail -- after the chain, which ignored cabundle[0], passed.
    result = nitro.report(rebuild(cose, payload), ANY, now=s.at)
    assert [c.name for c in result.checks if c.ok] == ["document.parse", "certificate.chain"]
    assert result.error is not None
    assert result.error.code == SignatureInvalid.code


def test_foreign_root_is_rejected() -> None:
    """A forger with a full chain named like AWS's, valid signatures and all, under a root we do not trust."""
    s = sample(BASE)
    real = list(nitro.verify(s.data, ANY, now=s.at).chain)
    from cryptography import x509

    names = [x509.load_der_x509_certificate(d).subject for d in real]
    chain = forge.make_chain(s.at, names=names)
    forged = forge.sign_document(forge.payload_for(chain, s.at), chain.keys[-1])
    assert _code(forged, ANY, s.at) == ChainUntrusted.code
    # ...and the same document verifies once that root is trusted, so the refusal was about the root alone.
    assert nitro.verify(forged, NitroPolicy(unsafe_any_measurements=True, roots=(chain.root_der,)), now=s.at)


def test_leaf_that_is_a_ca_is_rejected() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    chain = forge.make_chain(now, leaf_is_ca=True, pathlens=[None, 2, 1, 0, 0])
    policy = NitroPolicy(unsafe_any_measurements=True, roots=(chain.root_der,))
    forged = forge.sign_document(forge.payload_for(chain, now), chain.keys[-1])
    assert _code(forged, policy, now) == ChainUntrusted.code


def test_path_length_constraint_is_enforced() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    chain = forge.make_chain(now, pathlens=[None, 0, 1, 0])  # regional CA forbids further CAs below it
    policy = NitroPolicy(unsafe_any_measurements=True, roots=(chain.root_der,))
    forged = forge.sign_document(forge.payload_for(chain, now), chain.keys[-1])
    assert _code(forged, policy, now) == ChainUntrusted.code


def test_document_signed_by_another_key_than_the_leaf_is_rejected() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    chain = forge.make_chain(now)
    policy = NitroPolicy(unsafe_any_measurements=True, roots=(chain.root_der,))
    forged = forge.sign_document(forge.payload_for(chain, now), chain.keys[-2])
    assert _code(forged, policy, now) == SignatureInvalid.code


def test_trailing_bytes_are_rejected() -> None:
    s = sample(BASE)
    assert _code(s.data + b"\x00", ANY, s.at) == Malformed.code


def test_duplicate_payload_keys_are_rejected() -> None:
    s = sample(BASE)
    cose, _ = split(s.data)
    # append a second "nonce" key to the (definite, 9-entry) payload map
    raw = cose[2]
    assert raw[0] == 0xA9
    cose[2] = b"\xaa" + raw[1:] + cbor2.dumps("nonce") + cbor2.dumps(b"x")
    assert _code(rebuild(cose), ANY, s.at) == Malformed.code


@pytest.mark.parametrize("field", ["user_data", "nonce", "public_key"])
def test_oversized_field_is_rejected(field: str) -> None:
    s = sample(BASE)
    cose, payload = split(s.data)
    payload[field] = b"\x01" * 1025
    assert _code(rebuild(cose, payload), ANY, s.at) == Malformed.code


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", "1732983768387"),
        ("timestamp", -1),
        ("module_id", b"i-0"),
        ("digest", "SHA256"),
        ("pcrs", [b"\x00" * 48]),
        ("pcrs", {0: b"\x00" * 47}),
        ("pcrs", {99: b"\x00" * 48}),
        ("cabundle", []),
        ("certificate", None),
        ("user_data", "text"),
    ],
)
def test_wrong_field_types_are_rejected(field: str, value: object) -> None:
    s = sample(BASE)
    cose, payload = split(s.data)
    payload[field] = value
    assert _code(rebuild(cose, payload), ANY, s.at) == Malformed.code


def test_unknown_payload_field_is_rejected() -> None:
    s = sample(BASE)
    cose, payload = split(s.data)
    payload["admin"] = True
    assert _code(rebuild(cose, payload), ANY, s.at) == Malformed.code


def test_oversized_document_is_rejected_before_decoding() -> None:
    with pytest.raises(Malformed, match="over the limit"):
        AttestationDocument.from_bytes(b"\x84" + b"\x00" * nitro.MAX_DOCUMENT_SIZE)


def test_document_from_the_future_is_rejected() -> None:
    s = sample(BASE)  # leaf valid from 16:22:45, document made 16:22:48.387
    strict = NitroPolicy(unsafe_any_measurements=True, clock_skew=timedelta(0))
    assert _code(s.data, strict, s.at - timedelta(seconds=2)) == TimestampInFuture.code
    assert _code(s.data, ANY, s.at - timedelta(hours=1)) == CertificateNotYetValid.code


def test_stale_document_is_rejected() -> None:
    s = sample(BASE)
    policy = NitroPolicy(unsafe_any_measurements=True, max_age=timedelta(minutes=5))
    assert _code(s.data, policy, s.at + timedelta(minutes=4)) is None
    assert _code(s.data, policy, s.at + timedelta(minutes=6)) == Stale.code


def test_replayed_nonce_is_rejected() -> None:
    s = sample("evervault_2022-10-13")
    _, payload = split(s.data)
    assert _code(s.data, NitroPolicy(unsafe_any_measurements=True, nonce=payload["nonce"]), s.at) is None
    assert _code(s.data, NitroPolicy(unsafe_any_measurements=True, nonce=b"fresh nonce"), s.at) == NonceMismatch.code


def test_unexpected_public_key_is_rejected() -> None:
    s = sample(BASE)
    _, payload = split(s.data)
    assert _code(s.data, NitroPolicy(unsafe_any_measurements=True, public_key=payload["public_key"]), s.at) is None
    policy = NitroPolicy(unsafe_any_measurements=True, public_key=b"\x04" + b"\x01" * 64)
    assert _code(s.data, policy, s.at) == PublicKeyMismatch.code


def test_missing_user_data_is_rejected_when_expected() -> None:
    s = sample(BASE)  # no user_data
    assert _code(s.data, NitroPolicy(unsafe_any_measurements=True, user_data=b"x"), s.at) == UserDataMismatch.code


# --- measurements policy ---------------------------------------------------------------------------------------


def test_pinned_measurements_accept_the_enclave() -> None:
    s = sample(BASE)
    pcrs = {i: bytes.fromhex(s.facts["pcrs"][str(i)]) for i in (0, 1, 2)}
    assert nitro.verify(s.data, NitroPolicy(measurements=[pcrs]), now=s.at).pcrs[0] == pcrs[0]


def test_other_pcr0_is_rejected_and_the_report_shows_both() -> None:
    s = sample(BASE)
    policy = NitroPolicy(measurements=[{0: b"\x42" * 48}])
    result = nitro.report(s.data, policy, now=s.at)
    assert result.error is not None
    assert result.error.code == MeasurementMismatch.code
    check = next(c for c in result.checks if c.name == "policy.measurements")
    assert check.expected == f"PCR0={'42' * 48}"
    assert check.actual == f"PCR0={s.facts['pcrs']['0']}"


def test_second_measurement_set_allows_an_upgrade() -> None:
    s = sample(BASE)
    new = {0: bytes.fromhex(s.facts["pcrs"]["0"])}
    assert nitro.verify(s.data, NitroPolicy(measurements=[{0: b"\x42" * 48}, new]), now=s.at)


def test_report_lists_every_policy_mismatch() -> None:
    s = sample(BASE)
    policy = NitroPolicy(measurements=[{0: b"\x42" * 48}], nonce=b"n", user_data=b"u")
    failed = [c.code for c in nitro.report(s.data, policy, now=s.at).checks if not c.ok]
    assert failed == ["measurement_mismatch", "nonce_mismatch", "user_data_mismatch"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"measurements": []},
        {"measurements": [{}]},
        {"measurements": [{0: b"short"}]},
        {"measurements": [{5: b"\x00" * 48}]},  # PCR5..7 are not defined for Nitro
        {"measurements": [{0: b"\x00" * 48}], "unsafe_any_measurements": True},
        {"unsafe_any_measurements": True, "roots": ()},
        {"unsafe_any_measurements": True, "max_age": timedelta(0)},
    ],
)
def test_policy_that_pins_nothing_or_is_contradictory_fails_closed(kwargs: dict[str, object]) -> None:
    with pytest.raises(PolicyInvalid):
        NitroPolicy(**kwargs)  # type: ignore[arg-type]


# --- caching ---------------------------------------------------------------------------------------------------


def test_cached_chain_never_widens_validity() -> None:
    s = sample(BASE)
    verifier = ChainVerifier([aws_nitro_root()])
    _, payload = split(s.data)
    verifier.verify(payload["cabundle"][1:], payload["certificate"], now=s.at)
    assert verifier.cached_links == 4
    with pytest.raises(CertificateExpired):
        verifier.verify(payload["cabundle"][1:], payload["certificate"], now=s.at + timedelta(days=2))
    assert verifier.evict_expired(s.at + timedelta(days=2)) >= 2


def test_cached_link_is_not_reused_under_a_different_parent() -> None:
    """A certificate verified under its real issuer does not become trusted under another path."""
    s = sample(BASE)
    verifier = ChainVerifier([aws_nitro_root()])
    _, payload = split(s.data)
    bundle = payload["cabundle"]
    verifier.verify(bundle[1:], payload["certificate"], now=s.at)
    with pytest.raises(ChainUntrusted):
        verifier.verify([bundle[1], bundle[3]], payload["certificate"], now=s.at)


def test_errors_carry_stable_codes() -> None:
    assert {cls.code for cls in AttestationError.__subclasses__()} >= {
        "malformed",
        "unsupported_algorithm",
        "signature_invalid",
        "chain_untrusted",
        "certificate_expired",
        "certificate_not_yet_valid",
        "debug_mode",
        "measurement_mismatch",
        "stale",
        "nonce_mismatch",
        "public_key_mismatch",
        "user_data_mismatch",
    }


# --- evidence of another kind -----------------------------------------------------------------------------------


def _nitrotpm_document(chain: forge.Chain, at: datetime) -> bytes:
    """A NitroTPM attestation document as an EC2 instance's NitroTPM gives it: signed the Nitro way, with
    ``nitrotpm_pcrs`` (SHA-384 TPM PCRs) where an enclave document has ``pcrs``."""
    payload = forge.payload_for(chain, at)
    payload["nitrotpm_pcrs"] = payload.pop("pcrs")
    return forge.sign_document(payload, chain.keys[-1])


def test_nitrotpm_document_is_unsupported_evidence_not_malformed() -> None:
    now = datetime(2026, 1, 3, tzinfo=UTC)
    chain = forge.make_chain(now)
    document = _nitrotpm_document(chain, now)
    with pytest.raises(UnsupportedEvidence, match="NitroTPM"):
        AttestationDocument.from_bytes(document)
    trusted = NitroPolicy(unsafe_any_measurements=True, roots=(chain.root_der,))
    report = nitro.report(document, trusted, now=now)
    assert report.error is not None and report.error.code == "unsupported_evidence"
    assert [(c.name, c.status) for c in report.checks] == [("certificate.chain", "passed"), ("document.kind", "failed")]


def test_nitrotpm_document_under_an_untrusted_root_is_refused_as_untrusted_first() -> None:
    now = datetime(2026, 1, 3, tzinfo=UTC)
    document = _nitrotpm_document(forge.make_chain(now), now)
    report = nitro.report(document, ANY, now=now)
    assert report.error is not None and report.error.code == "chain_untrusted"
    assert report.checks[-1].code == "unsupported_evidence"  # still said what it is


def test_unpinned_measurements_are_not_checked_rather_than_passed() -> None:
    s = sample(BASE)
    report = nitro.report(s.data, ANY, now=s.at)
    check = next(c for c in report.checks if c.name == "policy.measurements")
    assert (check.ok, check.checked, check.status) == (True, False, "not_checked")
    assert check.to_json()["status"] == "not_checked"
    pinned = NitroPolicy(measurements=[{0: bytes.fromhex(s.facts["pcrs"]["0"])}])
    check = next(c for c in nitro.report(s.data, pinned, now=s.at).checks if c.name == "policy.measurements")
    assert check.status == "passed"
