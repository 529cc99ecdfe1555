"""The notify enclave in its own process, called over the attested RPC, delivering through the egress proxy.

The enclave starts with a measured configuration (provider over HTTPS with a pinned local CA, the API key as KMS
ciphertext under a key bound to its PCR0), provisioned by the harness as ``enclavekit up`` does.

Each recipient gets its own outcome (one bad push ID never fails the batch), tombstones are resolved in
plaintext, devices are deduplicated by plaintext, and Braze answers are checked: 429/5xx retried, other 4xx
a permanent rejection, a repeated batch never a second delivery.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from nacl.bindings import crypto_box_seal

from enclavekit.attestation import nitro
from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.host.egress import EgressProxy, parse_allowlist
from enclavekit.host.relay import RelayStats
from enclavekit.hostkit.server import ServerThread
from enclavekit.nsm import load_root
from enclavekit.rpc.address import TcpAddress
from enclavekit.services.notify.braze import BrazeProvider, TunnelHttp
from enclavekit.services.notify.errors import NotInitialized
from enclavekit.services.notify.fake_braze import FakeBraze
from enclavekit.services.notify.pushid import seal_push_id
from enclavekit.services.notify.testing import CLI, Harness, start
from enclavekit.services.notify.wire import (
    ATTESTATION_DOC,
    HEALTH_CHECK,
    INITIALIZE,
    NOTIFICATION,
    PUSH_ID_CHALLENGE,
    AttestationDocRequest,
    BrazeConfig,
    Challenge,
    HealthCheckRequest,
    Initialize,
    NotificationBatch,
    Recipient,
)
from enclavekit.stack.tls import ProviderTls, ensure_provider_tls

API_KEY = "enclave-test-key"


@dataclass
class Env:
    fake: FakeBraze
    braze_url: str
    egress: str
    socket: Path
    state: Path
    pcr0: bytes
    tls: ProviderTls


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("notify-enclave")
    fake = FakeBraze(API_KEY)
    tls = ensure_provider_tls(root / "provider", "127.0.0.1")
    with ServerThread(fake.app, tls=(str(tls.cert_file), str(tls.key_file))) as url:
        harness = Harness(root, "sqlite://", url, API_KEY, provider_tls=tls)
        try:
            harness.start_kms()
            harness.start_egress()
            harness.start_enclave("n", relay=False)
            pcr0 = bytes.fromhex(harness.pcr0)
            yield Env(fake, url, harness.egress, root / "n.sock", harness.state, pcr0, tls)
        finally:
            harness.stop()


@pytest.fixture
async def client(env: Env) -> AsyncIterator[AttestedClient]:
    policy = NitroPolicy(measurements=[{0: env.pcr0}], roots=(load_root(env.state),))
    async with AttestedClient.nitro(f"unix://{env.socket}", policy) as connected:
        yield connected


async def _initialize(client: AttestedClient, env: Env) -> bytes:
    """The push key; ``initialize`` only reports that the measured configuration is loaded."""
    answer = await client.call(INITIALIZE, Initialize())
    assert answer.initialized
    return bytes.fromhex(answer.public_key)


def _provider(env: Env, *, api_key: str = API_KEY, url: str | None = None, **config: object) -> BrazeProvider:
    """The enclave's provider client, in this process (for behaviour that no host call can select)."""
    base = url or env.braze_url
    braze = BrazeConfig(api_key=api_key, base_url=base, egress_proxy=env.egress, backoff=0.01, **config)  # type: ignore[arg-type]
    context = ssl.create_default_context(cadata=env.tls.ca_pem)
    return BrazeProvider(braze, http=TunnelHttp(base, env.egress, timeout=10, ssl_context=context))


def _batch(recipients: list[Recipient], message_id: str | None = None) -> NotificationBatch:
    return NotificationBatch(
        message_id=message_id or uuid.uuid4().hex,
        topic="/xmtp/mls/1/g-enclave-test",
        encrypted_message_base64=base64.b64encode(b"ciphertext").decode(),
        recipients=tuple(recipients),
    )


async def test_attestation_document_binds_the_push_key(client: AttestedClient, env: Env) -> None:
    key = await _initialize(client, env)
    answer = await client.call(ATTESTATION_DOC, AttestationDocRequest(nonce="ab" * 16))
    policy = NitroPolicy(measurements=[{0: env.pcr0}], roots=(load_root(env.state),), nonce=b"\xab" * 16)
    verified = nitro.verify(base64.b64decode(answer.document), policy, now=datetime.now(UTC))
    assert verified.public_key == key == bytes.fromhex(answer.public_key)


