"""``enclavekit receipt verify``: check an AIR v1 receipt offline (and, with ``--attestation``, its binding).

Contract: exit 0 when the receipt is valid, 1 when it is not, 2 for a usage error; with ``--json`` one object
``{valid, error: {code, message} | null, claims, checks}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from enclavekit.attestation.errors import AttestationError, Malformed, PolicyInvalid
from enclavekit.attestation.evidence import MAX_EVIDENCE_SIZE, EvidenceKind, VerifyOptions, verify_evidence
from enclavekit.attestation.nitro import NitroAttestation
from enclavekit.attestation.report import Check
from enclavekit.attestation.verification_time import At, AtInvalid
from enclavekit.cli._app import app
from enclavekit.cli._roots import check_mark, simulator_roots
from enclavekit.errors import ConfigurationError
from enclavekit.receipts import (
    MAX_RECEIPT_SIZE,
    AttestationBinding,
    MeasurementType,
    ReceiptPolicy,
    parse_receipt,
    report_receipt,
)
from enclavekit.receipts.errors import KeyNotBound, ReceiptError, ReceiptMalformed

__all__ = ["read_receipt", "receipt_app", "verify_command"]

receipt_app = typer.Typer(name="receipt", help="AIR v1 inference receipts: verify them offline.", no_args_is_help=True)
app.add_typer(receipt_app, name="receipt")

_PLATFORMS = {"nitro": MeasurementType.NITRO, "tdx": MeasurementType.TDX}
_HEX = re.compile(rb"\A(?:[0-9a-fA-F]{2})+\Z")
_BASE64 = re.compile(rb"\A[A-Za-z0-9+/_-]+={0,2}\Z")
_TEXT_LIMIT = 2 * MAX_RECEIPT_SIZE + 64  # a receipt at the size limit, written as hex


def read_receipt(data: bytes) -> bytes:
    """A receipt file's bytes: raw CBOR (it starts with tag 18, ``0xd2``), hex, or base64 (standard or URL-safe).

    Anything else is returned as is, for the parser to refuse with a precise reason.
    """
    if data[:1] == b"\xd2":
        return data
    text = b"".join(data.split())
    if _HEX.match(text):
        return bytes.fromhex(text.decode())
    if _BASE64.match(text):
        padded = text + b"=" * (-len(text) % 4)
        try:
            return base64.urlsafe_b64decode(padded.replace(b"+", b"-").replace(b"/", b"_"))
        except (binascii.Error, ValueError):
            return data
    return data


def _hex_option(value: str | None, name: str, size: int | None = None) -> bytes | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value.strip())
    except ValueError as exc:
        raise ValueError(f"{name} {value!r:.80}: not hex") from exc
    if not raw or (size is not None and len(raw) != size):
        raise ValueError(f"{name}: expected {size or 'some'} bytes as hex, got {len(raw)}")
    return raw


def _read(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: over {limit} bytes")
    return data


@receipt_app.command("verify")
def verify_command(
    file: Path = typer.Argument(..., help="The receipt: raw CBOR bytes, hex or base64.", show_default=False),
    attestation: Path | None = typer.Option(
        None, "--attestation", help="The Nitro attestation document that binds the receipt's key (user_data)."
    ),
    public_key: str | None = typer.Option(None, "--public-key", help="The signer's raw Ed25519 public key (hex)."),
    nonce: str | None = typer.Option(None, "--nonce", help="The eat_nonce the receipt must carry (hex)."),
    model_hash: str | None = typer.Option(None, "--model-hash", help="The model hash it must name (hex, SHA-256)."),
    platform: str | None = typer.Option(None, "--platform", help="nitro (nitro-pcr) or tdx (tdx-mrtd-rtmr)."),
    max_age: int | None = typer.Option(None, "--max-age", help="Refuse receipts older than this (seconds)."),
    at: str = typer.Option("now", "--at", help="Verify as of: now, UNIX seconds, ISO 8601 (receipt and document)."),
    trust_sim_root: list[Path] = typer.Option(
        [], "--trust-sim-root", help="Also trust the simulated NSM root kept in this state folder (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: {valid, error, claims, checks}."),
) -> None:
    """Verify an AIR v1 receipt: format, Ed25519 signature, claims, and the policy the options give."""
    err = Console(stderr=True)
    try:
        try:
            moment = At.parse(at)
        except AtInvalid as exc:
            raise ValueError(f"--at: {exc.message}") from exc
        if moment.evidence_time:
            raise ValueError("--at doc: give now, UNIX seconds or an ISO 8601 time")
        now = moment.resolve(now=datetime.now(UTC), evidence_time=None)
        if platform is not None and platform not in _PLATFORMS:
            raise ValueError(f"--platform {platform!r}: expected nitro or tdx")
        if max_age is not None and max_age <= 0:
            raise ValueError("--max-age: expected a positive number of seconds")
        key = _hex_option(public_key, "--public-key", 32)
        if key is None and attestation is None:
            raise ValueError("give --public-key or --attestation: a receipt needs a key to verify with")
        policy = ReceiptPolicy(
            nonce=_hex_option(nonce, "--nonce"),
            model_hash=_hex_option(model_hash, "--model-hash", 32),
            platform=None if platform is None else _PLATFORMS[platform],
            max_age=max_age,
        )
        roots = simulator_roots(trust_sim_root)
        document = None if attestation is None else _read(attestation, MAX_EVIDENCE_SIZE)
    except (ConfigurationError, OSError, ValueError, Malformed) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc

    try:
        data = read_receipt(_read(file, _TEXT_LIMIT))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        out = _result(ReceiptMalformed(f"cannot read the receipt: {reason}"), None, [])
    else:
        out = _verify(data, key, policy, now, document, roots)
    if as_json:
        typer.echo(json.dumps(out))
    else:
        _print_human(Console(highlight=False, soft_wrap=True, width=None if err.is_terminal else 160), file, out)
    raise typer.Exit(0 if out["valid"] else 1)


def _result(
    error: AttestationError | ReceiptError | PolicyInvalid | None, claims: Any, checks: list[Check]
) -> dict[str, Any]:
    return {
        "valid": error is None,
        "error": None if error is None else error.to_json(),
        "claims": claims,
        "checks": [check.to_json() for check in checks],
    }


def _claims_for_display(data: bytes) -> Any:
    try:
        return parse_receipt(data).claims.to_json()
    except ReceiptError:
        return None


def _verify(
    data: bytes,
    key: bytes | None,
    policy: ReceiptPolicy,
    now: datetime,
    document: bytes | None,
    roots: tuple[bytes, ...],
) -> dict[str, Any]:
    binding: AttestationBinding | None = None
    checks: list[Check] = []
    if document is not None:
        evidence = verify_evidence(document, VerifyOptions(at=At.fixed(now), extra_nitro_roots=roots), wall_clock=now)
        if evidence.report is not None:
            checks.extend(
                Check(f"attestation.{c.name}", c.ok, c.detail, c.phase or "attestation", c.code)
                for c in evidence.report.checks
            )
        if evidence.error is not None:
            return _result(evidence.error, _claims_for_display(data), checks)
        verified = evidence.attestation
        if evidence.kind is not EvidenceKind.NITRO or not isinstance(verified, NitroAttestation):
            error = KeyNotBound(f"only a Nitro attestation document binds a receipt key, got {evidence.kind}")
            return _result(error, _claims_for_display(data), checks)
        binding = AttestationBinding(document, verified)
    report = report_receipt(data, public_key=key, policy=policy, now=now, attestation=binding)
    out = report.to_json()
    out["checks"] = [check.to_json() for check in checks] + out["checks"]
    return out


def _print_human(console: Console, path: Path, out: dict[str, Any]) -> None:
    if out["valid"]:
        verdict = "[bold green]VALID[/bold green]"
    else:
        verdict = f"[bold red]INVALID[/bold red] ({out['error']['code']}: {out['error']['message']})"
    console.print(f"{path}: {verdict}")
    claims = out["claims"]
    if claims is not None:
        console.print(
            f"  model {claims['model_id']} {claims['model_version']} ({claims['model_hash']}), "
            f"issued {claims['iat']} by {claims['iss']}, sequence {claims['sequence_number']}, "
            f"{claims['enclave_measurements']['measurement_type']}"
        )
    table = Table(show_header=False, box=None, padding=(0, 1, 0, 2))
    for check in out["checks"]:
        table.add_row(check_mark(check), check["name"], check["detail"])
    console.print(table)
