"""The edges a verification needs: evidence from a registered endpoint, and Intel collateral from a PCCS.

An endpoint is polled with ``GET URL`` (plus ``?nonce=HEX`` when the target asks for freshness). It may answer
with the raw evidence (a Nitro COSE document, ``application/cbor`` or ``application/octet-stream``; a DCAP
quote) or with JSON: a dstack bundle (``{"quote", "event_log", ...}``, passed on whole), or an object holding a
base64 attestation document under ``document``, ``attestation_document``, ``attestation_doc`` or
``attestation``. Answers are read up to a size limit and never trusted: the verifier decides.

Fetchers are chosen by URL scheme (:class:`FetcherRegistry`); ``http`` and ``https`` are built in.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from enclavekit.attestation.collateral import fetch_collateral
from enclavekit.attestation.errors import AttestationError, CollateralUnavailable
from enclavekit.attestation.evidence import MAX_EVIDENCE_SIZE, Evidence
from enclavekit.attestation.verification_time import At, NoEvidenceTime
from enclavekit.services.trust.errors import EndpointUnavailable, EndpointUnsupported
from enclavekit.services.trust.verification import CollateralOutcome

__all__ = [
    "CollateralProvider",
    "EvidenceFetcher",
    "Fetched",
    "FetcherRegistry",
    "HttpFetcher",
    "decode_answer",
]

logger = logging.getLogger(__name__)

_DOCUMENT_KEYS = ("document", "attestation_document", "attestation_doc", "attestation")


@dataclass(frozen=True, slots=True)
class Fetched:
    """Evidence as an endpoint gave it (bytes the verifier recognises)."""

    data: bytes
    url: str
    content_type: str


class EvidenceFetcher(Protocol):
    """Gets fresh evidence from one kind of endpoint."""

    async def fetch(self, url: str, *, nonce: bytes | None) -> Fetched: ...


def decode_answer(body: bytes, content_type: str) -> bytes:
    """The evidence in an endpoint's answer (see the module docstring); raise :class:`EndpointUnsupported`."""
    media = content_type.split(";")[0].strip().lower()
    stripped = body.lstrip()
    if media == "application/json" or (media in ("", "text/plain") and stripped[:1] == b"{"):
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise EndpointUnsupported("the endpoint answered invalid JSON") from exc
        if not isinstance(document, dict):
            raise EndpointUnsupported("the endpoint answered JSON that is not an object")
        if "quote" in document and "event_log" in document:
            return body  # a dstack bundle: the verifier parses it whole
        for key in _DOCUMENT_KEYS:
            value = document.get(key)
            if isinstance(value, str):
                try:
                    return base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise EndpointUnsupported(f"the endpoint's {key!r} is not base64") from exc
        if isinstance(document.get("quote"), str):
            return str(document["quote"]).encode("ascii", "replace")
        raise EndpointUnsupported(
            "the endpoint's JSON holds no evidence (expected a dstack bundle, or base64 under one of "
            f"{', '.join(_DOCUMENT_KEYS)})"
        )
    return body


class HttpFetcher:
    """``GET`` over HTTP(S) with a timeout and a size limit."""

    def __init__(self, *, timeout: float = 10.0, max_size: int = MAX_EVIDENCE_SIZE) -> None:
        self._timeout = timeout
        self._max_size = max_size

    async def fetch(self, url: str, *, nonce: bytes | None) -> Fetched:
        target = _with_nonce(url, nonce)
        try:
            async with (
                httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client,
                client.stream("GET", target, headers={"Accept": "application/cbor, application/json, */*"}) as answer,
            ):
                if answer.status_code != 200:
                    raise EndpointUnavailable(f"{url} answered HTTP {answer.status_code}")
                declared = answer.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > self._max_size:
                    raise EndpointUnsupported(f"{url} answered {declared} bytes, over {self._max_size}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in answer.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_size:
                        raise EndpointUnsupported(f"{url} answered more than {self._max_size} bytes")
                    chunks.append(chunk)
                content_type = answer.headers.get("content-type", "")
        except httpx.TimeoutException as exc:
            raise EndpointUnavailable(f"{url} did not answer within {self._timeout:.0f} s") from exc
        except httpx.HTTPError as exc:
            raise EndpointUnavailable(f"{url}: {exc.__class__.__name__}: {exc}") from exc
        data = decode_answer(b"".join(chunks), content_type)
        if not data:
            raise EndpointUnsupported(f"{url} answered nothing")
        return Fetched(data, url, content_type)


def _with_nonce(url: str, nonce: bytes | None) -> str:
    if nonce is None:
        return url
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({"nonce": nonce.hex()})))


class FetcherRegistry:
    """The fetcher for each URL scheme."""

    def __init__(self, fetchers: Mapping[str, EvidenceFetcher] | None = None, *, timeout: float = 10.0) -> None:
        if fetchers is None:
            http = HttpFetcher(timeout=timeout)
            fetchers = {"http": http, "https": http}
        self._fetchers = dict(fetchers)

    def supports(self, url: str) -> bool:
        return urlsplit(url).scheme in self._fetchers

    async def fetch(self, url: str, *, nonce: bytes | None = None) -> Fetched:
        scheme = urlsplit(url).scheme
        fetcher = self._fetchers.get(scheme)
        if fetcher is None:
            known = ", ".join(sorted(self._fetchers))
            raise EndpointUnsupported(f"cannot poll {url}: no fetcher for {scheme or 'its'} URLs (known: {known})")
        return await fetcher.fetch(url, nonce=nonce)


class CollateralProvider:
    """Collateral for TDX quotes: from a PCCS (reusing its disk cache while current), or none when offline."""

    def __init__(self, pccs_url: str | None, cache_dir: Path, *, timeout: float = 10.0) -> None:
        self.pccs_url = pccs_url
        self.cache_dir = cache_dir
        self.timeout = timeout

    def obtain(self, evidence: Evidence, *, at: At, now: datetime) -> CollateralOutcome:
        """Collateral current at the time ``at`` resolves to (``now``: the wall clock) for the evidence's quote.

        Blocking (call it from a thread). Never raises for bad evidence: the verifier reports that."""
        quote = evidence.quote
        if self.pccs_url is None or quote is None:
            return CollateralOutcome()
        try:
            moment = at.resolve(now=now, evidence_time=evidence.timestamp)
        except NoEvidenceTime:
            return CollateralOutcome()  # the verifier reports that a quote has no time of its own
        try:
            collateral = fetch_collateral(
                quote, pccs_url=self.pccs_url, now=moment, cache_dir=self.cache_dir, timeout=self.timeout
            )
        except CollateralUnavailable as exc:
            when = moment.isoformat()
            return CollateralOutcome(
                error_code=exc.code,
                error=f"the PCCS is unavailable and no cached collateral is current at {when}: {exc.message}",
            )
        except AttestationError:
            return CollateralOutcome()  # what the PCCS gave is not usable: the report says why
        return CollateralOutcome(collateral, f"from the PCCS at {self.pccs_url} (its disk cache reused while current)")
