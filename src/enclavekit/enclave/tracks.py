"""Enclave tracks: a named group of enclaves that share one secret, handed only to attested peers.

The first enclave of a track generates the secret (genesis) while holding the track's **lease**; every later
enclave joins by asking a live member. Joining is mutual: the joiner verifies the member's attestation (the
session handshake, against the track policy) before trusting what it receives, and the member verifies the
joiner's fresh attestation document — same chain of trust, same measurements as itself (or the track's
policy) — and seals the secret to the ephemeral X25519 key in that document, which only the joiner's enclave
holds. The host that stores leases and relays the bytes never sees the secret.

The lease lives in a store with expiry (NATS JetStream KV by default) and every live member renews it, so:

* no stuck tracks: when all members are gone the lease expires and the next enclave does genesis again (the
  reference's lock never expired and blocked genesis forever);
* no split brain: genesis needs an atomic create of the lease, which only one enclave can win while it is
  held; a member that cannot renew for a whole lease period drops the secret rather than serve a stale one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from pydantic import BaseModel, Field

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.attestation.roots import aws_nitro_root
from enclavekit.channel.adapters import NitroVerifier
from enclavekit.client import AttestedClient
from enclavekit.enclave.app import EnclaveApp
from enclavekit.errors import ConfigurationError, Error, InfrastructureError, Rejected
from enclavekit.rpc import CallContext, ClientOptions, Route

if TYPE_CHECKING:
    from enclavekit.enclave.runtime import EnclaveContext
    from enclavekit.kms.client import KmsClient
    from enclavekit.kms.measured import MeasuredKmsEndpoint

__all__ = [
    "JOIN",
    "JoinRefused",
    "JoinRequest",
    "JoinResponse",
    "LeaseStore",
    "Member",
    "NatsLeaseStore",
    "RedisLeaseStore",
    "Track",
    "TrackUnavailable",
    "enclave_kms_client",
    "kms_persisted_secret",
    "lease_store",
]

logger = logging.getLogger(__name__)

SECRET_SIZE = 32
MAX_DOCUMENT_B64 = 24 * 1024


class JoinRequest(BaseModel):
    model_config = {"extra": "forbid"}
    track: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    document: str = Field(max_length=MAX_DOCUMENT_B64)
    """The joiner's fresh attestation document (base64); its ``public_key`` is an ephemeral X25519 key."""


class JoinResponse(BaseModel):
    sealed: str
    """The track secret in a sealed box to the joiner's ephemeral key (base64)."""


JOIN = Route("enclave.track.join", JoinRequest, JoinResponse)


class JoinRefused(Rejected):
    """A member refused to hand the track secret to this joiner (or a joiner refused the member)."""

    code = "track_join_refused"


class TrackUnavailable(InfrastructureError):
    """No member could be reached and genesis is not allowed yet (the lease is still held)."""

    code = "track_unavailable"


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    address: str


class LeaseStore(Protocol):
    """Where a track's lease and member list live: entries expire ``ttl`` after their last write."""

    async def create_lease(self, track: str, holder: str) -> bool:
        """Atomically take the lease if nobody holds it; True if this call created it."""

    async def renew(self, track: str, member: Member) -> None:
        """Keep the lease and this member's entry alive for another ``ttl``."""

    async def members(self, track: str) -> list[Member]: ...

    async def leave(self, track: str, member: Member) -> None: ...

    async def load_wrapped(self, track: str) -> bytes | None:
        """The track secret wrapped by KMS, if the track persists (kept without expiry)."""

    async def save_wrapped(self, track: str, blob: bytes) -> None: ...


