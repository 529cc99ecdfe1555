"""How fast the command line starts, as ratios to plain Python doing the same, measured in one run.

    python3 dev.py run python benchmarks/cli_startup.py [--quick] [--json]

Each round runs, one after the other as fresh processes, the four commands below; the figures are medians over
rounds (and the spread: min-max of the per-round ratio), so load on a shared machine hits subject and
baseline alike. Goals (issue #12):

* ``enclavekit verify DOC --at doc`` <= 2x ``benchmarks/baselines/nitro_verify_plain.py DOC ROOT`` (a plain
  ~60-line script verifying the same Nitro document with cryptography + cbor2);
* ``enclavekit --help`` <= 2.5x ``python -c "import cryptography.x509, cbor2"``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "nitro"
DOCUMENT = FIXTURES / "samples" / "evervault_2022-10-13_nondebug.cbor"
AWS_ROOT = FIXTURES / "AWS_NitroEnclaves_Root-G1.der"
PLAIN_ARGS = (str(DOCUMENT), str(AWS_ROOT))
_script = Path(sys.executable).parent / "enclavekit"
ENCLAVEKIT = [str(_script)] if _script.exists() else [sys.executable, "-m", "enclavekit.cli"]

COMMANDS: dict[str, list[str]] = {
    "verify_plain_script": [sys.executable, str(ROOT / "benchmarks/baselines/nitro_verify_plain.py"), *PLAIN_ARGS],
    "enclavekit_verify": [*ENCLAVEKIT, "verify", str(DOCUMENT), "--at", "doc"],
    "import_cryptography_cbor2": [sys.executable, "-c", "import cryptography.x509, cbor2"],
    "enclavekit_help": [*ENCLAVEKIT, "--help"],
}
GOALS = {"verify": 2.0, "help": 2.5}


def _time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="7 rounds instead of 25")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    rounds = 7 if args.quick else 25
    for argv in COMMANDS.values():  # warm the page cache and .pyc files once; fail early on a broken command
        _time(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, argv in COMMANDS.items():
            times[name].append(_time(argv))
    ratios = {
        "verify": [s / b for s, b in zip(times["enclavekit_verify"], times["verify_plain_script"], strict=True)],
        "help": [s / b for s, b in zip(times["enclavekit_help"], times["import_cryptography_cbor2"], strict=True)],
    }
    out: dict[str, Any] = {
        "rounds": rounds,
        "median_ms": {name: round(statistics.median(values) * 1000, 1) for name, values in times.items()},
        "ratio": {name: round(statistics.median(values), 2) for name, values in ratios.items()},
        "ratio_spread": {name: [round(min(v), 2), round(max(v), 2)] for name, v in ratios.items()},
        "goal": GOALS,
    }
    out["met"] = {name: out["ratio"][name] <= goal for name, goal in GOALS.items()}
    if args.json:
        print(json.dumps(out))
        return
    print(f"CLI start-up, {rounds} interleaved rounds (median per command):")
    for name, ms in out["median_ms"].items():
        print(f"  {name:>28}: {ms:7.1f} ms")
    for name, goal in GOALS.items():
        low, high = out["ratio_spread"][name]
        verdict = "met" if out["met"][name] else "NOT met"
        print(f"  {name} ratio {out['ratio'][name]:.2f} (rounds {low:.2f}-{high:.2f}), goal <= {goal}: {verdict}")


if __name__ == "__main__":
    main()
