"""Intel DCAP collateral: TCB info, QE identity, CRLs and their issuer chains, in dcap-qvl's JSON shape.

The core (:meth:`Collateral.from_json`) is pure: it parses and checks a collateral document once and works out
its validity window, so a verifier can say "expired" with dates before asking dcap-qvl anything. Two edge
functions do I/O: :func:`load_collateral` reads a file, and :func:`fetch_collateral` asks a PCCS (Intel's
Provisioning Certification Caching Service API v4) and keeps the answer on disk until its ``nextUpdate``.
Nothing is fetched unless a PCCS URL is given: offline is the default.

Collateral needs no trust of its own: Intel signs the TCB info and QE identity, and dcap-qvl checks those
signatures, the chains to Intel's root and the CRLs. A tampered cache file fails verification, it cannot pass.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import dcap_qvl
from cryptography import x509

from enclavekit.attestation.errors import CollateralInvalid, CollateralMismatch, CollateralUnavailable, Malformed
from enclavekit.attestation.quote import Quote

__all__ = [
    "MAX_COLLATERAL_SIZE",
    "Collateral",
    "fetch_collateral",
    "load_collateral",
]

logger = logging.getLogger(__name__)

MAX_COLLATERAL_SIZE = 1024 * 1024
"""Largest collateral document accepted (real ones are 14-19 KiB; CRLs of big CAs grow, hence the margin)."""
_MAX_RESPONSE = MAX_COLLATERAL_SIZE
_REQUIRED = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
_OPTIONAL = frozenset({"pck_certificate_chain"})
_CRLS = ("pck_crl", "root_ca_crl")
_TEE_BY_TCB_ID = {"TDX": "tdx", "SGX": "sgx"}
_QE_ID_BY_TEE = {"tdx": "TD_QE", "sgx": "QE"}


def _time(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise CollateralInvalid(f"collateral: {what} must be an RFC 3339 time string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CollateralInvalid(f"collateral: {what} {value!r} is not an RFC 3339 time") from exc
    if moment.tzinfo is None:
        raise CollateralInvalid(f"collateral: {what} has no time zone")
    return moment.astimezone(UTC)


def _json_object(text: str, what: str) -> dict[str, Any]:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise CollateralInvalid(f"collateral: {what} repeats the key {key!r}")
            out[key] = value
        return out

    try:
        value = json.loads(text, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as exc:
        raise CollateralInvalid(f"collateral: {what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise CollateralInvalid(f"collateral: {what} must be a JSON object")
    return value


def _crl(hex_text: str, what: str) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(bytes.fromhex(hex_text))
    except ValueError as exc:
        raise CollateralInvalid(f"collateral: {what} is not a hex-encoded DER CRL") from exc


@dataclass(frozen=True, slots=True, eq=False)
class Collateral:
    """One platform's collateral, parsed and checked for shape (not yet for signatures: dcap-qvl does that).

    ``not_before`` .. ``not_after`` is where every part (TCB info, QE identity, both CRLs) is current: the
    latest issue date and the earliest next update.
    """

    tee: Literal["tdx", "sgx"]
    fmspc: str
    ca: Literal["platform", "processor"]
    tcb_evaluation_data_number: int
    tcb_info_issue_date: datetime
    tcb_info_next_update: datetime
    qe_identity_issue_date: datetime
    qe_identity_next_update: datetime
    pck_crl_this_update: datetime
    pck_crl_next_update: datetime
    root_ca_crl_this_update: datetime
    root_ca_crl_next_update: datetime
    json_text: str
    qvl: dcap_qvl.QuoteCollateralV3
    not_before: datetime
    not_after: datetime

    def valid_at(self, now: datetime) -> bool:
        return self.not_before <= now <= self.not_after

    def describe_validity(self) -> str:
        return f"{self.not_before.isoformat()} .. {self.not_after.isoformat()}"

    @classmethod
    def from_json(cls, data: str | bytes) -> Collateral:
        """Parse a collateral document (the JSON that dcap-qvl's ``QuoteCollateralV3.to_json`` writes)."""
        if len(data) > MAX_COLLATERAL_SIZE:
            raise CollateralInvalid(f"collateral of {len(data)} bytes is over the limit of {MAX_COLLATERAL_SIZE}")
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CollateralInvalid("collateral is not UTF-8") from exc
        document = _json_object(data, "document")
        crls = [key for key in _CRLS if document.get(key) in (None, "")]
        if crls:
            raise CollateralInvalid(
                f"collateral lacks its CRL(s) ({', '.join(crls)}): without them the PCK certificate's revocation "
                "cannot be checked; use complete collateral (a PCCS v4 answer has both CRLs)"
            )
        missing = [key for key in _REQUIRED if key not in document]
        if missing:
            raise CollateralInvalid(f"collateral lacks {', '.join(missing)}")
        unknown = sorted(set(document) - set(_REQUIRED) - _OPTIONAL)
        if unknown:
            raise CollateralInvalid(f"collateral has unknown field(s) {unknown}")
        for key in _REQUIRED:
            if not isinstance(document[key], str):
                raise CollateralInvalid(f"collateral: {key} must be a string")
        chain = document.get("pck_certificate_chain")
        if chain is not None and not isinstance(chain, str):
            raise CollateralInvalid("collateral: pck_certificate_chain must be a string or null")

        tcb_info = _json_object(document["tcb_info"], "tcb_info")
        tcb_id = tcb_info.get("id")
        tee = _TEE_BY_TCB_ID.get(tcb_id) if isinstance(tcb_id, str) else None
        if tee is None:
            raise CollateralInvalid(f"collateral: tcb_info id {tcb_id!r} is neither 'TDX' nor 'SGX'")
        fmspc = tcb_info.get("fmspc")
        if not isinstance(fmspc, str) or len(fmspc) != 12:
            raise CollateralInvalid("collateral: tcb_info fmspc must be 12 hex digits")
        try:
            bytes.fromhex(fmspc)
        except ValueError as exc:
            raise CollateralInvalid("collateral: tcb_info fmspc must be 12 hex digits") from exc
        number = tcb_info.get("tcbEvaluationDataNumber")
        if type(number) is not int or number < 0:
            raise CollateralInvalid("collateral: tcb_info tcbEvaluationDataNumber must be a non-negative integer")
        qe_identity = _json_object(document["qe_identity"], "qe_identity")
        if qe_identity.get("id") != _QE_ID_BY_TEE[tee]:
            raise CollateralMismatch(
                f"collateral: QE identity {qe_identity.get('id')!r} does not go with {tcb_id} TCB info "
                f"(expected {_QE_ID_BY_TEE[tee]!r})"
            )
        pck_crl = _crl(document["pck_crl"], "pck_crl")
        root_crl = _crl(document["root_ca_crl"], "root_ca_crl")
        issuer = pck_crl.issuer.rfc4514_string()
        ca: Literal["platform", "processor"]
        if "PCK Platform CA" in issuer:
            ca = "platform"
        elif "PCK Processor CA" in issuer:
            ca = "processor"
        else:
            raise CollateralInvalid(f"collateral: pck_crl is issued by {issuer!r}, not an Intel PCK CA")
        for crl, what in ((pck_crl, "pck_crl"), (root_crl, "root_ca_crl")):
            if crl.next_update_utc is None:
                raise CollateralInvalid(f"collateral: {what} has no nextUpdate")
        assert pck_crl.next_update_utc is not None and root_crl.next_update_utc is not None
        try:
            qvl = dcap_qvl.QuoteCollateralV3.from_json(data)
        except ValueError as exc:
            raise CollateralInvalid(f"collateral: dcap-qvl cannot read it ({exc})") from exc
        times = {
            "tcb_info_issue_date": _time(tcb_info.get("issueDate"), "tcb_info issueDate"),
            "tcb_info_next_update": _time(tcb_info.get("nextUpdate"), "tcb_info nextUpdate"),
            "qe_identity_issue_date": _time(qe_identity.get("issueDate"), "qe_identity issueDate"),
            "qe_identity_next_update": _time(qe_identity.get("nextUpdate"), "qe_identity nextUpdate"),
            "pck_crl_this_update": pck_crl.last_update_utc,
            "pck_crl_next_update": pck_crl.next_update_utc,
            "root_ca_crl_this_update": root_crl.last_update_utc,
            "root_ca_crl_next_update": root_crl.next_update_utc,
        }
        starts = [value for key, value in times.items() if key.endswith(("issue_date", "this_update"))]
        ends = [value for key, value in times.items() if key.endswith(("next_update",))]
        return cls(
            tee=tee,  # type: ignore[arg-type]
            fmspc=fmspc.upper(),
            ca=ca,
            tcb_evaluation_data_number=number,
            **times,
            json_text=data,
            qvl=qvl,
            not_before=max(starts),
            not_after=min(ends),
        )


def load_collateral(path: Path) -> Collateral:
    """Read a collateral JSON file (edge I/O). Raises :class:`Malformed` if it cannot be read, and
    :class:`CollateralInvalid` (a ``Malformed``) if what it holds is unusable."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_COLLATERAL_SIZE + 1)
    except OSError as exc:
        raise Malformed(f"{path}: cannot read the collateral file ({exc.strerror})") from exc
    try:
        return Collateral.from_json(data)
    except CollateralInvalid as exc:
        raise CollateralInvalid(f"{path}: {exc.message}") from exc


# --- PCCS (edge I/O) ------------------------------------------------------------------------------------------


def _raw_member(text: str, key: str, what: str) -> str:
    """The exact JSON text of ``key``'s value in the top-level object ``text`` (Intel signs those bytes)."""
    decoder = json.JSONDecoder()
    index = len(text) - len(text.lstrip())
    if text[index : index + 1] != "{":
        raise CollateralUnavailable(f"PCCS {what}: answer is not a JSON object")
    index += 1
    found: str | None = None
    while True:
        while text[index : index + 1].isspace():
            index += 1
        if text[index : index + 1] == "}":
            break
        try:
            name, index = json.decoder.scanstring(text, index + 1)  # type: ignore[attr-defined]
            while text[index : index + 1].isspace():
                index += 1
            if text[index : index + 1] != ":":
                raise ValueError("expected ':'")
            index += 1
            while text[index : index + 1].isspace():
                index += 1
            _, end = decoder.raw_decode(text, index)
        except (ValueError, IndexError, RecursionError) as exc:
            raise CollateralUnavailable(f"PCCS {what}: answer is not valid JSON") from exc
        if name == key:
            if found is not None:
                raise CollateralUnavailable(f"PCCS {what}: {key!r} appears twice")
            found = text[index:end]
        index = end
        while text[index : index + 1].isspace():
            index += 1
        if text[index : index + 1] == ",":
            index += 1
    if found is None:
        raise CollateralUnavailable(f"PCCS {what}: answer has no {key!r}")
    return found


@dataclass(frozen=True, slots=True)
class _Response:
    body: bytes
    headers: Mapping[str, str]

    def header(self, *names: str) -> str:
        for name in names:
            for key, value in self.headers.items():
                if key.lower() == name.lower():
                    return urllib.parse.unquote(value)
        raise CollateralUnavailable(f"PCCS answer lacks the {names[0]} header")


def _get(url: str, timeout: float) -> _Response:
    request = urllib.request.Request(url, headers={"Accept": "application/json, application/octet-stream"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http/https checked)
            body = response.read(_MAX_RESPONSE + 1)
            headers = dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        raise CollateralUnavailable(f"PCCS {url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CollateralUnavailable(f"PCCS {url}: {exc}") from exc
    if len(body) > _MAX_RESPONSE:
        raise CollateralUnavailable(f"PCCS {url}: answer over {_MAX_RESPONSE} bytes")
    return _Response(body, headers)


def _signed_part(response: _Response, key: str, what: str) -> tuple[str, str]:
    try:
        text = response.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CollateralUnavailable(f"PCCS {what}: answer is not UTF-8") from exc
    signature = json.loads(_raw_member(text, "signature", what))
    if not isinstance(signature, str):
        raise CollateralUnavailable(f"PCCS {what}: signature is not a hex string")
    return _raw_member(text, key, what), signature


def _crl_hex(body: bytes, what: str) -> str:
    stripped = body.strip()
    if stripped[:1] == b"0":  # DER SEQUENCE starts 0x30: binary
        return body.hex()
    try:
        return bytes.fromhex(stripped.decode("ascii")).hex()
    except (UnicodeDecodeError, ValueError) as exc:
        raise CollateralUnavailable(f"PCCS {what}: neither DER nor hex") from exc


def _base_url(pccs_url: str) -> str:
    parsed = urllib.parse.urlsplit(pccs_url)
    if parsed.scheme not in ("https", "http") or not parsed.netloc:
        raise ValueError(f"PCCS URL {pccs_url!r} must be an http(s) URL")
    base = pccs_url.rstrip("/")
    for suffix in ("/sgx/certification/v4", "/tdx/certification/v4"):
        base = base.removesuffix(suffix)
    return base


def _download(quote: Quote, base: str, fmspc: str, ca: str, timeout: float) -> str:
    tee = quote.tee
    tcb = _get(f"{base}/{tee}/certification/v4/tcb?fmspc={fmspc}", timeout)
    tcb_info, tcb_signature = _signed_part(tcb, "tcbInfo", "tcb")
    qe = _get(f"{base}/{tee}/certification/v4/qe/identity", timeout)
    qe_identity, qe_signature = _signed_part(qe, "enclaveIdentity", "qe/identity")
    pck = _get(f"{base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der", timeout)
    root = _get(f"{base}/sgx/certification/v4/rootcacrl", timeout)
    return json.dumps(
        {
            "pck_crl_issuer_chain": pck.header("SGX-PCK-CRL-Issuer-Chain"),
            "root_ca_crl": _crl_hex(root.body, "rootcacrl"),
            "pck_crl": _crl_hex(pck.body, "pckcrl"),
            "tcb_info_issuer_chain": tcb.header("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"),
            "tcb_info": tcb_info,
            "tcb_info_signature": tcb_signature,
            "qe_identity_issuer_chain": qe.header("SGX-Enclave-Identity-Issuer-Chain", "Enclave-Identity-Issuer-Chain"),
            "qe_identity": qe_identity,
            "qe_identity_signature": qe_signature,
        },
        indent=1,
    )


def _cache_path(cache_dir: Path, tee: str, fmspc: str, ca: str) -> Path:
    return cache_dir / f"{tee}-{fmspc}-{ca}.json"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".collateral-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def fetch_collateral(
    quote: Quote,
    *,
    pccs_url: str,
    now: datetime,
    cache_dir: Path | None = None,
    timeout: float = 10.0,
) -> Collateral:
    """Collateral for ``quote``'s platform from a PCCS, reusing ``cache_dir`` while it is current at ``now``.

    Raises :class:`CollateralUnavailable` (retryable) when the PCCS cannot give usable collateral, and
    :class:`Malformed` when the quote has no embedded PCK certificate to name its platform.
    """
    base = _base_url(pccs_url)
    try:
        parsed = dcap_qvl.parse_quote(quote.raw)
        fmspc = parsed.fmspc().upper()
        ca = parsed.ca()
    except ValueError as exc:
        raise Malformed(f"quote does not name its platform (no readable PCK certificate: {exc})") from exc
    if ca not in ("platform", "processor"):
        raise Malformed(f"quote's PCK certificate is issued by an unknown CA {ca!r}")
    path = _cache_path(cache_dir, quote.tee, fmspc, ca) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = load_collateral(path)
        except Malformed as exc:
            logger.warning("ignoring unusable cached collateral %s: %s", path, exc.message)
        else:
            if cached.valid_at(now):
                logger.debug("collateral for %s %s from cache %s", quote.tee, fmspc, path)
                return cached
    text = _download(quote, base, fmspc, ca, timeout)
    try:
        collateral = Collateral.from_json(text)
    except Malformed as exc:
        raise CollateralUnavailable(f"PCCS {base} gave unusable collateral: {exc.message}") from exc
    if collateral.fmspc != fmspc or collateral.tee != quote.tee:
        raise CollateralUnavailable(
            f"PCCS {base} gave collateral for {collateral.tee} {collateral.fmspc}, asked for {quote.tee} {fmspc}"
        )
    if path is not None:
        _write_atomically(path, collateral.json_text)
    logger.info(
        "fetched collateral for %s %s from %s (valid %s)", quote.tee, fmspc, base, collateral.describe_validity()
    )
    return collateral
