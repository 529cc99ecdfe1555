"""The vault's host bridge (untrusted): relays envelopes between NATS and the vault enclave, nothing more.

It subscribes to ``OwnerSpace.*.forVault.>`` with the bridge's NATS credentials (which may publish only to
``OwnerSpace.*.forApp.>``), calls the enclave over the attested session (pinned PCR0) and publishes the opaque
answer to ``OwnerSpace.{user}.forApp.{op}`` with the request's message id (``Vault-Message-Id``, from the
envelope's clear header). An envelope the enclave refuses outright is answered with a ``Vault-Error`` header;
no answer ever carries anything the host could read. One log line per message: user, operation, outcome, time.

With a :class:`~enclavekit.services.vault.members.MemberRegistry` it also keeps the operator's view: each message's
user, operation and time, and — shortly after activity (at most once a second), and every ``refresh_interval``
seconds — the ledger's per-user state and invitation uses, joined over every enclave's ``vault.ledger.snapshot``
(ADR 0021).
"""

from __future__ import annotations

import asyncio
import base64
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
from enclavekit.rpc import ClientOptions
from enclavekit.services.vault.envelope import MAX_ENVELOPE
from enclavekit.services.vault.members import MemberRegistry, join_snapshots
from enclavekit.services.vault.nats_auth import for_app
from enclavekit.services.vault.wire import (
    KEY,
    LEDGER_SNAPSHOT,
    MESSAGE,
    LedgerSnapshotRequest,
    Message,
    VaultKeyRequest,
)

__all__ = ["VaultBridge", "enclave_index", "parse_subject"]

logger = logging.getLogger(__name__)

CONCURRENCY: Final = 64
MIN_REFRESH: Final = 1.0
"""Seconds between two refreshes of the member registry (each reads every enclave's ledger snapshot)."""


def enclave_index(user: str, enclaves: int) -> int:
    """Which of ``enclaves`` vault enclaves serves ``user``."""
    return hashlib.sha256(user.encode()).digest()[0] % enclaves


def parse_subject(subject: str) -> tuple[str, str] | None:
    """``OwnerSpace.{user}.forVault.{op}`` → (user, op), or None."""
    parts = subject.split(".", 3)
    if len(parts) != 4 or parts[0] != "OwnerSpace" or parts[2] != "forVault" or not parts[1] or not parts[3]:
        return None
    return parts[1], parts[3]


@dataclass
class VaultBridge:
    nats_url: str
    enclaves: Sequence[str]
    pcr0: Sequence[bytes]
    roots: Sequence[bytes]
    _nc: Nats | None = None
    _clients: list[AttestedClient] = field(default_factory=list)
    _slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONCURRENCY))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    handled: int = 0
    registry: MemberRegistry | None = None
    refresh_interval: float = 30.0
    _activity: asyncio.Event = field(default_factory=asyncio.Event)
    _refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        policy = NitroPolicy(measurements=[{0: p} for p in self.pcr0], roots=tuple(self.roots))
        options = ClientOptions(connect_timeout=5, default_timeout=60, max_in_flight=256)
        self._clients = [AttestedClient.nitro(address, policy, options=options) for address in self.enclaves]
        for client in self._clients:
            await client.connect()
        self._nc = await nats.connect(self.nats_url, max_reconnect_attempts=-1)
        await self._nc.subscribe("OwnerSpace.*.forVault.>", cb=self._on_message)
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
        for client in self._clients:
            await client.close()

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
        """Each user is served by one enclave (its envelope key is that enclave's); the ledger spans them all."""
        return self._clients[enclave_index(user, len(self._clients))]

    async def _on_message(self, msg: Msg) -> None:
        task = asyncio.ensure_future(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        assert self._nc is not None and self._clients
        started = time.perf_counter()
        parsed = parse_subject(msg.subject)
        if parsed is None:
            return
        user, op = parsed
        enclave = self.client_for(user)
        outcome = "relayed"
        async with self._slots:
            try:
                if op == "key":
                    nonce = json.loads(msg.data).get("nonce")
                    answer = await enclave.call(KEY, VaultKeyRequest(nonce=nonce))
                    body = json.dumps({"nonce": nonce, "document": answer.document, "public_key": answer.public_key})
                    await self._nc.publish(for_app(user, "key"), body.encode())
                    return
                message_id = msg.data[65:81].hex() if len(msg.data) >= 81 else ""
                headers = {"Vault-Message-Id": message_id}
                if len(msg.data) > MAX_ENVELOPE:
                    outcome = "envelope_invalid"
                    await self._nc.publish(for_app(user, op), b"", headers={**headers, "Vault-Error": outcome})
                    return
                try:
                    reply = await enclave.call(
                        MESSAGE, Message(user=user, op=op, envelope=base64.b64encode(msg.data).decode())
                    )
                except Error as exc:
                    outcome = str(exc.to_json().get("code", exc.code))
                    await self._nc.publish(for_app(user, op), b"", headers={**headers, "Vault-Error": outcome})
                    return
                await self._nc.publish(for_app(user, op), base64.b64decode(reply.envelope), headers=headers)
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
                    "vault message user=%s op=%s outcome=%s ms=%.1f",
                    user,
                    op,
                    outcome,
                    (time.perf_counter() - started) * 1000,
                )
