"""The KMS endpoint is measured and TLS-authenticated: a host that routes the enclave to its own KMS gets nothing.

Attested key release is confidential, not authenticated: anyone can seal a CiphertextForRecipient to the public
key in an enclave's attestation document. These tests play the hostile host with a real fake KMS on loopback
that answers with a correctly sealed envelope holding a key the test chose, and show the enclave's client refuses
it (before sending a request) unless it is the measured endpoint, proven by TLS to the measured CA.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from enclavekit.attestation.nitro import AttestationDocument
from enclavekit.enclave.tracks import enclave_kms_client
from enclavekit.errors import ConfigurationError
from enclavekit.kms import EmulatorThread, RunningEmulator, open_service
from enclavekit.kms.client import KmsClient
from enclavekit.kms.cms import seal_envelope
from enclavekit.kms.endpoint import Credentials
from enclavekit.kms.errors import InsecureKmsEndpoint, KmsEndpointUntrusted
from enclavekit.kms.measured import MeasuredKmsEndpoint, parse_route
from enclavekit.nsm import NsmSimulator, load_root
from enclavekit.services.inference.config import InferenceConfig
from enclavekit.services.notify.enclave_config import InvalidEnclaveConfig, NotifyEnclaveConfig, canonical
from enclavekit.stack.tls import ProviderTls, ensure_provider_tls
from tests.test_kms_fixtures import enclave_only_policy, simulated_enclave

HOST_CHOSEN_KEY = bytes(range(32))
"""The data key a hostile host's fake KMS hands out: if the enclave used it, the host would know its key."""
CREDENTIALS = Credentials("AKIDLOCALTEST", "local-secret")


