"""The inference enclave's configuration: what decides trust, in one frozen value. Pure.

The publisher key (whose signature the model's manifest must carry), the KMS key and the KMS endpoint (its URL
and the CA its certificate must chain to), and the model id and version decide which model the enclave will
serve; the limits decide what input it accepts. The file is the enclave's measured configuration (``--config``:
folded into PCR0, like notify's), so the host cannot change any of it without changing PCR0 — and the KMS key's
policy releases the model key only to that PCR0. Its SHA-256 (:meth:`InferenceConfig.digest`) is also stated in
every receipt (``policy_version``), so a client can see which configuration answered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from enclavekit.errors import ConfigurationError
from enclavekit.kms.measured import MeasuredKmsEndpoint

__all__ = ["ENGINES", "MAX_CONFIG_SIZE", "InferenceConfig", "Limits"]

MAX_CONFIG_SIZE: Final = 16 * 1024
ENGINES: Final = ("numpy", "torch-cpu", "torch-cuda", "torch-cuda-fp16")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one embed request may carry."""

    max_batch: int = 256
    """Texts per request."""
    max_text_bytes: int = 16 * 1024
    """UTF-8 bytes per text (tokens past 256 are truncated and reported; this bounds the tokenizer's work)."""
    max_total_bytes: int = 1024 * 1024
    """UTF-8 bytes of all texts of a request."""

    def __post_init__(self) -> None:
        if not (
            0 < self.max_batch <= 4096 and 0 < self.max_text_bytes <= 1 << 20 and 0 < self.max_total_bytes <= 1 << 26
        ):
            raise ConfigurationError(f"inference limits out of range: {self}")


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceConfig:
    """Trust-deciding settings of the inference enclave."""

    model_id: str
    version: str
    publisher_key: bytes
    """Raw Ed25519 public key (32 bytes) that must sign the model's manifest."""
    kms_key_id: str
    kms_region: str = "us-east-1"
    kms_url: str | None = None
    """The KMS the enclave talks to (default: AWS in ``kms_region``); ``https`` unless ``unsafe_kms_plain_http``."""
    kms_ca_pem: str | None = None
    """The only roots KMS's TLS certificate may chain to (default: the system store)."""
    unsafe_kms_plain_http: bool = False
    limits: Limits = Limits()
    workers: int = 1
    """Request workers (threads running the engine, one BLAS thread each)."""
    engine: str = "numpy"
    """``numpy`` (fp32, CPU), or ``torch-cpu``, ``torch-cuda`` (fp32) or ``torch-cuda-fp16`` (a GPU engine)."""

    def __post_init__(self) -> None:
        if len(self.publisher_key) != 32:
            raise ConfigurationError("publisher_key must be a raw 32-byte Ed25519 public key")
        if not self.model_id or not self.version or not self.kms_key_id:
            raise ConfigurationError("model_id, version and kms_key_id are required")
        if not 1 <= self.workers <= 64:
            raise ConfigurationError(f"workers must be 1..64, not {self.workers}")
        if self.engine not in ENGINES:
            raise ConfigurationError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        self.kms_endpoint()

    def kms_endpoint(self) -> MeasuredKmsEndpoint:
        """The measured KMS endpoint (raises :class:`ConfigurationError`, e.g. for ``http`` without the flag)."""
        document: dict[str, Any] = {"unsafe_plain_http": self.unsafe_kms_plain_http}
        if self.kms_url is not None:
            document["url"] = self.kms_url
        if self.kms_ca_pem is not None:
            document["ca_pem"] = self.kms_ca_pem
        return MeasuredKmsEndpoint.from_document(document, region=self.kms_region)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["publisher_key"] = self.publisher_key.hex()
        return data

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces): what :meth:`digest` hashes."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> InferenceConfig:
        if len(data) > MAX_CONFIG_SIZE:
            raise ConfigurationError(f"inference config is over {MAX_CONFIG_SIZE} bytes")
        try:
            raw = json.loads(data)
            limits = Limits(**raw.pop("limits", {}))
            publisher_key = bytes.fromhex(raw.pop("publisher_key"))
            return cls(publisher_key=publisher_key, limits=limits, **raw)
        except (json.JSONDecodeError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ConfigurationError(f"inference config is malformed: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> InferenceConfig:
        try:
            return cls.from_bytes(path.read_bytes())
        except OSError as exc:
            raise ConfigurationError(f"cannot read inference config {path}: {exc}") from exc
