"""notify's pipeline: recipients per second from ingest to the provider, latency at a fixed rate, and where the
time goes — beside the cost of the sealed-box opens alone, measured in the same run.

    python3 dev.py run python benchmarks/notify_pipeline.py [--quick] [--json]

Every piece runs as in `enclavekit up`, each its own process: nats-server (JetStream), the KMS emulator, the
notify enclave (simulated NSM) behind `enclavekit host relay`, the egress proxy, the ingest worker, the
dispatcher, and the fake Braze (`enclavekit notify capture-server`) as the provider; SQLite holds the
subscriptions. Messages are published to the ingest stream (`notify.inbox`) as the XMTP adapter would.

* throughput: one topic with many subscribers, a few messages; recipients delivered per second, from the
  first publish to the provider having answered for every recipient;
* latency: 1,000 messages/s (5 subscribers each, 200 topics) for a few seconds; per message, from its
  publish to the provider receiving it (p50/p99), and whether the rate was sustained; the same at 200/s;
  with each process's CPU time per message delivered (from /proc), the benchmark's own included;
* breakdown, same run: one sealed-box open; one attested RPC round trip through the relay; an enclave batch
  of 50 (opens, validation, RPC; provider skipped because already delivered); one JetStream publish → pull of
  a 50-recipient notification; one Braze request of 50 aliases through the CONNECT tunnel.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.nsm import load_root
from enclavekit.services.notify.braze import TunnelHttp, braze_payload
from enclavekit.services.notify.ingest import ChatMessage
from enclavekit.services.notify.pushid import StaticPushKeys, seal_push_id
from enclavekit.services.notify.store import open_store
from enclavekit.services.notify.testing import CLI, Harness, start
from enclavekit.services.notify.wire import (
    HEALTH_CHECK,
    NOTIFICATION,
    SECRET_KEY,
    HealthCheckRequest,
    Notification,
    NotificationBatch,
    Recipient,
    SecretKeyRequest,
)
from enclavekit.stack.tls import ensure_provider_tls

API_KEY = "bench-key"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


_PROVIDER_CA: list[str] = []
"""The capture provider's local CA (PEM file), set by :func:`main`: it serves HTTPS as Braze does."""


async def _stats(url: str, arrivals: bool = False) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30, verify=ssl.create_default_context(cafile=_PROVIDER_CA[0])) as client:
        answer = await client.get(f"{url}/_fake/stats", params={"arrivals": "1"} if arrivals else {})
        result: dict[str, Any] = answer.json()
        return result


def _subscribe(harness: Harness, topics: list[str], per_topic: int, key: bytes) -> int:
    store = open_store(harness.database_url)
    total = 0
    for topic in topics:
        for i in range(per_topic):
            store.subscribe(
                [(topic, os.urandom(42).hex(), int(time.time()) + 86400)], seal_push_id(f"d{i}-{topic[-12:]}", key)
            )
            total += 1
    store.engine.dispose()
    return total


async def _publish(js: Any, topic: str, data: bytes) -> str:
    message = ChatMessage(topic=topic, data_b64=base64.b64encode(data).decode(), id=uuid.uuid4().hex)
    assert message.id is not None
    await js.publish("notify.inbox", message.model_dump_json().encode(), headers={"Nats-Msg-Id": message.id})
    return message.id


