"""TDX quote verification (collateral preloaded) against plain dcap-qvl, and dstack event-log replay per bundle.

    python3 dev.py run python benchmarks/tdx_verify.py [--quick] [--json]

Quote: ``tdx.verify`` (parse, collateral window, dcap-qvl, TCB/advisory/platform policy, TD checks, pinned
MRTD/RTMR0..2, the verified result) beside ``dcap_qvl.verify`` alone on the same bytes, the same collateral
object and the same time, interleaved round by round (``benchmarks/interleave.py``) on this thread's CPU clock,
so both see the same machine. Target: the wrapper adds under 20 % at p50 (the median over rounds of each
round's overhead, with its min..max).

Event log: per bundle of ``../shared/fixtures/tdx``, parsing the JSON log and replaying it into RTMR0..3 (every
runtime digest recomputed), and the whole ``dstack.report`` without collateral (replay, app identity,
compose hash, MRCONFIGID, policy), also interleaved on the CPU clock.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dcap_qvl

from enclavekit.attestation import dstack, tdx
from enclavekit.attestation.collateral import load_collateral
from enclavekit.attestation.event_log import EventLog, replay
from enclavekit.attestation.quote import Quote, decode_quote_text
from interleave import CPU, interleave

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tdx"
QUOTES = (
    ("tdx_quote", "tdx_quote_collateral.json", 1750377600),
    ("near_quote_hex.txt", "near_quote_collateral.json", 1757462400),
)
PER_ROUND = 10  # calls of each case per round
BUNDLES = (
    "dstack/quote-report.json",
    "dstack/tdx-lite-getquote.json",
    "trust-center/debugData_app_bundle.json",
    "trust-center/debugData_gateway_bundle.json",
    "trust-center/debugData_kms_bundle.json",
    "trust-center/debugData2_app_bundle.json",
    "trust-center/debugData2_gateway_bundle.json",
    "trust-center/debugData2_kms_bundle.json",
    "trust-center/hardcoded_kms_info_bundle.json",
)


def _pinned(raw: bytes) -> tdx.TdxPolicy:
    td = Quote.parse(raw).td
    assert td is not None
    return tdx.TdxPolicy(measurements=[tdx.MeasurementSet(td.mr_td, td.rtmrs[0], td.rtmrs[1], td.rtmrs[2])])


def _quotes(rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for quote_name, collateral_name, now_secs in QUOTES:
        raw = decode_quote_text((FIXTURES / "dcap-qvl" / quote_name).read_bytes())
        collateral = load_collateral(FIXTURES / "dcap-qvl" / collateral_name)
        now = datetime.fromtimestamp(now_secs, UTC)
        policy = _pinned(raw)
        assert tdx.verify(raw, policy, now=now, collateral=collateral).tcb_status == "UpToDate"

        def plain(raw: bytes = raw, qvl: Any = collateral.qvl, secs: int = now_secs) -> object:
            return dcap_qvl.verify(raw, qvl, secs)

        def wrapper(
            raw: bytes = raw, policy: tdx.TdxPolicy = policy, now: datetime = now, collateral: Any = collateral
        ) -> object:
            return tdx.verify(raw, policy, now=now, collateral=collateral)

        timed = interleave(  # round by round, the order rotated, on this thread's CPU clock
            {"plain": plain, "wrapper": wrapper}, rounds=rounds // PER_ROUND, per_round=PER_ROUND, warmup=20, clock=CPU
        )
        overhead = timed.spread(lambda m: 100 * (m["wrapper"] / m["plain"] - 1), digits=1)
        out[quote_name] = {
            "dcap_qvl_verify": timed.stats("plain"),
            "enclavekit_tdx_verify": timed.stats("wrapper"),
            "overhead_p50_percent": overhead["median"],
            "overhead_percent_spread_over_rounds": overhead,
        }
    return out


def _bundles(rounds: int) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = tdx.TdxPolicy(unsafe_any_measurements=True)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    out: dict[str, Any] = {}
    for name in BUNDLES:
        data = (FIXTURES / name).read_bytes()
        text = json.loads(data)["event_log"]
        events = len(EventLog.from_json(text).events)

        def parse_and_replay(text: str = text) -> object:
            return replay(EventLog.from_json(text))

        def full_report(data: bytes = data) -> object:
            return dstack.report(data, policy, now=now, unsafe_no_collateral=True)

        timed = interleave(
            {"replay": parse_and_replay, "report": full_report},
            rounds=rounds // PER_ROUND,
            per_round=PER_ROUND,
            clock=CPU,
        )
        out[name] = {
            "events": events,
            "parse_and_replay": timed.stats("replay"),
            "dstack_report_without_collateral": timed.stats("report"),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (well under a minute)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    if not FIXTURES.exists():
        sys.exit(f"fixtures not found at {FIXTURES}")
    quote_rounds, bundle_rounds = (300, 100) if args.quick else (3000, 1000)
    quotes = _quotes(quote_rounds)
    bundles = _bundles(bundle_rounds)
    worst = max(q["overhead_p50_percent"] for q in quotes.values())
    out = {
        "benchmark": "tdx_verify",
        "quote_rounds": quote_rounds,
        "bundle_rounds": bundle_rounds,
        "quotes": quotes,
        "bundles": bundles,
        "worst_overhead_p50_percent": worst,
        "targets": {"overhead_p50_percent": 20},
    }
    if args.json:
        print(json.dumps(out))
        return
    for name, figures in quotes.items():
        plain, ours = figures["dcap_qvl_verify"], figures["enclavekit_tdx_verify"]
        print(
            f"{name}: dcap-qvl p50 {plain['p50_us']:.0f} µs p99 {plain['p99_us']:.0f} µs | enclavekit p50 "
            f"{ours['p50_us']:.0f} µs p99 {ours['p99_us']:.0f} µs | +{figures['overhead_p50_percent']} % "
            f"(rounds: {figures['overhead_percent_spread_over_rounds']['min']}.."
            f"{figures['overhead_percent_spread_over_rounds']['max']} %)"
        )
    for name, figures in bundles.items():
        replayed, full = figures["parse_and_replay"], figures["dstack_report_without_collateral"]
        print(
            f"{name} ({figures['events']} events): replay p50 {replayed['p50_us']:.0f} µs p99 "
            f"{replayed['p99_us']:.0f} µs | report p50 {full['p50_us']:.0f} µs p99 {full['p99_us']:.0f} µs"
        )
    print(f"worst wrapper overhead at p50: {worst} % (target < 20 %)")


if __name__ == "__main__":
    main()
