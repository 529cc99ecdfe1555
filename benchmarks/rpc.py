"""RPC over loopback: round-trip latency and throughput, attested and plaintext, TCP and Unix, one run.

    python3 dev.py run python benchmarks/rpc.py [--quick] [--json]

Server and client run in this process on one event loop (as the figures of a 2-core machine are otherwise
dominated by scheduling). For each transport (TCP on 127.0.0.1, a Unix socket):

* ``raw``: a bare asyncio echo of the same bytes, no framing, no RPC: the floor of one loopback round trip;
* ``plaintext``: a typed RPC call (pydantic in and out) on plain frames;
* ``attested``: the same call over the attested channel (ChaCha20-Poly1305 records both ways);
* ``connect``: a new connection with the attested handshake (fresh and cached document), NSM simulator and
  Nitro verifier, in a worker thread as in production.

Plus throughput with 64 calls in flight on one connection. Figures are medians of per-call times; raw,
plaintext and attested calls are timed interleaved, round by round (``benchmarks/interleave.py``), and the
attested call's extra cost is the median over rounds of each round's difference (with its spread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.channel import Initiator, Mode, Responder, SessionKeys
from enclavekit.channel.adapters import NitroVerifier
from enclavekit.nsm import NsmSimulator, load_root
from enclavekit.rpc import CallContext, Route, Router, RpcClient, RpcServer, ServerLimits
from enclavekit.rpc.transport import listen, open_connection
from interleave import interleave_async


class Echo(BaseModel):
    text: str


ECHO = Route("echo", Echo, Echo)
PAYLOAD = Echo(text="x" * 100)
PER_ROUND = 100  # calls of each kind per round


def _router() -> Router:
    router = Router()

    @router.handler(ECHO)
    async def echo(request: Echo, call: CallContext) -> Echo:
        return request

    return router


def _p50(values: list[float]) -> float:
    return round(statistics.median(values), 1)


async def _raw_echo(address: str) -> tuple[Callable[[], Awaitable[None]], Callable[[], None]]:
    """A bare asyncio echo at ``address`` and one connection to it: (one round trip, close)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    server, bound = await listen(address, echo)
    reader, writer = await open_connection(bound)
    message = PAYLOAD.model_dump_json().encode() + bytes(20)  # about the size of a request frame

    async def round_trip() -> None:
        writer.write(message)
        await writer.drain()
        await reader.readexactly(len(message))

    def close() -> None:
        writer.close()
        server.close()

    return round_trip, close


async def run(quick: bool) -> dict[str, Any]:
    rounds = 1000 if quick else 10000
    connects = 30 if quick else 300
    out: dict[str, Any] = {"benchmark": "rpc", "rounds": rounds, "connects": connects}
    with tempfile.TemporaryDirectory() as state:
        simulator = NsmSimulator(Path(state), app={"main.py": b"print('benchmark enclave')\n"})
        responder = Responder(SessionKeys.generate(), simulator.client())
        responder.refresh_document()
        verifier = NitroVerifier(NitroPolicy(roots=(load_root(Path(state)),), measurements=[{0: simulator.pcr(0)}]))
        fresh = Initiator(verifier)
        cached = Initiator(verifier, modes=(Mode.CACHED,), max_document_age=timedelta(minutes=10))
        limits = ServerLimits(max_in_flight=256)
        for kind, address in (("tcp", "tcp://127.0.0.1:0"), ("unix", f"unix://{state}/rpc.sock")):
            raw, close_raw = await _raw_echo("tcp://127.0.0.1:0" if kind == "tcp" else f"unix://{state}/raw.sock")
            plain_address = "tcp://127.0.0.1:0" if kind == "tcp" else f"unix://{state}/plain.sock"
            async with (
                RpcServer(_router(), unsafe_plaintext=True, limits=limits) as plain_server,
                RpcServer(_router(), responder=responder, limits=limits) as server,
            ):
                plain_bound = await plain_server.start(plain_address)
                bound = await server.start(address)
                plain_client = await RpcClient.connect(plain_bound, unsafe_plaintext=True)
                client = await RpcClient.connect(bound, initiator=fresh)
                # interleaved round by round (benchmarks/interleave.py), so all three see the same machine
                timed = await interleave_async(
                    {
                        "raw": raw,
                        "plaintext": lambda c=plain_client: c.call(ECHO, PAYLOAD),
                        "attested": lambda c=client: c.call(ECHO, PAYLOAD),
                    },
                    rounds=rounds // PER_ROUND,
                    per_round=PER_ROUND,
                    warmup=50,
                )
                close_raw()
                for name, each in (("plaintext", plain_client), ("attested", client)):
                    start = time.perf_counter()
                    batches = rounds * 5 // 64
                    for _ in range(batches):
                        await asyncio.gather(*(each.call(ECHO, PAYLOAD) for _ in range(64)))
                    out[f"{kind}_{name}_64_in_flight_calls_per_s"] = round(batches * 64 / (time.perf_counter() - start))
                await plain_client.close()
                await client.close()
                connect_fresh: list[float] = []
                connect_cached: list[float] = []
                for _ in range(connects):
                    for initiator, samples in ((fresh, connect_fresh), (cached, connect_cached)):
                        start_ns = time.perf_counter_ns()
                        connection = await RpcClient.connect(bound, initiator=initiator)
                        samples.append((time.perf_counter_ns() - start_ns) / 1000)
                        await connection.close()
            out[f"{kind}_raw_round_trip_p50_us"] = round(timed.p50("raw"), 1)
            out[f"{kind}_plaintext_call_p50_us"] = round(timed.p50("plaintext"), 1)
            out[f"{kind}_attested_call_p50_us"] = round(timed.p50("attested"), 1)
            added = timed.spread(lambda m: m["attested"] - m["plaintext"], digits=1)
            out[f"{kind}_attested_over_plaintext_us"] = added["median"]
            out[f"{kind}_attested_over_plaintext_us_spread_over_rounds"] = added
            out[f"{kind}_connect_fresh_p50_us"] = _p50(connect_fresh)
            out[f"{kind}_connect_cached_p50_us"] = _p50(connect_cached)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (well under a minute)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    results = asyncio.run(run(args.quick))
    if args.json:
        print(json.dumps(results))
        return
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
