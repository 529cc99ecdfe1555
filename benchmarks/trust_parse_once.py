"""One trust verification as a worker runs it (parse the stored bytes once, then ``verify_target``): CPU time per
task, median over rounds, for a simulated Nitro document verified at its own time and a dstack bundle.

    python3 dev.py run python benchmarks/trust_parse_once.py [--quick] [--json]

The parse counts per upload are proved, not timed: ``tests/test_trust_parse_once.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from enclavekit.attestation.evidence import Evidence
from enclavekit.attestation.verification_time import At
from enclavekit.nsm.simulator import NsmSimulator, load_root
from enclavekit.services.trust.model import TargetOptions
from enclavekit.services.trust.registry import load_registry
from enclavekit.services.trust.verification import VerificationInput, verify_target
from interleave import CPU, interleave

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tdx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp())
    document = NsmSimulator(state, app={"app.py": b"print('hello')\n"}).client().attestation(nonce=None)
    bundle = (FIXTURES / "trust-center" / "debugData_app_bundle.json").read_bytes()
    registry = load_registry()
    roots = (load_root(state),)
    nitro_options = TargetOptions(at=At.DOC, trust_simulator=True)

    def nitro_task() -> None:
        evidence = Evidence.from_bytes(document)
        data = VerificationInput(evidence=evidence, options=nitro_options, simulator_roots=roots, registry=registry)
        verify_target(data, now=datetime.now(UTC))

    def dstack_task() -> None:
        data = VerificationInput(evidence=Evidence.from_bytes(bundle), options=TargetOptions(), registry=registry)
        verify_target(data, now=datetime.now(UTC))

    rounds = interleave(
        {"nitro_doc": nitro_task, "dstack": dstack_task}, rounds=5 if args.quick else 30, per_round=20, clock=CPU
    )
    result = {name: rounds.stats(name) for name in ("nitro_doc", "dstack")}
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