async def throughput(harness: Harness, braze: str, subscribers: int, messages: int, key: bytes) -> dict[str, Any]:
    topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
    await asyncio.to_thread(_subscribe, harness, [topic], subscribers, key)
    before = (await _stats(braze))["recipients"]
    nc = await nats.connect(harness.nats_url)
    js = nc.jetstream()
    started = time.perf_counter()
    for _ in range(messages):
        await _publish(js, topic, os.urandom(64))
    expected = before + subscribers * messages
    while (await _stats(braze))["recipients"] < expected:
        if time.perf_counter() - started > 300:
            raise RuntimeError("throughput run did not finish in 300 s")
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    await nc.close()
    return {
        "subscribers": subscribers,
        "messages": messages,
        "recipients": subscribers * messages,
        "seconds": round(elapsed, 2),
        "recipients_per_second": round(subscribers * messages / elapsed),
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


async def latency(
    harness: Harness, braze: str, rate: int, seconds: float, key: bytes, processes: dict[str, int]
) -> dict[str, Any]:
    topics = [f"/xmtp/mls/1/g-{uuid.uuid4().hex}" for _ in range(200)]
    await asyncio.to_thread(_subscribe, harness, topics, 5, key)
    cpu_before = {name: _cpu_seconds(pid) for name, pid in processes.items()}
    nc = await nats.connect(harness.nats_url)
    js = nc.jetstream()
    sent: dict[str, float] = {}
    count = int(rate * seconds)
    started = time.perf_counter()
    for i in range(count):
        target = started + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        message_id = await _publish(js, topics[i % len(topics)], os.urandom(64))
        sent[message_id] = time.time()
    publish_seconds = time.perf_counter() - started
    deadline = time.monotonic() + 120
    while True:
        arrivals = (await _stats(braze, arrivals=True))["first_seen"]
        if all(m in arrivals for m in sent) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    await nc.close()
    cpu = {name: _cpu_seconds(pid) - cpu_before[name] for name, pid in processes.items()}
    latencies = [(arrivals[m] - t) * 1000 for m, t in sent.items() if m in arrivals]
    last = max(arrivals[m] for m in sent if m in arrivals)
    per_message = {name: round(used / len(latencies) * 1000, 3) for name, used in cpu.items()}
    return {
        "rate_asked": rate,
        "messages": count,
        "recipients_each": 5,
        "publish_rate_achieved": round(count / publish_seconds),
        "delivered_messages": len(latencies),
        "delivery_rate": round(len(latencies) / (last - min(sent.values()))),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
        "cpu_ms_per_message": {**per_message, "total": round(sum(per_message.values()), 3)},
    }


async def breakdown(harness: Harness, braze: str, key: bytes, rounds: int) -> dict[str, Any]:
    # sealed-box open alone, in this process
    keys = StaticPushKeys(os.urandom(32))
    boxes = [bytes.fromhex(seal_push_id(f"device-{i:06d}", keys.public_key())) for i in range(2000)]
    started = time.perf_counter()
    for box in boxes:
        keys.open_sealed(box)
    open_us = (time.perf_counter() - started) / len(boxes) * 1e6

    policy = NitroPolicy(measurements=[{0: bytes.fromhex(harness.pcr0)}], roots=(load_root(harness.state),))
    assert harness.relays
    async with AttestedClient.nitro(harness.relays[0], policy) as client:
        await client.call(HEALTH_CHECK, HealthCheckRequest())
        started = time.perf_counter()
        for _ in range(rounds):
            await client.call(SECRET_KEY, SecretKeyRequest())
        rpc_ms = (time.perf_counter() - started) / rounds * 1000
        batch = NotificationBatch(
            message_id="bench-" + uuid.uuid4().hex,
            topic="/xmtp/mls/1/g-bench",
            encrypted_message_base64=base64.b64encode(os.urandom(64)).decode(),
            recipients=tuple(Recipient(encrypted_push_id=seal_push_id(f"bd-{i}", key)) for i in range(50)),
        )
        await client.call(NOTIFICATION, batch)  # delivered once; the rest are answered from the enclave's memory
        started = time.perf_counter()
        for _ in range(rounds):
            await client.call(NOTIFICATION, batch)
        batch_ms = (time.perf_counter() - started) / rounds * 1000

    nc = await nats.connect(harness.nats_url)
    js = nc.jetstream()
    stream = f"BENCH_{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=stream, subjects=[f"bench.{stream}"])
    subscription = await js.pull_subscribe(f"bench.{stream}", durable="bench", stream=stream)
    payload = Notification(
        id="x", topic="/xmtp/mls/1/g-bench", encrypted_message_base64="QUFB", recipients=batch.recipients, created_at=0
    ).to_bytes()
    started = time.perf_counter()
    for _ in range(rounds):
        await js.publish(f"bench.{stream}", payload)
        [message] = await subscription.fetch(1, timeout=5)
        await message.ack()
    queue_ms = (time.perf_counter() - started) / rounds * 1000
    await js.delete_stream(stream)
    await nc.close()

    extra = {"topic": "t", "encryptedMessageBase64": "QUFB", "messageKind": "v3-conversation", "messageId": "b"}
    body = json.dumps(braze_payload([f"alias-{i}" for i in range(50)], extra)).encode()
    context = ssl.create_default_context(cafile=_PROVIDER_CA[0])
    http = TunnelHttp(braze, harness.egress, timeout=30, ssl_context=context)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    await http.request("POST", "/messages/send", body, {**headers, "Idempotency-Key": uuid.uuid4().hex})
    started = time.perf_counter()
    for _ in range(rounds):
        await http.request("POST", "/messages/send", body, {**headers, "Idempotency-Key": uuid.uuid4().hex})
    http_ms = (time.perf_counter() - started) / rounds * 1000
    await http.close()

    metrics = httpx.get(f"{harness.dispatcher_url}/metrics", timeout=10).text
    sums = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("notify_enclave_batch_seconds_")
    }
    count = sums.get("notify_enclave_batch_seconds_count", 0.0)
    return {
        "sealed_box_open_us": round(open_us, 1),
        "opens_per_second_per_core": round(1e6 / open_us),
        "rpc_round_trip_ms": round(rpc_ms, 2),
        "enclave_batch_of_50_without_provider_ms": round(batch_ms, 2),
        "of_which_opens_ms": round(50 * open_us / 1000, 2),
        "queue_publish_to_pull_ms": round(queue_ms, 2),
        "braze_request_of_50_via_tunnel_ms": round(http_ms, 2),
        "dispatcher_mean_batch_call_ms": round(sums.get("notify_enclave_batch_seconds_sum", 0) / count * 1000, 2)
        if count
        else None,
    }


