"""The host kit that every HTTP service shares: one body limit, one error envelope, one runner, one settings
loader. The body limit is driven at the ASGI level with each service's real app, because uvicorn's own parser
already refuses a malformed ``Content-Length`` on the wire: the middleware is what holds under any server."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from enclavekit.errors import ConfigurationError, Error, InfrastructureError, Rejected
from enclavekit.hostkit.body_limit import BodyLimit
from enclavekit.hostkit.errors import INTERNAL_ERROR, envelope, http_status
from enclavekit.hostkit.handlers import install_error_handlers
from enclavekit.hostkit.server import ServerThread
from enclavekit.hostkit.settings import load_settings
from enclavekit.hostkit.sockets import listen

App = Callable[..., Any]


@dataclass
class Exchange:
    """One request driven straight into an ASGI app: what it answered, and how it read the body."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    events: list[str] = field(default_factory=list)
    pulled: int = 0

    @property
    def error(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


def drive(
    app: App,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes] | None = None,
    events: list[str] | None = None,
) -> Exchange:
    exchange = Exchange(events=[] if events is None else events)
    pending = list(chunks or [b""])

    async def receive() -> dict[str, Any]:
        if not pending:
            await asyncio.sleep(3600)  # a client that sends nothing more
        chunk = pending.pop(0)
        exchange.pulled += 1
        exchange.events.append(f"sent {exchange.pulled}")
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            exchange.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            exchange.body += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    return exchange


# --- each service's real app ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kms_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    from enclavekit.kms.emulator import kms_app, open_service

    service = open_service(tmp_path_factory.mktemp("kms"))
    try:
        yield kms_app(service)
    finally:
        service.keystore.close()


@pytest.fixture(scope="module")
def trust_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    from enclavekit.services.trust.api import create_app
    from enclavekit.services.trust.service import TrustService
    from enclavekit.services.trust.settings import TrustSettings

    service = TrustService(TrustSettings(state_dir=tmp_path_factory.mktemp("trust")))
    try:
        yield create_app(service)
    finally:
        service.close()


