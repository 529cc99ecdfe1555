"""Helpers for notify's tests and benchmarks: real OS processes for each piece, started like the stack does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CLI", "Running", "start"]

CLI = [sys.executable, "-m", "enclavekit.cli"]


@dataclass
class Running:
    """A child process and its JSON ready line."""

    name: str
    process: subprocess.Popen[str]
    ready: dict[str, Any]
    log: Path | None

    def stop(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait(timeout)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(15)


def start(name: str, argv: Sequence[str], *, log_dir: Path | None = None, env: dict[str, str] | None = None) -> Running:
    """Start ``argv``, wait for its ``{"ready": true}`` line; stderr (and later stdout) go to ``LOG_DIR/NAME.log``."""
    log = None if log_dir is None else log_dir / f"{name}.log"
    stderr: Any = subprocess.DEVNULL if log is None else log.open("ab")
    process = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    assert process.stdout is not None
    while True:
        line = process.stdout.readline()
        if not line:
            code = process.wait()
            detail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{name} exited ({code}) before it was ready: {detail}")
        try:
            ready = json.loads(line)
        except ValueError:
            continue
        if isinstance(ready, dict) and ready.get("ready") is True:
            return Running(name, process, ready, log)
