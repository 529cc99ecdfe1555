"""Real components for the trust service's tests: a nats-server with JetStream, PostgreSQL databases, the
service as a process, and a loopback HTTP server that plays an enclave's attestation endpoint.

Imported by the ``test_trust_*`` modules (fixtures are re-exported there); it holds no tests itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from enclavekit.hostkit.sockets import free_port
from enclavekit.stack.up import nats_server_binary
from tests.conftest import fixtures_dir

CLI = [sys.executable, "-m", "enclavekit.cli"]
PG_URL = os.environ.get("ENCLAVEKIT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


# --- NATS -------------------------------------------------------------------------------------------------------


class NatsServer:
    """A nats-server with JetStream on a free port and its own store, that tests may stop and start again."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- PostgreSQL -------------------------------------------------------------------------------------------------


def postgres_or_skip() -> str:
    """A fresh PostgreSQL database's SQLAlchemy URL, or skip (fail with ENCLAVEKIT_REQUIRE_POSTGRES=1)."""
    try:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=3) as conn:
            name = f"trust_test_{secrets.token_hex(6)}"
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        reason = f"PostgreSQL not reachable at {PG_URL} ({exc})"
        if os.environ.get("ENCLAVEKIT_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + "; ENCLAVEKIT_REQUIRE_POSTGRES=1 forbids skipping")
        pytest.skip(reason)
    parts = urlsplit(PG_URL)
    return f"postgresql+psycopg://{parts.netloc}/{name}"


def drop_postgres(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    url = postgres_or_skip()
    try:
        yield url
    finally:
        drop_postgres(url)


# --- the service as a process -----------------------------------------------------------------------------------


class TrustProcess:
    """``enclavekit trust serve`` (or ``worker``) as a child process, ready when it prints its ready line."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.argv = argv
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}

    def start(self, timeout: float = 60.0) -> TrustProcess:
        stderr = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=stderr, env=self.env)
        assert self.process.stdout is not None
        line: list[bytes] = []

        def read() -> None:
            assert self.process is not None and self.process.stdout is not None
            line.append(self.process.stdout.readline())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0]:
            self.stop()
            detail = self.log.read_text()[-3000:] if self.log is not None and self.log.exists() else ""
            raise AssertionError(f"{self.argv[3:5]} did not become ready: {detail}")
        self.ready = json.loads(line[0])
        return self

    @property
    def url(self) -> str:
        return str(self.ready["url"])

    def __enter__(self) -> TrustProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: the process dies mid-whatever, as a crashed machine would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serve_argv(state: Path, nats: str, *extra: str) -> list[str]:
    return [*CLI, "trust", "serve", "--state", str(state), "--nats", nats, *extra]


def worker_argv(state: Path, nats: str, *extra: str) -> list[str]:
    return [*CLI, "trust", "worker", "--state", str(state), "--nats", nats, *extra]


def fast_env(**more: str) -> dict[str, str]:
    """Settings that make faults show up in seconds rather than minutes."""
    return {
        "ENCLAVEKIT_TRUST_LEASE": "2",
        "ENCLAVEKIT_TRUST_BACKOFF_BASE": "0.2",
        "ENCLAVEKIT_TRUST_DISPATCH_INTERVAL": "0.2",
        "ENCLAVEKIT_TRUST_REPUBLISH_AFTER": "3",
        **more,
    }


def wait_task(
    base: str, task_id: str, timeout: float = 60.0, *, until: Callable[[dict[str, Any]], bool] | None = None
) -> dict[str, Any]:
    """Poll ``GET /api/task/{id}`` until it is terminal (or ``until`` says so)."""
    done = until or (lambda task: task["status"] in ("completed", "failed", "cancelled"))
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = httpx.get(f"{base}/api/task/{task_id}", timeout=10)
        assert answer.status_code == 200, answer.text
        last = answer.json()
        if done(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish: {last}")


def upload(base: str, data: bytes, **fields: str) -> httpx.Response:
    files: dict[str, Any] = {"evidence": ("evidence.bin", data, "application/octet-stream")}
    for name in ("collateral", "compose"):
        if name in fields:
            files[name] = (name, fields.pop(name).encode(), "application/json")
    return httpx.post(f"{base}/api/tasks", files=files, data=fields, timeout=30)


# --- evidence ---------------------------------------------------------------------------------------------------


def tdx(*parts: str) -> Path:
    return fixtures_dir("tdx", *parts)


def nitro_sample(name: str) -> Path:
    return fixtures_dir("nitro", "samples", name)


# --- an attestation endpoint on loopback ------------------------------------------------------------------------


class EndpointServer:
    """A real HTTP server on loopback answering ``GET /attestation[?nonce=HEX]`` like the host's endpoint, with
    documents from the NSM simulator. ``hold`` makes it accept and then stall (a worker is caught mid-task);
    ``broken`` makes it answer 503."""

    def __init__(self, make_document: Callable[[bytes | None], bytes]) -> None:
        self.make_document = make_document
        self.hold = threading.Event()
        self.broken = False
        self.delay = 0.0
        self.requests = 0
        self.held = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                outer.requests += 1
                parts = urlsplit(self.path)
                if parts.path != "/attestation":
                    self.send_error(404)
                    return
                if outer.hold.is_set():
                    outer.held.set()
                    while outer.hold.is_set():
                        time.sleep(0.05)
                if outer.delay:
                    time.sleep(outer.delay)
                if outer.broken:
                    self.send_error(503)
                    return
                nonce_hex = parse_qs(parts.query).get("nonce", [None])[0]
                document = outer.make_document(bytes.fromhex(nonce_hex) if nonce_hex else None)
                self.send_response(200)
                self.send_header("Content-Type", "application/cbor")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/attestation"

    def __enter__(self) -> EndpointServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hold.clear()
        self.server.shutdown()
        self.server.server_close()


def simulator_documents(
    state: Path, app: bytes = b"print('hello from the enclave')\n"
) -> tuple[Callable[[bytes | None], bytes], str]:
    """A document maker backed by a simulated NSM whose CA lives in ``state``, and its PCR0 (hex)."""
    from enclavekit.nsm.simulator import NsmSimulator

    simulator = NsmSimulator(state, app={"app.py": app})
    nsm = simulator.client()

    def make(nonce: bytes | None) -> bytes:
        return nsm.attestation(nonce=nonce)

    return make, simulator.pcr(0).hex()