@dataclass
class FakeKms:
    """A real HTTP(S) server the host runs: it answers every operation with a correctly sealed envelope of
    :data:`HOST_CHOSEN_KEY` to the Recipient's public key, and counts the requests it got."""

    tls: ProviderTls | None = None
    requests: int = 0
    connections: int = 0
    server: ThreadingHTTPServer | None = field(default=None, repr=False)

    def start(self) -> int:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                document = base64.b64decode(body["Recipient"]["AttestationDocument"])
                public_key = AttestationDocument.from_bytes(document).public_key
                assert public_key is not None
                answer = json.dumps(
                    {
                        "KeyId": "host-key",
                        "CiphertextBlob": base64.b64encode(b"whatever").decode(),
                        "CiphertextForRecipient": base64.b64encode(seal_envelope(HOST_CHOSEN_KEY, public_key)).decode(),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, address = super().get_request()
                fake.connections += 1
                if fake.tls is not None:
                    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                    context.load_cert_chain(fake.tls.cert_file, fake.tls.key_file)
                    sock = context.wrap_socket(sock, server_side=True)
                return sock, address

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a refused handshake is the point of these tests

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def ca(tmp_path: Path) -> ProviderTls:
    """The local CA the measured configuration pins, and the emulator's certificate from it."""
    return ensure_provider_tls(tmp_path / "ca", "127.0.0.1")


@pytest.fixture
def host_ca(tmp_path: Path) -> ProviderTls:
    """The host's own CA (and a certificate for the same address): not the pinned one."""
    return ensure_provider_tls(tmp_path / "host-ca", "127.0.0.1")


@pytest.fixture
def enclave(tmp_path: Path) -> NsmSimulator:
    return simulated_enclave(tmp_path / "sim")


@pytest.fixture
def emulator(tmp_path: Path, ca: ProviderTls, enclave: NsmSimulator) -> Iterator[RunningEmulator]:
    service = open_service(tmp_path / "kms", trusted_roots=[load_root(tmp_path / "sim")])
    try:
        with EmulatorThread(service, tls=(ca.cert_file, ca.key_file)) as running:
            yield running
    finally:
        service.keystore.close()


@pytest.fixture
def key_id(emulator: RunningEmulator, ca: ProviderTls, enclave: NsmSimulator) -> str:
    import boto3

    client = boto3.client(  # the host side verifies the emulator's CA too
        "kms",
        endpoint_url=emulator.url,
        region_name="us-east-1",
        verify=str(ca.cert_file.with_name("ca.pem")),
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )
    return str(client.create_key(Policy=enclave_only_policy(enclave.pcr(0).hex()))["KeyMetadata"]["KeyId"])


@pytest.fixture
def fakes() -> Iterator[list[FakeKms]]:
    started: list[FakeKms] = []
    yield started
    for fake in started:
        fake.stop()


def _fake(fakes: list[FakeKms], tls: ProviderTls | None) -> tuple[FakeKms, int]:
    fake = FakeKms(tls)
    fakes.append(fake)
    return fake, fake.start()


def _client(measured: MeasuredKmsEndpoint, enclave: NsmSimulator, route: tuple[str, int] | None = None) -> KmsClient:
    endpoint = measured.endpoint(CREDENTIALS, route=route)
    endpoint._attempts = 1
    return KmsClient(endpoint, enclave.client().attestation)


def test_the_genuine_emulator_over_tls_releases_a_data_key_to_the_measured_enclave(
    emulator: RunningEmulator, ca: ProviderTls, enclave: NsmSimulator, key_id: str
) -> None:
    assert emulator.url.startswith("https://")
    measured = MeasuredKmsEndpoint(emulator.url, "us-east-1", ca.ca_pem)
    data_key = _client(measured, enclave).generate_data_key(key_id)
    assert len(data_key.plaintext) == 32 and data_key.plaintext != HOST_CHOSEN_KEY
    again = _client(measured, enclave).decrypt(data_key.ciphertext_blob, key_id=key_id)
    assert again == data_key.plaintext


def test_a_fake_kms_would_hand_the_enclave_a_host_chosen_key_if_its_ca_were_trusted(
    fakes: list[FakeKms], host_ca: ProviderTls, enclave: NsmSimulator
) -> None:
    """The attack these tests stop is real: a correctly sealed envelope opens, and holds the host's key."""
    fake, port = _fake(fakes, host_ca)
    trusting_the_host = MeasuredKmsEndpoint(f"https://127.0.0.1:{port}", "us-east-1", host_ca.ca_pem)
    assert _client(trusting_the_host, enclave).generate_data_key("any").plaintext == HOST_CHOSEN_KEY
    assert fake.requests == 1


def test_host_cannot_route_the_enclave_to_a_fake_kms_with_another_ca(
    emulator: RunningEmulator, fakes: list[FakeKms], ca: ProviderTls, host_ca: ProviderTls, enclave: NsmSimulator
) -> None:
    fake, port = _fake(fakes, host_ca)  # a certificate for the same address, from the host's CA
    measured = MeasuredKmsEndpoint(emulator.url, "us-east-1", ca.ca_pem)
    with pytest.raises(KmsEndpointUntrusted) as caught:
        _client(measured, enclave, route=("127.0.0.1", port)).generate_data_key("any")
    assert caught.value.code == "kms_endpoint_untrusted"
    assert fake.connections == 1 and fake.requests == 0, "nothing (no Recipient) was sent to the fake"


def test_host_cannot_route_the_enclave_to_a_plain_http_fake_kms(
    emulator: RunningEmulator, fakes: list[FakeKms], ca: ProviderTls, enclave: NsmSimulator
) -> None:
    fake, port = _fake(fakes, None)
    measured = MeasuredKmsEndpoint(emulator.url, "us-east-1", ca.ca_pem)
    with pytest.raises(KmsEndpointUntrusted):
        _client(measured, enclave, route=("127.0.0.1", port)).decrypt(b"blob")
    assert fake.requests == 0


def test_a_route_through_a_tcp_proxy_to_the_genuine_kms_works(
    emulator: RunningEmulator, ca: ProviderTls, enclave: NsmSimulator, key_id: str
) -> None:
    """The host may choose the TCP path (its proxy): TLS still ends in the enclave and verifies the KMS."""
    listener = socket.create_server(("127.0.0.1", 0))
    relayed = {"connections": 0}

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def proxy() -> None:
        while True:
            try:
                inbound, _ = listener.accept()
            except OSError:
                return
            relayed["connections"] += 1
            outbound = socket.create_connection((emulator.host, emulator.port))
            threading.Thread(target=pipe, args=(inbound, outbound), daemon=True).start()
            threading.Thread(target=pipe, args=(outbound, inbound), daemon=True).start()

    threading.Thread(target=proxy, daemon=True).start()
    try:
        measured = MeasuredKmsEndpoint(emulator.url, "us-east-1", ca.ca_pem)
        route = cast(tuple[str, int], listener.getsockname()[:2])
        assert len(_client(measured, enclave, route=route).generate_data_key(key_id).plaintext) == 32
        assert relayed["connections"] == 1
    finally:
        listener.close()


def test_the_genuine_emulator_with_an_unpinned_ca_is_refused(
    emulator: RunningEmulator, host_ca: ProviderTls, enclave: NsmSimulator, key_id: str
) -> None:
    """The system store does not know the local CA, and another pinned CA does not either: fail closed."""
    for measured in (
        MeasuredKmsEndpoint(emulator.url, "us-east-1", host_ca.ca_pem),
        MeasuredKmsEndpoint(emulator.url, "us-east-1"),
    ):
        with pytest.raises(KmsEndpointUntrusted):
            _client(measured, enclave).generate_data_key(key_id)


@pytest.mark.parametrize("url", ["http://127.0.0.1:4566", "ftp://127.0.0.1", "HTTP://kms.example"])
def test_a_kms_endpoint_that_is_not_https_is_refused_without_the_unsafe_flag(url: str) -> None:
    with pytest.raises(InsecureKmsEndpoint) as caught:
        MeasuredKmsEndpoint.from_document({"url": url}, region="us-east-1")
    assert caught.value.code == "kms_endpoint_insecure"


def test_plain_http_only_with_the_measured_unsafe_flag() -> None:
    allowed = MeasuredKmsEndpoint.from_document(
        {"url": "http://127.0.0.1:4566", "unsafe_plain_http": True}, region="us-east-1"
    )
    assert allowed.unsafe_plain_http and allowed.to_document()["unsafe_plain_http"] is True
    with pytest.raises(ConfigurationError):
        MeasuredKmsEndpoint.from_document({"url": "http://127.0.0.1:4566", "unsafe_plain_http": "yes"}, region="x-y-1")


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"url": "https://kms.example/path"},
        {"url": "https://user@kms.example"},
        {"url": "https://kms.example:99999"},
        {"url": "https://kms.example", "ca_pem": "not a certificate"},
        {"url": "https://kms.example", "ca_pem": "x" * 70000},
        {"url": "https://kms.example", "proxy": "127.0.0.1:1"},
        {"url": 7},
    ],
)
def test_a_malformed_kms_endpoint_is_refused_with_a_configuration_error(document: Any) -> None:
    with pytest.raises(ConfigurationError):
        MeasuredKmsEndpoint.from_document(document, region="us-east-1")