@pytest.fixture(scope="module")
def notify_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    import boto3

    from enclavekit.attestation.nitro import NitroPolicy
    from enclavekit.client import AttestedClient
    from enclavekit.kms.emulator import EmulatorThread, open_service
    from enclavekit.services.notify.api import ApiDeps, create_app
    from enclavekit.services.notify.metrics import Metrics
    from enclavekit.services.notify.settings import NotifySettings
    from enclavekit.services.notify.store import open_store
    from enclavekit.services.notify.tokens import TokenIssuer
    from enclavekit.services.notify.worldid import WorldIdVerifier

    root = tmp_path_factory.mktemp("notify")
    kms_service = open_service(root)
    with EmulatorThread(kms_service) as emulator:
        kms = boto3.client(
            "kms",
            endpoint_url=emulator.url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        settings = NotifySettings(state_dir=root, max_body=4096)
        store = open_store(settings.effective_database_url)
        deps = ApiDeps(
            settings,
            store,
            TokenIssuer(kms, key, issuer="test", enclave_track="notify"),
            WorldIdVerifier("http://127.0.0.1:9", "app_test", "test"),
            AttestedClient.nitro("tcp://127.0.0.1:9", NitroPolicy(unsafe_any_measurements=True)),
            None,
            Metrics(),
        )
        try:
            yield create_app(deps)
        finally:
            store.engine.dispose()
            kms_service.keystore.close()


@pytest.fixture(scope="module")
def attestation_endpoint_app() -> App:
    from enclavekit.host.attestation_endpoint import attestation_app

    return attestation_app("tcp://127.0.0.1:9")


SERVICES = ["notify_app", "trust_app", "kms_app", "attestation_endpoint_app"]
POSTS = {"notify_app": "/v1/authorize", "trust_app": "/api/tasks", "kms_app": "/", "attestation_endpoint_app": "/"}


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("declared", [b"ten", b"-1", b"+5", b" 1e3", b"\xd9\xa3"])
def test_invalid_content_length_is_refused_with_400_by_every_service(
    request: pytest.FixtureRequest, service: str, declared: bytes
) -> None:
    app = request.getfixturevalue(service)
    answer = drive(app, "POST", POSTS[service], [(b"content-length", declared)], [b"{}"])
    assert answer.status == 400
    assert answer.pulled == 0  # refused before a byte of the body was read
    if service == "kms_app":
        assert answer.error["__type"] == "SerializationException"
    else:
        assert answer.error["error"]["code"] == "bad_request" and answer.error["allowRetry"] is False


@pytest.mark.parametrize("service", SERVICES)
def test_two_content_lengths_that_disagree_are_refused(request: pytest.FixtureRequest, service: str) -> None:
    app = request.getfixturevalue(service)
    answer = drive(app, "POST", POSTS[service], [(b"content-length", b"2"), (b"content-length", b"20")], [b"{}"])
    assert answer.status == 400 and answer.pulled == 0


@pytest.mark.parametrize("service", SERVICES)
def test_declared_length_over_the_limit_is_a_413_before_reading(request: pytest.FixtureRequest, service: str) -> None:
    app = request.getfixturevalue(service)
    answer = drive(app, "POST", POSTS[service], [(b"content-length", b"999999999999")], [b"x"])
    assert answer.status == 413 and answer.pulled == 0
    assert answer.headers["connection"] == "close"


@pytest.mark.parametrize("service", ["notify_app", "trust_app", "kms_app"])
def test_chunked_body_over_the_limit_is_cut_off_at_the_limit(request: pytest.FixtureRequest, service: str) -> None:
    app = request.getfixturevalue(service)
    chunks = [b" " * 65536] * 200  # 13 MB, no Content-Length: over every service's limit
    headers = [(b"content-type", b"application/json"), (b"x-amz-target", b"TrentService.Encrypt")]
    answer = drive(app, "POST", POSTS[service], headers, chunks)
    assert answer.status == 413
    assert answer.pulled < 200  # the rest was never read
    code = answer.error["__type"] if service == "kms_app" else answer.error["error"]["code"]
    expected = {
        "notify_app": "payload_too_large",
        "trust_app": "upload_too_large",
        "kms_app": "RequestEntityTooLargeException",
    }
    assert code == expected[service]


def _recording_app(exchange_events: list[str]) -> App:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got = 0
        while True:
            message = await receive()
            got += 1
            exchange_events.append(f"app got {got} ({len(message.get('body', b''))} bytes)")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def test_a_slow_body_reaches_the_app_chunk_by_chunk_not_buffered() -> None:
    events: list[str] = []  # the sender's and the app's, in the order they happened
    limited = BodyLimit(_recording_app(events), limit=10_000)
    answer = drive(limited, "POST", "/", [], [b"x" * 100] * 20, events=events)
    assert answer.status == 204
    # the app saw each chunk as it came: a buffering limit would show 20 "sent" before the first "app got"
    assert events[:4] == ["sent 1", "app got 1 (100 bytes)", "sent 2", "app got 2 (100 bytes)"]
    assert len(events) == 40


def test_a_request_with_a_body_is_refused_where_none_is_taken() -> None:
    events: list[str] = []
    answer = drive(BodyLimit(_recording_app(events), limit=0), "POST", "/", [], [b"x", b"y"])
    assert answer.status == 413 and events == []


# --- the envelope -----------------------------------------------------------------------------------------------


class _Declared(Rejected):
    code = "declared"
    http_status = 409


class _Plain(Error):
    code = "plain_secret_path"


def test_an_error_declares_its_status_and_travels_in_the_envelope() -> None:
    assert envelope(_Declared("taken")) == (
        409,
        {"allowRetry": False, "error": {"code": "declared", "message": "taken"}},
    )
    assert http_status(Rejected("no")) == 400 and http_status(Rejected("no"), rejected_status=422) == 422
    status, body = envelope(InfrastructureError("queue down"))
    assert status == 503 and body["allowRetry"] is True and body["error"]["message"] == "queue down"


def test_an_unexpected_error_is_a_500_that_names_nothing() -> None:
    status, body = envelope(_Plain("/etc/enclavekit/secret.key is unreadable"))
    assert status == 500
    assert body["error"] == {"code": INTERNAL_ERROR, "message": "internal error"}
    assert "secret" not in json.dumps(body)


def test_notify_asset_exists_keeps_its_wire_shape() -> None:
    from enclavekit.services.notify.errors import AssetExists, NotInitialized

    status, body = envelope(AssetExists("already there", asset_url="https://cdn/x"))
    assert (status, body["error"]["code"], body["asset_url"], body["allowRetry"]) == (
        409,
        "asset_already_exists",
        "https://cdn/x",
        False,
    )
    assert envelope(NotInitialized("wait"))[1]["allowRetry"] is True  # a refusal that waiting fixes


class _Item(BaseModel):
    name: str


def _kit_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/items")
    async def items(item: _Item) -> dict[str, str]:
        return {"name": item.name}

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("the secret is in /var/keys")

    return app


def test_framework_refusals_and_crashes_answer_in_the_envelope() -> None:
    with ServerThread(BodyLimit(_kit_app(), limit=1000)) as url:
        invalid = httpx.post(f"{url}/items", json={"name": 3})
        assert invalid.status_code == 400
        assert invalid.json()["error"] == {"code": "bad_request", "message": "name: Input should be a valid string"}
        missing = httpx.get(f"{url}/nowhere")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        method = httpx.get(f"{url}/items")
        assert method.status_code == 405 and method.json()["error"]["code"] == "method_not_allowed"
        crash = httpx.get(f"{url}/crash")
        assert crash.status_code == 500 and "secret" not in crash.text
        big = httpx.post(f"{url}/items", content=(b"x" * 600 for _ in range(3)))
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"


# --- the socket -------------------------------------------------------------------------------------------------


def test_listen_closes_its_socket_when_the_port_is_taken() -> None:
    taken = listen("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        before = len(list(Path("/proc/self/fd").iterdir()))
        for _ in range(20):
            with pytest.raises(OSError, match="in use"):
                listen("127.0.0.1", port)
        assert len(list(Path("/proc/self/fd").iterdir())) == before
    finally:
        taken.close()


def test_listen_says_it_is_tcp_so_asyncio_disables_nagle() -> None:
    with listen("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP


# --- settings ---------------------------------------------------------------------------------------------------


class _Settings(BaseModel):
    state_dir: Path
    name: str = "x"
    peers: tuple[str, ...] = ()
    limit: int = 5
    recheck: timedelta = timedelta(hours=1)


def test_settings_come_from_env_then_set_then_options() -> None:
    env = {"ENCLAVEKIT_DEMO_NAME": "env", "ENCLAVEKIT_DEMO_LIMIT": "7", "ENCLAVEKIT_DEMO_PEERS": "a, b,"}
    settings = load_settings(
        _Settings, service="demo", environ=env, sets=["name=set", "recheck=90"], state_dir=Path("/s"), limit=None
    )
    assert settings == _Settings(
        state_dir=Path("/s"), name="set", peers=("a", "b"), limit=7, recheck=timedelta(seconds=90)
    )
    assert (
        load_settings(_Settings, service="demo", environ=env, sets=["name=set"], state_dir=Path("/s"), name="o").name
        == "o"
    )


@pytest.mark.parametrize(
    ("sets", "named"),
    [(["nope=1"], "nope"), (["limit"], "limit"), (["limit=many"], "limit")],
)
def test_a_bad_setting_is_a_configuration_error_naming_it(sets: list[str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        load_settings(_Settings, service="demo", environ={}, sets=sets, state_dir=Path("/s"))


def test_a_dataclass_settings_class_is_typed_the_same_way() -> None:
    from enclavekit.services.inference.protections import ProtectionSettings

    settings = load_settings(
        ProtectionSettings, service="inference", environ={"ENCLAVEKIT_INFERENCE_RATE": "50"}, sets=["burst=9"]
    )
    assert (settings.rate, settings.burst) == (50.0, 9)
    with pytest.raises(ConfigurationError):
        load_settings(ProtectionSettings, service="inference", environ={}, sets=["rate=-1"])


# --- import weight ----------------------------------------------------------------------------------------------


def test_the_kit_package_and_its_pure_modules_load_no_web_framework() -> None:
    code = (
        "import sys; import enclavekit.hostkit, enclavekit.hostkit.errors, enclavekit.hostkit.sockets, "
        "enclavekit.hostkit.settings, enclavekit.hostkit.process; "
        "print(sorted(m for m in ('uvicorn', 'fastapi', 'starlette', 'sqlalchemy', 'jinja2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