@dataclass
class NatsLeaseStore:
    """Leases in NATS JetStream KV: one bucket per track whose entries expire ``ttl`` seconds after a write."""

    url: str
    ttl: float = 30.0
    _nc: Any = None
    _buckets: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def bucket_name(track: str) -> str:
        """The KV bucket of ``track``'s lease and members (its stream is ``KV_<bucket>``)."""
        return f"enclavekit_track_{track}"

    async def _bucket(self, track: str) -> Any:
        import nats
        from nats.js.api import KeyValueConfig

        if self._nc is None or self._nc.is_closed:
            try:
                self._nc = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=3)
            except Exception as exc:
                raise InfrastructureError(f"cannot reach the lease store at {self.url}: {exc}") from exc
            self._buckets.clear()
        if track not in self._buckets:
            js = self._nc.jetstream()
            name = self.bucket_name(track)
            try:
                self._buckets[track] = await js.key_value(name)
            except Exception:
                self._buckets[track] = await js.create_key_value(KeyValueConfig(bucket=name, ttl=self.ttl, history=1))
        return self._buckets[track]

    async def create_lease(self, track: str, holder: str) -> bool:
        from nats.js.errors import KeyWrongLastSequenceError

        bucket = await self._bucket(track)
        try:
            await bucket.create("lease", json.dumps({"genesis": holder, "at": time.time()}).encode())
        except KeyWrongLastSequenceError:
            return False
        return True

    async def renew(self, track: str, member: Member) -> None:
        bucket = await self._bucket(track)
        await bucket.put("lease", json.dumps({"renewed_by": member.id, "at": time.time()}).encode())
        await bucket.put(f"member.{member.id}", json.dumps({"address": member.address}).encode())

    async def keys(self, track: str) -> list[str]:
        """The keys the bucket holds now (deleted ones included), from one server-side snapshot.

        Not ``KeyValue.keys()``: its watcher can signal "no more keys" before the replay is done while other
        members write (nats-io/nats.py#842), which returns a partial list or raises ``NoKeysError``.
        """
        await self._bucket(track)  # connects, creates the bucket
        name = self.bucket_name(track)
        prefix = f"$KV.{name}."
        info = await self._nc.jetstream().stream_info(f"KV_{name}", subjects_filter=prefix + ">")
        return sorted(subject.removeprefix(prefix) for subject in (info.state.subjects or {}))

    async def members(self, track: str) -> list[Member]:
        from nats.js.errors import KeyNotFoundError

        bucket = await self._bucket(track)
        found = []
        for key in await self.keys(track):
            if not key.startswith("member."):
                continue
            with contextlib.suppress(KeyNotFoundError, ValueError, KeyError):
                entry = await bucket.get(key)
                if entry.value:
                    found.append(Member(key.removeprefix("member."), json.loads(entry.value)["address"]))
        return found

    async def leave(self, track: str, member: Member) -> None:
        bucket = await self._bucket(track)
        with contextlib.suppress(Exception):
            await bucket.delete(f"member.{member.id}")

    async def _wrapped_bucket(self, track: str) -> Any:
        from nats.js.api import KeyValueConfig

        await self._bucket(track)  # connects
        js = self._nc.jetstream()
        name = f"{self.bucket_name(track)}_wrapped"
        try:
            return await js.key_value(name)
        except Exception:
            return await js.create_key_value(KeyValueConfig(bucket=name, history=1))

    async def load_wrapped(self, track: str) -> bytes | None:
        from nats.js.errors import KeyNotFoundError

        bucket = await self._wrapped_bucket(track)
        try:
            entry = await bucket.get("secret")
        except KeyNotFoundError:
            return None
        return bytes(entry.value) if entry.value else None

    async def save_wrapped(self, track: str, blob: bytes) -> None:
        bucket = await self._wrapped_bucket(track)
        await bucket.put("secret", blob)

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()


