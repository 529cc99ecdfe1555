"""Faults: a dispatcher killed mid-batch, an enclave killed mid-delivery, Braze answering 429/500.

No notification may be lost and the provider must never receive the same (message, device) twice: acks
per outcome, retries that keep each batch's composition, and an ``Idempotency-Key`` per provider request
that every enclave of the track derives the same way.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.hostkit.server import ServerThread
from enclavekit.nsm import load_root
from enclavekit.services.notify.fake_braze import FakeBraze
from enclavekit.services.notify.pushid import seal_push_id
from enclavekit.services.notify.store import open_store
from enclavekit.services.notify.testing import Harness
from enclavekit.services.notify.wire import SECRET_KEY, Notification, SecretKeyRequest
from enclavekit.stack.tls import ensure_provider_tls
from tests.polling import streams_drained, wait_for

API_KEY = "braze-key-faults"
QUEUES = ("NOTIFY_INBOX", "NOTIFY_NOTIFICATIONS")  # notify's work queues (settings.inbox_stream, .stream)
FAST = {"ack_wait": 3, "backoff_base": 0.3, "backoff_max": 2, "enclave_timeout": 8, "batch_size": 20}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeBraze, str]]:
    """The fake Braze over HTTPS, its certificate from a local CA (pinned by the enclave's measured config)."""
    braze = FakeBraze(API_KEY)
    tls = ensure_provider_tls(tmp_path / "provider", "127.0.0.1")
    with ServerThread(braze.app, tls=(str(tls.cert_file), str(tls.key_file))) as url:
        yield braze, url


def _harness(tmp_path, fake_url: str, **dispatcher: object) -> Harness:  # type: ignore[no-untyped-def]
    tls = ensure_provider_tls(tmp_path / "provider", "127.0.0.1")
    database = f"sqlite:///{tmp_path / 'notify.db'}"
    return Harness(tmp_path, database, fake_url, API_KEY, {**FAST, **dispatcher}, provider_tls=tls)


async def _public_key(harness: Harness, relay: str) -> bytes:
    policy = NitroPolicy(measurements=[{0: bytes.fromhex(harness.pcr0)}], roots=(load_root(harness.state),))
    async with AttestedClient.nitro(relay, policy) as client:
        return bytes.fromhex((await client.call(SECRET_KEY, SecretKeyRequest())).public_key)


def _subscribe(harness: Harness, topic: str, count: int, public_key: bytes) -> list[str]:
    """``count`` devices subscribed to ``topic`` (rows as the API writes them: sealed push IDs only)."""
    store = open_store(harness.database_url)
    devices = [f"dev-{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    rows = [(topic, os.urandom(42).hex(), int(time.time()) + 86400) for _ in devices]
    for device, row in zip(devices, rows, strict=True):
        store.subscribe([row], seal_push_id(device, public_key))
    store.engine.dispose()
    return devices


def _ingest(harness: Harness, topic: str) -> str:
    body = {"topic": topic, "data_b64": base64.b64encode(os.urandom(24)).decode()}
    answer = httpx.post(f"{harness.ingest_url}/v1/messages", json=body, timeout=10)
    assert answer.status_code == 202
    return str(answer.json()["id"])


def _wait_all(
    harness: Harness, fake: FakeBraze, message_id: str, devices: list[str], timeout: float = 60
) -> collections.Counter[str]:
    """Every (device, count) delivered for ``message_id``, once every device has it and the queues are drained
    (every message acknowledged: nothing can be delivered again, so a duplicate would be counted by now)."""

    def got() -> collections.Counter[str]:
        return collections.Counter(alias for mid, alias in fake.delivered_pairs() if mid == message_id)

    try:
        wait_for(lambda: set(got()) >= set(devices), timeout, interval=0.1)
    except AssertionError:
        missing = len(set(devices) - set(got()))
        raise AssertionError(f"{missing} of {len(devices)} devices never got {message_id}") from None
    wait_for(lambda: streams_drained(harness.nats_url, *QUEUES), timeout, interval=0.1, what="every message acked")
    return got()


def test_killing_the_dispatcher_mid_batch_loses_nothing_and_duplicates_nothing(
    tmp_path, fake: tuple[FakeBraze, str]
) -> None:  # type: ignore[no-untyped-def]
    braze, url = fake
    harness = _harness(tmp_path, url)
    try:
        harness.start_core()
        harness.start_enclave("notify-1")
        harness.start_ingest()
        dispatcher = harness.start_dispatcher()
        topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
        devices = _subscribe(harness, topic, 90, asyncio.run(_public_key(harness, harness.relays[0])))
        braze.hold_next(1)  # Braze takes the first request and keeps the dispatcher waiting
        message_id = _ingest(harness, topic)
        assert braze.arrived.wait(30), "no delivery started"
        dispatcher.kill()  # SIGKILL mid-batch: nothing acked
        braze.release()
        harness.start_dispatcher()  # a new one gets the message again after ack_wait
        delivered = _wait_all(harness, braze, message_id, devices)
        assert set(delivered) == set(devices)
        assert max(delivered.values()) == 1, f"duplicates: {[d for d, n in delivered.items() if n > 1]}"
    finally:
        braze.release()
        harness.stop()


def test_a_delivery_slower_than_ack_wait_is_not_redelivered_while_in_work(
    tmp_path, fake: tuple[FakeBraze, str]
) -> None:  # type: ignore[no-untyped-def]
    # The dispatcher tells JetStream "in progress" while it works; without that, a provider slower than
    # ack_wait (3 s here) would have the message redelivered and sent to the provider a second time.
    braze, url = fake
    harness = _harness(tmp_path, url)
    try:
        harness.start_core()
        harness.start_enclave("notify-1")
        harness.start_ingest()
        harness.start_dispatcher()
        topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
        devices = _subscribe(harness, topic, 10, asyncio.run(_public_key(harness, harness.relays[0])))
        braze.hold_next(1)
        message_id = _ingest(harness, topic)
        assert braze.arrived.wait(30), "no delivery started"
        # The provider stays slow well past ack_wait (JetStream's timer runs in nats-server: no clock to inject);
        # a redelivery while it is held would reach the provider as a second request: fail at once if one does.
        held_until = time.monotonic() + 2.2 * FAST["ack_wait"]  # the enclave's timeout is 8 s
        while time.monotonic() < held_until:
            assert braze.requests == 1, "the message was redelivered while in work"
            time.sleep(0.1)
        braze.release()
        delivered = _wait_all(harness, braze, message_id, devices)
        assert set(delivered) == set(devices) and max(delivered.values()) == 1
        assert (braze.requests, braze.replays) == (1, 0), "the message was redelivered while in work"
    finally:
        braze.release()
        harness.stop()


def test_killing_the_enclave_mid_delivery_loses_nothing_and_duplicates_nothing(
    tmp_path, fake: tuple[FakeBraze, str]
) -> None:  # type: ignore[no-untyped-def]
    braze, url = fake
    harness = _harness(tmp_path, url)
    track = f"notify{uuid.uuid4().hex[:8]}"
    try:
        harness.start_core()
        harness.start_enclave("notify-1", track=track)
        harness.start_enclave("notify-2", track=track, relay=False)  # keeps the track (and its key) alive
        harness.start_ingest()
        harness.start_dispatcher()  # talks to notify-1 only
        topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
        devices = _subscribe(harness, topic, 60, asyncio.run(_public_key(harness, harness.relays[0])))
        braze.hold_next(1)
        message_id = _ingest(harness, topic)
        assert braze.arrived.wait(30), "no delivery started"
        harness.enclaves[0].kill()  # SIGKILL while Braze holds its request: it never hears the answer
        braze.release()
        harness.restart_enclave(0, "notify-1", track=track)  # rejoins the track: same push key
        delivered = _wait_all(harness, braze, message_id, devices)
        assert set(delivered) == set(devices)
        assert max(delivered.values()) == 1, f"duplicates: {[d for d, n in delivered.items() if n > 1]}"
        assert braze.replays >= 1, "the repeated request was recognised by its Idempotency-Key"
    finally:
        braze.release()
        harness.stop()


def test_two_enclaves_of_one_track_deliver_for_the_same_subscriptions(tmp_path, fake: tuple[FakeBraze, str]) -> None:  # type: ignore[no-untyped-def]
    braze, url = fake
    harness = _harness(tmp_path, url)
    track = f"notify{uuid.uuid4().hex[:8]}"
    try:
        harness.start_core()
        harness.start_enclave("notify-1", track=track)
        harness.start_enclave("notify-2", track=track)
        harness.start_ingest()
        harness.start_dispatcher()  # round robin over both relays
        keys = [asyncio.run(_public_key(harness, relay)) for relay in harness.relays]
        assert keys[0] == keys[1], "both members hold the track's push key"
        topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
        devices = _subscribe(harness, topic, 40, keys[0])  # sealed to the key of the first
        for _ in range(4):
            message_id = _ingest(harness, topic)
            delivered = _wait_all(harness, braze, message_id, devices)
            assert set(delivered) == set(devices) and max(delivered.values()) == 1
        logs = [(harness.logs / f"enclave-notify-{i}.log").read_text() for i in (1, 2)]
        assert all("recipients {'delivered'" in log for log in logs), "each enclave delivered batches"
    finally:
        harness.stop()


async def _dead_letters(harness: Harness) -> list[Notification]:
    nc = await nats.connect(harness.nats_url)
    js = nc.jetstream()
    out = []
    info = await js.stream_info("NOTIFY_NOTIFICATIONS_DEAD")
    for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1 if info.state.messages else 0):
        message = await js.get_msg("NOTIFY_NOTIFICATIONS_DEAD", seq)
        out.append(Notification.from_bytes(message.data or b""))
    await nc.close()
    return out


def test_braze_429_and_500_are_retried_then_dead_lettered(tmp_path, fake: tuple[FakeBraze, str]) -> None:  # type: ignore[no-untyped-def]
    braze, url = fake
    harness = _harness(tmp_path, url, max_attempts=2, batch_size=50)
    try:
        harness.start_core()
        harness.start_enclave("notify-1")
        harness.start_ingest()
        harness.start_dispatcher()
        topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
        devices = _subscribe(harness, topic, 5, asyncio.run(_public_key(harness, harness.relays[0])))

        braze.fail_next(429, 500, 503)  # transient: the enclave retries with backoff and gets through
        message_id = _ingest(harness, topic)
        delivered = _wait_all(harness, braze, message_id, devices)
        assert set(delivered) == set(devices) and max(delivered.values()) == 1

        braze.fail_next(*([500] * 40))  # a Braze outage: every attempt of every retry fails
        lost = _ingest(harness, topic)
        deadline = time.monotonic() + 60
        dead: list[Notification] = []
        while time.monotonic() < deadline and not dead:
            time.sleep(0.5)
            dead = [n for n in asyncio.run(_dead_letters(harness)) if n.id == lost]
        assert dead, "the notification was dead-lettered"
        assert len(dead[0].recipients) == 5 and dead[0].attempt == 2
        assert not [p for p in braze.delivered_pairs() if p[0] == lost]
        metrics = httpx.get(f"{harness.dispatcher_url}/metrics", timeout=10).text
        assert "notify_notifications_dead_lettered_total 1.0" in metrics
        assert "notify_recipients_retried_total 5.0" in metrics
    finally:
        harness.stop()


def test_a_topic_too_large_for_one_queue_message_is_delivered_in_parts(tmp_path, fake: tuple[FakeBraze, str]) -> None:  # type: ignore[no-untyped-def]
    braze, url = fake
    harness = _harness(tmp_path, url, batch_size=50)
    try:
        harness.start_core()
        harness.start_enclave("notify-1")
        harness.start_ingest()
        harness.start_dispatcher()
        topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
        devices = _subscribe(harness, topic, 2100, asyncio.run(_public_key(harness, harness.relays[0])))
        message_id = _ingest(harness, topic)
        delivered = _wait_all(harness, braze, message_id, devices)
        assert set(delivered) == set(devices) and max(delivered.values()) == 1
        assert "queued for 2100 recipients" in (harness.logs / "ingest.log").read_text()
    finally:
        harness.stop()