async def test_one_bad_push_id_never_fails_the_batch(client: AttestedClient, env: Env) -> None:
    key = await _initialize(client, env)
    good = f"device-{uuid.uuid4().hex[:8]}"
    recipients = [
        Recipient(encrypted_push_id="zz" * 60),  # not hex
        Recipient(encrypted_push_id=seal_push_id("elsewhere", bytes(32 * [7]))),  # sealed to another key
        Recipient(encrypted_push_id=crypto_box_seal(b"\xff\xfe", key).hex()),  # not UTF-8
        Recipient(encrypted_push_id=seal_push_id(good, key)),
    ]
    result = await client.call(NOTIFICATION, _batch(recipients))
    assert [o.outcome for o in result.outcomes] == [
        "invalid_push_id",
        "invalid_push_id",
        "invalid_push_id",
        "delivered",
    ]


async def test_the_owners_tombstone_drops_the_recipient_and_strangers_tombstones_do_not(
    client: AttestedClient, env: Env
) -> None:
    key = await _initialize(client, env)
    owner, stranger = f"owner-{uuid.uuid4().hex[:8]}", f"stranger-{uuid.uuid4().hex[:8]}"
    deleted = Recipient(
        encrypted_push_id=seal_push_id(owner, key),
        deletion_requests=(seal_push_id(stranger, key), seal_push_id(owner, key)),  # the owner, sealed anew
    )
    kept = Recipient(encrypted_push_id=seal_push_id(stranger, key), deletion_requests=(seal_push_id(owner, key), "00"))
    message_id = uuid.uuid4().hex
    result = await client.call(NOTIFICATION, _batch([deleted, kept], message_id))
    assert [o.outcome for o in result.outcomes] == ["tombstoned", "delivered"]
    assert [a for m, a in env.fake.delivered_pairs() if m == message_id] == [stranger]


async def test_devices_are_deduplicated_by_plaintext(client: AttestedClient, env: Env) -> None:
    key = await _initialize(client, env)
    device = f"device-{uuid.uuid4().hex[:8]}"
    message_id = uuid.uuid4().hex
    result = await client.call(
        NOTIFICATION, _batch([Recipient(encrypted_push_id=seal_push_id(device, key)) for _ in range(3)], message_id)
    )
    assert [o.outcome for o in result.outcomes] == ["delivered", "duplicate", "duplicate"]
    assert [a for m, a in env.fake.delivered_pairs() if m == message_id] == [device]


async def test_a_repeated_batch_is_not_delivered_twice(client: AttestedClient, env: Env) -> None:
    key = await _initialize(client, env)
    devices = [f"device-{i}-{uuid.uuid4().hex[:6]}" for i in range(120)]
    batch = _batch([Recipient(encrypted_push_id=seal_push_id(d, key)) for d in devices])
    first = await client.call(NOTIFICATION, batch)
    again = await client.call(NOTIFICATION, batch)
    assert {o.outcome for o in first.outcomes} == {o.outcome for o in again.outcomes} == {"delivered"}
    assert first.provider_requests == 3 and again.provider_requests == 0  # 50 aliases per Braze request
    pairs = [a for m, a in env.fake.delivered_pairs() if m == batch.message_id]
    assert sorted(pairs) == sorted(devices)


async def test_braze_429_and_5xx_are_retried_and_other_4xx_are_permanent(client: AttestedClient, env: Env) -> None:
    key = await _initialize(client, env)  # the measured configuration allows 4 attempts
    env.fake.fail_next(429, 502)
    result = await client.call(NOTIFICATION, _batch([Recipient(encrypted_push_id=seal_push_id("d-retry", key))]))
    assert result.outcomes[0].outcome == "delivered" and result.provider_requests == 3
    env.fake.fail_next(500, 500, 500, 500)
    result = await client.call(NOTIFICATION, _batch([Recipient(encrypted_push_id=seal_push_id("d-outage", key))]))
    assert (result.outcomes[0].outcome, result.outcomes[0].detail) == ("retry", "HTTP 500")
    env.fake.fail_next(400)
    result = await client.call(NOTIFICATION, _batch([Recipient(encrypted_push_id=seal_push_id("d-bad", key))]))
    assert (result.outcomes[0].outcome, result.provider_requests) == ("rejected", 1)


async def test_a_wrong_api_key_is_a_permanent_rejection(env: Env) -> None:
    provider = _provider(env, api_key="wrong")
    try:
        result = await provider.send(["d"], {"topic": "t"}, idempotency_key=uuid.uuid4().hex)
    finally:
        await provider.close()
    assert (result.status, result.detail) == ("rejected", "HTTP 401")


