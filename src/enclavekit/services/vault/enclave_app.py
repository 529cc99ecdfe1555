"""The vault enclave: the only code that sees PINs, material, keys and secrets.

Routes (called by the host bridge, :mod:`~enclavekit.services.vault.host`): ``vault.key`` — an attestation
document binding the vault's X25519 envelope key (it leaks nothing: a public key); ``vault.message`` — an opaque
envelope in, an opaque envelope out (:mod:`~enclavekit.services.vault.envelope`): the host learns neither the
operation's data nor its outcome.

Inside an envelope: the operations of :mod:`~enclavekit.services.vault.operations`, one module per feature
(``pin``: enroll, pin.change; ``secret``: secret.put/get/list, audit.get). A successful PIN check returns a
``session`` (5 minutes, memory only). Answers are ``{"ok": {...}}`` or
``{"error": {"code", "message", "attempts_left"?}}``.

Boot: ``python -m enclavekit.enclave enclavekit.services.vault.enclave_app:app --config FILE`` — the measured
configuration (:mod:`~enclavekit.services.vault.enclave_config`: KMS key id, region, endpoint and the CA its
certificate must chain to, ledger replicas and quorum, the attestation roots peers must chain to, the default guess
limit). Launch settings (``--set``) may only choose routes for ciphertext: ``kms_route`` (a TCP path to the measured
KMS endpoint; TLS ends in the enclave) and the emulator's credentials,
``ledger_peers`` (peer addresses; a peer counts only if it attests with this PCR0 under the measured roots),
``objects_route`` (the host's object service: the enclave has no disk; every object it stores is ciphertext,
:mod:`~enclavekit.services.vault.remote_objects`). Any other setting is refused at boot (``forbidden_launch_setting``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from nacl.bindings import crypto_scalarmult_base

from enclavekit.enclave.app import EnclaveApp
from enclavekit.enclave.measured_config import ForbiddenLaunchSetting, InvalidEnclaveConfig, check_launch_settings
from enclavekit.enclave.runtime import EnclaveContext
from enclavekit.enclave.tracks import enclave_kms_client
from enclavekit.errors import ConfigurationError, Error
from enclavekit.kms.policy import ATTESTATION_PREFIX, KeyPolicy, RequestContext
from enclavekit.rpc import CallContext, parse_address
from enclavekit.services.vault.backup import Backup
from enclavekit.services.vault.connection import VaultClosed
from enclavekit.services.vault.core import Unlocked, VaultCore
from enclavekit.services.vault.enclave_config import ALLOWED_LAUNCH_SETTINGS, VaultEnclaveConfig
from enclavekit.services.vault.envelope import (
    EnvelopeInvalid,
    OpenedRequest,
    ReplayGuard,
    open_request,
    seal_response,
)
from enclavekit.services.vault.errors import PinInvalid, VaultLocked, VaultRejected
from enclavekit.services.vault.guesses import GuessLedger, GuessReplica, MemoryReplica
from enclavekit.services.vault.ledger_peers import MergeRefused, PeerReplica, catch_up, verify_join, verify_merge
from enclavekit.services.vault.operations import BadPayload, Handler, Request, UnknownOp
from enclavekit.services.vault.operations import calls as call_operations
from enclavekit.services.vault.operations import connections as connection_operations
from enclavekit.services.vault.operations import contracts as contract_operations
from enclavekit.services.vault.operations import messages as message_operations
from enclavekit.services.vault.operations import pin as pin_operations
from enclavekit.services.vault.operations import profile as profile_operations
from enclavekit.services.vault.operations import recovery as recovery_operations
from enclavekit.services.vault.operations import secret as secret_operations
from enclavekit.services.vault.operations import voting as voting_operations
from enclavekit.services.vault.recovery import RecoveryDesk
from enclavekit.services.vault.remote_objects import RemoteObjectStore
from enclavekit.services.vault.sealing import KmsSealer, encryption_context
from enclavekit.services.vault.state import VaultStore
from enclavekit.services.vault.wire import (
    KEY,
    LEDGER_JOIN,
    LEDGER_MERGE,
    LEDGER_SNAPSHOT,
    MESSAGE,
    PEER,
    LedgerEntry,
    LedgerJoin,
    LedgerJoined,
    LedgerMerge,
    LedgerSnapshot,
    LedgerSnapshotRequest,
    Message,
    MessageReply,
    PeerMessage,
    VaultKey,
    VaultKeyRequest,
)
from enclavekit.services.vault.workers import WorkerPool

__all__ = ["Opened", "VaultEnclave", "app", "build_app", "check_key_policy"]

logger = logging.getLogger(__name__)

MAX_PAYLOAD: Final = 96 * 1024
MAX_OPEN: Final = 1024


class SessionInvalid(VaultRejected):
    code = "session_invalid"


@dataclass(frozen=True, slots=True)
class Opened:
    """A vault opened for one operation: by the payload's PIN (``with_pin``) or by its session."""

    unlocked: Unlocked
    store: VaultStore
    with_pin: bool
    session: str


