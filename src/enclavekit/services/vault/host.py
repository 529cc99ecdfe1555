"""The vault's host bridge (untrusted): relays envelopes between NATS and the vault enclave, nothing more.

It subscribes to ``OwnerSpace.*.forVault.>`` with the bridge's NATS credentials (which may publish only to
``OwnerSpace.*.forApp.>``), calls the enclave over the attested session (pinned PCR0) and publishes the opaque
answer to ``OwnerSpace.{user}.forApp.{op}`` with the request's message id (``Vault-Message-Id``, from the
envelope's clear header). An envelope the enclave refuses outright is answered with a ``Vault-Error`` header;
no answer ever carries anything the host could read. ``MessageSpace.{target}.forVault.{sender}.{op}`` (one user's
app asking another user's vault: connections, data contracts) is relayed the same way to the target's enclave
(``vault.peer``, naming the sender) and answered on ``MessageSpace.{sender}.forApp.{target}.{op}``.
One log line per message: user, operation, outcome, time.
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
from enclavekit.services.vault.nats_auth import for_app as own_for_app
from enclavekit.services.vault.nats_auth import peer_for_app
from enclavekit.services.vault.wire import KEY, MESSAGE, PEER, Message, PeerMessage, VaultKeyRequest

__all__ = ["VaultBridge", "enclave_index", "parse_peer_subject", "parse_subject"]

logger = logging.getLogger(__name__)

CONCURRENCY: Final = 64


def enclave_index(user: str, enclaves: int) -> int:
    """Which of ``enclaves`` vault enclaves serves ``user``."""
    return hashlib.sha256(user.encode()).digest()[0] % enclaves


def parse_subject(subject: str) -> tuple[str, str] | None:
    """``OwnerSpace.{user}.forVault.{op}`` → (user, op), or None."""
    parts = subject.split(".", 3)
    if len(parts) != 4 or parts[0] != "OwnerSpace" or parts[2] != "forVault" or not parts[1] or not parts[3]:
        return None
    return parts[1], parts[3]


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
    _clients: list[AttestedClient] = field(default_factory=list)
    _slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONCURRENCY))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    handled: int = 0

    async def start(self) -> None:
        policy = NitroPolicy(measurements=[{0: p} for p in self.pcr0], roots=tuple(self.roots))
        options = ClientOptions(connect_timeout=5, default_timeout=60, max_in_flight=256)
        self._clients = [AttestedClient.nitro(address, policy, options=options) for address in self.enclaves]
        for client in self._clients:
            await client.connect()
        self._nc = await nats.connect(self.nats_url, max_reconnect_attempts=-1)
        await self._nc.subscribe("OwnerSpace.*.forVault.>", cb=self._on_message)
        await self._nc.subscribe("MessageSpace.*.forVault.>", cb=self._on_message)
        await self._nc.flush()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._nc is not None:
            await self._nc.drain()
        for client in self._clients:
            await client.close()

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
        parsed, peer = parse_subject(msg.subject), parse_peer_subject(msg.subject)
        if parsed is not None:
            (user, op), sender = parsed, None
        elif peer is not None:
            user, sender, op = peer
        else:
            return

        def for_app(user: str, op: str) -> str:  # the answer's subject: the owner's app, or the sender's
            return own_for_app(user, op) if sender is None else peer_for_app(sender, user, op)

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
                envelope = base64.b64encode(msg.data).decode()
                try:
                    if sender is None:
                        reply = await enclave.call(MESSAGE, Message(user=user, op=op, envelope=envelope))
                    else:
                        request = PeerMessage(user=user, sender=sender, op=op, envelope=envelope)
                        reply = await enclave.call(PEER, request)
                except Error as exc:
                    outcome = str(exc.to_json().get("code", exc.code))
                    await self._nc.publish(for_app(user, op), b"", headers={**headers, "Vault-Error": outcome})
                    return
                await self._nc.publish(for_app(user, op), base64.b64decode(reply.envelope), headers=headers)
            except (ValueError, AttributeError, Error) as exc:  # garbage on the key subject, a bad user token
                outcome = getattr(exc, "code", "bad_request")
            finally:
                self.handled += 1
                logger.info(
                    "vault message user=%s%s op=%s outcome=%s ms=%.1f",
                    user,
                    "" if sender is None else f" from={sender}",
                    op,
                    outcome,
                    (time.perf_counter() - started) * 1000,
                )
