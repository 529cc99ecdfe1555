"""What the measured boundary costs the notify enclave at boot: time from process start to ready, without a
configuration, with one and a new push key (KMS GenerateDataKey + Decrypt of the API key), and with one and the
push key restored (KMS Decrypt twice) — the restart case.

    python3 dev.py run python benchmarks/notify_boundary.py [--quick] [--json]

Real processes: the KMS emulator and each enclave (simulated NSM); the provider is not called.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from enclavekit.services.notify.enclave_app import push_key_file
from enclavekit.services.notify.testing import CLI, Harness, start
from enclavekit.stack.tls import ensure_provider_tls

APP = "enclavekit.services.notify.enclave_app:app"


def _boot(harness: Harness, name: str, config: Path | None) -> float:
    argv = [*CLI, "enclave", "run", APP, "--name", name, "--listen", f"unix://{harness.root / (name + '.sock')}",
            "--state", str(harness.state)]  # fmt: skip
    if config is not None:
        argv += ["--config", str(config)]
    started = time.perf_counter()
    running = start(name, argv, log_dir=harness.logs, env={"ENCLAVEKIT_LOG_LEVEL": "info"})
    elapsed = time.perf_counter() - started
    running.stop()
    return elapsed


def main(quick: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="notify-boundary-bench-"))
    rounds = 3 if quick else 10
    tls = ensure_provider_tls(root / "provider", "127.0.0.1")
    harness = Harness(root, "sqlite://", "https://127.0.0.1:9", "bench-api-key", provider_tls=tls)
    try:
        harness.start_kms()
        config = harness.provision()
        results: dict[str, list[float]] = {"no_config": [], "new_push_key": [], "restored_push_key": []}
        for i in range(rounds):
            results["no_config"].append(_boot(harness, f"plain-{i}", None))
            results["new_push_key"].append(_boot(harness, f"fresh-{i}", config))  # a new name: no wrapped key yet
            assert push_key_file(harness.state, f"fresh-{i}").exists()
            results["restored_push_key"].append(_boot(harness, f"fresh-{i}", config))
        summary = {k: {"median": round(statistics.median(v), 3), "max": round(max(v), 3)} for k, v in results.items()}
        return {"benchmark": "notify_boundary", "quick": quick, "rounds": rounds, "boot_to_ready_s": summary}
    finally:
        harness.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 boots of each kind instead of 10")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    arguments = parser.parse_args()
    outcome = main(arguments.quick)
    print(json.dumps(outcome) if arguments.json else json.dumps(outcome, indent=2))
    sys.exit(0)
