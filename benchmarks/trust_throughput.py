"""Trust service: verifications per minute with 2 worker processes, and time from submission to verdict.

    python3 dev.py run python benchmarks/trust_throughput.py [--quick] [--json] [--concurrency N] [--database URL]

Real processes on loopback, as in production: a nats-server with JetStream, ``enclavekit trust serve
--no-workers`` (web app and dispatcher, SQLite by default) and two ``enclavekit trust worker`` processes. The
evidence is a mix of the real fixtures: Nitro documents (verified at their own time), dstack bundles (event
log replay, compose hash, OS registry) and a TDX quote with its Intel collateral (dcap-qvl). Every submission is
a distinct target (its ``at`` differs), so nothing is deduplicated.

* paced: submissions at a steady 10/s (below capacity); submission → verdict is ``finished_at - created_at`` of
  each task (server clocks), p50 and p99;
* drain: a backlog queued while no worker runs, then the two workers start: verifications per minute from the
  first claim to the last verdict (the workers' capacity);
* live: the same number submitted as fast as the client can while the workers run (uploads and verifications
  share the machine): verifications per minute from the first submission to the last verdict, and
  submission → verdict under that load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from enclavekit.hostkit.sockets import free_port
from enclavekit.stack.up import nats_server_binary

FIXTURES = Path(os.environ.get("ENCLAVEKIT_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
CLI = [sys.executable, "-m", "enclavekit.cli"]


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def _start(argv: list[str], log: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log.open("ab"))
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"{argv[3:5]} did not start; see {log}")
    return process, json.loads(line)


def _mix() -> list[tuple[str, bytes, dict[str, str]]]:
    """(label, evidence, form fields) for one round of the mix; ``at`` is filled in per submission."""
    nitro = json.loads((FIXTURES / "nitro" / "samples.json").read_text())
    items: list[tuple[str, bytes, dict[str, str]]] = []
    for facts in nitro:
        if facts["expected"].startswith("valid"):
            at = datetime.fromtimestamp(facts["timestamp_ms"] / 1000, tz=UTC)
            items.append(("nitro", (FIXTURES / "nitro" / facts["file"]).read_bytes(), {"at": at.isoformat()}))
    for name in ("debugData_app_bundle.json", "debugData_kms_bundle.json", "debugData2_gateway_bundle.json"):
        data = (FIXTURES / "tdx" / "trust-center" / name).read_bytes()
        items.append(("dstack", data, {"at": "2026-01-01T00:00:00+00:00"}))
    collateral = (FIXTURES / "tdx" / "dcap-qvl" / "tdx_quote_collateral.json").read_text()
    quote = (FIXTURES / "tdx" / "dcap-qvl" / "tdx_quote").read_bytes()
    items.append(("tdx", quote, {"at": "2025-06-20T00:00:00+00:00", "collateral": collateral}))
    return items


def _distinct(fields: dict[str, str], index: int) -> dict[str, str]:
    moment = datetime.fromisoformat(fields["at"]) + timedelta(milliseconds=index + 1)
    return {**fields, "at": moment.isoformat()}


async def _submit(client: httpx.AsyncClient, base: str, item: tuple[str, bytes, dict[str, str]], index: int) -> str:
    _, data, fields = item
    fields = _distinct(fields, index)
    files: dict[str, Any] = {"evidence": ("evidence", data, "application/octet-stream")}
    if "collateral" in fields:
        files["collateral"] = ("collateral.json", fields.pop("collateral").encode(), "application/json")
    answer = await client.post(f"{base}/api/tasks", files=files, data=fields)
    answer.raise_for_status()
    return str(answer.json()["task_id"])


async def _finished(client: httpx.AsyncClient, base: str, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    while len(done) < len(ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(done)} of {len(ids)} tasks finished within {timeout:.0f} s")
        for task_id in [i for i in ids if i not in done]:
            task = (await client.get(f"{base}/api/task/{task_id}")).json()
            if task["status"] in ("completed", "failed"):
                done[task_id] = task
        await asyncio.sleep(0.2)
    return [done[i] for i in ids]


def _latencies(tasks: list[dict[str, Any]]) -> list[float]:
    return [
        (datetime.fromisoformat(t["finished_at"]) - datetime.fromisoformat(t["created_at"])).total_seconds() * 1000
        for t in tasks
    ]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _paced(base: str, *, count: int, rate: float) -> list[dict[str, Any]]:
    mix = _mix()
    async with httpx.AsyncClient(timeout=60) as client:
        # warm-up: one of each kind (imports, chain cache, collateral parse)
        warm = [await _submit(client, base, item, 900_000 + n) for n, item in enumerate(mix)]
        await _finished(client, base, warm, 120)
        ids = []
        for index in range(count):
            ids.append(await _submit(client, base, mix[index % len(mix)], index))
            await asyncio.sleep(1 / rate)
        return await _finished(client, base, ids, 300)


async def _backlog(base: str, *, count: int, offset: int) -> list[str]:
    mix = _mix()
    async with httpx.AsyncClient(timeout=60) as client:
        ids: list[str] = []
        for start in range(0, count, 50):
            batch = range(start, min(count, start + 50))
            ids += await asyncio.gather(*(_submit(client, base, mix[i % len(mix)], offset + i) for i in batch))
        return ids


async def _wait_all(base: str, ids: list[str]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await _finished(client, base, ids, 900)


def _summary(tasks: list[dict[str, Any]], *, since: str, latency: bool = True) -> dict[str, Any]:
    first = min(datetime.fromisoformat(t[since]) for t in tasks)
    last = max(datetime.fromisoformat(t["finished_at"]) for t in tasks)
    span = (last - first).total_seconds()
    verdicts: dict[str, int] = {}
    for task in tasks:
        verdicts[str(task["verdict"])] = verdicts.get(str(task["verdict"]), 0) + 1
    latencies = _latencies(tasks)
    out: dict[str, Any] = {
        "tasks": len(tasks),
        "verdicts": verdicts,
        "span_seconds": round(span, 2),
        "verifications_per_minute": round(len(tasks) / span * 60),
        "attempts_over_1": sum(1 for t in tasks if t["attempts"] != 1),
    }
    if latency:  # (a backlog's waiting time says nothing about the service)
        out["p50_ms"] = round(_pct(latencies, 0.5), 1)
        out["p99_ms"] = round(_pct(latencies, 0.99), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer tasks (well under a minute)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--concurrency", type=int, default=2, help="tasks each of the 2 workers runs at once")
    parser.add_argument("--database", default=None, help="SQLAlchemy URL (default: SQLite in a temp folder)")
    args = parser.parse_args()
    paced, burst, rate = (40, 150, 10.0) if args.quick else (200, 1000, 10.0)
    root = Path(tempfile.mkdtemp(prefix="trust-bench-"))
    port = free_port()
    nats = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(root / "nats")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[subprocess.Popen[bytes]] = []
    workers: list[subprocess.Popen[bytes]] = []

    def start_workers() -> None:
        for number in range(2):
            worker, _ = _start(
                [*CLI, "trust", "worker", *common, "--concurrency", str(args.concurrency)],
                root / f"worker{number}.log",
            )
            workers.append(worker)

    def stop_workers() -> None:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(30)
        workers.clear()

    try:
        _wait_port(port)
        nats_url = f"nats://127.0.0.1:{port}"
        common = ["--state", str(root / "state"), "--nats", nats_url]
        if args.database:
            common += ["--database", args.database]
        web, ready = _start([*CLI, "trust", "serve", *common, "--no-workers"], root / "web.log")
        children.append(web)
        base = ready["url"]
        start_workers()
        paced_tasks = asyncio.run(_paced(base, count=paced, rate=rate))
        # drain: a backlog queued while no worker runs, then the two workers empty it
        stop_workers()
        backlog = asyncio.run(_backlog(base, count=burst, offset=100_000))
        start_workers()
        drained = asyncio.run(_wait_all(base, backlog))
        # live: submissions and verifications at once, on the same machine
        live_ids = asyncio.run(_backlog(base, count=burst, offset=200_000))
        live = asyncio.run(_wait_all(base, live_ids))
        mix = _mix()
        kinds: dict[str, int] = {}
        for index in range(burst):
            kinds[mix[index % len(mix)][0]] = kinds.get(mix[index % len(mix)][0], 0) + 1
        paced_ms = _latencies(paced_tasks)
        figures = {
            "mix": kinds,
            "paced": {
                "tasks": paced,
                "rate_per_s": rate,
                "p50_ms": round(_pct(paced_ms, 0.5), 1),
                "p99_ms": round(_pct(paced_ms, 0.99), 1),
                "mean_ms": round(statistics.fmean(paced_ms), 1),
            },
            "drain": _summary(drained, since="started_at", latency=False),
            "live": _summary(live, since="created_at"),
        }
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for child in [*workers, *reversed(children)]:
            child.send_signal(signal.SIGTERM)
        for child in [*workers, *children]:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        nats.terminate()
        nats.wait(10)
    result = {
        "benchmark": "trust_throughput",
        "quick": args.quick,
        "workers": 2,
        "concurrency": args.concurrency,
        "database": "postgresql" if args.database else "sqlite",
        "cpus": os.cpu_count(),
        **figures,
    }
    if args.json:
        print(json.dumps(result))
        return
    drain, live, paced_figures = figures["drain"], figures["live"], figures["paced"]
    print(f"mix per {burst} tasks: {figures['mix']}")
    print(
        f"2 workers x {args.concurrency}, backlog: {drain['verifications_per_minute']} verifications/min "
        f"({drain['tasks']} tasks in {drain['span_seconds']} s)"
    )
    print(
        f"submissions and verifications at once: {live['verifications_per_minute']} verifications/min, "
        f"submission -> verdict p50 {live['p50_ms']} ms, p99 {live['p99_ms']} ms"
    )
    print(
        f"at {rate:.0f} submissions/s: submission -> verdict p50 {paced_figures['p50_ms']} ms, "
        f"p99 {paced_figures['p99_ms']} ms"
    )


if __name__ == "__main__":
    main()
