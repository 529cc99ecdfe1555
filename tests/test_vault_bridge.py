"""The vault bridge's failover, with a real nats-server, the real bridge and client, and attested stand-in vault
enclaves (the enclave runtime with the simulated NSM; each opens envelopes with its own key and says who it is).

An envelope opens only in the enclave it was sealed to, so the bridge never re-sends one to another: a message
whose enclave is gone is answered ``enclave_unreachable`` and the client re-keys and re-seals; one whose enclave
dies or hangs with it in flight is ``enclave_lost`` — sent once, never again by the bridge."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nacl.bindings import crypto_scalarmult_base

from enclavekit.enclave.app import EnclaveApp
from enclavekit.enclave.runtime import EnclaveContext, RuntimeOptions, serve_app
from enclavekit.nsm import load_root
from enclavekit.rpc import CallContext, ServerLimits
from enclavekit.services.vault.client import VaultCallFailed, VaultClient
from enclavekit.services.vault.envelope import open_request, seal_response
from enclavekit.services.vault.host import VaultBridge, enclave_index
from enclavekit.services.vault.wire import KEY, MESSAGE, Message, MessageReply, VaultKey, VaultKeyRequest

SPEC = "tests.test_vault_bridge:IMAGE"
IMAGE = EnclaveApp("vault-stand-in")
"""The image the stand-ins are measured as (each runs its own EnclaveApp with the same routes)."""


@dataclass
class StandIn:
    """A vault enclave stand-in: attests its X25519 key like the vault; answers ``{"ok": {"served_by": name}}``."""

    name: str
    socket: Path
    state: Path
    hang: bool = False
    received: int = 0
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    pcr0: str = ""

    async def start(self) -> None:
        app, self._stop = EnclaveApp(self.name), asyncio.Event()
        contexts: list[EnclaveContext] = []
        app.on_boot(lambda context: _append(contexts, context))

        @app.route(KEY)
        async def key(request: VaultKeyRequest, call: CallContext) -> VaultKey:
            public = crypto_scalarmult_base(self.secret)
            nonce = bytes.fromhex(request.nonce) if request.nonce else None
            document = await contexts[0].attest(nonce=nonce, public_key=public)
            return VaultKey(document=base64.b64encode(document).decode(), public_key=public.hex())

        @app.route(MESSAGE)
        async def message(request: Message, call: CallContext) -> MessageReply:
            self.received += 1  # every envelope relayed here, whether it opens or not
            opened = open_request(self.secret, base64.b64decode(request.envelope))
            while self.hang:
                await asyncio.sleep(0.02)
            answer = json.dumps({"ok": {"served_by": self.name}}).encode()
            return MessageReply(envelope=base64.b64encode(seal_response(opened, answer)).decode())

        ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        options = RuntimeOptions(
            listen=f"unix://{self.socket}", state_dir=self.state, limits=ServerLimits(shutdown_grace=0.1)
        )
        self._task = asyncio.create_task(serve_app(app, SPEC, options, on_ready=ready.set_result, stop=self._stop))
        self.pcr0 = (await asyncio.wait_for(ready, 30))["pcr0"]

    async def stop(self) -> None:
        """The enclave goes away (its server closes its connections and its socket)."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def restart(self) -> None:
        """Back at the same address, with a new envelope key (a restarted enclave's memory is gone)."""
        await self.stop()
        self.secret, self.received = secrets.token_bytes(32), 0
        await self.start()


async def _append(contexts: list[EnclaveContext], context: EnclaveContext) -> None:
    contexts.append(context)


@dataclass
class Pair:
    a: StandIn
    b: StandIn
    bridge: VaultBridge
    nats_url: str
    roots: list[bytes]

    def client(self, user: str) -> VaultClient:
        return VaultClient(self.nats_url, user, [bytes.fromhex(self.a.pcr0)], self.roots, timeout=10)


USER = next(u for u in (f"user{i}" for i in range(100)) if enclave_index(u, 2) == 0)
"""A user whose enclave is ``a`` while both live (then ``b``)."""


@pytest.fixture
async def pair(tmp_path: Path, nats_url: str) -> AsyncIterator[Pair]:
    state = tmp_path / "sim"
    a, b = StandIn("a", tmp_path / "a.sock", state), StandIn("b", tmp_path / "b.sock", state)
    await a.start()
    await b.start()
    assert a.pcr0 == b.pcr0
    roots = [load_root(state)]
    bridge = VaultBridge(nats_url, [f"unix://{a.socket}", f"unix://{b.socket}"], [bytes.fromhex(a.pcr0)], roots)
    bridge.message_timeout = 1.0
    await bridge.start()
    try:
        yield Pair(a, b, bridge, nats_url, roots)
    finally:
        await bridge.close()
        await a.stop()
        await b.stop()


async def test_dead_enclaves_users_move_to_the_next_one_and_their_requests_are_resealed(pair: Pair) -> None:
    async with pair.client(USER) as app:
        assert await app.call("ping", {}) == {"served_by": "a"}
        await pair.a.stop()
        assert await app.call("ping", {}) == {"served_by": "b"}  # sealed to a's key: re-keyed to b, re-sealed
        assert pair.a.received == 1 and pair.b.received == 1
    async with pair.client(USER) as fresh:  # a new app is given b's key at once
        assert await fresh.call("ping", {}) == {"served_by": "b"}


async def test_enclave_restarted_with_a_new_key_gets_no_envelope_sealed_to_its_old_key(pair: Pair) -> None:
    async with pair.client(USER) as app:
        assert await app.call("ping", {}) == {"served_by": "a"}
        await pair.a.restart()
        assert await app.call("ping", {}) == {"served_by": "a"}  # re-keyed to the new a, never sent with the old key
        assert pair.a.received == 1  # the restarted a saw only the re-sealed request


async def test_message_in_flight_to_a_hanging_enclave_is_enclave_lost_and_never_resent(pair: Pair) -> None:
    async with pair.client(USER) as app:
        pair.a.hang = True
        with pytest.raises(VaultCallFailed, match="enclave_lost"):
            await app.call("secret.put", {})
        assert pair.a.received == 1 and pair.b.received == 0  # may have run at a: not sent anywhere else
        pair.a.hang = False
        assert await app.call("ping", {}) == {"served_by": "a"}  # a answers again; the client took a fresh key


async def test_enclave_dying_with_the_message_in_flight_is_enclave_lost(pair: Pair) -> None:
    async with pair.client(USER) as app:
        assert await app.call("ping", {}) == {"served_by": "a"}
        pair.a.hang = True
        call = asyncio.create_task(app.call("secret.put", {}))
        while pair.a.received < 2:
            await asyncio.sleep(0.01)
        await pair.a.stop()  # its connections close with the message in flight
        with pytest.raises(VaultCallFailed, match="enclave_lost"):
            await call
        assert pair.b.received == 0
        assert await app.call("ping", {}) == {"served_by": "b"}