async def test_the_egress_proxy_allows_only_the_provider(env: Env) -> None:
    provider = _provider(env, url="https://127.0.0.1:9", max_attempts=1)
    try:
        result = await provider.send(["d"], {"topic": "t"}, idempotency_key=uuid.uuid4().hex)
    finally:
        await provider.close()
    assert (result.status, result.detail) == ("retry", "TunnelRefused")


async def test_push_id_challenge_compares_plaintexts(client: AttestedClient, env: Env) -> None:
    key = await _initialize(client, env)
    a1, a2, b = seal_push_id("a", key), seal_push_id("a", key), seal_push_id("b", key)
    same = await client.call(PUSH_ID_CHALLENGE, Challenge(encrypted_push_id_1=a1, encrypted_push_id_2=a2))
    differ = await client.call(PUSH_ID_CHALLENGE, Challenge(encrypted_push_id_1=a1, encrypted_push_id_2=b))
    garbage = await client.call(PUSH_ID_CHALLENGE, Challenge(encrypted_push_id_1="zz", encrypted_push_id_2=b))
    assert (same.same, differ.same, garbage.same) == (True, False, False)
    assert (garbage.first_opens, garbage.second_opens) == (False, True)


async def test_an_enclave_without_a_measured_configuration_refuses_notifications(env: Env, tmp_path: Path) -> None:
    socket_path = tmp_path / "fresh.sock"
    fresh = start(
        "fresh",
        [*CLI, "enclave", "run", "enclavekit.services.notify.enclave_app:app", "--listen", f"unix://{socket_path}",
         "--state", str(env.state)],
    )  # fmt: skip
    try:
        assert fresh.ready["pcr0"] != env.pcr0.hex(), "the configuration is part of PCR0"
        policy = NitroPolicy(measurements=[{0: bytes.fromhex(fresh.ready["pcr0"])}], roots=(load_root(env.state),))
        async with AttestedClient.nitro(f"unix://{socket_path}", policy) as client:
            health = await client.call(HEALTH_CHECK, HealthCheckRequest())
            assert not health.initialized
            assert not (await client.call(INITIALIZE, Initialize())).initialized
            with pytest.raises(NotInitialized):
                await client.call(NOTIFICATION, _batch([Recipient(encrypted_push_id="ab" * 60)]))
    finally:
        fresh.stop()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_over_https_the_egress_proxy_relays_only_tls_ciphertext(tmp_path: Path) -> None:
    """As against Braze: TLS from the client through the CONNECT tunnel; the proxy never sees the push ID."""
    cert, key = _self_signed(tmp_path)
    fake = FakeBraze(API_KEY)
    config = uvicorn.Config(
        fake.app, host="127.0.0.1", port=0, ssl_certfile=str(cert), ssl_keyfile=str(key), log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    proxy = EgressProxy(parse_allowlist([f"localhost:{port}"]), stats=RelayStats())
    proxy_address = await proxy.start("tcp://127.0.0.1:0")
    assert isinstance(proxy_address, TcpAddress)
    seen: list[bytes] = []

    async def wiretap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """What the host's side of the enclave's link carries: record it, pass it on."""
        up_reader, up_writer = await asyncio.open_connection(proxy_address.host, proxy_address.port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                seen.append(data)
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    tap = await asyncio.start_server(wiretap, "127.0.0.1", 0)
    tap_address = f"tcp://127.0.0.1:{tap.sockets[0].getsockname()[1]}"
    try:
        context = ssl.create_default_context(cafile=str(cert))
        http = TunnelHttp(f"https://localhost:{port}", tap_address, timeout=10, ssl_context=context)
        provider = BrazeProvider(
            BrazeConfig(api_key=API_KEY, base_url=f"https://localhost:{port}", egress_proxy=tap_address), http=http
        )
        secret_alias = f"TLS-SECRET-ALIAS-{uuid.uuid4().hex}"
        result = await provider.send([secret_alias], {"topic": "t"}, idempotency_key="k1")
        assert result.status == "delivered"
        assert fake.deliveries[-1].aliases == (secret_alias,)
        await provider.close()
        relayed = b"".join(seen)
        assert relayed.startswith(b"CONNECT localhost:") and len(relayed) > 500
        for secret in (secret_alias.encode(), API_KEY.encode(), b"messages/send"):
            assert secret not in relayed, f"{secret!r} crossed the host in plaintext"
        untrusted = TunnelHttp(f"https://localhost:{port}", tap_address, timeout=10)
        with pytest.raises(ssl.SSLError):
            await untrusted.request("POST", "/messages/send", b"{}", {})  # not in the system's trust store
    finally:
        tap.close()
        await proxy.close()
        server.should_exit = True
        await task
