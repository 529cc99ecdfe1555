"""The notify enclave: the only code that sees plaintext push IDs (and the Braze API key).

Routes (the reference's names under ``notify.``): ``initialize`` (the Braze configuration, over the attested
session), ``health-check``, ``attestation-doc`` (a document whose ``public_key`` is the X25519 push key),
``push-id-challenge`` (do two sealed boxes hold the same push ID?), ``notification`` (deliver one batch) and
``secret-key`` (which push key this enclave holds; the key itself moves only by the track's attested join).

``notification`` never fails a batch for one recipient: every recipient gets an outcome. Push IDs are opened
one by one (a bad one is ``invalid_push_id``), tombstones are resolved in plaintext (a deletion request that
opens to the subscriber's own push ID means its owner asked to unsubscribe: ``tombstoned``, the host deletes
the row), devices are deduplicated by plaintext, and the rest is delivered in requests of up to 50 aliases,
grouped by a per-(message, device) key so that a retried batch produces the same requests with the same
``Idempotency-Key``. Deliveries already made by this enclave are remembered (bounded) and not repeated.

The push key comes from one seam, :class:`~enclavekit.services.notify.pushid.PushKeys`: a key generated in
memory by default, or the enclave track's key when ``ENCLAVEKIT_NOTIFY_TRACK`` names a track (then every
member opens the same push IDs).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from enclavekit.enclave.app import EnclaveApp
from enclavekit.enclave.runtime import EnclaveContext
from enclavekit.enclave.tracks import Track, lease_store
from enclavekit.rpc import CallContext
from enclavekit.services.notify.braze import BrazeProvider
from enclavekit.services.notify.errors import InvalidPushId, NotInitialized
from enclavekit.services.notify.pushid import GeneratedPushKeys, PushKeys, TrackPushKeys
from enclavekit.services.notify.wire import (
    ATTESTATION_DOC,
    HEALTH_CHECK,
    INITIALIZE,
    NOTIFICATION,
    PUSH_ID_CHALLENGE,
    SECRET_KEY,
    AttestationDoc,
    AttestationDocRequest,
    Challenge,
    ChallengeResult,
    EnclaveHealth,
    HealthCheckRequest,
    Initialize,
    Initialized,
    NotificationBatch,
    NotificationResult,
    Outcome,
    Recipient,
    RecipientOutcome,
    SecretKey,
    SecretKeyRequest,
)

__all__ = ["NotifyEnclave", "app", "build_app", "idempotency_key"]

logger = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines are not ours to decide

DOCUMENT_MAX_AGE = 600.0
REMEMBERED_DELIVERIES = 200_000
PROVIDER_CONCURRENCY = 16


def idempotency_key(secret: bytes, message_id: str, push_id: bytes) -> bytes:
    """The key of one (message, device) delivery: the same in every enclave holding the push key."""
    return hmac.new(secret, message_id.encode() + b"\x00" + push_id, hashlib.sha256).digest()


@dataclass
class NotifyEnclave:
    """The state of one notify enclave: its push key, its provider, what it delivered."""

    keys_factory: Callable[[EnclaveContext], PushKeys] = lambda context: GeneratedPushKeys()
    track: str | None = None
    keys: PushKeys | None = None
    provider: BrazeProvider | None = None
    delivered: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    delivered_count: int = 0
    _context: EnclaveContext | None = None
    _document: tuple[float, bytes] | None = None
    _idempotency_secret: bytes = b""
    _slots: asyncio.Semaphore | None = None

    def attach(self, app: EnclaveApp) -> None:
        app.on_boot(self._boot)
        app.on_shutdown(self._shutdown)
        app.route(INITIALIZE)(self.initialize)
        app.route(HEALTH_CHECK)(self.health_check)
        app.route(ATTESTATION_DOC)(self.attestation_doc)
        app.route(PUSH_ID_CHALLENGE)(self.push_id_challenge)
        app.route(NOTIFICATION)(self.notification)
        app.route(SECRET_KEY)(self.secret_key)

    async def _boot(self, context: EnclaveContext) -> None:
        self._context = context
        self.keys = self.keys_factory(context)
        self._idempotency_secret = self.keys.derive(b"notify idempotency v1")
        self._slots = asyncio.Semaphore(PROVIDER_CONCURRENCY)
        logger.info("notify enclave ready: push key %s, track %s", self.fingerprint(), self.track or "none")

    async def _shutdown(self, context: EnclaveContext) -> None:
        if self.provider is not None:
            await self.provider.close()

    def _keys(self) -> PushKeys:
        if self.keys is None:
            raise NotInitialized("the enclave has not booted")
        return self.keys

    def fingerprint(self) -> str:
        return hashlib.sha256(self._keys().public_key()).hexdigest()[:16]

    # --- routes ----------------------------------------------------------------------------------------------

    async def initialize(self, request: Initialize, call: CallContext) -> Initialized:
        old = self.provider
        self.provider = BrazeProvider(request.braze)
        if old is not None:
            await old.close()
        logger.info("notify enclave initialised: provider %s", request.braze.base_url)
        return Initialized(initialized=True, public_key=self._keys().public_key().hex(), track=self.track)

    async def health_check(self, request: HealthCheckRequest, call: CallContext) -> EnclaveHealth:
        return EnclaveHealth(
            initialized=self.provider is not None,
            public_key=self._keys().public_key().hex(),
            track=self.track,
            delivered=self.delivered_count,
            key_fingerprint=self.fingerprint(),
        )

    async def attestation_doc(self, request: AttestationDocRequest, call: CallContext) -> AttestationDoc:
        assert self._context is not None
        public_key = self._keys().public_key()
        if request.nonce:
            document = await self._context.attest(nonce=bytes.fromhex(request.nonce), public_key=public_key)
        else:
            now = time.monotonic()
            if self._document is None or now - self._document[0] > DOCUMENT_MAX_AGE:
                self._document = (now, await self._context.attest(public_key=public_key))
            document = self._document[1]
        return AttestationDoc(document=base64.b64encode(document).decode(), public_key=public_key.hex())

    async def push_id_challenge(self, request: Challenge, call: CallContext) -> ChallengeResult:
        opened: list[bytes | None] = []
        for text in (request.encrypted_push_id_1, request.encrypted_push_id_2):
            try:
                opened.append(self._open(text))
            except InvalidPushId:
                opened.append(None)
        first, second = opened
        same = first is not None and second is not None and hmac.compare_digest(first, second)
        return ChallengeResult(same=same, first_opens=first is not None, second_opens=second is not None)

    async def secret_key(self, request: SecretKeyRequest, call: CallContext) -> SecretKey:
        return SecretKey(
            public_key=self._keys().public_key().hex(), track=self.track, key_fingerprint=self.fingerprint()
        )

    def _open(self, encrypted_hex: str) -> bytes:
        try:
            box = bytes.fromhex(encrypted_hex)
        except ValueError as exc:
            raise InvalidPushId("encrypted push ID is not hex") from exc
        return self._keys().open_sealed(box)

    async def notification(self, request: NotificationBatch, call: CallContext) -> NotificationResult:
        provider = self.provider
        if provider is None:
            raise NotInitialized("initialize the enclave (notify.initialize) before sending notifications")
        started = time.perf_counter()
        opened = self._open_all(request.recipients)  # ~50 µs each; a thread costs more than it saves (measured)
        outcomes: dict[int, RecipientOutcome] = {}
        devices: dict[bytes, int] = {}
        pending: list[tuple[bytes, int, str]] = []
        for index, (recipient, push_id) in enumerate(zip(request.recipients, opened, strict=True)):
            alias = _alias(push_id)
            if push_id is None or alias is None:
                outcomes[index] = RecipientOutcome(index=index, outcome="invalid_push_id")
                continue
            if self._tombstoned(push_id, recipient.deletion_requests):
                outcomes[index] = RecipientOutcome(index=index, outcome="tombstoned")
                continue
            if push_id in devices:
                outcomes[index] = RecipientOutcome(index=index, outcome="duplicate")
                continue
            devices[push_id] = index
            key = idempotency_key(self._idempotency_secret, request.message_id, push_id)
            if key in self.delivered:
                outcomes[index] = RecipientOutcome(index=index, outcome="delivered", detail="already delivered")
                continue
            pending.append((key, index, alias))
        pending.sort()
        size = provider.config.aliases_per_request
        chunks = [pending[i : i + size] for i in range(0, len(pending), size)]
        extra = {
            "topic": request.topic,
            "encryptedMessageBase64": request.encrypted_message_base64,
            "messageKind": request.message_kind,
            "messageId": request.message_id,
        }
        results = await asyncio.gather(*(self._deliver(provider, chunk, extra) for chunk in chunks))
        requests = 0
        for chunk, (status, detail, attempts) in zip(chunks, results, strict=True):
            requests += attempts
            for key, index, _ in chunk:
                if status == "delivered":
                    self._remember(key)
                outcomes[index] = RecipientOutcome(index=index, outcome=status, detail=detail)
        counts: dict[str, int] = {}
        for done in outcomes.values():
            counts[done.outcome] = counts.get(done.outcome, 0) + 1
        logger.debug(
            "notification %s: %d recipients %s in %.1f ms (trace %s)",
            request.message_id,
            len(request.recipients),
            counts,
            (time.perf_counter() - started) * 1000,
            (request.traceparent or "-"),
        )
        return NotificationResult(
            outcomes=tuple(outcomes[i] for i in range(len(request.recipients))), provider_requests=requests
        )

    def _open_all(self, recipients: tuple[Recipient, ...]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for recipient in recipients:
            try:
                out.append(self._open(recipient.encrypted_push_id))
            except InvalidPushId:
                out.append(None)
        return out

    def _tombstoned(self, push_id: bytes, deletion_requests: tuple[str, ...]) -> bool:
        for request in deletion_requests:
            try:
                if hmac.compare_digest(self._open(request), push_id):
                    return True
            except InvalidPushId:
                continue
        return False

    async def _deliver(
        self, provider: BrazeProvider, chunk: list[tuple[bytes, int, str]], extra: dict[str, str]
    ) -> tuple[Outcome, str | None, int]:
        request_key = hashlib.sha256(b"".join(key for key, _, _ in chunk)).hexdigest()
        assert self._slots is not None
        async with self._slots:
            result = await provider.send([alias for _, _, alias in chunk], extra, idempotency_key=request_key)
        return result.status, result.detail, result.attempts

    def _remember(self, key: bytes) -> None:
        self.delivered[key] = None
        self.delivered_count += 1
        while len(self.delivered) > REMEMBERED_DELIVERIES:
            self.delivered.popitem(last=False)


def _alias(push_id: bytes | None) -> str | None:
    """The Braze alias a push ID names (UTF-8 text), or None."""
    if push_id is None:
        return None
    try:
        return push_id.decode()
    except UnicodeDecodeError:
        return None


def build_app(name: str = "notify", track: Track | None = None) -> tuple[EnclaveApp, NotifyEnclave]:
    """A notify enclave app and its state: in ``track`` (its push key derived from the track secret), or alone
    with a push key generated in memory."""
    enclave_app = EnclaveApp(name)
    if track is None:
        state = NotifyEnclave()
    else:
        track.attach(enclave_app)  # first: its boot hook (join or genesis) runs before ours derives the key
        state = NotifyEnclave(keys_factory=lambda context: TrackPushKeys(track), track=track.name)
    state.attach(enclave_app)
    return enclave_app, state


def track_from_environment(environ: Mapping[str, str] | None = None) -> Track | None:
    """The enclave's track, if ``ENCLAVEKIT_NOTIFY_TRACK`` names one.

    ``ENCLAVEKIT_NOTIFY_TRACK_STORE`` is the lease store (``nats://`` or ``redis://``, default the local NATS),
    ``ENCLAVEKIT_NOTIFY_TRACK_TTL`` the lease TTL in seconds (30), ``ENCLAVEKIT_NOTIFY_TRACK_RENEW`` the renewal
    interval (5), ``ENCLAVEKIT_NOTIFY_TRACK_KMS_KEY`` a KMS key to persist the secret across full restarts.
    """
    env = os.environ if environ is None else environ
    name = env.get("ENCLAVEKIT_NOTIFY_TRACK")
    if not name:
        return None
    ttl = float(env.get("ENCLAVEKIT_NOTIFY_TRACK_TTL", "30"))
    return Track(
        name,
        lease_store(env.get("ENCLAVEKIT_NOTIFY_TRACK_STORE", "nats://127.0.0.1:4222"), ttl=ttl),
        renew_interval=float(env.get("ENCLAVEKIT_NOTIFY_TRACK_RENEW", str(min(5.0, ttl / 6)))),
        join_timeout=float(env.get("ENCLAVEKIT_NOTIFY_TRACK_JOIN_TIMEOUT", "60")),
        kms_key_id=env.get("ENCLAVEKIT_NOTIFY_TRACK_KMS_KEY") or None,
    )


app, state = build_app("notify", track_from_environment())