async def main(quick: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="notify-bench-"))
    tls = ensure_provider_tls(root / "provider", "127.0.0.1")
    _PROVIDER_CA[:] = [str(root / "provider" / "ca.pem")]
    capture = start(
        "braze",
        [*CLI, "notify", "capture-server", "--api-key", API_KEY, "--tls-cert", str(tls.cert_file),
         "--tls-key", str(tls.key_file)],
    )  # fmt: skip
    braze = capture.ready["url"]
    harness = Harness(
        root,
        f"sqlite:///{root / 'notify.db'}",
        braze,
        API_KEY,
        {"batch_size": 50, "concurrency": 16, "max_in_flight": 256, "ack_wait": 60},
        log_level="info",  # as deployed: per-message lines are debug
        provider_tls=tls,
    )
    try:
        harness.start_core()
        harness.start_enclave("notify-bench")
        harness.start_ingest()
        harness.start_dispatcher()
        policy = NitroPolicy(measurements=[{0: bytes.fromhex(harness.pcr0)}], roots=(load_root(harness.state),))
        assert harness.relays
        async with AttestedClient.nitro(harness.relays[0], policy) as client:
            key = bytes.fromhex((await client.call(SECRET_KEY, SecretKeyRequest())).public_key)
        await throughput(harness, braze, 500, 2, key)  # warm-up
        assert harness.running is not None
        processes = {r.name: r.process.pid for r in harness.running}
        processes |= {"fake-braze": capture.process.pid, "benchmark (publisher, polling)": os.getpid()}
        result = {
            "benchmark": "notify_pipeline",
            "quick": quick,
            "cpus": os.cpu_count(),
            "throughput": await throughput(harness, braze, 2000 if quick else 5000, 3 if quick else 6, key),
            "latency": await latency(harness, braze, 1000, 3.0 if quick else 15.0, key, processes),
            "latency_at_200_per_second": await latency(harness, braze, 200, 3.0 if quick else 15.0, key, processes),
            "breakdown": await breakdown(harness, braze, key, 50 if quick else 300),
        }
    finally:
        harness.stop()
        capture.stop()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (under a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    arguments = parser.parse_args()
    outcome = asyncio.run(main(arguments.quick))
    if arguments.json:
        print(json.dumps(outcome))
    else:
        print(json.dumps(outcome, indent=2))
    sys.exit(0)
