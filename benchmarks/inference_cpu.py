"""CPU time per batch-1 ``embed`` of each process on the end-to-end path: client, gateway, enclave.

    PYTHONPATH=src python benchmarks/inference_cpu.py [--calls 300] [--rounds 3] [--json] [--gateway-hot]

The stack of ``benchmarks/inference.py``'s end-to-end part (the enclave process with the real engine, the
gateway straight to its socket as under ``enclavekit up``), without the rest of that benchmark: one client makes
``--calls`` batch-1 calls per round and each process's CPU time per call is read from
``/proc/PID/task/*/schedstat`` (all threads). CPU time, unlike wall time, is barely stretched by a busy machine,
so two source trees can be compared by running this with each on ``PYTHONPATH``, alternately. The client's figure
includes this process's idle background (the KMS emulator's thread, the stack's watchers: ~2-3 ms/s).

``--gateway-hot``: the gateway alone in a hot loop — a :class:`Gateway` (unlimited token bucket) in a child
process, an echo upstream on a Unix socket and one client here; ``--rounds`` × ``--calls`` round trips of a 300-byte
DATA record answered by a 3.2 KB one (a batch-1 embed's sizes), the child's CPU per round trip.
"""

from __future__ import annotations

import os

os.environ.setdefault("ENCLAVEKIT_ENGINE_THREADS", "1")

import argparse
import asyncio
import contextlib
import json
import statistics
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.enclave.runtime import image_files
from enclavekit.kms import EmulatorThread, open_service
from enclavekit.nsm import NsmSimulator, load_root
from enclavekit.services.inference.stack import ENCLAVE_APP, enclave_spec, prepare_model
from inference import TEXT, _cpu_per_call


async def run(calls: int, rounds: int) -> dict[str, Any]:
    from enclavekit.services.inference.client import InferenceClient
    from enclavekit.stack.state import StateDir
    from enclavekit.stack.tls import ensure_provider_tls
    from enclavekit.stack.up import ServiceSpec, Stack, python_command

    with tempfile.TemporaryDirectory(prefix="enclavekit-inference-cpu-") as tmp:
        state = Path(tmp)
        NsmSimulator(state, app=image_files(ENCLAVE_APP))
        tls = ensure_provider_tls(state / "kms-tls", "127.0.0.1")
        service = open_service(state / "kms", trusted_roots=[load_root(state)])
        with EmulatorThread(service, tls=(tls.cert_file, tls.key_file)) as emulator:
            prepared = prepare_model(state, emulator.url, kms_ca_file=tls.cert_file.with_name("ca.pem"), max_batch=32)
            stack = Stack(StateDir(state))
            stack.state.create()
            try:
                enclave = await stack.start_enclave(enclave_spec(prepared))
                upstream = enclave["address"]
                gateway = await stack.start_service(
                    ServiceSpec(
                        "inference_gateway",
                        lambda s, port: python_command(
                            "inference", "gateway", "--upstream", upstream, "--port", str(port)
                        ),
                        url=lambda h, p: f"tcp://{h}:{p}",
                    )
                )
                policy = NitroPolicy(measurements=[{0: bytes.fromhex(enclave["pcr0"])}], roots=(load_root(state),))
                pids = {
                    "client": os.getpid(),
                    "gateway": int(stack.services["inference_gateway"]["pid"]),
                    "enclave": int(enclave["pid"]),
                }
                async with InferenceClient(gateway, policy, model_hash=bytes.fromhex(prepared.model_hash)) as client:

                    async def embed() -> None:
                        await client.embed([TEXT])

                    for _ in range(20):
                        await embed()
                    samples = [await _cpu_per_call(pids, embed, calls) for _ in range(rounds)]
            finally:
                await stack.stop()
    return {
        "calls": calls,
        "rounds": samples,
        "median_us": {name: round(statistics.median(s[name] for s in samples), 1) for name in pids},
    }


_GATEWAY_CHILD = """
import asyncio, sys
from enclavekit.services.inference.gateway import Gateway
from enclavekit.services.inference.protections import ProtectionSettings

async def main() -> None:
    gateway = Gateway(sys.argv[1], ProtectionSettings(rate=1e9, burst=10**9))
    _, port = await gateway.start()
    print(port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def gateway_hot(calls: int, rounds: int) -> dict[str, Any]:
    from enclavekit.channel.wire import MessageType

    header = struct.Struct(">BBI")

    def record(size: int) -> bytes:
        return header.pack(1, MessageType.DATA, size) + bytes(size)

    answer = record(3216)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readexactly(header.unpack(await reader.readexactly(6))[2])
                writer.write(answer)
                await writer.drain()

    with tempfile.TemporaryDirectory(prefix="enclavekit-gateway-hot-") as tmp:
        path = f"{tmp}/upstream.sock"
        server = await asyncio.start_unix_server(echo, path)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _GATEWAY_CHILD, f"unix://{path}", stdout=asyncio.subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", int(await child.stdout.readline()))
            request = record(300)

            async def trip() -> None:
                writer.write(request)
                await writer.drain()
                await reader.readexactly(header.unpack(await reader.readexactly(6))[2])

            for _ in range(200):
                await trip()
            samples = [(await _cpu_per_call({"gateway": child.pid}, trip, calls))["gateway"] for _ in range(rounds)]
            writer.close()
        finally:
            child.kill()
            await child.wait()
            server.close()
    return {"calls": calls, "rounds": samples, "gateway_round_trip_us": round(statistics.median(samples), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--gateway-hot", action="store_true", help="The gateway alone, hot (see above).")
    args = parser.parse_args()
    result = asyncio.run((gateway_hot if args.gateway_hot else run)(args.calls, args.rounds))
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