def _operations() -> dict[str, Handler]:
    return {
        **pin_operations.OPERATIONS,
        **secret_operations.OPERATIONS,
        **recovery_operations.OPERATIONS,
        **voting_operations.OPERATIONS,
        **connection_operations.OPERATIONS,
        **profile_operations.OPERATIONS,
        **message_operations.OPERATIONS,
        **call_operations.OPERATIONS,
        **contract_operations.OPERATIONS,
    }


def _peer_operations() -> dict[str, Handler]:
    """What another user's app (through a connection or a data contract) may ask this vault."""
    return {
        **connection_operations.PEER_OPERATIONS,
        **profile_operations.PEER_OPERATIONS,
        **message_operations.PEER_OPERATIONS,
        **call_operations.PEER_OPERATIONS,
        **contract_operations.PEER_OPERATIONS,
    }


def check_key_policy(policy_text: str, pcr0: bytes, user: str = "policy-check") -> None:
    """Refuse a KMS key whose policy could release vault material to anything but this image (PCR0), or could be
    changed: every statement allowing Decrypt or GenerateDataKey must require exactly this PCR0 (image SHA-384 or
    PCR0, equality), and none may allow PutKeyPolicy."""
    policy = KeyPolicy.from_json(policy_text)
    own = pcr0.hex().casefold()
    for statement in policy.statements:
        if statement.effect != "Allow":
            continue
        if statement.applies_to("kms:PutKeyPolicy"):
            raise ConfigurationError(f"the vault's KMS key allows kms:PutKeyPolicy ({statement.label}): refused")
        if not (statement.applies_to("kms:Decrypt") or statement.applies_to("kms:GenerateDataKey")):
            continue
        pinned = [
            c
            for c in statement.conditions
            if c.key in (f"{ATTESTATION_PREFIX}imagesha384", f"{ATTESTATION_PREFIX}pcr0")
            and c.operator in ("StringEquals", "StringEqualsIgnoreCase")
            and not c.if_exists
            and c.values
            and all(v.casefold() == own for v in c.values)
        ]
        if not pinned:
            raise ConfigurationError(
                f"the vault's KMS key releases material beyond this enclave image ({statement.label}): refused"
            )
    context = encryption_context(user, 1)
    allowed = RequestContext.build(pcrs={0: pcr0}, encryption_context=context)
    if not policy.evaluate("kms:GenerateDataKey", allowed).allowed:
        raise ConfigurationError("the vault's KMS key does not release data keys to this enclave image")


