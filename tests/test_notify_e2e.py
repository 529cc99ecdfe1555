"""notify end to end, every piece its own process, driven through the HTTP API as a chat app would.

Client → API (authorize with a World ID proof, subscribe, unsubscribe) → a chat message arrives at ingest →
JetStream → dispatcher → attested RPC through a capturing relay → enclave → egress proxy → fake Braze. The
fake Braze must receive exactly the right devices with the right payload, and nothing the host holds or
relays may contain a plaintext push ID.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import nats
import psycopg
import pytest

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.hostkit.server import ServerThread
from enclavekit.nsm import load_root
from enclavekit.services.notify.client import ApiError, NotifyClient
from enclavekit.services.notify.fake_braze import FakeBraze
from enclavekit.services.notify.ingest import sender_hmac
from enclavekit.services.notify.store import NotifyStore, create_engine
from enclavekit.services.notify.testing import CLI, Harness
from enclavekit.services.notify.worldid import load_stand_in_secret, mint_proof
from enclavekit.stack.tls import ensure_provider_tls
from tests.polling import streams_drained, wait_for

API_KEY = "braze-key-" + uuid.uuid4().hex
QUEUES = ("NOTIFY_INBOX", "NOTIFY_NOTIFICATIONS")  # notify's work queues (settings.inbox_stream, .stream)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    name = f"notify_e2e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[tuple[Harness, FakeBraze]]:
    root = tmp_path_factory.mktemp("notify-e2e")
    fake = FakeBraze(API_KEY)
    tls = ensure_provider_tls(root / "provider", "127.0.0.1")
    with ServerThread(fake.app, tls=(str(tls.cert_file), str(tls.key_file))) as braze_url:
        harness = Harness(root, postgres_url, braze_url, API_KEY, provider_tls=tls)
        try:
            harness.start_core()
            harness.start_enclave("notify-1")
            harness.start_host()
            yield harness, fake
        finally:
            harness.stop()


class Device:
    """A chat app on one phone: its push ID, its World ID identity, its API client."""

    def __init__(self, harness: Harness, push_id: str, identity: str) -> None:
        policy = NitroPolicy(measurements=[{0: bytes.fromhex(harness.pcr0)}], roots=(load_root(harness.state),))
        self.harness = harness
        self.push_id = push_id
        self.identity = identity
        self.client = NotifyClient(harness.api_url, policy)
        self.sealed = self.client.seal(push_id, self.client.enclave_public_key())
        self.hmac_key = os.urandom(42).hex()

    def prove(self, signal: str) -> dict[str, str]:
        secret = load_stand_in_secret(self.harness.state)
        return mint_proof(
            secret, signal=signal, app_id="app_enclavekit_notify", action="notify-authorize", identity=self.identity
        ).to_json()

    def authorize(self) -> None:
        self.client.authorize(self.sealed, self.prove)

    def subscribe(self, topic: str) -> None:
        self.client.subscribe([(topic, self.hmac_key, int(time.time()) + 7 * 86400)])


def _ingest(harness: Harness, topic: str, data: bytes, sender: Device | None) -> str:
    body = {
        "topic": topic,
        "data_b64": base64.b64encode(data).decode(),
        "sender_hmac": sender_hmac(sender.hmac_key, data) if sender else "",
    }
    answer = httpx.post(f"{harness.ingest_url}/v1/messages", json=body, timeout=10)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def _wait_for(harness: Harness, fake: FakeBraze, message_id: str, timeout: float = 30) -> list[str]:
    """The aliases delivered for ``message_id``, once something was delivered and the queues are drained (every
    message acknowledged: nothing more can arrive, so a wrong second request would be counted by now)."""

    def pairs() -> list[str]:
        return [alias for mid, alias in fake.delivered_pairs() if mid == message_id]

    wait_for(pairs, timeout, what=f"a delivery for {message_id}")
    wait_for(lambda: streams_drained(harness.nats_url, *QUEUES), timeout, interval=0.1, what="every message acked")
    return pairs()


def test_fake_braze_gets_exactly_the_subscribers_without_the_sender_and_the_tombstoned(
    stack: tuple[Harness, FakeBraze],
) -> None:
    harness, fake = stack
    topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
    alice, bob, carol, dave = (Device(harness, f"device-{n}-{uuid.uuid4().hex[:6]}", n) for n in ("a", "b", "c", "d"))
    for device in (alice, bob, carol, dave):
        device.authorize()
        device.subscribe(topic)

    # Carol's phone, signed in with another World ID, seals the same push ID anew and asks to delete her
    # subscription: the host cannot tell it is hers (a tombstone); the enclave can.
    carol_again = Device(harness, carol.push_id, "c2")
    carol_again.authorize()
    carol_again.client.unsubscribe(topic, carol.hmac_key)
    # Mallory (another device) tries to unsubscribe Bob: only a tombstone that the enclave will ignore.
    mallory = Device(harness, f"device-m-{uuid.uuid4().hex[:6]}", "m")
    mallory.authorize()
    mallory.client.unsubscribe(topic, bob.hmac_key)
    # Dave unsubscribes and subscribes again: as owner, his delete is immediate.
    dave.client.unsubscribe(topic, dave.hmac_key)
    with pytest.raises(ApiError) as missing:
        dave.client.unsubscribe(topic, dave.hmac_key)
    assert missing.value.status == 404
    dave.subscribe(topic)

    data = os.urandom(64)
    message_id = _ingest(harness, topic, data, sender=alice)
    delivered = _wait_for(harness, fake, message_id)
    assert sorted(delivered) == sorted([bob.push_id, dave.push_id])
    delivery = next(d for d in fake.deliveries if d.extra.get("messageId") == message_id)
    assert delivery.extra == {
        "topic": topic,
        "encryptedMessageBase64": base64.b64encode(data).decode(),
        "messageKind": "v3-conversation",
        "messageId": message_id,
    }
    assert delivery.messages["apple_push"]["mutable_content"] is True

    # The tombstoned row is gone (the dispatcher deleted it); the next message does not even try Carol.
    store = NotifyStore(create_engine(harness.database_url))
    rows = {row["hmac_key"] for row in store.dump() if row.get("topic") == topic}
    assert carol.hmac_key not in rows and bob.hmac_key in rows
    store.engine.dispose()
    second = _ingest(harness, topic, os.urandom(64), sender=bob)
    assert sorted(_wait_for(harness, fake, second)) == sorted([alice.push_id, dave.push_id])


def test_welcome_messages_are_delivered_and_should_push_false_group_messages_are_not(
    stack: tuple[Harness, FakeBraze],
) -> None:
    harness, fake = stack
    device = Device(harness, f"device-w-{uuid.uuid4().hex[:6]}", "w")
    device.authorize()
    welcome, group = f"/xmtp/mls/1/w-{uuid.uuid4().hex}", f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
    device.client.subscribe(
        [(welcome, device.hmac_key, int(time.time()) + 3600), (group, device.hmac_key, int(time.time()) + 3600)]
    )
    silent = httpx.post(
        f"{harness.ingest_url}/v1/messages",
        json={"topic": group, "data_b64": base64.b64encode(b"silent").decode(), "should_push": False},
        timeout=10,
    ).json()["id"]
    other_topic = httpx.post(
        f"{harness.ingest_url}/v1/messages",
        json={"topic": "/xmtp/mls/1/x-" + group[-8:], "data_b64": "AAAA"},
        timeout=10,
    ).json()["id"]
    message_id = _ingest(harness, welcome, b"welcome", sender=None)
    assert _wait_for(harness, fake, message_id) == [device.push_id]
    delivery = next(d for d in fake.deliveries if d.extra.get("messageId") == message_id)
    assert delivery.extra["messageKind"] == "v3-welcome"
    assert not [p for p in fake.delivered_pairs() if p[0] in (silent, other_topic)]


async def _queue_messages(harness: Harness, subscribed: asyncio.Event, done: asyncio.Event) -> list[bytes]:
    """Every message on notify's subjects from when ``subscribed`` is set until ``done`` is."""
    nc = await nats.connect(harness.nats_url)
    seen: list[bytes] = []

    async def keep(message: nats.aio.msg.Msg) -> None:
        seen.append(message.data + json.dumps(dict(message.headers or {})).encode())

    await nc.subscribe("notify.>", cb=keep)
    await nc.flush()  # the server has the subscription
    subscribed.set()
    await done.wait()
    await nc.drain()
    return seen