@dataclass
class RedisLeaseStore:
    """Leases in Redis: ``SET NX PX`` takes the lease, every write sets the expiry again."""

    url: str
    ttl: float = 30.0
    _client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio

            self._client = redis.asyncio.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        return self._client

    def _key(self, track: str, name: str) -> str:
        return f"enclavekit:track:{track}:{name}"

    async def create_lease(self, track: str, holder: str) -> bool:
        value = json.dumps({"genesis": holder, "at": time.time()})
        try:
            return bool(await self._redis().set(self._key(track, "lease"), value, nx=True, px=int(self.ttl * 1000)))
        except Exception as exc:
            raise InfrastructureError(f"cannot reach the lease store at {self.url}: {exc}") from exc

    async def renew(self, track: str, member: Member) -> None:
        ttl = int(self.ttl * 1000)
        pipe = self._redis().pipeline(transaction=True)
        pipe.set(self._key(track, "lease"), json.dumps({"renewed_by": member.id, "at": time.time()}), px=ttl)
        pipe.set(self._key(track, f"member:{member.id}"), json.dumps({"address": member.address}), px=ttl)
        await pipe.execute()

    async def members(self, track: str) -> list[Member]:
        client = self._redis()
        prefix = self._key(track, "member:")
        found = []
        async for key in client.scan_iter(match=prefix + "*", count=100):
            name = key.decode() if isinstance(key, bytes) else str(key)
            value = await client.get(name)
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if value:
                    found.append(Member(name.removeprefix(prefix), json.loads(value)["address"]))
        return found

    async def leave(self, track: str, member: Member) -> None:
        with contextlib.suppress(Exception):
            await self._redis().delete(self._key(track, f"member:{member.id}"))

    async def load_wrapped(self, track: str) -> bytes | None:
        value = await self._redis().get(self._key(track, "wrapped"))
        return None if value is None else bytes(value)

    async def save_wrapped(self, track: str, blob: bytes) -> None:
        await self._redis().set(self._key(track, "wrapped"), blob)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def lease_store(url: str, *, ttl: float = 30.0) -> NatsLeaseStore | RedisLeaseStore:
    """The lease store at ``url``: ``nats://`` (JetStream KV, the default) or ``redis://``."""
    if url.startswith(("nats://", "tls://")):
        return NatsLeaseStore(url, ttl=ttl)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisLeaseStore(url, ttl=ttl)
    raise ConfigurationError(f"lease store {url!r}: expected nats://... or redis://...")


def enclave_kms_client(context: EnclaveContext, endpoint: MeasuredKmsEndpoint) -> KmsClient:
    """The enclave's attested KMS client for the KMS ``endpoint`` its measured configuration names — the one
    constructor every enclave app uses.

    The host may supply only the TCP route (the ``kms_route`` setting, ``HOST:PORT``); TLS ends here and verifies
    the measured URL's host against the measured trust anchor. A ``kms_url`` setting (how the host chose the
    endpoint before it was measured) is refused rather than silently ignored.
    """
    from enclavekit.kms.client import KmsClient
    from enclavekit.kms.measured import credentials_for, parse_route

    if "kms_url" in context.settings:
        raise ConfigurationError(
            "kms_url is not a launch setting: the KMS endpoint is part of the measured configuration "
            "(the host may give only kms_route=HOST:PORT, a TCP path)"
        )
    route = parse_route(context.settings.get("kms_route"))
    transport = endpoint.endpoint(credentials_for(endpoint, context.settings), route=route)
    return KmsClient(transport, context.nsm.attestation)


async def kms_persisted_secret(
    client: KmsClient,
    key_id: str,
    *,
    encryption_context: dict[str, str],
    load: Callable[[], Awaitable[bytes | None]],
    save: Callable[[bytes], Awaitable[None]],
) -> tuple[bytes, bool]:
    """A 32-byte secret that outlives the process: ``(secret, restored)``.

    If ``load`` finds a wrapped copy, KMS decrypts it for this enclave's attestation (the Recipient) — which fails
    closed (``AccessDenied``) unless the key policy accepts this enclave's measurement; nothing is generated or
    overwritten then. Otherwise KMS generates a data key under ``key_id`` for this enclave and ``save`` keeps its
    wrapped copy (ciphertext: the host may store it). The plaintext never leaves the enclave.
    """
    wrapped = await load()
    if wrapped is not None:
        secret = await asyncio.to_thread(client.decrypt, wrapped, encryption_context=encryption_context)
        if len(secret) != SECRET_SIZE:
            raise JoinRefused("the persisted secret has the wrong size")
        return secret, True
    data_key = await asyncio.to_thread(client.generate_data_key, key_id, encryption_context=encryption_context)
    await save(data_key.ciphertext_blob)
    return data_key.plaintext, False


