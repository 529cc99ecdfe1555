"""What crosses between notify's host parts and its enclave (RPC routes), and what travels on the queue.

The route names are the reference's (``initialize``, ``health-check``, ``attestation-doc``,
``push-id-challenge``, ``notification``, ``secret-key``) under the ``notify.`` prefix. Every request model
forbids unknown fields and bounds its sizes: the enclave parses untrusted host input here, once.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from enclavekit.rpc import Route

__all__ = [
    "ATTESTATION_DOC",
    "HEALTH_CHECK",
    "INITIALIZE",
    "MAX_BATCH",
    "MAX_QUEUED_RECIPIENTS",
    "NOTIFICATION",
    "PUSH_ID_CHALLENGE",
    "SECRET_KEY",
    "AttestationDoc",
    "AttestationDocRequest",
    "BrazeConfig",
    "Challenge",
    "ChallengeResult",
    "EnclaveHealth",
    "HealthCheckRequest",
    "Initialize",
    "Initialized",
    "Notification",
    "NotificationBatch",
    "NotificationResult",
    "Outcome",
    "Recipient",
    "RecipientOutcome",
    "SecretKey",
    "SecretKeyRequest",
]

MAX_BATCH = 500
MAX_QUEUED_RECIPIENTS = 1000
"""Most recipients in one enclave call (the dispatcher sends 50 by default)."""
MAX_HEX = 1120
MAX_MESSAGE_B64 = 256 * 1024
MAX_DELETION_REQUESTS = 64
TOPIC_PATTERN = r"^/xmtp/mls/1/[gw]-[A-Za-z0-9_\-./=+]{1,200}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrazeConfig(_Strict):
    """How the enclave's provider client delivers; built inside the enclave from its measured configuration and
    the API key it decrypted (never received from the host)."""

    api_key: str = Field(min_length=1, max_length=256, repr=False)
    base_url: str = Field(default="https://rest.iad-01.braze.com", max_length=512, pattern=r"^https?://")
    egress_proxy: str | None = Field(default=None, max_length=512)
    """The host's CONNECT proxy (``tcp://H:P`` or ``unix:///path``); None: connect directly."""
    timeout: float = Field(default=10.0, gt=0, le=120)
    max_attempts: int = Field(default=4, ge=1, le=10)
    backoff: float = Field(default=0.2, ge=0, le=30)
    aliases_per_request: int = Field(default=50, ge=1, le=50)
    alias_label: str = Field(default="push_id", min_length=1, max_length=64)


class Initialize(_Strict):
    """No fields: the provider is fixed by the enclave's measured configuration. A request that carries one (the
    old ``{"braze": {...}}``, or a replay of it) is refused as an unknown field."""


class Initialized(_Strict):
    initialized: bool
    """True when the measured configuration is loaded (the API key decrypted, the provider ready)."""
    public_key: str
    track: str | None
    config_sha256: str | None = None
    """SHA-256 of the measured configuration file, None when the enclave has none."""


class HealthCheckRequest(_Strict):
    pass


class EnclaveHealth(_Strict):
    initialized: bool
    public_key: str
    track: str | None
    delivered: int
    key_fingerprint: str


class AttestationDocRequest(_Strict):
    nonce: str | None = Field(default=None, max_length=128, pattern=r"^[0-9a-fA-F]*$")


class AttestationDoc(_Strict):
    document: str
    """COSE_Sign1 attestation document, base64; its ``public_key`` is the X25519 push key."""
    public_key: str


class Challenge(_Strict):
    encrypted_push_id_1: str = Field(min_length=2, max_length=MAX_HEX)
    encrypted_push_id_2: str = Field(min_length=2, max_length=MAX_HEX)


class ChallengeResult(_Strict):
    """``same`` only if both open; ``first_opens``/``second_opens`` say which did (garbage stays per-field)."""

    same: bool
    first_opens: bool
    second_opens: bool


class SecretKeyRequest(_Strict):
    pass


class SecretKey(_Strict):
    """The reference's ``secret-key`` answered the track key exchange; here the exchange is the track's own
    ``enclave.track.join`` route (mutual attestation), and this route tells which key a member holds."""

    public_key: str
    track: str | None
    key_fingerprint: str


class Recipient(_Strict):
    encrypted_push_id: str = Field(min_length=2, max_length=MAX_HEX)
    deletion_requests: tuple[str, ...] = Field(default=(), max_length=MAX_DELETION_REQUESTS)


class NotificationBatch(_Strict):
    message_id: str = Field(min_length=1, max_length=128)
    topic: str = Field(pattern=TOPIC_PATTERN)
    encrypted_message_base64: str = Field(max_length=MAX_MESSAGE_B64)
    message_kind: str = Field(default="v3-conversation", max_length=32)
    recipients: tuple[Recipient, ...] = Field(min_length=1, max_length=MAX_BATCH)
    traceparent: str | None = Field(default=None, max_length=128)


Outcome = Literal["delivered", "duplicate", "invalid_push_id", "tombstoned", "rejected", "retry"]
"""Per recipient: ``delivered``/``duplicate`` (the same device got it via another recipient) are done;
``invalid_push_id``, ``rejected`` (the provider refused it for good) and ``tombstoned`` (the owner asked for
deletion: the host deletes the row) are permanent failures; ``retry`` may succeed later."""


class RecipientOutcome(_Strict):
    index: int
    outcome: Outcome
    detail: str | None = None


class NotificationResult(_Strict):
    outcomes: tuple[RecipientOutcome, ...]
    provider_requests: int


INITIALIZE = Route("notify.initialize", Initialize, Initialized)
HEALTH_CHECK = Route("notify.health-check", HealthCheckRequest, EnclaveHealth)
ATTESTATION_DOC = Route("notify.attestation-doc", AttestationDocRequest, AttestationDoc)
PUSH_ID_CHALLENGE = Route("notify.push-id-challenge", Challenge, ChallengeResult)
NOTIFICATION = Route("notify.notification", NotificationBatch, NotificationResult)
SECRET_KEY = Route("notify.secret-key", SecretKeyRequest, SecretKey)


class Notification(_Strict):
    """One notification on the queue: the reference's ``{topic, subscribed_encrypted_push_ids,
    encrypted_message_base64}`` plus each subscriber's tombstones, an idempotency id and a retry counter."""

    v: Literal[1] = 1
    id: str = Field(min_length=1, max_length=128)
    part: int = Field(default=0, ge=0)
    """Large topics are queued in parts of at most ``MAX_QUEUED_RECIPIENTS`` (a queue message stays well under
    NATS's 1 MiB payload limit); every part carries the chat message's ``id``."""
    topic: str = Field(pattern=TOPIC_PATTERN)
    encrypted_message_base64: str = Field(max_length=MAX_MESSAGE_B64)
    message_kind: str = Field(default="v3-conversation", max_length=32)
    recipients: tuple[Recipient, ...]
    created_at: float
    attempt: int = 0
    not_before: float = 0.0
    batches: tuple[int, ...] = ()
    """Sizes of the recipient batches of a retry (the batches of the first attempt, minus what is done): a
    retried batch keeps its composition, so the enclave repeats the same provider requests and keys."""

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Notification:
        return cls.model_validate(json.loads(data))