def test_the_host_never_sees_a_plaintext_push_id(stack: tuple[Harness, FakeBraze]) -> None:
    harness, fake = stack
    topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
    marker = f"PLAINTEXT-PUSH-ID-{uuid.uuid4().hex}"
    devices = [Device(harness, f"{marker}-{i}", f"p{i}") for i in range(3)]
    for device in devices:
        device.authorize()
        device.subscribe(topic)
    devices[2].client.unsubscribe(topic, devices[1].hmac_key)  # a tombstone: another sealed push ID stored

    async def run() -> tuple[list[bytes], list[str]]:
        subscribed, done = asyncio.Event(), asyncio.Event()
        watcher = asyncio.create_task(_queue_messages(harness, subscribed, done))
        await asyncio.wait_for(subscribed.wait(), 10)
        message_id = await asyncio.to_thread(_ingest, harness, topic, os.urandom(32), None)
        delivered = await asyncio.to_thread(_wait_for, harness, fake, message_id)  # the queues are drained too
        done.set()
        return await watcher, delivered

    queued, delivered = asyncio.run(run())
    assert sorted(delivered) == sorted(d.push_id for d in devices)  # it did reach Braze
    assert queued, "the watcher saw the queue traffic"

    store = NotifyStore(create_engine(harness.database_url))
    rows = json.dumps(list(store.dump()), default=str).encode()
    store.engine.dispose()
    relayed = b"".join(p.read_bytes() for p in harness.root.glob("relayed-*.bin"))
    assert len(relayed) > 1000
    host_logs = b"".join(p.read_bytes() for p in harness.logs.glob("*.log") if not p.name.startswith("enclave-"))
    enclave_logs = b"".join(p.read_bytes() for p in harness.logs.glob("enclave-*.log"))
    for where, data in (
        ("database rows", rows),
        ("queue messages", b"".join(queued)),
        ("relayed bytes", relayed),
        ("host logs", host_logs),
        ("enclave logs", enclave_logs),
    ):
        assert marker.encode() not in data, f"a plaintext push ID is in the {where}"
        assert marker.encode().hex().encode() not in data, f"a hex plaintext push ID is in the {where}"
    assert devices[0].sealed.encode() in rows, "the rows were captured (they hold sealed push IDs)"
    assert API_KEY.encode() not in relayed, "the Braze key crossed the relay in plaintext"


