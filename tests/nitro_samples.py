"""The real Nitro documents of ``../shared/fixtures/nitro`` and helpers to take them apart and tamper with them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cbor2

from tests.conftest import fixtures_dir


@dataclass(frozen=True)
class Sample:
    name: str
    data: bytes
    facts: dict[str, Any]

    @property
    def valid(self) -> bool:
        return self.facts["expected"].startswith("valid")

    @property
    def at(self) -> datetime:
        return datetime.fromtimestamp(self.facts["timestamp_ms"] / 1000, tz=UTC)


def samples() -> list[Sample]:
    root = fixtures_dir("nitro")
    facts = json.loads((root / "samples.json").read_text())
    return [Sample(f["file"].split("/")[-1], (root / f["file"]).read_bytes(), f) for f in facts]


def valid_samples() -> list[Sample]:
    return [s for s in samples() if s.valid]


def sample(prefix: str) -> Sample:
    return next(s for s in samples() if s.name.startswith(prefix))


def split(document: bytes) -> tuple[list[Any], dict[str, Any]]:
    """The COSE array and the decoded payload of a document."""
    cose = cbor2.loads(document)
    return cose, cbor2.loads(cose[2])


def rebuild(cose: list[Any], payload: dict[str, Any] | None = None) -> bytes:
    """Re-encode a COSE array, optionally with a new payload (the signature is kept, so it no longer matches)."""
    cose = list(cose)
    if payload is not None:
        cose[2] = cbor2.dumps(payload)
    return cbor2.dumps(cose)
