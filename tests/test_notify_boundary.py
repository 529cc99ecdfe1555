"""The notify enclave as a hostile host would try it: it cannot re-point where plaintext goes.

Real processes: the KMS emulator, the host's egress proxy, the notify enclave (with its measured configuration)
behind a capturing relay; the fake Braze serves HTTPS with a certificate from a local CA that the configuration
pins; the "host" runs its own listeners. The host re-initializes with other URLs, replays the old initialize
message, hands the enclave sealed push IDs from its database, calls routes out of order, points the egress at a
TLS interceptor, boots the enclave with another configuration — and nothing reaches its listeners, while
everything it can see (relay bytes, logs, the state folder, the sealed push-key file) holds no API key and no
push ID in any encoding.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from pydantic import BaseModel, ConfigDict

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.enclave.runtime import expected_pcr0, image_files
from enclavekit.errors import Error
from enclavekit.hostkit.server import ServerThread
from enclavekit.kms.keystore import KeyStore
from enclavekit.kms.service import KmsService
from enclavekit.nsm import load_root
from enclavekit.rpc import CallContext, Route
from enclavekit.services.notify.enclave_app import push_key_file
from enclavekit.services.notify.enclave_config import (
    InvalidEnclaveConfig,
    NotAnOperator,
    NotifyEnclaveConfig,
    canonical,
)
from enclavekit.services.notify.fake_braze import FakeBraze
from enclavekit.services.notify.provision import enclave_key_policy
from enclavekit.services.notify.pushid import seal_push_id
from enclavekit.services.notify.testing import CLI, Harness, Running, start
from enclavekit.services.notify.wire import (
    INITIALIZE,
    NOTIFICATION,
    PUSH_ID_CHALLENGE,
    SECRET_KEY,
    Challenge,
    Initialize,
    Initialized,
    NotificationBatch,
    Recipient,
    SecretKeyRequest,
)
from enclavekit.stack.tls import ProviderTls, ensure_provider_tls
from tests.test_kms_measured_endpoint import FakeKms

APP = "enclavekit.services.notify.enclave_app:app"
API_KEY = f"braze-live-{uuid.uuid4().hex}"


# --- the measured configuration, parsed once -------------------------------------------------------------------


def _document(ca_pem: str, **provider: Any) -> dict[str, Any]:
    return {
        "format": "enclavekit-notify-config",
        "version": 1,
        "provider": {"url": "https://127.0.0.1:8443", "ca_pem": ca_pem, **provider},
        "kms": {"key_id": "1234abcd-12ab-34cd-56ef-1234567890ab", "api_key_ciphertext": "AAEC"},
        "operator_keys": [],
    }


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ProviderTls:
    return ensure_provider_tls(tmp_path_factory.mktemp("ca"), "127.0.0.1")


def test_a_config_parses_once_into_its_fields(ca: ProviderTls) -> None:
    config = NotifyEnclaveConfig.from_bytes(canonical(_document(ca.ca_pem, url="https://braze.example:8443/v1")))
    assert (config.provider.host, config.provider.port, config.provider.path_prefix) == ("braze.example", 8443, "/v1")
    assert config.kms.api_key_ciphertext == b"\x00\x01\x02"
    again = NotifyEnclaveConfig.from_bytes(canonical(config.to_document()))
    assert (again.provider, again.kms, again.operator_keys) == (config.provider, config.kms, config.operator_keys)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8443",  # plaintext to whoever listens
        "ftp://127.0.0.1",
        "https://user:pw@127.0.0.1",
        "https://127.0.0.1/?x=1",
        "https://127.0.0.1:99999",
        "https://bad_host!",
        "https:///nohost",
    ],
)
def test_a_config_with_a_provider_that_is_not_plain_https_is_refused(ca: ProviderTls, url: str) -> None:
    with pytest.raises(InvalidEnclaveConfig):
        NotifyEnclaveConfig.from_bytes(canonical(_document(ca.ca_pem, url=url)))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(version=2),
        lambda d: d.update(extra=1),
        lambda d: d["provider"].update(ca_pem="not a certificate"),
        lambda d: d["provider"].update(ca_pem=""),
        lambda d: d["provider"].update(egress_proxy="tcp://127.0.0.1:1"),  # the egress is not configuration
        lambda d: d["provider"].update(max_attempts=True),
        lambda d: d["provider"].update(timeout=1e9),
        lambda d: d["kms"].update(api_key_ciphertext="%%%"),
        lambda d: d["kms"].update(key_id=""),
        lambda d: d.update(operator_keys=["ab" * 31]),
    ],
)
def test_a_malformed_config_is_refused_with_a_specific_error(ca: ProviderTls, mutate: Any) -> None:
    document = _document(ca.ca_pem)
    mutate(document)
    with pytest.raises(InvalidEnclaveConfig) as caught:
        NotifyEnclaveConfig.from_bytes(canonical(document))
    assert caught.value.code == "invalid_enclave_config"


@pytest.mark.parametrize("garbage", [b"", b"\xff\xfe", b"[]", b"null", b"{" * 100_000, b" " * 200_000])
def test_garbage_instead_of_a_config_is_refused(garbage: bytes) -> None:
    with pytest.raises(InvalidEnclaveConfig):
        NotifyEnclaveConfig.from_bytes(garbage)


def test_changing_one_byte_of_the_config_changes_pcr0(ca: ProviderTls) -> None:
    __import__("enclavekit.services.notify.enclave_app")
    first = canonical(_document(ca.ca_pem))
    second = canonical(_document(ca.ca_pem, url="https://127.0.0.1:8444"))
    pcr0s = {expected_pcr0(APP, None), expected_pcr0(APP, first), expected_pcr0(APP, second)}
    assert len(pcr0s) == 3
    assert image_files(APP, first)["config"] == first


def test_an_operator_only_route_requires_a_measured_operator_key(ca: ProviderTls) -> None:
    operator = bytes(range(32))
    document = _document(ca.ca_pem)
    document["operator_keys"] = [operator.hex()]
    config = NotifyEnclaveConfig.from_bytes(canonical(document))
    call = CallContext(route="notify.x", request_id=1, deadline=0.0, client_key=operator)
    assert config.require_operator(call) == operator
    for key in (None, bytes(32), operator[:31]):
        with pytest.raises(NotAnOperator):
            config.require_operator(CallContext(route="notify.x", request_id=1, deadline=0.0, client_key=key))


def test_a_key_policy_without_put_key_policy_cannot_be_loosened(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    with KeyStore(tmp_path) as store:
        service = KmsService(store)
        locked = json.loads(enclave_key_policy([bytes(48)]))
        locked["Statement"][0]["Action"] = ["kms:Encrypt"]
        key = service.handle("CreateKey", {"Policy": json.dumps(locked)}, now=now)["KeyMetadata"]["KeyId"]
        with pytest.raises(Error) as caught:
            service.handle("PutKeyPolicy", {"KeyId": key, "Policy": enclave_key_policy([])}, now=now)
        assert caught.value.code == "kms_access_denied"
        bound = service.handle("CreateKey", {"Policy": enclave_key_policy([])}, now=now)["KeyMetadata"]["KeyId"]
        service.handle("PutKeyPolicy", {"KeyId": bound, "Policy": enclave_key_policy([bytes(48)])}, now=now)
        assert "ImageSha384" in service.handle("GetKeyPolicy", {"KeyId": bound}, now=now)["Policy"]


# --- a hostile host against real processes ----------------------------------------------------------------------


@dataclass
class Listener:
    """A socket the host runs: it records every connection and every byte (and, as a would-be TLS interceptor,
    answers CONNECT and presents its own certificate)."""

    intercept: ssl.SSLContext | None = None
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    decrypted: bytearray = field(default_factory=bytearray)
    sock: socket.socket = field(default_factory=socket.socket)

    def start(self) -> int:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        threading.Thread(target=self._serve, daemon=True).start()
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        connection.settimeout(10)
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                head += chunk
            self.received += head
            if self.intercept is None or not head.startswith(b"CONNECT"):
                return
            connection.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            with self.intercept.wrap_socket(connection, server_side=True) as tls:
                while data := tls.recv(65536):
                    self.decrypted += data
        except (OSError, ssl.SSLError):
            return
        finally:
            connection.close()

    def close(self) -> None:
        self.sock.close()


@dataclass
class Hostile:
    harness: Harness
    fake: FakeBraze
    pcr0: bytes
    listener: Listener
    listener_port: int
    interceptor: Listener
    interceptor_port: int
    hostile_egress: str
    extra: list[Running]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    root = tmp_path_factory.mktemp("notify-hostile")
    fake = FakeBraze(API_KEY, keep_deliveries=True)
    tls = ensure_provider_tls(root / "provider", "127.0.0.1")
    other = ensure_provider_tls(root / "host-ca", "127.0.0.1")  # the host's own CA, not the pinned one
    intercept = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    intercept.load_cert_chain(str(other.cert_file), str(other.key_file))
    listener, interceptor = Listener(), Listener(intercept)
    listener_port, interceptor_port = listener.start(), interceptor.start()
    extra: list[Running] = []
    with ServerThread(fake.app, tls=(str(tls.cert_file), str(tls.key_file))) as url:
        harness = Harness(root, "sqlite://", url, API_KEY, provider_tls=tls)
        try:
            harness.start_kms()
            harness.start_egress()
            hostile_egress = start(
                "hostile-egress",
                [*CLI, "host", "egress", "--listen", "tcp://127.0.0.1:0", "--allow", f"127.0.0.1:{listener_port}"],
                log_dir=harness.logs,
            )
            extra.append(hostile_egress)
            harness.start_enclave("notify-1")
            yield Hostile(
                harness,
                fake,
                bytes.fromhex(harness.pcr0),
                listener,
                listener_port,
                interceptor,
                interceptor_port,
                hostile_egress.ready["url"],
                extra,
            )
        finally:
            for running in extra:
                running.stop()
            harness.stop()
            listener.close()
            interceptor.close()


def _policy(hostile: Hostile, pcr0: bytes | None = None) -> NitroPolicy:
    return NitroPolicy(measurements=[{0: pcr0 or hostile.pcr0}], roots=(load_root(hostile.harness.state),))


@pytest.fixture
async def client(hostile: Hostile) -> AsyncIterator[AttestedClient]:
    assert hostile.harness.relays
    async with AttestedClient.nitro(hostile.harness.relays[0], _policy(hostile)) as connected:
        yield connected


class _OldInitialize(BaseModel):
    """The initialize message as the host sent it before the configuration was measured."""

    model_config = ConfigDict(extra="allow")
    braze: dict[str, Any]


OLD_INITIALIZE = Route("notify.initialize", _OldInitialize, Initialized)


def _batch(push_key: bytes, *push_ids: str) -> NotificationBatch:
    return NotificationBatch(
        message_id=uuid.uuid4().hex,
        topic="/xmtp/mls/1/g-hostile",
        encrypted_message_base64=base64.b64encode(b"ciphertext").decode(),
        recipients=tuple(Recipient(encrypted_push_id=seal_push_id(p, push_key)) for p in push_ids),
    )


def _delivered(fake: FakeBraze, message_id: str) -> list[str]:
    return [alias for mid, alias in fake.delivered_pairs() if mid == message_id]


def _hostile_urls(hostile: Hostile) -> list[dict[str, Any]]:
    port, braze_port = hostile.listener_port, hostile.harness.braze_url.rsplit(":", 1)[1]
    out: list[dict[str, Any]] = []
    for base in (f"http://127.0.0.1:{port}", f"https://127.0.0.1:{port}", f"https://localhost:{braze_port}"):
        for proxy in (None, hostile.harness.egress, hostile.hostile_egress):
            out.append({"api_key": "host-chosen", "base_url": base, "egress_proxy": proxy, "max_attempts": 1})
    return out


async def test_host_cannot_repoint_the_provider_with_initialize(hostile: Hostile, client: AttestedClient) -> None:
    before = await client.call(INITIALIZE, Initialize())
    assert before.initialized and before.config_sha256
    for braze in _hostile_urls(hostile):
        with pytest.raises(Error) as caught:
            await client.call(OLD_INITIALIZE, _OldInitialize(braze=braze))
        assert getattr(caught.value, "remote_code", caught.value.code) == "rpc_invalid_request", braze
    after = await client.call(INITIALIZE, Initialize())  # the current form: changes nothing either
    assert after == before
    push_key = bytes.fromhex(after.public_key)
    batch = _batch(push_key, "hostile-device-1")
    result = await client.call(NOTIFICATION, batch)
    assert [o.outcome for o in result.outcomes] == ["delivered"]
    assert _delivered(hostile.fake, batch.message_id) == ["hostile-device-1"]  # the measured provider only
    assert hostile.listener.connections == 0 and not hostile.listener.received


async def test_a_replayed_initialize_message_is_refused(hostile: Hostile) -> None:
    old = _OldInitialize(braze={"api_key": API_KEY, "base_url": hostile.harness.braze_url, "egress_proxy": None})
    assert hostile.harness.relays
    for _ in range(2):  # the same message on two fresh sessions: refused both times, nothing changed
        async with AttestedClient.nitro(hostile.harness.relays[0], _policy(hostile)) as fresh:
            with pytest.raises(Error):
                await fresh.call(OLD_INITIALIZE, old)
            assert (await fresh.call(INITIALIZE, Initialize())).initialized
    assert hostile.listener.connections == 0


async def test_sealed_push_ids_from_the_database_go_only_to_the_measured_provider(
    hostile: Hostile, client: AttestedClient
) -> None:
    push_key = bytes.fromhex((await client.call(SECRET_KEY, SecretKeyRequest())).public_key)
    rows = [seal_push_id(f"db-device-{i}", push_key) for i in range(5)]  # what the host's table holds
    batch = NotificationBatch(
        message_id=uuid.uuid4().hex,
        topic="/xmtp/mls/1/g-from-db",
        encrypted_message_base64="QUFB",
        recipients=tuple(Recipient(encrypted_push_id=row) for row in rows),
    )
    await client.call(NOTIFICATION, batch)
    same = await client.call(PUSH_ID_CHALLENGE, Challenge(encrypted_push_id_1=rows[0], encrypted_push_id_2=rows[0]))
    assert same.same  # the only thing the host learns from its rows: equality, never a plaintext
    assert sorted(_delivered(hostile.fake, batch.message_id)) == [f"db-device-{i}" for i in range(5)]
    assert hostile.listener.connections == 0


def _start_enclave(hostile: Hostile, name: str, *, config: Path, egress: str, extra: Sequence[str] = ()) -> Running:
    harness = hostile.harness
    running = start(
        name,
        [*CLI, "enclave", "run", APP, "--name", "notify-1", "--listen", f"unix://{harness.root / (name + '.sock')}",
         "--state", str(harness.state), "--config", str(config), "--set", f"egress_proxy={egress}", *extra],
        log_dir=harness.logs,
        env={"ENCLAVEKIT_LOG_LEVEL": "debug"},
    )  # fmt: skip
    hostile.extra.append(running)
    return running


async def test_a_notification_first_thing_after_boot_goes_only_to_the_measured_provider(hostile: Hostile) -> None:
    assert hostile.harness.config_path is not None
    fresh = _start_enclave(hostile, "first-call", config=hostile.harness.config_path, egress=hostile.harness.egress)
    assert fresh.ready["pcr0"] == hostile.pcr0.hex()
    async with AttestedClient.nitro(f"unix://{hostile.harness.root / 'first-call.sock'}", _policy(hostile)) as c:
        push_key = bytes.fromhex((await c.call(SECRET_KEY, SecretKeyRequest())).public_key)
        batch = _batch(push_key, "first-call-device")
        result = await c.call(NOTIFICATION, batch)  # before initialize, before anything
    assert [o.outcome for o in result.outcomes] == ["delivered"]
    assert _delivered(hostile.fake, batch.message_id) == ["first-call-device"]
    assert hostile.listener.connections == 0
    fresh.stop()


async def test_host_egress_pointed_at_its_tls_interceptor_gets_no_plaintext(hostile: Hostile) -> None:
    """The egress proxy is a launch setting the host controls: it is only a TCP path, TLS is checked inside."""
    assert hostile.harness.config_path is not None
    tapped = _start_enclave(
        hostile, "tapped", config=hostile.harness.config_path, egress=f"tcp://127.0.0.1:{hostile.interceptor_port}"
    )
    async with AttestedClient.nitro(f"unix://{hostile.harness.root / 'tapped.sock'}", _policy(hostile)) as c:
        push_key = bytes.fromhex((await c.call(SECRET_KEY, SecretKeyRequest())).public_key)
        batch = _batch(push_key, "tapped-device")
        result = await c.call(NOTIFICATION, batch, timeout=60)
    assert result.outcomes[0].outcome == "retry", "the interceptor's certificate is not the pinned CA's"
    assert hostile.interceptor.connections >= 1 and hostile.interceptor.received.startswith(b"CONNECT 127.0.0.1:")
    assert not hostile.interceptor.decrypted
    for secret in (b"tapped-device", API_KEY.encode()):
        assert secret not in bytes(hostile.interceptor.received)
    assert not _delivered(hostile.fake, batch.message_id)
    tapped.stop()


async def test_a_restarted_enclave_with_the_same_pcr0_recovers_the_push_key(hostile: Hostile) -> None:
    harness = hostile.harness
    assert harness.config_path is not None and harness.relays
    async with AttestedClient.nitro(harness.relays[0], _policy(hostile)) as c:
        before = bytes.fromhex((await c.call(SECRET_KEY, SecretKeyRequest())).public_key)
    stored = seal_push_id("stored-subscription", before)  # a row written before the crash
    assert harness.enclaves
    harness.enclaves[0].kill()  # SIGKILL
    restarted = harness.restart_enclave(0, "notify-1")
    assert restarted.ready["pcr0"] == hostile.pcr0.hex()
    async with AttestedClient.nitro(harness.relays[0], _policy(hostile)) as c:
        after = bytes.fromhex((await c.call(SECRET_KEY, SecretKeyRequest())).public_key)
        batch = NotificationBatch(
            message_id=uuid.uuid4().hex,
            topic="/xmtp/mls/1/g-restart",
            encrypted_message_base64="QUFB",
            recipients=(Recipient(encrypted_push_id=stored),),
        )
        result = await c.call(NOTIFICATION, batch)
    assert after == before
    assert [o.outcome for o in result.outcomes] == ["delivered"]
    assert "(restored)" in (harness.logs / "enclave-notify-1.log").read_text()


def test_an_enclave_with_another_pcr0_cannot_recover_the_push_key_or_the_api_key(hostile: Hostile) -> None:
    harness = hostile.harness
    blob_path = push_key_file(harness.state, "notify-1")
    blob = blob_path.read_bytes()
    variant = harness.provision(harness.root / "variant.json", alias_label="host_variant", bind=False)
    with pytest.raises(RuntimeError) as caught:  # boot fails closed: KMS refuses this measurement
        _start_enclave(hostile, "variant", config=variant, egress=harness.egress)
    assert "kms_access_denied" in str(caught.value)
    assert blob_path.read_bytes() == blob, "the persisted push key was not replaced"
    kms = harness.kms()
    for ciphertext, context in ((blob, {"enclavekit:app": "notify", "enclavekit:purpose": "push-key"}),):
        with pytest.raises(botocore.exceptions.ClientError) as denied:  # the host, without a Recipient
            kms.decrypt(CiphertextBlob=ciphertext, EncryptionContext=context)
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert harness.config_path is not None
    config = NotifyEnclaveConfig.from_bytes(harness.config_path.read_bytes())
    with pytest.raises(botocore.exceptions.ClientError):
        kms.decrypt(
            CiphertextBlob=config.kms.api_key_ciphertext,
            EncryptionContext={"enclavekit:app": "notify", "enclavekit:purpose": "provider-api-key"},
        )


def _encodings(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"=")]


def test_host_cannot_route_the_enclave_to_its_own_kms_or_name_another_kms_url(hostile: Hostile, tmp_path: Path) -> None:
    """The host's fake KMS would hand out a correctly sealed push key of the host's choosing: the enclave's TLS
    to the measured KMS endpoint (the pinned CA) refuses it before sending a Recipient, and the boot stops."""
    harness = hostile.harness
    assert harness.config_path is not None
    fake = FakeKms(ensure_provider_tls(tmp_path / "host-kms-ca", "127.0.0.1"))
    port = fake.start()
    try:
        for name, extra, expected in (
            ("routed", ["--set", f"kms_route=127.0.0.1:{port}"], "kms_endpoint_untrusted"),
            ("renamed", ["--set", f"kms_url=https://127.0.0.1:{port}"], "kms_url is not a launch setting"),
        ):
            with pytest.raises(RuntimeError) as caught:
                _start_enclave(hostile, name, config=harness.config_path, egress=harness.egress, extra=extra)
            assert expected in str(caught.value)
        assert fake.requests == 0, "no request (no Recipient) reached the host's KMS"
        assert fake.connections >= 1, "the route was taken: TLS refused it"
    finally:
        fake.stop()


def test_nothing_the_host_sees_holds_the_api_key_or_a_push_id(hostile: Hostile) -> None:
    harness = hostile.harness
    seen = [harness.logs_text()]
    seen += [p.read_bytes() for p in harness.root.glob("relayed-*.bin")]
    provider_dir = harness.root / "provider"  # the stand-in provider's own key files: not the host's
    for path in harness.root.rglob("*"):
        if path.is_file() and provider_dir not in path.parents and not path.name.endswith(".sock"):
            seen.append(path.read_bytes())
    assert push_key_file(harness.state, "notify-1").exists()
    assert any(p.name == "relayed-notify-1.bin" and p.stat().st_size > 1000 for p in harness.root.iterdir())
    blob = b"\n".join(seen)
    secrets = [API_KEY.encode()] + [f"db-device-{i}".encode() for i in range(5)]
    secrets += [b"hostile-device-1", b"stored-subscription", b"first-call-device", b"tapped-device"]
    for secret in secrets:
        for encoded in _encodings(secret):
            assert encoded not in blob, f"{secret!r} is visible to the host ({encoded[:12]!r}...)"
    assert hostile.listener.connections == 0


async def test_enclave_routes_called_in_any_order_never_reach_the_host(hostile: Hostile) -> None:
    assert hostile.harness.relays
    async with AttestedClient.nitro(hostile.harness.relays[0], _policy(hostile)) as c:
        push_key = bytes.fromhex((await c.call(SECRET_KEY, SecretKeyRequest())).public_key)
        batch = _batch(push_key, "order-device")
        await asyncio.gather(
            c.call(NOTIFICATION, batch),
            c.call(OLD_INITIALIZE, _OldInitialize(braze={"base_url": f"http://127.0.0.1:{hostile.listener_port}"})),
            c.call(NOTIFICATION, batch),
            return_exceptions=True,
        )
        await c.call(NOTIFICATION, batch)
    assert _delivered(hostile.fake, batch.message_id) == ["order-device"]  # once, to the provider
    assert hostile.listener.connections == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "enclave configuration"),  # no such file
        (b"x" * (256 * 1024 + 1), "larger than"),
        (b'{"format": "enclavekit-notify-config", "version": 1}', "provider must be an object"),
        (b"\x00\xff garbage", "not JSON"),
    ],
)
def test_an_unreadable_or_malformed_config_stops_the_boot(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RuntimeError) as caught:
        start(
            "bad-config",
            [*CLI, "enclave", "run", APP, "--listen", f"unix://{tmp_path / 'e.sock'}", "--state",
             str(tmp_path / "state"), "--config", str(path)],
            log_dir=tmp_path,
        )  # fmt: skip
    assert "exited (2)" in str(caught.value) and expected in str(caught.value)
    assert not (tmp_path / "e.sock").exists(), "it never served"
