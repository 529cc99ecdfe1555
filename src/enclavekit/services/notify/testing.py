"""Helpers for notify's tests and benchmarks: real OS processes for each piece, started like the stack does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclavekit.stack.up import nats_server_binary

__all__ = ["CLI", "Harness", "Running", "free_port", "start", "start_nats"]

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_nats(directory: Path, *, log_dir: Path | None = None) -> tuple[Running, str]:
    """A private nats-server with JetStream in ``directory`` (waits until it accepts connections)."""
    port = free_port()
    log = None if log_dir is None else (log_dir / "nats.log").open("ab")
    process = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(directory)],
        stdout=log or subprocess.DEVNULL,
        stderr=log or subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("nats-server did not start") from None
            time.sleep(0.05)
    return Running("nats", process, {"url": f"nats://127.0.0.1:{port}"}, None), f"nats://127.0.0.1:{port}"


@dataclass
class Harness:
    """Every notify piece as its own process (the fake Braze is the caller's, usually in-process).

    ``start_core`` starts NATS, the KMS emulator, the World ID stand-in and the egress proxy;
    ``start_enclave`` an enclave (optionally in a track) behind a capturing relay; ``start_host`` the API,
    the ingest worker and the dispatcher, pointed at every enclave started so far.
    """

    root: Path
    database_url: str
    braze_url: str
    braze_api_key: str
    dispatcher_settings: dict[str, Any] | None = None
    log_level: str = "debug"
    """``ENCLAVEKIT_LOG_LEVEL`` of every process: debug by default, so the scans for secrets read every line."""
    running: list[Running] | None = None
    nats_url: str = ""
    kms_url: str = ""
    world_id_url: str = ""
    egress: str = ""
    relays: list[str] | None = None
    enclaves: list[Running] | None = None
    pcr0: str = ""
    api_url: str = ""
    ingest_url: str = ""
    dispatcher_url: str = ""
    s3_url: str = ""

    def __post_init__(self) -> None:
        self.running = []
        self.relays = []
        self.enclaves = []
        self.logs.mkdir(parents=True, exist_ok=True)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def _start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Running:
        running = start(name, argv, log_dir=self.logs, env={"ENCLAVEKIT_LOG_LEVEL": self.log_level, **(env or {})})
        assert self.running is not None
        self.running.append(running)
        return running

    def start_core(self) -> None:
        nats_process, self.nats_url = start_nats(self.root / "nats", log_dir=self.logs)
        assert self.running is not None
        self.running.append(nats_process)
        self.kms_url = self._start("kms", [*CLI, "kms", "serve", "--port", "0", "--state", str(self.state)]).ready[
            "url"
        ]
        self.world_id_url = self._start("world-id", [*CLI, "notify", "world-id", "--state", str(self.state)]).ready[
            "url"
        ]
        braze_port = self.braze_url.rsplit(":", 1)[1]
        self.egress = self._start(
            "egress", [*CLI, "host", "egress", "--listen", "tcp://127.0.0.1:0", "--allow", f"127.0.0.1:{braze_port}"]
        ).ready["url"]

    def start_enclave(
        self, name: str, *, track: str | None = None, env: dict[str, str] | None = None, relay: bool = True
    ) -> Running:
        socket_path = self.root / f"{name}.sock"
        extra = dict(env or {})
        if track is not None:
            extra.update(
                {
                    "ENCLAVEKIT_NOTIFY_TRACK": track,
                    "ENCLAVEKIT_NOTIFY_TRACK_STORE": self.nats_url,
                    "ENCLAVEKIT_NOTIFY_TRACK_TTL": "3",
                    "ENCLAVEKIT_NOTIFY_TRACK_RENEW": "0.5",
                    "ENCLAVEKIT_NOTIFY_TRACK_JOIN_TIMEOUT": "30",
                }
            )
        enclave = self._start(
            f"enclave-{name}",
            [  # the minimal entry point, as `enclavekit up` starts enclaves (docs/tcb.md)
                sys.executable,
                "-m",
                "enclavekit.enclave",
                "enclavekit.services.notify.enclave_app:app",
                "--name",
                name,
                "--listen",
                f"unix://{socket_path}",
                "--state",
                str(self.state),
            ],
            env=extra,
        )
        self.pcr0 = enclave.ready["pcr0"]
        assert self.enclaves is not None and self.relays is not None
        self.enclaves.append(enclave)
        if relay:
            relayed = self._start(
                f"relay-{name}",
                [
                    *CLI,
                    "host",
                    "relay",
                    "--listen",
                    "tcp://127.0.0.1:0",
                    "--upstream",
                    f"unix://{socket_path}",
                    "--capture",
                    str(self.root / f"relayed-{name}.bin"),
                ],
            )
            self.relays.append(relayed.ready["url"])
        return enclave

    def restart_enclave(self, index: int, name: str, *, track: str | None = None) -> Running:
        """Start enclave ``name`` again on the same socket (its relay stays)."""
        assert self.enclaves is not None
        socket_path = self.root / f"{name}.sock"
        socket_path.unlink(missing_ok=True)
        enclave = self.start_enclave(name, track=track, relay=False)
        self.enclaves.pop()
        self.enclaves[index] = enclave
        return enclave

    def settings(self, **extra: Any) -> list[str]:
        assert self.relays is not None
        values: dict[str, Any] = {
            "state_dir": self.state,
            "database_url": self.database_url,
            "nats_url": self.nats_url,
            "enclave": ",".join(self.relays),
            "enclave_pcr0": self.pcr0,
            "simulator_roots": self.state,
            "kms_url": self.kms_url,
            "world_id_url": self.world_id_url,
            **extra,
        }
        out: list[str] = []
        for key, value in values.items():
            out += ["--set", f"{key}={value}"]
        return out

    def start_s3(self) -> str:
        self.s3_url = self._start("s3", [*CLI, "notify", "local-s3", "--root", str(self.root / "s3")]).ready["url"]
        return self.s3_url

    def start_api(self) -> None:
        extra = (
            {"s3_endpoint_url": self.s3_url, "trusted_cdn_url": f"{self.s3_url}/notify-media"} if self.s3_url else {}
        )
        self.api_url = self._start("api", [*CLI, "notify", "api", *self.settings(**extra)]).ready["url"]

    def start_ingest(self) -> None:
        self.ingest_url = self._start("ingest", [*CLI, "notify", "ingest-worker", *self.settings()]).ready["url"]

    def start_dispatcher(self, **extra: Any) -> Running:
        options = {
            "braze_url": self.braze_url,
            "braze_api_key": self.braze_api_key,
            "egress_proxy": self.egress,
            **(self.dispatcher_settings or {}),
            **extra,
        }
        running = self._start("dispatcher", [*CLI, "notify", "dispatcher", *self.settings(**options)])
        self.dispatcher_url = running.ready["url"]
        return running

    def start_host(self) -> None:
        self.start_api()
        self.start_ingest()
        self.start_dispatcher()

    def stop(self) -> None:
        assert self.running is not None
        for running in reversed(self.running):
            running.stop(10)

    def logs_text(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.logs.glob("*.log"))
