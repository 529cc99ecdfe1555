"""The handshake with the real NSM simulator and the real Nitro verifier: pinned PCR0 or no session.

The enclave side attests with ``enclavekit.nsm.Nsm`` over the simulator (real COSE_Sign1 ES384 documents, an
AWS-shaped chain to the simulator's root); the client verifies with ``enclavekit.attestation.nitro`` through
``NitroVerifier``, trusting that root and pinning PCR0. Over real loopback TCP.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from enclavekit.attestation.errors import ChainUntrusted, DebugMode, MeasurementMismatch
from enclavekit.attestation.nitro import NitroAttestation, NitroPolicy
from enclavekit.channel import Initiator, Mode, Responder, SessionKeys
from enclavekit.channel.adapters import NitroVerifier
from enclavekit.channel.keys import BoundKeys
from enclavekit.nsm import NsmSimulator, load_root
from enclavekit.rpc import CallContext, Route, Router, RpcClient, RpcServer

APP = {"main.py": b"print('enclave app v1')\n"}
APP_V2 = {"main.py": b"print('enclave app v2')\n"}


class Echo(BaseModel):
    text: str


ECHO = Route("echo", Echo, Echo)
router = Router()


@router.handler(ECHO)
async def _echo(request: Echo, call: CallContext) -> Echo:
    return Echo(text=request.text[::-1])


def policy(state: Path, pcr0: bytes, **options: object) -> NitroPolicy:
    return NitroPolicy(roots=(load_root(state),), measurements=[{0: pcr0}], **options)  # type: ignore[arg-type]


def handshake(initiator: Initiator, responder: Responder) -> None:
    now = datetime.now(UTC)
    client, hello = initiator.start(now=now)
    server, server_hello = responder.accept(hello, now=now)
    finish, session = client.finish(server_hello, now=now)
    assert server.finish(finish, now=now).session_id == session.session_id


async def test_client_reaches_the_simulated_enclave_over_tcp(tmp_path: Path) -> None:
    simulator = NsmSimulator(tmp_path / "state", app=APP)
    keys = SessionKeys.generate()
    responder = Responder(keys, simulator.client())
    async with RpcServer(router, responder=responder) as server:
        address = await server.start("tcp://127.0.0.1:0")
        initiator = Initiator(NitroVerifier(policy(tmp_path / "state", simulator.pcr(0))))
        async with await RpcClient.connect(address, initiator=initiator) as client:
            assert await client.call(ECHO, Echo(text="attested")) == Echo(text="detsetta")
            peer = client.peer
    assert isinstance(peer, NitroAttestation)
    assert peer.pcrs[0] == simulator.pcr(0)
    assert BoundKeys.from_bytes(peer.public_key) == keys.bound
    assert peer.module_id == simulator.module_id


def test_fresh_and_cached_modes_with_nitro_documents(tmp_path: Path) -> None:
    simulator = NsmSimulator(tmp_path / "state", app=APP)
    responder = Responder(SessionKeys.generate(), simulator.client())
    verifier = NitroVerifier(policy(tmp_path / "state", simulator.pcr(0)))
    handshake(Initiator(verifier), responder)
    responder.refresh_document()
    handshake(Initiator(verifier, modes=(Mode.CACHED,), max_document_age=timedelta(minutes=5)), responder)


async def test_policy_pinning_a_wrong_pcr0_refuses_the_enclave(tmp_path: Path) -> None:
    simulator = NsmSimulator(tmp_path / "state", app=APP)
    responder = Responder(SessionKeys.generate(), simulator.client())
    async with RpcServer(router, responder=responder) as server:
        address = await server.start("tcp://127.0.0.1:0")
        wrong = Initiator(NitroVerifier(policy(tmp_path / "state", b"\x42" * 48)))
        with pytest.raises(MeasurementMismatch):
            await RpcClient.connect(address, initiator=wrong)
        for _ in range(100):  # the client told the enclave why it hung up
            if server.connection_errors["handshake_aborted"]:
                break
            await asyncio.sleep(0.01)
        assert server.connection_errors["handshake_aborted"] == 1


def test_changed_enclave_app_is_refused_by_the_old_policy(tmp_path: Path) -> None:
    old = NsmSimulator(tmp_path / "state", app=APP)
    new = NsmSimulator(tmp_path / "state", app=APP_V2)
    assert new.pcr(0) != old.pcr(0)
    old_policy = NitroVerifier(policy(tmp_path / "state", old.pcr(0)))
    handshake(Initiator(old_policy), Responder(SessionKeys.generate(), old.client()))
    with pytest.raises(MeasurementMismatch):
        handshake(Initiator(old_policy), Responder(SessionKeys.generate(), new.client()))


def test_simulated_enclave_is_refused_by_the_default_aws_root(tmp_path: Path) -> None:
    simulator = NsmSimulator(tmp_path / "state", app=APP)
    aws_only = NitroVerifier(NitroPolicy(measurements=[{0: simulator.pcr(0)}]))
    with pytest.raises(ChainUntrusted):
        handshake(Initiator(aws_only), Responder(SessionKeys.generate(), simulator.client()))


def test_debug_enclave_is_refused(tmp_path: Path) -> None:
    simulator = NsmSimulator(tmp_path / "state", app=APP, debug=True)
    verifier = NitroVerifier(policy(tmp_path / "state", simulator.pcr(0)))
    with pytest.raises(DebugMode):
        handshake(Initiator(verifier), Responder(SessionKeys.generate(), simulator.client()))


def test_enclave_to_enclave_with_nitro_documents(tmp_path: Path) -> None:
    server_sim = NsmSimulator(tmp_path / "state", app=APP)
    client_sim = NsmSimulator(tmp_path / "state", app=APP_V2)
    client_enclave = Responder(SessionKeys.generate(), client_sim.client())
    client_enclave.refresh_document()
    responder = Responder(
        SessionKeys.generate(),
        server_sim.client(),
        peer_verifier=NitroVerifier(policy(tmp_path / "state", client_sim.pcr(0))),
        require_peer_attestation=True,
    )
    initiator = Initiator(
        NitroVerifier(policy(tmp_path / "state", server_sim.pcr(0))),
        attestation=client_enclave.local_attestation,
    )
    now = datetime.now(UTC)
    client, hello = initiator.start(now=now)
    server, server_hello = responder.accept(hello, now=now)
    finish, client_session = client.finish(server_hello, now=now)
    server_session = server.finish(finish, now=now)
    assert isinstance(server_session.peer, NitroAttestation)
    assert server_session.peer.pcrs[0] == client_sim.pcr(0)
    assert isinstance(client_session.peer, NitroAttestation)
    assert client_session.peer.pcrs[0] == server_sim.pcr(0)
