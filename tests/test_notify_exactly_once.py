"""Exactly once despite ``kill -9``: 300 messages to two recipients through the real pipeline (ingest HTTP →
inbox stream → ingest worker → notifications stream → dispatcher → notify enclave → provider over TLS), one
piece killed with SIGKILL in the middle and restarted by the test; then a restart of the whole ``enclavekit up``
on the same state folder.

Every message that ingest answered 202 must reach each recipient exactly once: 0 lost, 0 duplicated. The
notify enclave is alone (no track): after its restart only the KMS-persisted push key (same PCR0) can open the
stored subscriptions.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.hostkit.server import ServerThread
from enclavekit.nsm import load_root
from enclavekit.services.notify.fake_braze import FakeBraze
from enclavekit.services.notify.pushid import seal_push_id
from enclavekit.services.notify.settings import NotifySettings
from enclavekit.services.notify.store import open_store
from enclavekit.services.notify.testing import CLI, Harness, Running
from enclavekit.services.notify.wire import SECRET_KEY, SecretKeyRequest
from enclavekit.stack.tls import ensure_provider_tls

API_KEY = f"braze-once-{uuid.uuid4().hex}"
MESSAGES = 300
FAST = {"ack_wait": 3, "backoff_base": 0.3, "backoff_max": 2, "enclave_timeout": 8, "batch_size": 20}


@pytest.fixture
def braze(tmp_path: Path) -> Iterator[tuple[FakeBraze, str]]:
    fake = FakeBraze(API_KEY)
    tls = ensure_provider_tls(tmp_path / "provider", "127.0.0.1")
    with ServerThread(fake.app, tls=(str(tls.cert_file), str(tls.key_file))) as url:
        yield fake, url


def _harness(tmp_path: Path, url: str) -> Harness:
    tls = ensure_provider_tls(tmp_path / "provider", "127.0.0.1")
    return Harness(tmp_path, f"sqlite:///{tmp_path / 'notify.db'}", url, API_KEY, FAST, provider_tls=tls)


async def _push_key(relay: str, pcr0: str, state: Path) -> bytes:
    policy = NitroPolicy(measurements=[{0: bytes.fromhex(pcr0)}], roots=(load_root(state),))
    async with AttestedClient.nitro(relay, policy) as client:
        return bytes.fromhex((await client.call(SECRET_KEY, SecretKeyRequest())).public_key)


def _subscribe(database_url: str, topic: str, push_key: bytes) -> list[str]:
    """Two recipients subscribed to ``topic``, as the API stores them (sealed push IDs only)."""
    store = open_store(database_url)
    devices = [f"once-{i}-{uuid.uuid4().hex[:8]}" for i in range(2)]
    for device in devices:
        store.subscribe([(topic, os.urandom(42).hex(), int(time.time()) + 86400)], seal_push_id(device, push_key))
    store.engine.dispose()
    return devices


class Sender(threading.Thread):
    """Posts ``count`` messages to ingest; retries one until it is accepted (202) — the same body is the same
    message id, so a retry after a lost answer is deduplicated by JetStream, never delivered twice."""

    def __init__(self, ingest_url: Callable[[], str], topic: str, count: int) -> None:
        super().__init__(daemon=True)
        self.ingest_url, self.topic, self.count = ingest_url, topic, count
        self.accepted: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(timeout=10) as client:
                for _ in range(self.count):
                    body = {"topic": self.topic, "data_b64": base64.b64encode(os.urandom(24)).decode()}
                    deadline = time.monotonic() + 90
                    while True:
                        try:
                            answer = client.post(f"{self.ingest_url()}/v1/messages", json=body)
                            if answer.status_code == 202:
                                self.accepted.append(str(answer.json()["id"]))
                                break
                        except httpx.HTTPError:
                            pass
                        if time.monotonic() > deadline:
                            raise AssertionError("ingest never accepted a message again")
                        time.sleep(0.05)
                    time.sleep(0.01)
        except BaseException as exc:  # reported by the test
            self.error = exc


async def _drained(nats_url: str) -> bool:
    settings = NotifySettings()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for stream, consumer in (
            (settings.inbox_stream, settings.ingest_consumer),
            (settings.stream, settings.dispatcher_consumer),
        ):
            info = await js.consumer_info(stream, consumer)
            if info.num_pending or info.num_ack_pending:
                return False
        return True
    finally:
        await nc.close()


def _delivered(fake: FakeBraze, accepted: set[str]) -> collections.Counter[tuple[str, str]]:
    return collections.Counter((mid, alias) for mid, alias in fake.delivered_pairs() if mid in accepted)


def _wait_exactly_once(fake: FakeBraze, harness: Harness, sender: Sender, devices: list[str]) -> None:
    sender.join(240)
    assert not sender.is_alive() and sender.error is None, sender.error
    accepted = set(sender.accepted)
    assert len(accepted) == MESSAGES
    expected = {(mid, device) for mid in accepted for device in devices}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        got = _delivered(fake, accepted)
        if set(got) >= expected and asyncio.run(_drained(harness.nats_url)):
            break
        time.sleep(0.25)
    got = _delivered(fake, accepted)
    lost = expected - set(got)
    duplicated = {pair: n for pair, n in got.items() if n > 1}
    assert (len(lost), len(duplicated)) == (0, 0), f"lost {len(lost)}, duplicated {len(duplicated)}"
    assert set(got) == expected


def _run_with_a_kill(
    tmp_path: Path, braze: tuple[FakeBraze, str], kill: Callable[[Harness], Running], restart: Callable[[Harness], None]
) -> None:
    fake, url = braze
    harness = _harness(tmp_path, url)
    try:
        harness.start_core()
        harness.start_enclave("notify-1")
        harness.start_ingest()
        harness.start_dispatcher()
        assert harness.relays
        push_key = asyncio.run(_push_key(harness.relays[0], harness.pcr0, harness.state))
        topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
        devices = _subscribe(harness.database_url, topic, push_key)
        sender = Sender(lambda: harness.ingest_url, topic, MESSAGES)
        sender.start()
        deadline = time.monotonic() + 120
        while len(_delivered(fake, set(sender.accepted))) < 2 * MESSAGES // 3:  # a third of the way
            assert time.monotonic() < deadline and sender.error is None, "deliveries did not start"
            time.sleep(0.02)
        kill(harness).kill()  # SIGKILL, mid-run
        restart(harness)
        _wait_exactly_once(fake, harness, sender, devices)
    finally:
        harness.stop()


def _named(harness: Harness, name: str) -> Running:
    assert harness.running is not None
    return next(r for r in reversed(harness.running) if r.name == name and r.process.poll() is None)


@pytest.mark.timeout(400)
def test_kill_9_of_the_notify_enclave_mid_run_loses_and_duplicates_nothing(
    tmp_path: Path, braze: tuple[FakeBraze, str]
) -> None:
    def kill(harness: Harness) -> Running:
        assert harness.enclaves
        return harness.enclaves[0]

    def restart(harness: Harness) -> None:
        before = harness.pcr0
        harness.restart_enclave(0, "notify-1")  # same config, same PCR0: the push key comes back from KMS
        assert harness.pcr0 == before
        assert "(restored)" in (harness.logs / "enclave-notify-1.log").read_text()

    _run_with_a_kill(tmp_path, braze, kill, restart)


@pytest.mark.timeout(400)
def test_kill_9_of_ingest_mid_run_loses_and_duplicates_nothing(tmp_path: Path, braze: tuple[FakeBraze, str]) -> None:
    _run_with_a_kill(tmp_path, braze, lambda h: _named(h, "ingest"), lambda h: h.start_ingest())


@pytest.mark.timeout(400)
def test_kill_9_of_the_dispatcher_mid_run_loses_and_duplicates_nothing(
    tmp_path: Path, braze: tuple[FakeBraze, str]
) -> None:
    _run_with_a_kill(tmp_path, braze, lambda h: _named(h, "dispatcher"), lambda h: h.start_dispatcher())


# --- the whole `enclavekit up`, stopped and started again on the same state folder ---------------------------------


def _up(state: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    (state / "stack.json").unlink(missing_ok=True)
    process = subprocess.Popen([*CLI, "up", "--state", str(state)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (state / "stack.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the notify stack did not start"
        time.sleep(0.2)
    return process, json.loads((state / "stack.json").read_text())


def _down(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _captured(state: Path, message_ids: set[str]) -> collections.Counter[tuple[str, str]]:
    path = state / "notify" / "captured.jsonl"
    out: collections.Counter[tuple[str, str]] = collections.Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            item = json.loads(line)
            if item["message_id"] in message_ids:
                out.update((item["message_id"], alias) for alias in item["push_ids"])
    return out


def _send_and_count(state: Path, stack: dict[str, Any], topic: str, devices: list[str], count: int) -> None:
    ingest = stack["services"]["notify_ingest"]["url"]
    ids = set()
    with httpx.Client(timeout=10) as client:
        for _ in range(count):
            body = {"topic": topic, "data_b64": base64.b64encode(os.urandom(16)).decode()}
            answer = client.post(f"{ingest}/v1/messages", json=body)
            assert answer.status_code == 202
            ids.add(str(answer.json()["id"]))
    expected = {(mid, device) for mid in ids for device in devices}
    deadline = time.monotonic() + 90
    while set(_captured(state, ids)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    got = _captured(state, ids)
    assert set(got) == expected, f"lost {len(expected - set(got))}"
    assert max(got.values()) == 1


@pytest.mark.timeout(600)  # two starts of the whole stack on a shared 2-core machine
def test_subscriptions_survive_a_restart_of_the_whole_stack(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process, stack = _up(state)
    try:
        notify = next(e for e in stack["enclaves"] if e["name"] == "notify")
        relay = stack["services"]["relay_notify"]["url"]
        push_key = asyncio.run(_push_key(relay, notify["pcr0"], state))
        topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
        database = NotifySettings(state_dir=state).effective_database_url
        devices = _subscribe(database, topic, push_key)
        config = (state / "notify" / "enclave-config.json").read_bytes()
        _send_and_count(state, stack, topic, devices, 20)
    finally:
        _down(process)
    process, again = _up(state)
    try:
        renotify = next(e for e in again["enclaves"] if e["name"] == "notify")
        assert renotify["pcr0"] == notify["pcr0"], "the measured configuration is stable across restarts"
        assert (state / "notify" / "enclave-config.json").read_bytes() == config
        relay = again["services"]["relay_notify"]["url"]
        assert asyncio.run(_push_key(relay, renotify["pcr0"], state)) == push_key
        _send_and_count(state, again, topic, devices, 20)  # the stored subscriptions still deliver
    finally:
        _down(process)
