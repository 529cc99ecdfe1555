"""The notify enclave: the only code that sees plaintext push IDs (and the Braze API key).

Where it delivers is fixed by its **measured configuration** (:mod:`enclavekit.services.notify.enclave_config`,
part of PCR0): one https provider whose certificate must chain to the pinned CA, the KMS key and the KMS
endpoint with its pinned CA (the host gives only the TCP route), and the provider API key as KMS ciphertext
that the enclave decrypts itself with an attested Recipient. No route, launch argument or environment variable
changes it. The push key is persisted through KMS (a data key under the
configured key, released only to this measurement), so a restarted enclave with the same PCR0 opens every
stored push ID; one with another PCR0 cannot.

Routes (the reference's names under ``notify.``): ``initialize`` (kept for compatibility: it takes no fields,
changes nothing and reports whether the measured configuration is loaded), ``health-check``,
``attestation-doc`` (a document whose ``public_key`` is the X25519 push key),
``push-id-challenge`` (do two sealed boxes hold the same push ID?), ``notification`` (deliver one batch) and
``secret-key`` (which push key this enclave holds; the key itself moves only by the track's attested join).

``notification`` never fails a batch for one recipient: every recipient gets an outcome. Push IDs are opened
one by one (a bad one is ``invalid_push_id``), tombstones are resolved in plaintext (a deletion request that
opens to the subscriber's own push ID means its owner asked to unsubscribe: ``tombstoned``, the host deletes
the row), devices are deduplicated by plaintext, and the rest is delivered in requests of up to 50 aliases,
grouped by a per-(message, device) key so that a retried batch produces the same requests with the same
``Idempotency-Key``. Deliveries already made by this enclave are remembered (bounded) and not repeated.

The push key comes from one seam, :class:`~enclavekit.services.notify.pushid.PushKeys`: the KMS-persisted key
when the enclave has a measured configuration, or the enclave track's key when ``ENCLAVEKIT_NOTIFY_TRACK`` names
a track (then every member opens the same push IDs, and the track secret is persisted under the configured KMS
key); without a configuration, a key generated in memory and no provider (``notification`` is refused).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from enclavekit.enclave.app import EnclaveApp
from enclavekit.enclave.runtime import EnclaveContext
from enclavekit.enclave.tracks import Track, enclave_kms_client, kms_persisted_secret, lease_store
from enclavekit.rpc import CallContext
from enclavekit.services.notify.braze import BrazeProvider, TunnelHttp
from enclavekit.services.notify.enclave_config import (
    API_KEY_CONTEXT,
    PUSH_KEY_CONTEXT,
    InvalidEnclaveConfig,
    NotifyEnclaveConfig,
)
from enclavekit.services.notify.errors import InvalidPushId, NotInitialized
from enclavekit.services.notify.pushid import GeneratedPushKeys, PushKeys, StaticPushKeys, TrackPushKeys
from enclavekit.services.notify.wire import (
    ATTESTATION_DOC,
    HEALTH_CHECK,
    INITIALIZE,
    NOTIFICATION,
    PUSH_ID_CHALLENGE,
    SECRET_KEY,
    AttestationDoc,
    AttestationDocRequest,
    BrazeConfig,
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

if TYPE_CHECKING:
    from enclavekit.kms.client import KmsClient

__all__ = ["NotifyEnclave", "app", "build_app", "idempotency_key", "push_key_file"]

logger = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines are not ours to decide
for _name in ("botocore", "boto3", "urllib3"):  # their debug lines dump KMS requests and answers
    logging.getLogger(_name).setLevel(logging.WARNING)

DOCUMENT_MAX_AGE = 600.0
REMEMBERED_DELIVERIES = 200_000
PROVIDER_CONCURRENCY = 16


def push_key_file(state_dir: Path, app_name: str) -> Path:
    """Where the KMS-wrapped push key of app ``app_name`` is kept (host-visible: it is ciphertext)."""
    return state_dir / "notify" / f"{app_name}.push-key.kms"


def idempotency_key(secret: bytes, message_id: str, push_id: bytes) -> bytes:
    """The key of one (message, device) delivery: the same in every enclave holding the push key."""
    return hmac.new(secret, message_id.encode() + b"\x00" + push_id, hashlib.sha256).digest()


@dataclass
class NotifyEnclave:
    """The state of one notify enclave: its measured configuration, push key, provider, what it delivered."""

    keys_factory: Callable[[EnclaveContext], PushKeys] | None = None
    track: str | None = None
    keys: PushKeys | None = None
    provider: BrazeProvider | None = None
    config: NotifyEnclaveConfig | None = None
    kms: Callable[[EnclaveContext], KmsClient] | None = None
    """Makes the attested KMS client (default: :func:`enclave_kms_client` for the measured ``kms.endpoint``)."""
    restored: bool = False
    """True if the push key was recovered from its KMS-wrapped copy (a restart with the same PCR0)."""
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

    async def load_config(self, context: EnclaveContext) -> None:
        """Parse the measured configuration (boot fails on a malformed one); none: no provider."""
        if self.config is None and context.config is not None:
            self.config = NotifyEnclaveConfig.from_bytes(context.config)

    async def _boot(self, context: EnclaveContext) -> None:
        self._context = context
        await self.load_config(context)
        config = self.config
        client = None if config is None else self._kms_client(context, config)
        if self.keys_factory is not None:
            self.keys = self.keys_factory(context)
        elif config is not None and client is not None:
            self.keys = await self._persisted_keys(context, client, config)
        else:
            self.keys = GeneratedPushKeys()
        self._idempotency_secret = self.keys.derive(b"notify idempotency v1")
        self._slots = asyncio.Semaphore(PROVIDER_CONCURRENCY)
        if config is not None and client is not None:
            # Fails closed (AccessDenied) unless the key policy accepts this enclave's measurement.
            api_key = await asyncio.to_thread(
                client.decrypt,
                config.kms.api_key_ciphertext,
                encryption_context=API_KEY_CONTEXT,
                key_id=config.kms.key_id,
            )
            self.provider = _provider(config, api_key, context.settings.get("egress_proxy") or None)
        logger.info(
            "notify enclave ready: push key %s (%s), track %s, provider %s",
            self.fingerprint(),
            "restored" if self.restored else "new",
            self.track or "none",
            "none (no measured configuration)" if config is None else config.provider.url,
        )

    def _kms_client(self, context: EnclaveContext, config: NotifyEnclaveConfig) -> KmsClient:
        if self.kms is not None:
            return self.kms(context)
        return enclave_kms_client(context, config.kms.endpoint)

    async def _persisted_keys(
        self, context: EnclaveContext, client: KmsClient, config: NotifyEnclaveConfig
    ) -> PushKeys:
        path = push_key_file(context.state_dir, context.app_name)

        async def load() -> bytes | None:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

        async def save(blob: bytes) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never overwrite a key
            with os.fdopen(descriptor, "wb") as sink:
                sink.write(blob)
                sink.flush()
                os.fsync(sink.fileno())

        for _ in range(2):
            try:
                secret, self.restored = await kms_persisted_secret(
                    client, config.kms.key_id, encryption_context=dict(PUSH_KEY_CONTEXT), load=load, save=save
                )
            except FileExistsError:  # another enclave of this measurement saved one first: use that one
                continue
            return StaticPushKeys(secret)
        raise NotInitialized("the persisted push key appeared and vanished while booting")

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
        """Changes nothing: the provider comes from the measured configuration. Reports whether it is loaded."""
        return Initialized(
            initialized=self.provider is not None,
            public_key=self._keys().public_key().hex(),
            track=self.track,
            config_sha256=None if self.config is None else hashlib.sha256(self.config.raw).hexdigest(),
        )

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
            raise NotInitialized("this enclave has no measured provider configuration (enclave run --config)")
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


def _provider(config: NotifyEnclaveConfig, api_key: bytes, egress_proxy: str | None) -> BrazeProvider:
    """The provider of the measured configuration; ``egress_proxy`` (a host setting) is only a TCP path."""
    endpoint = config.provider
    if not re.fullmatch(rb"[\x21-\x7e]{1,256}", api_key):
        raise InvalidEnclaveConfig("the decrypted provider API key must be 1..256 printable ASCII characters")
    braze = BrazeConfig(
        api_key=api_key.decode("ascii"),
        base_url=endpoint.url,
        egress_proxy=egress_proxy,
        timeout=endpoint.timeout,
        max_attempts=endpoint.max_attempts,
        backoff=endpoint.backoff,
        aliases_per_request=endpoint.aliases_per_request,
        alias_label=endpoint.alias_label,
    )
    http = TunnelHttp(endpoint.url, egress_proxy, timeout=endpoint.timeout, ssl_context=endpoint.ssl_context())
    return BrazeProvider(braze, http=http)


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
        state = NotifyEnclave(keys_factory=lambda context: TrackPushKeys(track), track=track.name)

        async def measured_kms_key(context: EnclaveContext) -> None:
            await state.load_config(context)
            # The track secret is persisted only under the measured KMS key (never one the host names).
            config = state.config
            track.kms_key_id = None if config is None else config.kms.key_id
            if config is not None and track.kms is None:
                track.kms = lambda context: enclave_kms_client(context, config.kms.endpoint)

        enclave_app.on_boot(measured_kms_key)
        track.attach(enclave_app)  # then its boot hook (join or genesis) runs before ours derives the key
    state.attach(enclave_app)
    return enclave_app, state


def track_from_environment(environ: Mapping[str, str] | None = None) -> Track | None:
    """The enclave's track, if ``ENCLAVEKIT_NOTIFY_TRACK`` names one.

    ``ENCLAVEKIT_NOTIFY_TRACK_STORE`` is the lease store (``nats://`` or ``redis://``, default the local NATS),
    ``ENCLAVEKIT_NOTIFY_TRACK_TTL`` the lease TTL in seconds (30), ``ENCLAVEKIT_NOTIFY_TRACK_RENEW`` the renewal
    interval (5). The KMS key that persists the track secret across full restarts is the measured
    configuration's (``kms.key_id``), never a host setting: a key the host chose could let it decrypt the wrapped
    secret itself.
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
    )


app, state = build_app("notify", track_from_environment())
