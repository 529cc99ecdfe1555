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
from typing import TYPE_CHECKING, Any

from enclavekit.hostkit.sockets import free_port
from enclavekit.stack.tls import ProviderTls
from enclavekit.stack.up import nats_server_binary

if TYPE_CHECKING:
    from enclavekit.kms.measured import MeasuredKmsEndpoint

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

    With ``provider_tls`` (the fake Braze serving HTTPS with that CA's certificate), enclaves start with a
    measured configuration provisioned like ``enclavekit up`` does (:meth:`provision`): the API key encrypted
    under a KMS key bound to the enclave's PCR0, the push key persisted in the state folder.
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
    provider_tls: ProviderTls | None = None
    config_path: Path | None = None
    bound_pcr0s: list[bytes] | None = None

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
        self.start_kms()
        self.world_id_url = self._start("world-id", [*CLI, "notify", "world-id", "--state", str(self.state)]).ready[
            "url"
        ]
        self.start_egress()

    @property
    def kms_tls(self) -> ProviderTls:
        """The KMS emulator's local CA and certificate (made once in ``ROOT/kms-tls``)."""
        from enclavekit.stack.tls import ensure_provider_tls

        return ensure_provider_tls(self.root / "kms-tls", "127.0.0.1")

    def start_kms(self) -> str:
        """The KMS emulator over HTTPS (its CA pinned by the measured configuration), trusting this harness's
        simulated NSM root (made here if it does not exist yet)."""
        from datetime import UTC, datetime

        from enclavekit.nsm.ca import SimulatorCA

        SimulatorCA(self.state).root(now=datetime.now(UTC))
        state, tls = str(self.state), self.kms_tls
        kms_argv = [*CLI, "kms", "serve", "--port", "0", "--state", state, "--trust-sim-root", state]
        kms_argv += ["--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file)]
        self.kms_url = self._start("kms", kms_argv).ready["url"]
        return self.kms_url

    def kms_endpoint(self) -> MeasuredKmsEndpoint:
        """The KMS endpoint the harness's measured configurations name: the emulator, its CA pinned."""
        from enclavekit.kms.measured import MeasuredKmsEndpoint

        return MeasuredKmsEndpoint(self.kms_url, "us-east-1", self.kms_tls.ca_pem)

    def start_egress(self) -> str:
        """The host's CONNECT proxy, allowing only the provider's host and port."""
        braze_port = self.braze_url.rsplit(":", 1)[1]
        self.egress = self._start(
            "egress", [*CLI, "host", "egress", "--listen", "tcp://127.0.0.1:0", "--allow", f"127.0.0.1:{braze_port}"]
        ).ready["url"]
        return self.egress

    def kms(self) -> Any:
        import boto3

        return boto3.client(
            "kms",
            endpoint_url=self.kms_url,
            region_name="us-east-1",
            verify=str(self.kms_tls.cert_file.with_name("ca.pem")),
            aws_access_key_id="local",
            aws_secret_access_key="local",  # noqa: S106 - the emulator takes any credentials
        )

    def provision(self, path: Path | None = None, *, alias_label: str | None = None, bind: bool = True) -> Path:
        """Write a measured configuration (once per path) and bind its KMS key to the PCR0 it gives."""
        from enclavekit.enclave.runtime import expected_pcr0
        from enclavekit.services.notify.enclave_config import NotifyEnclaveConfig, canonical
        from enclavekit.services.notify.provision import bind_key, provision_config

        assert self.provider_tls is not None, "give the harness provider_tls"
        target = path or self.root / "enclave-config.json"
        if alias_label is None:
            config = provision_config(
                target,
                kms=self.kms(),
                provider_url=self.braze_url,
                ca_pem=self.provider_tls.ca_pem,
                api_key=self.braze_api_key.encode(),
                kms_endpoint=self.kms_endpoint(),
            )
        else:  # a variant of the harness's configuration: same key and provider, another PCR0
            if self.config_path is None:
                self.config_path = self.provision()
            document = NotifyEnclaveConfig.from_bytes(self.config_path.read_bytes()).to_document()
            document["provider"]["alias_label"] = alias_label
            config = NotifyEnclaveConfig.from_bytes(canonical(document))
            target.write_bytes(config.raw)
        if bind:
            import importlib

            importlib.import_module("enclavekit.services.notify.enclave_app")
            pcr0 = expected_pcr0("enclavekit.services.notify.enclave_app:app", config.raw)
            if self.bound_pcr0s is None:
                self.bound_pcr0s = []
            if pcr0 not in self.bound_pcr0s:
                self.bound_pcr0s.append(pcr0)
            bind_key(self.kms(), config.kms.key_id, self.bound_pcr0s)
        return target

    def start_enclave(
        self,
        name: str,
        *,
        track: str | None = None,
        env: dict[str, str] | None = None,
        relay: bool = True,
        config: Path | None = None,
    ) -> Running:
        """Start enclave ``name`` (with ``config``, or the harness's configuration when it has provider TLS)."""
        socket_path = self.root / f"{name}.sock"
        extra = dict(env or {})
        if config is None and self.provider_tls is not None:
            if self.config_path is None:
                self.config_path = self.provision()
            config = self.config_path
        measured = [] if config is None else ["--config", str(config)]
        measured += ["--set", f"egress_proxy={self.egress}"]  # the KMS endpoint is in the measured configuration
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
                *measured,
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

    def restart_enclave(
        self, index: int, name: str, *, track: str | None = None, config: Path | None = None
    ) -> Running:
        """Start enclave ``name`` again on the same socket (its relay stays)."""
        assert self.enclaves is not None
        socket_path = self.root / f"{name}.sock"
        socket_path.unlink(missing_ok=True)
        enclave = self.start_enclave(name, track=track, relay=False, config=config)
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
            "kms_ca_file": self.kms_tls.cert_file.with_name("ca.pem"),
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
