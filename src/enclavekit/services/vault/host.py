"""The vault's host bridge (untrusted): relays envelopes between NATS and the vault enclave, nothing more.

It subscribes to ``OwnerSpace.*.forVault.>`` with the bridge's NATS credentials (which may publish only to
``OwnerSpace.*.forApp.>``), calls the enclave over the attested session (pinned PCR0) and publishes the opaque
answer to ``OwnerSpace.{user}.forApp.{op}`` with the request's message id (``Vault-Message-Id``, from the
envelope's clear header). An envelope the enclave refuses outright is answered with a ``Vault-Error`` header;
no answer ever carries anything the host could read. ``MessageSpace.{target}.forVault.{sender}.{op}`` (one user's
app asking another user's vault: connections, data contracts) is relayed the same way to the target's enclave
(``vault.peer``, naming the sender) and answered on ``MessageSpace.{sender}.forApp.{target}.{op}``.
One log line per message: user, operation, outcome, time.

With a :class:`~enclavekit.services.vault.members.MemberRegistry` it also keeps the operator's view: each message's
user, operation and time, and — shortly after activity (at most once a second), and every ``refresh_interval``
seconds — the ledger's per-user state and invitation uses, joined over every enclave's ``vault.ledger.snapshot``
(ADR 0021).

**Failover** (ADR 0023). The bridge knows several vault enclaves (``--enclave`` repeated). A user's key request
goes to the first live one in the user's order (:func:`enclave_order`: the hashed one first, then the next ones),
so when an enclave dies its users move to another; key requests are safe to send anywhere. An envelope is sealed
to one enclave's key and opens nowhere else, so a message is never re-sent to another enclave: the app names the
key it sealed to (``Vault-Key``, a routing hint the enclave checks by decrypting) and the bridge relays to the
enclave holding it. If that enclave is gone (refused, restarted with a new key) the answer is ``Vault-Error:
enclave_unreachable`` — nothing was delivered, the app fetches a key again and re-seals; if it died with the
message in flight, ``enclave_lost`` — it may have run, the app decides (a retried unlock counts as one more guess
in the shared ledger, never as fewer).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import nats
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.errors import Error
from enclavekit.rpc import ClientOptions, ConnectionClosed, ConnectionFailed, DeadlineExceeded, RpcClient
from enclavekit.services.vault.envelope import MAX_ENVELOPE
from enclavekit.services.vault.members import MemberRegistry, join_snapshots
from enclavekit.services.vault.nats_auth import RECOVERY_NOTICE, peer_for_app
from enclavekit.services.vault.nats_auth import for_app as own_for_app
from enclavekit.services.vault.wire import (
    ENCLAVE_LOST,
    ENCLAVE_UNREACHABLE,
    KEY,
    LEDGER_SNAPSHOT,
    MESSAGE,
    PEER,
    LedgerSnapshotRequest,
    Message,
    PeerMessage,
    VaultKeyRequest,
)

__all__ = ["VaultBridge", "enclave_index", "enclave_order", "parse_peer_subject", "parse_subject"]

logger = logging.getLogger(__name__)

CONCURRENCY: Final = 64
MIN_REFRESH: Final = 1.0
"""Seconds between two refreshes of the member registry (each reads every enclave's ledger snapshot)."""
DOWN_FOR: Final = 2.0
"""Seconds an enclave that refused a connection is passed over before it is tried again."""
KEY_TIMEOUT: Final = 5.0
MESSAGE_TIMEOUT: Final = 60.0
NOTIFIED_OPS: Final = frozenset({"recover.start", "recover.cancel", "recover.complete"})
"""Operations the bridge announces on ``forApp.recovery`` (ADR 0022: a hint; the vault's status is the truth)."""


def enclave_index(user: str, enclaves: int) -> int:
    """Which of ``enclaves`` vault enclaves serves ``user`` while all are alive."""
    return hashlib.sha256(user.encode()).digest()[0] % enclaves


def enclave_order(user: str, enclaves: int) -> list[int]:
    """The enclaves ``user`` is served by, in order of preference: its own, then the following ones."""
    first = enclave_index(user, enclaves)
    return [(first + step) % enclaves for step in range(enclaves)]


def parse_subject(subject: str) -> tuple[str, str] | None:
    """``OwnerSpace.{user}.forVault.{op}`` → (user, op), or None."""
    parts = subject.split(".", 3)
    if len(parts) != 4 or parts[0] != "OwnerSpace" or parts[2] != "forVault" or not parts[1] or not parts[3]:
        return None
    return parts[1], parts[3]


class _Unreachable(Exception):
    """The enclave could not be reached: nothing was sent to it."""


@dataclass
class _Enclave:
    """One vault enclave as the bridge sees it: its attested connection, its envelope key, whether it is down."""

    address: str
    client: AttestedClient
    public_key: bytes | None = None
    connection: RpcClient | None = None
    down_until: float = 0.0

    def holds(self, key: bytes) -> bool:
        """Whether this enclave's envelope key (as last learned) is ``key``."""
        return self.public_key == key

    async def connect(self) -> RpcClient:
        """The live connection; a new one (the enclave may have restarted) first tells its envelope key."""
        try:
            rpc = await self.client.connect()
            if rpc is not self.connection:
                answer = await rpc.call(KEY, VaultKeyRequest(), timeout=KEY_TIMEOUT)
                self.public_key, self.connection = bytes.fromhex(answer.public_key), rpc
        except (Error, OSError, ValueError) as exc:
            self.down_until = time.monotonic() + DOWN_FOR
            self.public_key = None
            raise _Unreachable(f"{self.address}: {getattr(exc, 'code', type(exc).__name__)}") from exc
        self.down_until = 0.0
        return rpc


def parse_peer_subject(subject: str) -> tuple[str, str, str] | None:
    """``MessageSpace.{target}.forVault.{sender}.{op}`` → (target, sender, op), or None."""
    parts = subject.split(".", 4)
    if len(parts) != 5 or parts[0] != "MessageSpace" or parts[2] != "forVault" or not all(parts[1:]):
        return None
    return parts[1], parts[3], parts[4]


@dataclass
class VaultBridge:
    nats_url: str
    enclaves: Sequence[str]
    pcr0: Sequence[bytes]
    roots: Sequence[bytes]
    _nc: Nats | None = None
    message_timeout: float = MESSAGE_TIMEOUT
    """How long an enclave may take to answer a message; then it is ``enclave_lost`` (it may still run it)."""
    _members: list[_Enclave] = field(default_factory=list)
    _slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONCURRENCY))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    handled: int = 0
    registry: MemberRegistry | None = None
    refresh_interval: float = 30.0
    _activity: asyncio.Event = field(default_factory=asyncio.Event)
    _refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect to the enclaves (those that answer: a dead one is failed over) and subscribe."""
        policy = NitroPolicy(measurements=[{0: p} for p in self.pcr0], roots=tuple(self.roots))
        options = ClientOptions(connect_timeout=5, default_timeout=self.message_timeout, max_in_flight=256)
        self._members = [
            _Enclave(address, AttestedClient.nitro(address, policy, options=options, connect_attempts=1))
            for address in self.enclaves
        ]
        results = await asyncio.gather(*(member.connect() for member in self._members), return_exceptions=True)
        if all(isinstance(result, BaseException) for result in results):
            raise ConnectionFailed(f"no vault enclave answered: {results[0]}")
        self._nc = await nats.connect(self.nats_url, max_reconnect_attempts=-1)
        await self._nc.subscribe("OwnerSpace.*.forVault.>", cb=self._on_message)
        await self._nc.subscribe("MessageSpace.*.forVault.>", cb=self._on_message)
        await self._nc.flush()
        if self.registry is not None:
            self._refresher = asyncio.create_task(self._refresh_loop())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._nc is not None:
            await self._nc.drain()
        for member in self._members:
            await member.client.close()

    @property
    def _clients(self) -> list[AttestedClient]:
        """Every enclave's attested client, in ``--enclave`` order (those down included)."""
        return [member.client for member in self._members]

    async def refresh_members(self) -> int:
        """Read every enclave's ledger snapshot, join them, record the result; the number of entries seen."""
        assert self.registry is not None
        snapshots = []
        for client in self._clients:
            try:
                answer = await client.call(LEDGER_SNAPSHOT, LedgerSnapshotRequest())
            except (Error, OSError) as exc:  # down or restarting: the others still answer
                logger.info("no ledger snapshot from an enclave: %s", exc)
                continue
            if answer.ready:
                snapshots.append(answer.entries)
        if not snapshots:
            return 0
        joined = join_snapshots(snapshots)
        await asyncio.to_thread(self.registry.record_ledger, joined, time.time())
        return len(joined)

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._activity.wait(), self.refresh_interval)
                await asyncio.sleep(0.2)  # let the operation that woke us finish its ledger writes
            except TimeoutError:
                pass
            self._activity.clear()
            try:
                await self.refresh_members()
            except Exception:  # the operator's view must never stop the relay
                logger.warning("refreshing the member registry failed", exc_info=True)
            await asyncio.sleep(MIN_REFRESH)  # under steady traffic: one snapshot round a second at most

    def client_for(self, user: str) -> AttestedClient:
        """The client of the enclave ``user`` goes to now: its own, or the next live one (:meth:`candidates`)."""
        return self.candidates(user)[0].client

    def candidates(self, user: str) -> list[_Enclave]:
        """The enclaves to try for ``user``'s key, in its order; those recently down go last."""
        ordered = [self._members[i] for i in enclave_order(user, len(self._members))]
        now = time.monotonic()
        return [m for m in ordered if m.down_until <= now] + [m for m in ordered if m.down_until > now]

    async def _holder(self, key: bytes) -> _Enclave | None:
        """The enclave whose envelope key is ``key`` (asking those whose key is not known now), or None."""
        for member in self._members:
            if member.holds(key):
                return member
        for member in self._members:
            if member.public_key is None and member.down_until <= time.monotonic():
                with contextlib.suppress(_Unreachable):
                    await member.connect()
                    if member.holds(key):
                        return member
        return None

    async def _on_message(self, msg: Msg) -> None:
        task = asyncio.ensure_future(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _reply_subject(user: str, op: str, *, sender: str | None) -> str:
        """The answer's subject: the owner's app, or (a peer's request) the sender's app."""
        return own_for_app(user, op) if sender is None else peer_for_app(sender, user, op)

    async def _key(self, user: str, data: bytes, sender: str | None = None) -> str:
        """Relay a key request to the first enclave of ``user``'s order that answers."""
        assert self._nc is not None
        for_app = functools.partial(self._reply_subject, sender=sender)
        nonce = json.loads(data).get("nonce")
        request = VaultKeyRequest(nonce=nonce)
        for member in self.candidates(user):
            try:
                rpc = await member.connect()
                answer = await rpc.call(KEY, request, timeout=KEY_TIMEOUT)
            except _Unreachable:
                continue
            except (ConnectionClosed, DeadlineExceeded):
                member.down_until = time.monotonic() + DOWN_FOR
                continue
            body = json.dumps({"nonce": nonce, "document": answer.document, "public_key": answer.public_key})
            await self._nc.publish(for_app(user, "key"), body.encode())
            return f"relayed to {member.address}"
        body = json.dumps({"nonce": nonce, "error": ENCLAVE_UNREACHABLE})
        await self._nc.publish(for_app(user, "key"), body.encode())
        return ENCLAVE_UNREACHABLE

    async def _message(self, user: str, op: str, msg: Msg, sender: str | None = None) -> str:
        """Relay an envelope to the enclave that holds its key (``vault.peer`` for another user's request, naming
        the ``sender``); answer the app."""
        assert self._nc is not None
        for_app = functools.partial(self._reply_subject, sender=sender)
        message_id = msg.data[65:81].hex() if len(msg.data) >= 81 else ""
        headers = {"Vault-Message-Id": message_id}

        async def refuse(outcome: str) -> str:
            assert self._nc is not None
            await self._nc.publish(for_app(user, op), b"", headers={**headers, "Vault-Error": outcome})
            return outcome

        if len(msg.data) > MAX_ENVELOPE:
            return await refuse("envelope_invalid")
        try:
            named = bytes.fromhex((msg.headers or {}).get("Vault-Key", ""))
        except ValueError:
            named = b""
        try:
            if named:
                member = await self._holder(named)
                if member is None:
                    return await refuse(ENCLAVE_UNREACHABLE)  # its enclave is gone: the app must take a new key
                rpc = await member.connect()
                if not member.holds(named):
                    return await refuse(ENCLAVE_UNREACHABLE)  # it restarted with a new key meanwhile
            else:  # an app that names no key: its user's first live enclave (the envelope may open there)
                member = self.candidates(user)[0]
                rpc = await member.connect()
        except _Unreachable:
            return await refuse(ENCLAVE_UNREACHABLE)
        envelope = base64.b64encode(msg.data).decode()
        try:
            if sender is None:
                reply = await rpc.call(MESSAGE, Message(user=user, op=op, envelope=envelope))
            else:
                reply = await rpc.call(PEER, PeerMessage(user=user, sender=sender, op=op, envelope=envelope))
        except (ConnectionClosed, DeadlineExceeded):
            return await refuse(ENCLAVE_LOST)
        except Error as exc:
            return await refuse(str(exc.to_json().get("code", exc.code)))
        await self._nc.publish(for_app(user, op), base64.b64decode(reply.envelope), headers=headers)
        if op in NOTIFIED_OPS and sender is None:  # every device of the user hears of it at once (and asks the vault)
            notice = {"user": user, "op": op, "at": int(time.time())}
            await self._nc.publish(own_for_app(user, RECOVERY_NOTICE), json.dumps(notice).encode())
        return f"relayed to {member.address}"

    async def _handle(self, msg: Msg) -> None:
        assert self._nc is not None and self._members
        started = time.perf_counter()
        parsed, peer = parse_subject(msg.subject), parse_peer_subject(msg.subject)
        if parsed is not None:
            (user, op), sender = parsed, None
        elif peer is not None:
            user, sender, op = peer
        else:
            return
        outcome = "relayed"
        async with self._slots:
            try:
                if op == "key":
                    outcome = await self._key(user, msg.data, sender)
                else:
                    outcome = await self._message(user, op, msg, sender)
            except (ValueError, AttributeError, Error) as exc:  # garbage on the key subject, a bad user token
                outcome = getattr(exc, "code", "bad_request")
            finally:
                self.handled += 1
                if self.registry is not None and op != "key":
                    try:
                        await asyncio.to_thread(self.registry.record_message, user, op, time.time())
                    except Exception:  # a full disk must not stop the relay
                        logger.warning("recording a message in the member registry failed", exc_info=True)
                    self._activity.set()
                logger.info(
                    "vault message user=%s%s op=%s outcome=%s ms=%.1f",
                    user,
                    "" if sender is None else f" from={sender}",
                    op,
                    outcome,
                    (time.perf_counter() - started) * 1000,
                )
