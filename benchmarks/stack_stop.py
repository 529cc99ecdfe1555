"""How long Ctrl-C takes to stop ``enclavekit up``: from the signal until the last process of the stack is gone.

    python3 dev.py run python benchmarks/stack_stop.py [--quick] [--json] [--runs N] [--parent-only]

Each run starts ``enclavekit up`` on a fresh state folder in its own session, waits for ``stack.json``, collects
every process of the tree from ``/proc``, then sends SIGINT to the whole process group (what a terminal does on
Ctrl-C; ``--parent-only`` signals only the supervisor) and polls ``/proc`` until none of them is left (zombies
count as gone). It also counts "ignored SIGTERM" warnings on the supervisor's stderr. Target: at most 4 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "enclavekit.cli"]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _tree(root: int) -> set[int]:
    seen: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += _children(pid)
    return seen


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def one_run(*, parent_only: bool, timeout: float = 120.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="enclavekit-stop-") as folder:
        state = Path(folder) / "state"
        up = subprocess.Popen(
            [*CLI, "up", "--state", str(state)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not (state / "stack.json").exists():
            if up.poll() is not None or time.monotonic() > deadline:
                up.kill()
                raise SystemExit(f"enclavekit up did not start: {up.stderr.read() if up.stderr else b''!r}")
            time.sleep(0.1)
        pids = _tree(up.pid)
        started = time.perf_counter()
        if parent_only:
            up.send_signal(signal.SIGINT)
        else:
            os.killpg(up.pid, signal.SIGINT)
        reaped = False
        while True:
            if not reaped and up.poll() is not None:
                reaped = True
            if not any(_alive(pid) for pid in pids if pid != up.pid) and reaped:
                break
            if time.perf_counter() - started > 60:
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        stderr = up.stderr.read().decode(errors="replace") if up.stderr else ""
        return {
            "seconds": round(elapsed, 2),
            "processes": len(pids),
            "exit_status": up.returncode,
            "sigterm_warnings": stderr.count("ignored SIGTERM"),
            "slow": [
                line.split(" ignored SIGTERM")[0].split()[-1]
                for line in stderr.splitlines()
                if "ignored SIGTERM" in line
            ],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs (the default is 5)")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--parent-only", action="store_true", help="signal only the supervisor, not the group")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 5)
    results = [one_run(parent_only=args.parent_only) for _ in range(runs)]
    summary = {
        "signal": "SIGINT to the supervisor" if args.parent_only else "SIGINT to the process group (Ctrl-C)",
        "runs": results,
        "median_seconds": statistics.median(r["seconds"] for r in results),
        "max_seconds": max(r["seconds"] for r in results),
        "sigterm_warnings": sum(r["sigterm_warnings"] for r in results),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for r in results:
            print(f"stopped {r['processes']} processes in {r['seconds']:.2f} s (warnings: {r['sigterm_warnings']})")
        print(f"median {summary['median_seconds']:.2f} s, max {summary['max_seconds']:.2f} s")


if __name__ == "__main__":
    main()
