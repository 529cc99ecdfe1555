"""The host relay's cost: RPC round trips and bulk throughput through it, against the same without it.

    python3 dev.py run python benchmarks/relay.py [--quick] [--json]

Everything runs as in production, each piece its own process: the demo enclave (simulated NSM) on a Unix
socket, `enclavekit host relay` in front of it, and the client here. Round trip: an attested `demo.echo` call
through the relay vs directly to the enclave's socket, same run. Throughput: 1 MiB messages streamed to a
sink process through the relay vs over a direct TCP loopback connection, same run (target: >= 70 %). The
relay's upstream is the sink's Unix socket, as the enclave's is in the local stack (vsock on Nitro); the
relay's CPU time per GiB comes from /proc. Two more cases give context: a direct Unix connection (the
fastest a local hop can be), and a relay whose upstream is TCP as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
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
import socket, sys, threading
def serve(listener):
    buffer = bytearray(1 << 20)
    while True:
        connection, _ = listener.accept()
        with connection:
            received = 0
            while n := connection.recv_into(buffer):
                received += n
            connection.sendall(b"%d\\n" % received)
tcp = socket.create_server(("127.0.0.1", int(sys.argv[1])))
unix = socket.socket(socket.AF_UNIX)
unix.bind(sys.argv[2])
unix.listen()
for listener in (tcp, unix):
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
MIB = 1 << 20


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


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _throughput(target: str, messages: int, relay_pid: int | None) -> tuple[float, float | None]:
    """Stream ``messages`` x 1 MiB to the sink at ``target``; MiB/s, and the relay's CPU-seconds per GiB."""
    payload = memoryview(b"\xa5" * MIB)
    if target.startswith("unix://"):
        connection = socket.socket(socket.AF_UNIX)
        connection.connect(target.removeprefix("unix://"))
    else:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        connection = socket.create_connection((host, int(port)))
    with connection:
        cpu_before = 0.0 if relay_pid is None else _cpu_seconds(relay_pid)
        start = time.perf_counter()
        for _ in range(messages):
            connection.sendall(payload)
        connection.shutdown(socket.SHUT_WR)
        received = int(connection.makefile("rb").readline())
        elapsed = time.perf_counter() - start
        relay_cpu = None if relay_pid is None else (_cpu_seconds(relay_pid) - cpu_before) / (messages / 1024)
    assert received == messages * MIB, (received, messages)
    return messages / elapsed, relay_cpu


def _relay(listen_port: int, upstream: str) -> subprocess.Popen[str]:
    process, _ = _start([*CLI, "host", "relay", "--listen", f"tcp://127.0.0.1:{listen_port}", "--upstream", upstream])
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    calls, messages, rounds = (300, 512, 5) if args.quick else (3000, 2048, 9)

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
        relay = _relay(relay_port, f"unix://{socket_path}")
        sink_port, sink_path = free_port(), Path(folder) / "sink.sock"
        sink, _ = _start([sys.executable, "-c", SINK, str(sink_port), str(sink_path)])
        to_unix_port, to_tcp_port = free_port(), free_port()
        to_unix = _relay(to_unix_port, f"unix://{sink_path}")
        to_tcp = _relay(to_tcp_port, f"tcp://127.0.0.1:{sink_port}")
        targets = {  # name: (where the client connects, the relay's pid)
            "direct": (f"tcp://127.0.0.1:{sink_port}", None),
            "via_relay": (f"tcp://127.0.0.1:{to_unix_port}", to_unix.pid),
            "direct_unix": (f"unix://{sink_path}", None),
            "via_relay_tcp_upstream": (f"tcp://127.0.0.1:{to_tcp_port}", to_tcp.pid),
        }
        try:
            policy = NitroPolicy(measurements=[{0: pcr0}], roots=(load_root(state),))
            direct = asyncio.run(_round_trips(f"unix://{socket_path}", policy, calls))
            relayed = asyncio.run(_round_trips(f"tcp://127.0.0.1:{relay_port}", policy, calls))
            _throughput(targets["direct"][0], 64, None)  # warm up
            mib_s: dict[str, list[float]] = {name: [] for name in targets}
            cpu: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(rounds):  # interleaved, so every case sees the same machine
                for name, (target, relay_pid) in targets.items():
                    rate, relay_cpu = _throughput(target, messages, relay_pid)
                    mib_s[name].append(rate)
                    if relay_cpu is not None:
                        cpu[name].append(relay_cpu)
        finally:
            for process in (to_tcp, to_unix, sink, relay, enclave):
                process.terminate()
                process.wait(10)

    def stats(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "p50_us": round(statistics.median(ordered), 1),
            "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        }

    rate = {name: statistics.median(values) for name, values in mib_s.items()}
    out: dict[str, Any] = {
        "benchmark": "relay",
        "rpc_round_trip_direct_unix": stats(direct),
        "rpc_round_trip_via_relay": stats(relayed),
        "relay_added_p50_us": round(statistics.median(relayed) - statistics.median(direct), 1),
        "throughput_direct_mib_s": round(rate["direct"], 1),
        "throughput_via_relay_mib_s": round(rate["via_relay"], 1),
        "throughput_ratio": round(rate["via_relay"] / rate["direct"], 3),
        "target_throughput_ratio": 0.7,
        "relay_cpu_s_per_gib": round(statistics.median(cpu["via_relay"]), 3),
        "throughput_direct_unix_mib_s": round(rate["direct_unix"], 1),
        "throughput_ratio_vs_direct_unix": round(rate["via_relay"] / rate["direct_unix"], 3),
        "throughput_via_relay_tcp_upstream_mib_s": round(rate["via_relay_tcp_upstream"], 1),
        "throughput_ratio_tcp_upstream": round(rate["via_relay_tcp_upstream"] / rate["direct"], 3),
        "relay_cpu_s_per_gib_tcp_upstream": round(statistics.median(cpu["via_relay_tcp_upstream"]), 3),
        "throughput_runs_mib_s": {name: [round(value) for value in values] for name, values in mib_s.items()},
        "message_size_bytes": MIB,
        "messages_per_round": messages,
        "rounds": rounds,
    }
    if args.json:
        print(json.dumps(out))
        return
    for key, value in out.items():
        print(f"{key:>40}: {value}")


if __name__ == "__main__":
    main()