def test_dev_proof_contract_is_accepted_by_the_stand_in(stack: tuple[Harness, FakeBraze]) -> None:
    harness, _ = stack
    device = Device(harness, f"device-cli-{uuid.uuid4().hex[:6]}", "unused")
    timestamp = int(time.time())
    signal = f"{device.sealed}:{timestamp}"
    out = subprocess.run(
        [*CLI, "notify", "dev-proof", "--signal", signal, "--json", "--state", str(harness.state)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    proof = json.loads(out)
    assert set(proof) == {"proof", "nullifier_hash", "merkle_root", "credential_type"}
    answer = device.client.authorize(device.sealed, lambda s: proof, timestamp=timestamp)
    assert answer["access_token"].count(".") == 2 and answer["expires_at"] > time.time() + 6 * 86400
    # The same proof for another signal (another push ID) is refused.
    other = Device(harness, f"device-cli2-{uuid.uuid4().hex[:6]}", "unused")
    with pytest.raises(ApiError) as refused:
        other.client.authorize(other.sealed, lambda s: proof, timestamp=timestamp)
    assert (refused.value.status, refused.value.api_code) == (401, "invalid_proof")


def test_metrics_count_the_pipeline(stack: tuple[Harness, FakeBraze]) -> None:
    harness, fake = stack
    device = Device(harness, f"device-metrics-{uuid.uuid4().hex[:6]}", "metrics")
    device.authorize()
    topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
    device.subscribe(topic)
    _wait_for(harness, fake, _ingest(harness, topic, b"counted", sender=None))
    dispatcher = httpx.get(f"{harness.dispatcher_url}/metrics", timeout=10).text
    ingest = httpx.get(f"{harness.ingest_url}/metrics", timeout=10).text
    api = httpx.get(f"{harness.api_url}/metrics", timeout=10).text
    delivered = next(line for line in dispatcher.splitlines() if line.startswith("notify_recipients_delivered_total"))
    assert float(delivered.split()[1]) >= 1
    assert "notify_ingest_to_delivery_seconds_bucket" in dispatcher
    assert "notify_notifications_queued_total" in ingest
    assert 'notify_http_requests_total{route="/v1/authorize",status="200"}' in api


def test_trace_context_travels_from_ingest_through_the_queue_to_the_enclave(stack: tuple[Harness, FakeBraze]) -> None:
    harness, fake = stack
    device = Device(harness, f"device-t-{uuid.uuid4().hex[:6]}", "t")
    device.authorize()
    topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
    device.subscribe(topic)
    trace = os.urandom(16).hex()
    answer = httpx.post(
        f"{harness.ingest_url}/v1/messages",
        json={"topic": topic, "data_b64": base64.b64encode(b"traced").decode()},
        headers={"traceparent": f"00-{trace}-{os.urandom(8).hex()}-01"},
        timeout=10,
    )
    _wait_for(harness, fake, answer.json()["id"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        dispatcher_log = (harness.logs / "dispatcher.log").read_text()
        enclave_log = (harness.logs / "enclave-notify-1.log").read_text()
        if trace in dispatcher_log and trace in enclave_log:
            return
        time.sleep(0.2)
    raise AssertionError("the trace id did not reach the dispatcher's and the enclave's logs")