@dataclass
class Track:
    """One enclave's membership of the track ``name``. Attach it to an app before boot::

        track = Track("notify", NatsLeaseStore(nats_url, ttl=30))
        track.attach(app)                       # joins at boot, serves joins, renews, leaves at shutdown
        ... track.secret / track.derive(b"push-key")

    ``policy`` decides which peers belong (as joiner and as member); by default the same PCR0, PCR1 and PCR2
    as this enclave, under the AWS root (and the simulator's root when this enclave is simulated).
    ``join_timeout`` bounds how long boot waits for a member or for an expired lease before giving up.
    """

    name: str
    store: LeaseStore
    policy: NitroPolicy | None = None
    renew_interval: float = 5.0
    join_timeout: float = 60.0
    document_max_age: timedelta = timedelta(minutes=5)
    kms_key_id: str | None = None
    """Persist the secret: genesis asks KMS for a data key under this key (released only to attested enclaves
    that its key policy accepts) and keeps the wrapped copy in the store, so a full restart restores it."""
    kms: Callable[[EnclaveContext], KmsClient] | None = None
    """Makes the KMS client inside the enclave (required with ``kms_key_id``: the app builds it with
    :func:`enclave_kms_client` from its measured configuration; there is no host-chosen default)."""
    _secret: bytes | None = None
    _member: Member | None = None
    _context: EnclaveContext | None = None
    _renewer: asyncio.Task[None] | None = None
    genesis: bool = False
    """True if this enclave created (or, with KMS persistence, restored) the secret."""
    restored: bool = False
    """True if this enclave restored the persisted secret from KMS after a full restart."""

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            raise RuntimeError(f"track {self.name!r}: not a member (yet)")
        return self._secret

    def derive(self, label: bytes, length: int = 32) -> bytes:
        """A key for one purpose, derived from the track secret (HKDF-SHA256)."""
        return HKDF(hashes.SHA256(), length, salt=f"enclavekit track {self.name}".encode(), info=label).derive(
            self.secret
        )

    def fingerprint(self) -> str:
        """A public name for the current secret (SHA-256 of a derived value), for logs and tests."""
        return hashlib.sha256(self.derive(b"fingerprint")).hexdigest()[:16]

    def attach(self, app: EnclaveApp) -> None:
        app.router.add(JOIN, self._serve_join)
        app.on_boot(self._boot)
        app.on_serving(self._serving)
        app.on_shutdown(self._shutdown)

    # --- joining ---------------------------------------------------------------------------------------------

    def default_policy(self, context: EnclaveContext) -> NitroPolicy:
        """Same PCR0-2 as this enclave, under the AWS root (and this simulator's root when simulated)."""
        if self.policy is not None:
            return self.policy
        pcrs = {index: context.nsm.describe_pcr(index).data for index in (0, 1, 2)}
        roots: tuple[bytes, ...] = (aws_nitro_root(),)
        if context.tee == "nitro-simulated":
            from enclavekit.nsm import load_root

            roots = (*roots, load_root(context.state_dir))
        return NitroPolicy(measurements=[pcrs], roots=roots, max_age=self.document_max_age)

    async def _boot(self, context: EnclaveContext) -> None:
        self._context = context
        policy = self.default_policy(context)
        self.policy = policy
        member_id = os.urandom(8).hex()
        deadline = time.monotonic() + self.join_timeout
        last_error: Error | None = None
        while time.monotonic() < deadline:
            members = await self.store.members(self.name)
            for member in members:
                try:
                    self._secret = await self.join_from(context, member, policy)
                    logger.info("track %s: joined from member %s (%s)", self.name, member.id, self.fingerprint())
                    self._member = Member(member_id, "")
                    return
                except Error as exc:
                    last_error = exc
                    logger.warning("track %s: join from %s at %s failed: %s", self.name, member.id, member.address, exc)
            if await self.store.create_lease(self.name, member_id):
                self._secret = await self._genesis_secret(context)
                self.genesis = True
                self._member = Member(member_id, "")
                how = "restored from KMS" if self.restored else "new secret"
                logger.info("track %s: genesis, %s (%s)", self.name, how, self.fingerprint())
                return
            await asyncio.sleep(min(1.0, self.renew_interval))
        raise TrackUnavailable(
            f"track {self.name}: no member handed over the secret within {self.join_timeout:.0f} s and the lease "
            f"is still held" + (f" (last: {last_error})" if last_error else "")
        )

    async def _genesis_secret(self, context: EnclaveContext) -> bytes:
        if self.kms_key_id is None:
            return os.urandom(SECRET_SIZE)
        if self.kms is None:
            raise ConfigurationError(
                f"track {self.name}: a KMS key without a measured KMS endpoint (set Track.kms from the measured config)"
            )
        client = self.kms(context)
        secret, self.restored = await kms_persisted_secret(
            client,
            self.kms_key_id,
            encryption_context={"enclavekit:track": self.name},
            load=lambda: self.store.load_wrapped(self.name),
            save=lambda blob: self.store.save_wrapped(self.name, blob),
        )
        return secret

    async def join_from(self, context: EnclaveContext, member: Member, policy: NitroPolicy) -> bytes:
        """Ask ``member`` for the secret: attest a fresh ephemeral key, verify the member, open its answer."""
        ephemeral = PrivateKey.generate()
        document = await context.attest(public_key=bytes(ephemeral.public_key), nonce=os.urandom(32))
        request = JoinRequest(track=self.name, document=base64.b64encode(document).decode())
        client = AttestedClient(
            member.address,
            NitroVerifier(policy),
            connect_attempts=1,
            options=ClientOptions(connect_timeout=3, default_timeout=10),
        )
        try:
            answer = await client.call(JOIN, request)
        finally:
            await client.close()
        try:
            secret = SealedBox(ephemeral).decrypt(base64.b64decode(answer.sealed, validate=True))
        except (CryptoError, binascii.Error, ValueError) as exc:
            raise JoinRefused(f"the member's answer does not open with our ephemeral key ({exc})") from exc
        if len(secret) != SECRET_SIZE:
            raise JoinRefused("the member sent a secret of the wrong size")
        return secret

    async def _serve_join(self, request: JoinRequest, call: CallContext) -> JoinResponse:
        """A member's side of a join: verify the joiner's fresh document, seal the secret to its key."""
        if request.track != self.name or self._secret is None or self.policy is None:
            raise JoinRefused(f"this enclave is not a member of track {request.track!r}")
        from enclavekit.attestation import nitro

        try:
            document = base64.b64decode(request.document, validate=True)
        except binascii.Error as exc:
            raise JoinRefused("the joiner's document is not base64") from exc
        # Raises (measurement_mismatch, chain_untrusted, stale...) unless the joiner runs the same code.
        joiner = nitro.verify(document, self.policy, now=datetime.now(UTC))
        if joiner.public_key is None or len(joiner.public_key) != 32:
            raise JoinRefused("the joiner's document carries no X25519 public key")
        sealed = SealedBox(PublicKey(joiner.public_key)).encrypt(self._secret)
        logger.info("track %s: handed the secret to enclave %s", self.name, joiner.module_id)
        return JoinResponse(sealed=base64.b64encode(sealed).decode())

    # --- membership ------------------------------------------------------------------------------------------

    async def _serving(self, context: EnclaveContext) -> None:
        assert self._member is not None
        address = context.settings.get("advertise") or context.address
        self._member = Member(self._member.id, address)
        await self.store.renew(self.name, self._member)
        self._renewer = asyncio.create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        assert self._member is not None
        last_ok = time.monotonic()
        ttl = getattr(self.store, "ttl", self.renew_interval * 6)
        while True:
            await asyncio.sleep(self.renew_interval)
            try:
                await self.store.renew(self.name, self._member)
                last_ok = time.monotonic()
            except Exception as exc:
                logger.warning("track %s: lease renewal failed: %s", self.name, exc)
                if time.monotonic() - last_ok > ttl:
                    # Fence: the lease may have expired and another genesis may have happened.
                    logger.error("track %s: lease lost for a whole period; dropping the secret", self.name)
                    self._secret = None
                    return

    async def _shutdown(self, context: EnclaveContext) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._member is not None:
            with contextlib.suppress(Exception):
                await self.store.leave(self.name, self._member)
        close: Callable[[], Awaitable[None]] | None = getattr(self.store, "close", None)
        if close is not None:
            await close()
