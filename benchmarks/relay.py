"""The host relay's cost: RPC round trips and bulk throughput through it, against the same without it.

    python3 dev.py run python benchmarks/relay.py [--quick] [--json]

Everything runs as in production, each piece its own process: the demo enclave (simulated NSM) on a Unix
socket, `enclavekit host relay` in front of it, and the client here. Round trip: an attested `demo.echo` call
through the relay vs directly to the enclave's socket, same run. Throughput: 1 MiB messages streamed to a
sink process through the relay vs over a direct loopback connection, same run (target: ≥ 70 %).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.enclave.demo import ECHO, Echo
from enclavekit.nsm import load_root
from enclavekit.stack.processes import free_port

CLI = [sys.executable, "-m", "enclavekit.cli"]
SINK = """
import asyncio, sys
async def handle(reader, writer):
    expected = int((await reader.readline()).decode())
    received = 0
    while received < expected:
        chunk = await reader.read(1 << 20)
        if not chunk:
            break
        received += len(chunk)
    writer.write(b"%d\\n" % received)
    await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def _start(argv: list[str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline()


async def _round_trips(endpoint: str, policy: NitroPolicy, count: int) -> list[float]:
    async with AttestedClient.nitro(endpoint, policy) as client:
        request = Echo(text="x" * 64)
        for _ in range(50):
            await client.call(ECHO, request)
        times = []
        for _ in range(count):
            start = time.perf_counter_ns()
            await client.call(ECHO, request)
            times.append((time.perf_counter_ns() - start) / 1000)
        return times


async def _throughput(port: int, messages: int) -> float:
    payload = b"\xa5" * (1 << 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    writer.write(b"%d\n" % (messages * len(payload)))
    for _ in range(messages):
        writer.write(payload)
        await writer.drain()
    received = int((await reader.readline()).decode())
    elapsed = time.perf_counter() - start
    writer.close()
    assert received == messages * len(payload)
    return messages * len(payload) / elapsed / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    calls, messages, rounds = (300, 64, 3) if args.quick else (3000, 256, 5)

    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder) / "state"
        socket_path = Path(folder) / "demo.sock"
        enclave, ready = _start(
            [
                *CLI,
                "enclave",
                "run",
                "enclavekit.enclave.demo:app",
                "--listen",
                f"unix://{socket_path}",
                "--state",
                str(state),
            ]
        )
        pcr0 = bytes.fromhex(json.loads(ready)["pcr0"])
        relay_port = free_port()
        relay, _ = _start(
            [*CLI, "host", "relay", "--listen", f"tcp://127.0.0.1:{relay_port}", "--upstream", f"unix://{socket_path}"]
        )
        sink_port = free_port()
        sink, _ = _start([sys.executable, "-c", SINK, str(sink_port)])
        sink_relay_port = free_port()
        sink_relay, _ = _start(
            [
                *CLI,
                "host",
                "relay",
                "--listen",
                f"tcp://127.0.0.1:{sink_relay_port}",
                "--upstream",
                f"tcp://127.0.0.1:{sink_port}",
            ]
        )
        try:
            policy = NitroPolicy(measurements=[{0: pcr0}], roots=(load_root(state),))
            direct = asyncio.run(_round_trips(f"unix://{socket_path}", policy, calls))
            relayed = asyncio.run(_round_trips(f"tcp://127.0.0.1:{relay_port}", policy, calls))
            direct_mib, relayed_mib = [], []
            for _ in range(rounds):  # interleaved, so both see the same machine
                direct_mib.append(asyncio.run(_throughput(sink_port, messages)))
                relayed_mib.append(asyncio.run(_throughput(sink_relay_port, messages)))
        finally:
            for process in (sink_relay, sink, relay, enclave):
                process.terminate()
                process.wait(10)

    def stats(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "p50_us": round(statistics.median(ordered), 1),
            "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        }

    out: dict[str, Any] = {
        "benchmark": "relay",
        "rpc_round_trip_direct_unix": stats(direct),
        "rpc_round_trip_via_relay": stats(relayed),
        "relay_added_p50_us": round(statistics.median(relayed) - statistics.median(direct), 1),
        "throughput_direct_mib_s": round(statistics.median(direct_mib), 1),
        "throughput_via_relay_mib_s": round(statistics.median(relayed_mib), 1),
        "throughput_ratio": round(statistics.median(relayed_mib) / statistics.median(direct_mib), 3),
        "target_throughput_ratio": 0.7,
        "message_size_bytes": 1 << 20,
        "messages_per_round": messages,
    }
    if args.json:
        print(json.dumps(out))
        return
    for key, value in out.items():
        print(f"{key:>30}: {value}")


if __name__ == "__main__":
    main()
