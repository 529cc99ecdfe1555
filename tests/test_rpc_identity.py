"""``CallContext.client_key`` is the key the caller proved in the handshake, over real sockets and a hostile relay.

A real asyncio server and client on loopback TCP, the real channel, the unsafe test attester standing in for the
NSM, and the man-in-the-middle relay of ``test_rpc_hostile``, which rewrites the client finish in transit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from enclavekit.channel import ClientIdentityKey, HandshakeAborted, Initiator, Responder, SessionKeys
from enclavekit.channel.handshake import identity_proof_message, seal_identity, transcript_hash
from enclavekit.channel.schedule import sha256
from enclavekit.channel.testing import UnsafeTestAttester, UnsafeTestVerifier
from enclavekit.channel.wire import ClientFinish, ClientIdentityProof, MessageType, encode_header
from enclavekit.client import AttestedClient
from enclavekit.rpc import CallContext, ClientOptions, Route, Router, RpcClient, RpcServer
from tests.test_rpc_hostile import Action, Relay, on, wait_for_code

GOOD = b"\x01" * 32


class Empty(BaseModel):
    pass


class Caller(BaseModel):
    client_key: str | None


WHOAMI = Route("whoami", Empty, Caller)
router = Router()


@router.handler(WHOAMI)
async def _whoami(request: Empty, call: CallContext) -> Caller:
    return Caller(client_key=None if call.client_key is None else call.client_key.hex())


class Enclave:
    def __init__(self, server: RpcServer, address: str, verifier: UnsafeTestVerifier) -> None:
        self.server, self.address, self.verifier = server, address, verifier

    async def connect(self, address: str | None = None, **options: object) -> RpcClient:
        initiator = Initiator(self.verifier, **options)  # type: ignore[arg-type]
        return await RpcClient.connect(
            address or self.address, initiator=initiator, options=ClientOptions(default_timeout=5)
        )


@contextlib.asynccontextmanager
async def enclave() -> AsyncIterator[Enclave]:
    attester = UnsafeTestAttester.generate(measurement=GOOD)
    server = RpcServer(router, responder=Responder(SessionKeys.generate(), attester))
    address = await server.start("tcp://127.0.0.1:0")
    try:
        yield Enclave(server, str(address), UnsafeTestVerifier(attester.root, measurements=(GOOD,)))
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def relay(target: str, **tampers: object) -> AsyncIterator[str]:
    running = Relay(target, **tampers)  # type: ignore[arg-type]
    address = await running.start()
    try:
        yield address
    finally:
        await running.close()


def _rewrite_identity(message: bytes, sealed: bytes) -> bytes:
    finish = ClientFinish.from_bytes(message)
    body = finish.enc + finish.confirm + bytes([len(finish.signature)]) + finish.signature
    body += len(sealed).to_bytes(2, "big") + sealed
    return encode_header(finish.version, MessageType.CLIENT_FINISH, len(body)) + body


async def test_handler_sees_the_key_the_client_proved_and_none_for_an_anonymous_client() -> None:
    user = ClientIdentityKey.generate()
    async with enclave() as setup:
        async with await setup.connect(identity=user) as client:
            assert (await client.call(WHOAMI, Empty())).client_key == user.public_key.hex()
        async with await setup.connect() as anonymous:
            assert (await anonymous.call(WHOAMI, Empty())).client_key is None


async def test_concurrent_callers_are_told_apart() -> None:
    keys = [ClientIdentityKey.generate() for _ in range(4)]
    async with enclave() as setup:
        clients = [await setup.connect(identity=key) for key in keys]
        try:
            answers = await asyncio.gather(*(c.call(WHOAMI, Empty()) for c in clients))
        finally:
            for client in clients:
                await client.close()
    assert [a.client_key for a in answers] == [k.public_key.hex() for k in keys]


async def test_sdk_client_proves_its_identity() -> None:
    user = ClientIdentityKey.generate()
    async with enclave() as setup:
        client = AttestedClient(setup.address, setup.verifier, identity=user)
        async with client:
            assert client.client_key == user.public_key
            assert (await client.call(WHOAMI, Empty())).client_key == user.public_key.hex()


async def test_relay_sees_neither_the_client_key_nor_its_proof() -> None:
    user = ClientIdentityKey.generate()
    async with enclave() as setup:
        running = Relay(setup.address)
        address = await running.start()
        try:
            async with await setup.connect(address, identity=user) as client:
                assert (await client.call(WHOAMI, Empty())).client_key == user.public_key.hex()
        finally:
            await running.close()
    assert len(running.seen) > 500
    assert user.public_key not in running.seen and user.public_key.hex().encode() not in running.seen


async def test_relay_swapping_the_client_key_in_transit_is_refused() -> None:
    """The host replaces the user's sealed identity with its own key and a proof of the transcript it saw."""
    host_key = ClientIdentityKey.generate()
    hellos: dict[str, bytes] = {}

    def c2s(index: int, message: bytes) -> Action:
        if index == 0:
            hellos["client"] = message
        if index != 1:
            return [message], False
        enc = ClientFinish.from_bytes(message).enc
        transcript = transcript_hash(2, hellos["client"], hellos["server"], enc, host_key.public_key)
        proof = ClientIdentityProof(host_key.public_key, host_key.sign(identity_proof_message(transcript)))
        aad = sha256(hellos["client"] + hellos["server"] + enc)
        return [_rewrite_identity(message, seal_identity(sha256(b"guessed"), aad, proof))], False

    def s2c(index: int, message: bytes) -> Action:
        if index == 0:
            hellos["server"] = message
        return [message], False

    async with enclave() as setup, relay(setup.address, c2s=c2s, s2c=s2c) as address:
        client = await setup.connect(address, identity=ClientIdentityKey.generate())
        with pytest.raises(HandshakeAborted) as caught:
            await client.call(WHOAMI, Empty())
        assert caught.value.peer_code == "handshake_confirmation_failed"
        await wait_for_code(setup.server, "handshake_confirmation_failed")
        await client.close()


async def test_relay_stripping_the_client_identity_is_refused() -> None:
    """The host removes the identity so the session would look anonymous: the keys disagree."""
    strip = on(1, lambda m: ([_rewrite_identity(m, b"")], False))
    async with enclave() as setup, relay(setup.address, c2s=strip) as address:
        client = await setup.connect(address, identity=ClientIdentityKey.generate())
        with pytest.raises(HandshakeAborted) as caught:
            await client.call(WHOAMI, Empty())
        assert caught.value.peer_code == "handshake_confirmation_failed"
        await client.close()


async def test_host_replaying_a_leaked_proof_in_its_own_session_is_refused() -> None:
    """A proof the user made in an earlier session leaked; the host connects claiming the user's key with it."""
    user = ClientIdentityKey.generate()
    proofs: list[bytes] = []

    class Recording:
        public_key = user.public_key

        def sign(self, message: bytes) -> bytes:
            proofs.append(user.sign(message))
            return proofs[-1]

    class Replaying:
        public_key = user.public_key

        def sign(self, message: bytes) -> bytes:
            return proofs[0]

    async with enclave() as setup:
        async with await setup.connect(identity=Recording()) as client:
            assert (await client.call(WHOAMI, Empty())).client_key == user.public_key.hex()
        host = await setup.connect(identity=Replaying())
        with pytest.raises(HandshakeAborted) as caught:
            await host.call(WHOAMI, Empty())
        assert caught.value.peer_code == "handshake_identity_signature_invalid"
        await wait_for_code(setup.server, "handshake_identity_signature_invalid")
        await host.close()
