"""Child processes of the local stack: start, wait until ready, stop, and never leave one behind.

A child is ready when it prints one JSON object on a line of its standard output that has ``"ready": true``
(enclavekit's own commands do, with the facts the supervisor reports: address, url, pcr0), or, for programs
that cannot (nats-server), when its TCP port accepts connections. Everything else a child prints goes to
``logs/NAME.log``. On Linux every child gets ``PR_SET_PDEATHSIG``: if the supervisor dies, so do they.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclavekit.errors import InfrastructureError

__all__ = ["ChildFailed", "ManagedProcess", "free_port", "wait_for_port"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ChildFailed(InfrastructureError):
    """A child process exited, or did not become ready in time."""

    code = "child_failed"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


async def wait_for_port(host: str, port: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if time.monotonic() > deadline:
                raise ChildFailed(f"nothing listens on {host}:{port} after {timeout:.0f} s") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ManagedProcess:
    """One child: its command line, how it signals readiness, and what it said when ready."""

    name: str
    argv: Sequence[str]
    log_dir: Path
    env: Mapping[str, str] | None = None
    ready_port: tuple[str, int] | None = None  # None: wait for the JSON ready line
    ready_timeout: float = 30.0
    ready_info: dict[str, Any] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    _log_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> dict[str, Any]:
        """Start the child and wait until it is ready; returns its ready line (or ``{}``)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{self.name}.log").open("ab")
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=env,
            preexec_fn=_die_with_parent,
        )
        log.close()
        try:
            if self.ready_port is not None:
                self._log_task = asyncio.create_task(self._copy_output(None))
                await self._race_exit(wait_for_port(*self.ready_port, timeout=self.ready_timeout))
            else:
                ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                self._log_task = asyncio.create_task(self._copy_output(ready))
                self.ready_info = await self._race_exit(asyncio.wait_for(ready, self.ready_timeout))
        except (TimeoutError, ChildFailed) as exc:
            await self.stop()
            raise ChildFailed(f"{self.name} did not start: {exc or 'timed out'} (see {self.log_path})") from exc
        return self.ready_info

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    async def _race_exit(self, awaitable: Any) -> Any:
        assert self.process is not None
        waiter = asyncio.ensure_future(awaitable)
        exited = asyncio.ensure_future(self.process.wait())
        done, _ = await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            exited.cancel()
            return waiter.result()
        waiter.cancel()
        raise ChildFailed(f"exited with status {self.process.returncode}")

    async def _copy_output(self, ready: asyncio.Future[dict[str, Any]] | None) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self.log_path.open("ab") as log:
            while line := await self.process.stdout.readline():
                if ready is not None and not ready.done():
                    with contextlib.suppress(ValueError):
                        message = json.loads(line)
                        if isinstance(message, dict) and message.get("ready") is True:
                            ready.set_result(message)
                            continue
                log.write(line)
                log.flush()

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.process is None:
            return
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                logger.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self._log_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._log_task, 1.0)