def test_no_endpoint_means_aws_kms_in_the_region_with_the_system_roots() -> None:
    aws = MeasuredKmsEndpoint.from_document(None, region="eu-west-1")
    assert aws == MeasuredKmsEndpoint("https://kms.eu-west-1.amazonaws.com", "eu-west-1")
    assert aws.is_aws and aws.ca_pem is None


@pytest.mark.parametrize("value", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:x", ":443", "h:70000"])
def test_a_malformed_kms_route_is_refused(value: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_route(value)
    assert parse_route("[::1]:8443") == ("::1", 8443)


def test_host_cannot_choose_the_kms_url_by_launch_setting(enclave: NsmSimulator, ca: ProviderTls) -> None:
    """``kms_url`` was how the host picked the endpoint: it is refused, not silently ignored."""
    measured = MeasuredKmsEndpoint("https://127.0.0.1:4566", "us-east-1", ca.ca_pem)
    context = SimpleNamespace(nsm=enclave.client(), settings={"kms_url": "http://127.0.0.1:9"})
    with pytest.raises(ConfigurationError, match="kms_url"):
        enclave_kms_client(cast(Any, context), measured)
    routed = SimpleNamespace(nsm=enclave.client(), settings={"kms_route": "127.0.0.1:9"})
    assert enclave_kms_client(cast(Any, routed), measured).endpoint.url == "https://127.0.0.1:4566"


def test_the_notify_config_refuses_a_plain_http_kms_endpoint(ca: ProviderTls) -> None:
    document: dict[str, Any] = {
        "format": "enclavekit-notify-config",
        "version": 1,
        "provider": {"url": "https://127.0.0.1:8443", "ca_pem": ca.ca_pem},
        "kms": {"key_id": "k", "api_key_ciphertext": "AAEC", "endpoint": {"url": "http://127.0.0.1:4566"}},
    }
    with pytest.raises(InvalidEnclaveConfig, match="not https"):
        NotifyEnclaveConfig.from_bytes(canonical(document))
    document["kms"]["endpoint"] = {"url": "https://127.0.0.1:4566", "ca_pem": ca.ca_pem}
    config = NotifyEnclaveConfig.from_bytes(canonical(document))
    assert config.kms.endpoint == MeasuredKmsEndpoint("https://127.0.0.1:4566", "us-east-1", ca.ca_pem)
    assert NotifyEnclaveConfig.from_bytes(canonical(config.to_document())).kms == config.kms


def test_the_inference_config_refuses_a_plain_http_kms_endpoint() -> None:
    base = {"model_id": "m", "version": "1", "publisher_key": "00" * 32, "kms_key_id": "k"}
    with pytest.raises(ConfigurationError):
        InferenceConfig.from_bytes(json.dumps({**base, "kms_url": "http://127.0.0.1:4566"}).encode())
    plain = InferenceConfig.from_bytes(
        json.dumps({**base, "kms_url": "http://127.0.0.1:4566", "unsafe_kms_plain_http": True}).encode()
    )
    assert plain.kms_endpoint().unsafe_plain_http
    assert InferenceConfig.from_bytes(json.dumps(base).encode()).kms_endpoint().is_aws
