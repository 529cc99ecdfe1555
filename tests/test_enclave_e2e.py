"""Client → host relay → enclave, each in its own OS process, with the simulated NSM and the real verifier."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclavekit.attestation import nitro
from enclavekit.attestation.errors import MeasurementMismatch
from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.channel import ClientIdentityKey
from enclavekit.client import AttestedClient
from enclavekit.enclave.demo import ECHO, GET_NOTE, PUT_NOTE, Echo, Note, NoteKey
from enclavekit.errors import Error
from enclavekit.nsm import load_root
from enclavekit.stack.processes import free_port

CLI = [sys.executable, "-m", "enclavekit.cli"]


@dataclass
class Running:
    process: subprocess.Popen[str]
    ready: dict[str, str]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            return self.process.wait(15)
        return self.process.returncode


def _start(argv: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> Running:
    stderr = subprocess.DEVNULL if log is None else log.open("ab")
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, **(env or {})}
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise AssertionError(f"{argv} exited before it was ready ({process.wait()})")
    return Running(process, json.loads(line))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, object]]:
    """An enclave process and a relay process in front of it, capturing what it relays."""
    state = tmp_path / "state"
    socket_path = tmp_path / "demo.sock"
    enclave_log = tmp_path / "enclave.log"
    enclave = _start(
        [
            *CLI,
            "enclave",
            "run",
            "enclavekit.enclave.demo:app",
            "--listen",
            f"unix://{socket_path}",
            "--state",
            str(state),
        ],
        log=enclave_log,
    )
    capture = tmp_path / "relayed.bin"
    port, http_port = free_port(), free_port()
    relay = _start(
        [
            *CLI,
            "host",
            "relay",
            "--listen",
            f"tcp://127.0.0.1:{port}",
            "--upstream",
            f"unix://{socket_path}",
            "--http",
            f"tcp://127.0.0.1:{http_port}",
            "--trust-sim-root",
            str(state),
            "--capture",
            str(capture),
        ]
    )
    running: dict[str, object] = {
        "state": state,
        "enclave": enclave,
        "relay": relay,
        "capture": capture,
        "enclave_log": enclave_log,
        "socket": socket_path,
        "url": relay.ready["url"],
        "http": f"http://127.0.0.1:{http_port}",
        "pcr0": bytes.fromhex(enclave.ready["pcr0"]),
    }
    try:
        yield running
    finally:
        assert relay.stop() == 0
        current = running["enclave"]  # a test may have restarted it
        assert isinstance(current, Running)
        assert current.stop() == 0


def _policy(stack: dict[str, object], pcr0: bytes | None = None) -> NitroPolicy:
    state = stack["state"]
    assert isinstance(state, Path)
    pinned = pcr0 if pcr0 is not None else stack["pcr0"]
    assert isinstance(pinned, bytes)
    return NitroPolicy(measurements=[{0: pinned}], roots=(load_root(state),))


async def test_client_reaches_the_enclave_through_the_relay_and_the_host_sees_no_plaintext(
    stack: dict[str, object],
) -> None:
    secret = "SECRET-REQUEST-7f3a9c"
    user = ClientIdentityKey.generate()
    async with AttestedClient.nitro(str(stack["url"]), _policy(stack), identity=user) as client:
        assert (await client.call(PUT_NOTE, Note(key="note-key-5d1e", text=secret))).key == "note-key-5d1e"
        assert (await client.call(GET_NOTE, NoteKey(key="note-key-5d1e"))).text == secret
        reply = await client.call(ECHO, Echo(text="SECRET-RESPONSE-" + "e" * 40))
        assert reply.text.startswith("SECRET-RESPONSE-")
        peer = client.peer
        assert peer is not None
        assert peer.measurements["pcr0"] == stack["pcr0"]
    capture = stack["capture"]
    assert isinstance(capture, Path)
    relayed = capture.read_bytes()
    assert len(relayed) > 1000, "the capture saw the session"
    for marker in (secret, "SECRET-RESPONSE", "note-key-5d1e", "demo.put_note", "demo.get_note"):
        assert marker.encode() not in relayed, f"{marker!r} crossed the host in plaintext"
    enclave_log = stack["enclave_log"]
    assert isinstance(enclave_log, Path)
    logged = enclave_log.read_bytes()
    assert b"serving on" in logged, "the enclave's log was captured"
    assert secret.encode() not in logged
    state = stack["state"]
    assert isinstance(state, Path)
    for path in state.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"{path} holds the secret"


async def test_client_reconnects_and_re_attests_after_the_enclave_restarts(stack: dict[str, object]) -> None:
    client = AttestedClient.nitro(str(stack["url"]), _policy(stack), connect_attempts=20)
    assert (await client.call(ECHO, Echo(text="before"))).text == "before"
    first_session = client.peer
    enclave = stack["enclave"]
    assert isinstance(enclave, Running)
    assert enclave.stop() == 0
    with pytest.raises(Error):
        await client.call(ECHO, Echo(text="during"), timeout=5)
    restarted = _start(
        [
            *CLI,
            "enclave",
            "run",
            "enclavekit.enclave.demo:app",
            "--listen",
            f"unix://{stack['socket']}",
            "--state",
            str(stack["state"]),
        ]
    )
    stack["enclave"] = restarted
    assert (await client.call(ECHO, Echo(text="after"))).text == "after"
    assert client.peer is not first_session  # a new session, freshly attested
    await client.close()


async def test_client_pinning_another_pcr0_refuses_the_enclave(stack: dict[str, object]) -> None:
    client = AttestedClient.nitro(str(stack["url"]), _policy(stack, pcr0=b"\x42" * 48), connect_attempts=1)
    with pytest.raises(MeasurementMismatch):
        await client.connect()


async def test_changed_enclave_app_is_refused_by_the_old_policy(stack: dict[str, object], tmp_path: Path) -> None:
    """The same app with one line changed has a new PCR0, so a client pinning the old one refuses it."""
    package = tmp_path / "changed_app"
    package.mkdir()
    source = Path(__file__).resolve().parents[1] / "src" / "enclavekit" / "enclave" / "demo.py"
    shutil.copy(source, package / "__init__.py")
    with (package / "__init__.py").open("a") as handle:
        handle.write(
            textwrap.dedent("""
            # a change an operator slipped in
            LEAK = True
        """)
        )
    socket_path = tmp_path / "changed.sock"
    changed = _start(
        [
            *CLI,
            "enclave",
            "run",
            "changed_app:app",
            "--listen",
            f"unix://{socket_path}",
            "--state",
            str(stack["state"]),
        ],
        env={"PYTHONPATH": str(tmp_path)},
    )
    try:
        assert bytes.fromhex(changed.ready["pcr0"]) != stack["pcr0"]
        client = AttestedClient.nitro(f"unix://{socket_path}", _policy(stack), connect_attempts=1)
        with pytest.raises(MeasurementMismatch):
            await client.connect()
    finally:
        changed.stop()


def test_attestation_endpoint_serves_a_fresh_document_bound_to_the_nonce(stack: dict[str, object]) -> None:
    nonce = os.urandom(32)
    with urllib.request.urlopen(f"{stack['http']}/attestation?nonce={nonce.hex()}", timeout=10) as answer:
        assert answer.headers["Content-Type"] == "application/cbor"
        document = answer.read()
    attestation = nitro.verify(document, dataclasses.replace(_policy(stack), nonce=nonce), now=datetime.now(UTC))
    assert attestation.nonce == nonce
    with urllib.request.urlopen(f"{stack['http']}/health", timeout=10) as answer:
        health = json.load(answer)
    assert health["status"] == "ok"
    assert health["pcr0"] == stack["pcr0"].hex()  # type: ignore[union-attr]


@pytest.mark.parametrize("query", ["nonce=zz", "nonce=" + "ab" * 65, "format=xml"])
def test_attestation_endpoint_answers_bad_queries_with_4xx(stack: dict[str, object], query: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{stack['http']}/attestation?{query}", timeout=10)
    assert 400 <= caught.value.code < 500


@pytest.mark.parametrize(
    ("query", "code", "parameter"),
    [
        ("nonce=abc", "invalid_nonce", "nonce"),  # odd-length hex: was passed on and came back as a 502
        ("nonce=a", "invalid_nonce", "nonce"),
        ("nonce=", "invalid_nonce", "nonce"),
        ("nonce=" + "ab" * 65, "invalid_nonce", "nonce"),
        ("nonce=" + "a" * 20_000, "invalid_nonce", "nonce"),
        ("nonce=%D9%A3%D9%A3", "invalid_nonce", "nonce"),  # Arabic-Indic digits
        ("format=xml", "invalid_format", "format"),
    ],
)
def test_attestation_endpoint_rejects_a_malformed_nonce_with_400_naming_it(
    stack: dict[str, object], query: str, code: str, parameter: str
) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{stack['http']}/attestation?{query}", timeout=10)
    assert caught.value.code == 400
    error = json.load(caught.value)["error"]
    assert error["code"] == code and f"'{parameter}'" in error["message"]


def test_enclave_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    enclave = _start(
        [
            *CLI,
            "enclave",
            "run",
            "enclavekit.enclave.demo:app",
            "--listen",
            f"unix://{tmp_path / 'e.sock'}",
            "--state",
            str(tmp_path / "state"),
        ]
    )
    assert enclave.stop() == 0
    assert not (tmp_path / "e.sock").exists()


def test_enclave_run_rejects_a_bad_app_spec_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "enclave", "run", "no_such_module:app", "--listen", "tcp://127.0.0.1:0", "--state", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cannot import" in result.stderr
    assert "Traceback" not in result.stderr


async def test_another_app_from_the_same_code_has_its_own_pcr0(stack: dict[str, object], tmp_path: Path) -> None:
    """The entrypoint is measured like the rest of the image: pinning the demo's PCR0 refuses any other app."""
    socket_path = tmp_path / "other.sock"
    repo = Path(__file__).resolve().parents[1]
    other = _start(
        [
            *CLI,
            "enclave",
            "run",
            "tests.apps.other:app",
            "--listen",
            f"unix://{socket_path}",
            "--state",
            str(stack["state"]),
        ],
        env={"PYTHONPATH": str(repo)},
    )
    try:
        assert bytes.fromhex(other.ready["pcr0"]) != stack["pcr0"]
        client = AttestedClient.nitro(f"unix://{socket_path}", _policy(stack), connect_attempts=1)
        with pytest.raises(MeasurementMismatch):
            await client.connect()
    finally:
        other.stop()
