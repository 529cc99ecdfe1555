"""Child processes of the local stack: start, wait until ready, stop, and never leave one behind.

A child is ready when it prints one JSON object on a line of its standard output that has ``"ready": true``
(enclavekit's own commands do, with the facts the supervisor reports: address, url, pcr0), or, for programs
that cannot (nats-server), when its TCP port accepts connections. Everything else a child prints goes to
``logs/NAME.log``. On Linux every child gets ``PR_SET_PDEATHSIG``: if the supervisor dies, so do they.

A :class:`ManagedProcess` can be started again after it exited, with the same argv (so an enclave comes back
with the same measurement and every piece on the same addresses); :class:`RestartTracker` is the sans-I/O
policy that says how long to wait first and when a piece "keeps dying".
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclavekit.backoff import exponential_backoff
from enclavekit.errors import InfrastructureError
from enclavekit.hostkit.sockets import free_port

__all__ = [
    "ChildFailed",
    "ManagedProcess",
    "RestartDecision",
    "RestartPolicy",
    "RestartTracker",
    "describe_status",
    "free_port",
    "wait_for_port",
]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_EXIT_POLL = 0.05  # seconds between looks at a child's return code


class ChildFailed(InfrastructureError):
    """A child process exited, or did not become ready in time."""

    code = "child_failed"


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


def describe_status(status: int | None) -> str:
    """``status 3`` or ``killed by SIGKILL`` for a child's return code (negative: the signal that ended it)."""
    if status is None:
        return "still running"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"status {status}"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When ``enclavekit up`` restarts a piece that exited on its own.

    The n-th consecutive restart waits ``exponential_backoff(n, base, cap)`` with ``jitter``. A piece that ran
    ``stable_after`` seconds before it exited starts again from the base delay. ``burst`` exits within
    ``window`` seconds mean the piece keeps dying: the supervisor says so loudly (name, exit status, log) and
    goes on retrying at the capped delay; it never gives up on a piece nor stops the rest of the stack.
    """

    base: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25
    stable_after: float = 30.0
    burst: int = 5
    window: float = 60.0


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """What to do after an exit: wait ``delay`` seconds, then start again; ``flapping``: it keeps dying."""

    delay: float
    attempt: int
    flapping: bool
    recent_exits: int


@dataclass
class RestartTracker:
    """The restart policy's state for one piece (sans-I/O: the caller passes ``now``, monotonic seconds)."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    rng: Callable[[], float] = random.random
    attempt: int = 0
    started_at: float | None = None
    exits: list[float] = field(default_factory=list)

    def started(self, now: float) -> None:
        """The piece is up (again) at ``now``."""
        self.started_at = now

    def exited(self, now: float) -> RestartDecision:
        """The piece exited at ``now``: how long to wait before starting it again."""
        if self.started_at is not None and now - self.started_at >= self.policy.stable_after:
            self.attempt = 0
        self.attempt += 1
        self.exits = [t for t in self.exits if now - t < self.policy.window] + [now]
        flapping = len(self.exits) >= self.policy.burst
        delay = exponential_backoff(
            self.attempt,
            base=self.policy.base,
            cap=self.policy.cap,
            factor=self.policy.factor,
            jitter=self.policy.jitter,
            rng=self.rng,
        )
        return RestartDecision(delay=delay, attempt=self.attempt, flapping=flapping, recent_exits=len(self.exits))


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
    before_start: Callable[[], None] | None = None  # e.g. remove a stale Unix socket; runs before every start
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    _log_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> dict[str, Any]:
        """Start the child (again, after it exited: same argv) and wait until it is ready; returns its ready line
        (or ``{}``)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        if self.before_start is not None:
            self.before_start()
        self.ready_info = {}
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
        exited = asyncio.ensure_future(self.wait())
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
        """The child's return code, as soon as it has exited.

        Not ``Process.wait()``: asyncio answers that only once the child's pipes are closed too, so a child whose
        stdout outlives it (held by a grandchild, or not yet drained) would look alive; the return code is set
        the moment the child is reaped.
        """
        process = self.process
        assert process is not None
        while process.returncode is None:
            await asyncio.sleep(_EXIT_POLL)
        return process.returncode

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
                await asyncio.wait_for(self.wait(), timeout)
            except TimeoutError:
                logger.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.wait()
        if self._log_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._log_task, 1.0)
        # A grandchild may still hold the child's stdout open: close our end rather than leak the transport
        # (asyncio exposes no public close for a subprocess transport).
        transport = getattr(self.process, "_transport", None)
        if transport is not None:
            transport.close()
