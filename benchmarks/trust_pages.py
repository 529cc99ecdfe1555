"""Trust service web app: page load time of the app list with 1,000 apps (and its filters, search, JSON, an app).

    python3 dev.py run python benchmarks/trust_pages.py [--quick] [--json] [--apps N] [--database URL]

``N`` targets (default 1000) with verdicts, summaries and history are written to the service's database first
(SQLite in a temp folder, or ``--database``), then ``enclavekit trust serve --no-workers`` answers over real HTTP
on loopback. Each figure is the server's full answer (HTML rendered, body read) as a client sees it, p50/p99.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from enclavekit.services.trust.model import Kind, Source, TargetOptions, Verdict
from enclavekit.services.trust.store import NewApp, Outcome, TrustStore

CLI = [sys.executable, "-m", "enclavekit.cli"]
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _populate(url: str, count: int) -> None:
    store = TrustStore.open(url)
    rng = random.Random(7)
    verdicts = [Verdict.VERIFIED] * 6 + [Verdict.FAILED] * 2 + [Verdict.INCOMPLETE, Verdict.ERROR]
    for index in range(count):
        tee = rng.choice(["nitro", "tdx", "tdx"])
        kind = Kind.ENCLAVE if tee == "nitro" else rng.choice([Kind.APP, Kind.APP, Kind.KMS, Kind.GATEWAY])
        subject = f"{rng.getrandbits(160):040x}" if tee == "tdx" else f"i-{rng.getrandbits(64):016x}-enc{index:016x}"
        app = NewApp(
            id=f"u-{index:020x}",
            name=f"{kind} {index:04d} ({'production' if index % 3 else 'staging'})",
            kind=kind,
            source=Source.UPLOAD if index % 4 else Source.ENDPOINT,
            tee=tee,
            subject=subject,
            options=TargetOptions(),
            evidence_key=f"evidence/{index:064x}",
        )
        _, task = store.add_target(app, job_name="upload", now=T0 + timedelta(seconds=index))
        claimed = store.claim(task.id, "bench", lease=60, now=T0 + timedelta(seconds=index))
        assert claimed is not None
        verdict = rng.choice(verdicts)
        problem = (
            None
            if verdict is Verdict.VERIFIED
            else {
                "name": "policy.measurements",
                "code": "x",
                "detail": "MRTD and RTMR0..2 match none of the 6 allowed measurement set(s)",
            }
        )
        store.complete(
            claimed,
            Outcome(
                verdict=verdict,
                valid=verdict is Verdict.VERIFIED,
                result_bucket="file:///bench",
                result_key=f"reports/{index}.json",
                evidence_key=app.evidence_key,
                summary={"verdict": str(verdict), "first_problem": problem, "simulated": False},
                os_name="AWS Nitro Enclaves"
                if tee == "nitro"
                else rng.choice(["dstack OS 2d24d302 on 4 vCPU, 8 GiB", None]),
            ),
            recheck_after_success=timedelta(hours=24),
            recheck_after_failure=timedelta(minutes=30),
            now=T0 + timedelta(seconds=index, milliseconds=20),
        )
    store.close()


def _time(client: httpx.Client, url: str, rounds: int) -> dict[str, float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        answer = client.get(url)
        answer.raise_for_status()
        _ = answer.content
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(samples[len(samples) // 2], 2),
        "p99_ms": round(samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))], 2),
        "bytes": len(answer.content),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (well under a minute)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--database", default=None, help="SQLAlchemy URL (default: SQLite in a temp folder)")
    args = parser.parse_args()
    rounds = 60 if args.quick else 400
    root = Path(tempfile.mkdtemp(prefix="trust-pages-"))
    database = args.database or f"sqlite:///{root / 'state' / 'trust' / 'trust.db'}"
    started = time.perf_counter()
    _populate(database, args.apps)
    populate_seconds = time.perf_counter() - started
    web = subprocess.Popen(
        # the web app needs no NATS to serve pages: point it at a closed port, uploads would stay pending
        [
            *CLI,
            "trust",
            "serve",
            "--state",
            str(root / "state"),
            "--database",
            database,
            "--no-workers",
            "--nats",
            "nats://127.0.0.1:1",
        ],
        stdout=subprocess.PIPE,
        stderr=(root / "web.log").open("ab"),
    )
    try:
        assert web.stdout is not None
        base = json.loads(web.stdout.readline())["url"]
        figures: dict[str, Any] = {}
        with httpx.Client(timeout=30) as client:
            listing = client.get(base + "/").text
            assert listing.count('<tr data-app="') == 50, "the first page shows 50 apps"
            pages = {
                "app_list": "/",
                "app_list_page_10": "/?page=10",
                "filtered": "/?status=failed&tee=tdx&sort=status",
                "search": "/?q=production",
                "api_apps": "/api/apps?limit=50",
                "app_page": "/apps/u-" + f"{args.apps // 2:020x}",
            }
            for name, path in pages.items():
                _time(client, base + path, 5)  # warm-up
                figures[name] = _time(client, base + path, rounds)
    finally:
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(20)
        except subprocess.TimeoutExpired:
            web.kill()
    result = {
        "benchmark": "trust_pages",
        "quick": args.quick,
        "apps": args.apps,
        "database": "postgresql" if args.database else "sqlite",
        "rounds": rounds,
        "populate_seconds": round(populate_seconds, 1),
        "cpus": os.cpu_count(),
        **figures,
    }
    if args.json:
        print(json.dumps(result))
        return
    for name, figure in figures.items():
        print(f"{name:18} p50 {figure['p50_ms']:7.2f} ms   p99 {figure['p99_ms']:7.2f} ms   {figure['bytes']} bytes")


if __name__ == "__main__":
    main()
