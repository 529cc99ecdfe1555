"""TOML policy files: what they accept, and the typos and omissions they refuse (fail closed)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from enclavekit.attestation import nitro
from enclavekit.attestation.errors import PolicyInvalid
from enclavekit.attestation.policy_file import load_policy, parse_policy
from tests.nitro_samples import sample

PCR0 = "ab" * 48
PCR1 = "cd" * 48


def test_pcr_tables_become_measurement_sets(tmp_path: Path) -> None:
    policy = parse_policy(
        f"""
        [nitro]
        max_age_seconds = 300
        user_data = "68656c6c6f"
        [[nitro.measurements]]
        PCR0 = "{PCR0}"
        PCR1 = "{PCR1}"
        [[nitro.measurements]]
        pcr0 = "{PCR1}"
        """,
        base_dir=tmp_path,
    ).nitro
    assert policy is not None
    assert [dict(s) for s in policy.measurements] == [
        {0: bytes.fromhex(PCR0), 1: bytes.fromhex(PCR1)},
        {0: bytes.fromhex(PCR1)},
    ]
    assert policy.max_age == timedelta(seconds=300)
    assert policy.user_data == b"hello"
    assert policy.allow_debug is False


def test_nitro_cli_describe_eif_output_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "describe.json").write_text(
        json.dumps(
            {
                "EifVersion": 4,
                "Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": PCR0, "PCR1": PCR1, "PCR2": PCR0},
                "IsSigned": False,
            }
        )
    )
    (tmp_path / "policy.toml").write_text('[[nitro.measurements]]\ndescribe_eif = "describe.json"\n')
    policy = load_policy(tmp_path / "policy.toml").nitro
    assert policy is not None
    assert dict(policy.measurements[0]) == {
        0: bytes.fromhex(PCR0),
        1: bytes.fromhex(PCR1),
        2: bytes.fromhex(PCR0),
    }


def test_policy_file_pinning_the_real_enclave_accepts_its_document(tmp_path: Path) -> None:
    s = sample("base_2024-11-30")
    text = "[[nitro.measurements]]\n" + "".join(f'PCR{i} = "{s.facts["pcrs"][str(i)]}"\n' for i in (0, 1, 2))
    policy = parse_policy(text, base_dir=tmp_path).nitro
    assert policy is not None
    assert nitro.verify(s.data, policy, now=s.at).module_id == s.facts["module_id"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "no [nitro] or [tdx] section"),
        ("[nitro]\nallow_debug = false\n", "pins no measurements"),
        (f'[nitro]\nmeasurment = 1\n[[nitro.measurements]]\nPCR0="{PCR0}"', "unknown key"),
        (f'[[nitro.measurements]]\nPCR0="{PCR0[:-2]}"', "48 bytes"),
        ('[[nitro.measurements]]\nPCR0="zz"', "not valid hex"),
        (f'[[nitro.measurements]]\nPCRX="{PCR0}"', "unknown key"),
        (f'[nitro]\nallow_debug="yes"\n[[nitro.measurements]]\nPCR0="{PCR0}"', "true or false"),
        (f'[nitro]\nmax_age_seconds=-5\n[[nitro.measurements]]\nPCR0="{PCR0}"', "positive"),
        ("[sgx]\n", "unknown section"),
        ("not toml at all [", "not valid TOML"),
        ('[[nitro.measurements]]\ndescribe_eif = "missing.json"', "cannot read"),
    ],
)
def test_typos_and_empty_policies_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(PolicyInvalid, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_policy(text, base_dir=tmp_path)
