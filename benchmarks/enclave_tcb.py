"""What an enclave process holds: RSS per enclave app, and its TCB (distributions, enclavekit lines).

    python3 dev.py run python benchmarks/enclave_tcb.py [--quick] [--json] [--entry module|cli]

For the demo and notify enclave apps, each started as a real process with the simulated NSM on a Unix socket:
VmRSS and VmHWM from ``/proc`` after boot and a few attested ``enclave.health`` calls (median over runs), the
native libraries it maps from site-packages, and — from a fresh interpreter that imports what the entry point
imports plus the app — the third-party distributions loaded and the enclavekit lines loaded. ``--entry module``
(default) starts enclaves as ``enclavekit up`` does now, ``python -m enclavekit.enclave``; ``--entry cli``
through ``python -m enclavekit.cli enclave run`` (how they started before the minimal entry point). Goal: under
70 MiB RSS per enclave (issue #11). The lockfile count is the distributions the enclave image installs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import enclavekit
from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.enclave.app import HEALTH, HealthRequest
from enclavekit.nsm import load_root

ROOT = Path(enclavekit.__file__).resolve().parents[2]
"""The checkout whose enclavekit is imported (run with another checkout's interpreter to measure it)."""
APPS = {"demo": "enclavekit.enclave.demo:app", "notify": "enclavekit.services.notify.enclave_app:app"}
ENTRIES = {
    "module": ([sys.executable, "-m", "enclavekit.enclave"], "import enclavekit.enclave.launch"),
    "cli": ([sys.executable, "-m", "enclavekit.cli", "enclave", "run"], "import enclavekit.cli"),
}
GOAL_MIB = 70.0
_PROBE = """
import sys
before = set(sys.modules)
{prelude}
from enclavekit.enclave.runtime import load_app
load_app(sys.argv[1])
from importlib.metadata import packages_distributions
by_top = packages_distributions()
new = [m for m in sys.modules if m not in before]
dists = sorted({{d for m in new for d in by_top.get(m.split(".")[0], ()) if m.split(".")[0] != "enclavekit"}})
lines = 0
for name in new:
    path = getattr(sys.modules[name], "__file__", None) or ""
    if name.split(".")[0] == "enclavekit" and path.endswith(".py"):
        lines += len(open(path, "rb").read().splitlines())
import json
print(json.dumps({{"distributions": dists, "enclavekit_lines": lines}}))
"""


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


async def _measure(argv: list[str], spec: str, calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder)
        socket_path = state / "enclave.sock"
        process = subprocess.Popen(
            [*argv, spec, "--listen", f"unix://{socket_path}", "--state", str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert process.stdout is not None
            ready = json.loads(process.stdout.readline())
            policy = NitroPolicy(measurements=[{0: bytes.fromhex(ready["pcr0"])}], roots=(load_root(state),))
            async with AttestedClient.nitro(f"unix://{socket_path}", policy) as client:
                for _ in range(calls):
                    await client.call(HEALTH, HealthRequest())
            status = _status(process.pid)
            maps = Path(f"/proc/{process.pid}/maps").read_text()
        finally:
            process.terminate()
            process.wait(15)
    native = sorted({line.split()[-1].rsplit("/", 1)[-1] for line in maps.splitlines() if "site-packages" in line})
    return {"rss_kib": status["VmRSS"], "hwm_kib": status["VmHWM"], "native": native}


def _lock_count() -> tuple[str, int]:
    for name in ("requirements-enclave.lock", "requirements-runtime.lock"):
        path = ROOT / name
        if path.exists():
            lines = path.read_text().splitlines()
            return name, sum(1 for line in lines if line[:1].isalnum() and "==" in line)
    return "none", 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run per app instead of five")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--entry", choices=sorted(ENTRIES), default="module")
    args = parser.parse_args()
    runs = 1 if args.quick else 5
    argv, prelude = ENTRIES[args.entry]
    lock, lock_count = _lock_count()
    out: dict[str, Any] = {"entry": args.entry, "lockfile": lock, "lockfile_distributions": lock_count, "apps": {}}
    for name, spec in APPS.items():
        measured = [asyncio.run(_measure(argv, spec, calls=5)) for _ in range(runs)]
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE.format(prelude=prelude), spec], capture_output=True, text=True, check=True
        )
        tcb = json.loads(probe.stdout)
        out["apps"][name] = {
            "rss_mib": round(statistics.median(m["rss_kib"] for m in measured) / 1024, 1),
            "hwm_mib": round(statistics.median(m["hwm_kib"] for m in measured) / 1024, 1),
            "native_libraries": measured[-1]["native"],
            "distributions_loaded": len(tcb["distributions"]),
            "distributions": tcb["distributions"],
            "enclavekit_lines_loaded": tcb["enclavekit_lines"],
        }
    if args.json:
        print(json.dumps(out))
        return
    print(f"entry point: {args.entry}; {lock} pins {lock_count} distributions")
    for name, app in out["apps"].items():
        verdict = "met" if app["rss_mib"] < GOAL_MIB else "NOT met"
        print(
            f"  {name:>6}: RSS {app['rss_mib']:.1f} MiB (peak {app['hwm_mib']:.1f}; goal < {GOAL_MIB:.0f}: {verdict}), "
            f"{app['distributions_loaded']} distributions and {app['enclavekit_lines_loaded']} enclavekit lines "
            "loaded, "
            f"{len(app['native_libraries'])} native libraries mapped"
        )


if __name__ == "__main__":
    main()
