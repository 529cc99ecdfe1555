"""``At``, the one verification-time type: every spelling a caller may send means one thing, and every refusal
says why without naming a command-line flag (the CLI adds its own hints)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from enclavekit.attestation.errors import PolicyInvalid
from enclavekit.attestation.verification_time import At, AtInvalid, NoEvidenceTime
from enclavekit.services.trust.errors import UploadInvalid
from enclavekit.services.trust.model import TargetOptions

WALL = datetime(2026, 12, 4, 21, 0, tzinfo=UTC)
MADE = datetime(2024, 11, 30, 12, 0, tzinfo=UTC)
FIXED = datetime(2025, 6, 20, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", WALL),
        (" now ", WALL),
        ("doc", MADE),
        ("1750377600", FIXED),
        ("1750377600.0", FIXED),
        ("2025-06-20T00:00:00Z", FIXED),
        ("2025-06-20T00:00:00", FIXED),  # no zone: UTC
        ("2025-06-20T02:00:00+02:00", FIXED),
    ],
)
def test_each_spelling_resolves_to_one_time(text: str, expected: datetime) -> None:
    assert At.parse(text).resolve(now=WALL, evidence_time=MADE) == expected


@pytest.mark.parametrize(
    "at", [At.NOW, At.DOC, At.fixed(FIXED), At.fixed(FIXED.astimezone(timezone(timedelta(hours=2))))]
)
def test_the_stored_text_reads_back_as_the_same_time(at: At) -> None:
    again = At.parse(at.text)
    assert again == at and str(again) == at.text


@pytest.mark.parametrize("text", ["", "later", "yesterday", "nan", "inf", "1e400", "2025-13-01", "9" * 5000])
def test_a_time_that_is_not_one_is_refused_without_naming_a_flag(text: str) -> None:
    with pytest.raises(AtInvalid) as caught:
        At.parse(text)
    assert caught.value.code == "at_invalid" and "--" not in caught.value.message
    assert len(caught.value.message) < 200  # a 5000-digit input is not echoed back whole


def test_doc_for_evidence_without_a_time_is_a_policy_error_naming_no_flag() -> None:
    with pytest.raises(NoEvidenceTime) as caught:
        At.DOC.resolve(now=WALL, evidence_time=None)
    assert isinstance(caught.value, PolicyInvalid) and caught.value.code == "policy_invalid"
    assert "--" not in caught.value.message


def test_a_fixed_time_without_a_zone_cannot_be_made_by_hand() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        At(datetime(2025, 6, 20))
    assert At.fixed(datetime(2025, 6, 20)).moment == FIXED


def test_trust_target_options_store_at_as_text_and_refuse_garbage_as_an_upload_error() -> None:
    options = TargetOptions.from_json({"at": "1750377600"})
    assert options.at == At.fixed(FIXED) and options.to_json()["at"] == "2025-06-20T00:00:00+00:00"
    assert TargetOptions.from_json(options.to_json()) == options
    with pytest.raises(UploadInvalid, match="expected now, doc"):
        TargetOptions.from_json({"at": "soon"})