@dataclass
class VaultEnclave:
    """The vault enclave's state: its envelope key, its core, the replay guard, PIN-checked sessions."""

    core_factory: Callable[[EnclaveContext, GuessLedger, VaultEnclaveConfig], VaultCore] | None = None
    clock: Callable[[], float] = time.time
    core: VaultCore | None = None
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    workers: WorkerPool = field(default_factory=WorkerPool)
    replica: GuessReplica = field(default_factory=lambda: GuessReplica(ready=True))
    replica_id: str = field(default_factory=lambda: secrets.token_hex(8))
    peers: list[PeerReplica] = field(default_factory=list)
    roots: tuple[bytes, ...] = ()
    config: VaultEnclaveConfig | None = None
    _catch_up: asyncio.Task[None] | None = None
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _context: EnclaveContext | None = None
    operations: dict[str, Handler] = field(default_factory=_operations)
    recovery: RecoveryDesk | None = None
    """Pending recoveries' tokens (memory only); made on first use (``operations.recovery.desk``)."""
    endorser: voting_operations.Endorser = field(default_factory=voting_operations.Endorser)
    """The key that endorses this enclave's ballots (``vote.cast``), bound to its attestation."""
    peer_operations: dict[str, Handler] = field(default_factory=_peer_operations)
    open_vaults: OrderedDict[str, Unlocked] = field(default_factory=OrderedDict)
    """Vaults their owners unlocked since this enclave started (LRU, ``MAX_OPEN``): the only ones it can serve to
    connected peers, whose requests carry no PIN (docs/vault.md, *Connections*)."""
    _state_locks: dict[str, tuple[asyncio.Lock, list[int]]] = field(default_factory=dict)
    signals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Call signalling waiting for each user's app (memory only, bounded; see operations/calls.py)."""

    @property
    def public_key(self) -> bytes:
        return crypto_scalarmult_base(self._secret)

    def attach(self, app: EnclaveApp) -> None:
        app.on_boot(self._boot)
        app.on_serving(self._serving)
        app.on_shutdown(self._shutdown)
        app.route(KEY)(self.key)
        app.route(MESSAGE)(self.message)
        app.route(PEER)(self.peer_message)
        app.route(LEDGER_MERGE)(self.ledger_merge)
        app.route(LEDGER_SNAPSHOT)(self.ledger_snapshot)
        app.route(LEDGER_JOIN)(self.ledger_join)

    async def _boot(self, context: EnclaveContext) -> None:
        self._context = context
        check_launch_settings(context.settings, ALLOWED_LAUNCH_SETTINGS, app="vault")
        if context.config is None:
            raise InvalidEnclaveConfig("the vault enclave boots with --config FILE (its measured configuration)")
        config = self.config = VaultEnclaveConfig.from_bytes(context.config)
        self.roots = config.roots
        peers = [a for a in context.settings.get("ledger_peers", "").split(",") if a]
        if len(peers) > config.replicas - 1:
            raise ForbiddenLaunchSetting(
                f"ledger_peers lists {len(peers)} addresses; the measured ledger has {config.replicas} replicas"
            )

        async def attest(user_data: bytes) -> bytes:
            return await context.attest(user_data=user_data)

        self.peers = [PeerReplica(address, context.pcr0, self.roots, attest) for address in peers]
        if config.replicas > 1:
            self.replica = GuessReplica(ready=False)  # until it is a member of a view (ADR 0027)
        self.core = (self.core_factory or _default_core)(context, self.ledger(), config)
        logger.info(
            "vault enclave ready: envelope key %s, ledger of %d replicas (quorum %d), %d peer addresses",
            self.public_key.hex()[:16],
            config.replicas,
            config.quorum,
            len(peers),
        )

    def ledger(self) -> GuessLedger:
        own = MemoryReplica(self.replica, identity=self.replica_id)
        if self.config is None or self.config.replicas == 1:
            return GuessLedger([own, *self.peers], quorum=None if self.config is None else self.config.quorum)
        # many replicas: only this replica's view counts, and writes go out in it (ADR 0027)
        return GuessLedger([own, *self.peers], quorum=self.config.quorum, view=lambda: self.replica.view)

    async def _serving(self, context: EnclaveContext) -> None:
        """Catch up with the peers before saying ready (the RPC server already answers them meanwhile)."""
        if not self.replica.ready:
            assert self.config is not None
            self._catch_up = asyncio.create_task(
                catch_up(
                    self.replica,
                    self.peers,
                    own_identity=self.replica_id,
                    replicas=self.config.replicas,
                    quorum=self.config.quorum,
                )
            )
            await asyncio.shield(self._catch_up)

    async def _shutdown(self, context: EnclaveContext) -> None:
        if self._catch_up is not None:
            self._catch_up.cancel()
        for peer in self.peers:
            await peer.close()

    async def ledger_merge(self, request: LedgerMerge, call: CallContext) -> LedgerEntry:
        assert self._context is not None
        entry = verify_merge(
            request, pcr0=self._context.pcr0, roots=self.roots, replica=self.replica_id, view=self.replica.view
        )
        merged = self.replica.merge(request.user, entry)
        view = None if self.replica.view is None else self.replica.view.to_json()
        return LedgerEntry(entry=merged.to_json(), replica=self.replica_id, view=view)

    async def ledger_snapshot(self, request: LedgerSnapshotRequest, call: CallContext) -> LedgerSnapshot:
        if not self.replica.ready:  # booting: say so (attested, with its boot identity) — peers decide genesis
            return LedgerSnapshot(entries={}, replica=self.replica_id, ready=False)
        entries = {user: entry.to_json() for user, entry in self.replica.snapshot().items()}
        view = None if self.replica.view is None else self.replica.view.to_json()
        return LedgerSnapshot(entries=entries, replica=self.replica_id, ready=True, view=view)

    async def ledger_join(self, request: LedgerJoin, call: CallContext) -> LedgerJoined:
        """Accept a booting replica in place of a member of this replica's current view (once per view)."""
        assert self._context is not None
        view = verify_join(request, pcr0=self._context.pcr0, roots=self.roots)
        try:
            successor = self.replica.accept(view, request.joiner, request.replaced, own=self.replica_id)
        except ValueError as exc:
            raise MergeRefused(f"not a change of one member: {exc}") from exc
        entries = {user: entry.to_json() for user, entry in self.replica.snapshot().items()}
        logger.warning("ledger view %d: %s replaces %s", successor.number, request.joiner, request.replaced)
        return LedgerJoined(entries=entries, replica=self.replica_id, view=successor.to_json())

    async def key(self, request: VaultKeyRequest, call: CallContext) -> VaultKey:
        assert self._context is not None
        nonce = bytes.fromhex(request.nonce) if request.nonce else None
        document = await self._context.attest(nonce=nonce, public_key=self.public_key)
        return VaultKey(document=base64.b64encode(document).decode(), public_key=self.public_key.hex())

    async def message(self, request: Message, call: CallContext, *, sender: str | None = None) -> MessageReply:
        try:
            data = base64.b64decode(request.envelope, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EnvelopeInvalid("envelope is not base64") from exc
        opened = open_request(self._secret, data)
        if opened.user != request.user or opened.op != request.op:
            raise EnvelopeInvalid("the envelope names another user or operation than its subject")
        self.guard.check(opened.message_id, opened.timestamp, now=self.clock())
        answer = await self._answer(opened, sender)
        return MessageReply(envelope=base64.b64encode(seal_response(opened, answer)).decode())

    async def peer_message(self, request: PeerMessage, call: CallContext) -> MessageReply:
        """A request from ``request.sender``'s app to ``request.user``'s vault: the same envelope, another registry
        of operations, each of which checks the connection (or contract) and its capability."""
        return await self.message(
            Message(user=request.user, op=request.op, envelope=request.envelope), call, sender=request.sender
        )

    async def _answer(self, opened: OpenedRequest, sender: str | None = None) -> bytes:
        try:
            if len(opened.payload) > MAX_PAYLOAD:
                raise BadPayload("payload too large")
            try:
                payload = json.loads(opened.payload)
            except ValueError as exc:
                raise BadPayload("payload is not JSON") from exc
            if not isinstance(payload, dict):
                raise BadPayload("payload is not a JSON object")
            handler = (self.operations if sender is None else self.peer_operations).get(opened.op)
            if handler is None:
                raise UnknownOp(f"unknown operation {opened.op!r}")
            request = Request(opened.user, opened.op, payload, self.clock(), sender, opened.message_id.hex())
            worker = self.workers.get(opened.user)
            worker.busy += 1
            try:
                async with self.state_lock(opened.user):  # its owner's and its peers' operations, one at a time
                    result = await handler(self, request)
            finally:
                worker.busy -= 1
            body: dict[str, Any] = {"ok": result}
        except PinInvalid as exc:
            body = {"error": {"code": exc.code, "message": exc.message, "attempts_left": exc.attempts_left}}
        except Error as exc:
            body = {"error": exc.to_json()}
        # The outcome (a wrong PIN, a lock) is the user's business: it travels only inside the response envelope,
        # and enclave logs are host-visible in the simulator (and on a debug-mode Nitro console).
        logger.debug("vault op %s answered", opened.op)
        return json.dumps(body).encode()

    def require_core(self) -> VaultCore:
        if self.core is None:
            raise VaultRejected("the vault enclave has not booted")
        return self.core

    def open_session(self, unlocked: Unlocked) -> str:
        """A new session token for a PIN-checked vault, held by the user's worker (memory only, ``SESSION_TTL``); the
        vault is open to its connected peers from now on (``open_vaults``)."""
        self.open_vaults[unlocked.user] = unlocked
        self.open_vaults.move_to_end(unlocked.user)
        while len(self.open_vaults) > MAX_OPEN:
            self.open_vaults.popitem(last=False)
        return self.workers.get(unlocked.user).open_session(unlocked, self.clock())

    def end_sessions(self, user: str) -> None:
        """End the user's sessions and close the vault to its peers (a PIN change or a recovery made new keys: the
        owner's next unlock opens it again)."""
        self.open_vaults.pop(user, None)
        worker = self.workers.peek(user)
        if worker is not None:
            worker.end_sessions()

    async def unlock(self, request: Request) -> Opened:
        """The user's vault opened by the payload's PIN (counted as a guess; a new session) or by its session."""
        core = self.require_core()
        payload = request.payload
        if "pin" in payload:
            unlocked = await core.unlock(request.user, str(payload["pin"]))
            return Opened(unlocked, core.store(unlocked), True, self.open_session(unlocked))
        token = payload.get("session")
        held = self.workers.get(request.user).session(token, self.clock())
        if held is None or held.user != request.user:
            raise SessionInvalid("no such session (or it expired): send the PIN")
        if request.user in core.locked_here:
            self.workers.stop(request.user)
            raise VaultLocked(f"{request.user}'s vault is locked")
        assert isinstance(token, str)
        return Opened(held, core.store(held), False, token)

    @contextlib.asynccontextmanager
    async def state_lock(self, user: str) -> AsyncIterator[None]:
        """Serialises the operations on one user's vault (the owner's and the peers'): each reads the index, changes
        it and commits the next version, so two at once would write the same version and one change would be lost.
        (The bridge sends all of a user's messages, the peers' included, to one enclave.) A user's lock lives only
        while operations on it run or wait, so names that anyone can send to do not pile up."""
        entry = self._state_locks.setdefault(user, (asyncio.Lock(), [0]))
        entry[1][0] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1][0] -= 1
            if not entry[1][0]:
                del self._state_locks[user]

    async def open_for_peer(self, user: str) -> VaultStore:
        """``user``'s state for a peer's request: only while the owner's unlock is held here, and only of the
        generation the ledger names now (a PIN change or a lock closes it); the ledger's version is read afresh,
        so a host that restores older objects is refused as for the owner."""
        core = self.require_core()
        held = self.open_vaults.get(user)
        if held is None or user in core.locked_here:
            raise VaultClosed(f"{user}'s vault is not open: its owner has not unlocked it here")
        entry = await core.ledger.read(user)
        if entry.locked or entry.generation != held.entry.generation:
            self.open_vaults.pop(user, None)
            raise VaultClosed(f"{user}'s vault is not open: its owner has not unlocked it here")
        return VaultStore(core.objects, core.ledger, user, held.keys.state, entry)


def _default_core(context: EnclaveContext, ledger: GuessLedger, config: VaultEnclaveConfig) -> VaultCore:
    settings = context.settings
    key_id = config.kms_key_id
    kms = enclave_kms_client(context, config.kms_endpoint)
    check_key_policy(kms.get_key_policy(key_id), context.pcr0)
    route = settings.get("objects_route")
    if not route:
        raise ConfigurationError("the vault enclave needs objects_route (the host's object service; it has no disk)")
    parse_address(route)
    objects = RemoteObjectStore(route)
    backup = Backup(objects, KmsSealer(kms, key_id, purpose="backup"))
    return VaultCore(ledger, KmsSealer(kms, key_id), objects, backup=backup)


def build_app(name: str = "vault", state: VaultEnclave | None = None) -> tuple[EnclaveApp, VaultEnclave]:
    enclave_app = EnclaveApp(name)
    vault = state or VaultEnclave()
    vault.attach(enclave_app)
    return enclave_app, vault


app, state = build_app()
