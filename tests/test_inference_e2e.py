"""The inference service end to end with real processes: KMS emulator, the enclave (simulated NSM), the host
gateway in front of it (and the enclave's relay beside it); a client that verifies attestation and every receipt;
the CLI; host blindness."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.errors import Error
from enclavekit.nsm import load_root
from enclavekit.services.inference.client import InferenceClient
from enclavekit.services.inference.gateway import Gateway
from enclavekit.services.inference.wire import EMBED, INFO, EmbedRequest, InfoRequest

SECRET_SENTENCE = "zebra-quartz-7f3a91 my confidential diagnosis is benign paroxysmal vertigo"


@dataclass
class _Stack:
    state: Path
    local: dict[str, Any]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Stack]:
    """KMS emulator, enclave, relay and gateway, started by the stack supervisor in its own process."""
    from enclavekit.services.inference.stack import load_local

    state = tmp_path_factory.mktemp("inference-stack")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.apps.inference_stack", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the supervisor prints once everything is ready, or exits
        if not line:
            raise RuntimeError(f"the inference stack did not start: {process.stderr.read().decode()[-2000:]}")
        yield _Stack(state, load_local(state))
    finally:
        process.terminate()
        process.wait(60)


def _policy(local: dict[str, Any]) -> NitroPolicy:
    return NitroPolicy(
        measurements=[{0: bytes.fromhex(local["enclave_pcr0"])}], roots=(load_root(local["simulator_root"]),)
    )


def _client(stack: _Stack, endpoint: str | None = None) -> InferenceClient:
    local = stack.local
    return InferenceClient(endpoint or local["gateway"], _policy(local), model_hash=bytes.fromhex(local["model_hash"]))


def test_embeddings_come_back_with_a_verified_receipt_through_the_gateway(stack: _Stack) -> None:
    nonce = os.urandom(16)

    async def run() -> Any:
        async with _client(stack) as client:
            first = await client.embed(["This is an example sentence", "word " * 400], nonce)
            second = await client.embed(["again"])
            return first, second, client.last_truncated

    (vectors, receipt), (_, later), truncated = asyncio.run(run())
    assert vectors.shape == (2, 384)
    assert abs(float(vectors[0, 0]) - 0.0676569) < 1e-5
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert receipt.claims.eat_nonce == nonce
    assert receipt.claims.model_hash.hex() == stack.local["model_hash"]
    assert receipt.claims.enclave_measurements.pcr0.hex() == stack.local["enclave_pcr0"]
    assert later.claims.sequence_number == receipt.claims.sequence_number + 1
    assert later.claims.eat_nonce is None
    assert truncated == (False,)


def test_a_receipt_naming_a_renewed_document_verifies_after_one_refresh(stack: _Stack) -> None:
    """The enclave renews its receipt key's attestation document every 10 minutes; a client holding the older one
    fetches the current document once (and verifies it) rather than refusing every later receipt."""

    async def run() -> tuple[bytes, bytes]:
        async with _client(stack) as client:
            current = await client.info()
            client._info = replace(current, document=current.document + b"older")  # as if it were renewed since
            _, receipt = await client.embed(["after a renewal"])
            assert client._info is not None
            return receipt.claims.attestation_doc_hash, client._info.document

    named, held = asyncio.run(run())
    assert not held.endswith(b"older")  # the client holds the enclave's current document again
    assert named == hashlib.sha256(held).digest()


class _RawJson(EmbedRequest):
    """An embed request whose JSON body is given verbatim (what a hostile client can send)."""

    def model_dump_json(self, **kwargs: Any) -> str:
        return str(self.texts[0])


def test_bad_input_gets_a_specific_error_and_the_enclave_keeps_serving(stack: _Stack) -> None:
    async def attempt(texts: list[str], raw_json: str | None = None) -> str:
        request = EmbedRequest(texts=texts) if raw_json is None else _RawJson(texts=[raw_json])
        async with AttestedClient.nitro(stack.local["gateway"], _policy(stack.local)) as raw:
            try:
                await raw.call(EMBED, request)
            except Error as exc:
                return exc.code
        return "accepted"

    assert asyncio.run(attempt([])) == "bad_input"
    assert asyncio.run(attempt(["x"] * 257)) == "bad_input"
    assert asyncio.run(attempt(["x" * (16 * 1024 + 1)])) == "bad_input"
    assert asyncio.run(attempt([""])) == "bad_input"
    lone_surrogate = '{"texts": ["ok", "\\ud800 is not a character"]}'
    assert asyncio.run(attempt([], lone_surrogate)) in {"bad_input", "rpc_invalid_request"}
    assert asyncio.run(attempt([], '{"texts": "not a list"}')) == "rpc_invalid_request"
    odd_nonce = '{"texts": ["ok"], "nonce": "' + "a" * 17 + '"}'  # hex of no whole number of bytes
    assert asyncio.run(attempt([], odd_nonce)) == "rpc_invalid_request"
    assert asyncio.run(attempt(["still serving"])) == "accepted"


def test_invalid_utf8_is_refused_by_the_client_before_sending(stack: _Stack) -> None:
    async def run() -> None:
        async with _client(stack) as client:
            await client.embed(["fine", "bad \udcff byte"])

    with pytest.raises(Error, match="not valid UTF-8"):
        asyncio.run(run())


def test_host_sees_no_input_text_in_relay_bytes_logs_or_files(stack: _Stack) -> None:
    """The reference's Nitro host could read the input; ours relays ciphertext only."""
    seen: list[bytes] = []

    async def run() -> None:
        gateway = Gateway(stack.local["upstream"], tap=lambda direction, data: seen.append(data))
        host, port = await gateway.start()
        try:
            async with _client(stack, f"tcp://{host}:{port}") as client:
                await client.embed([SECRET_SENTENCE])
        finally:
            await gateway.close()

    asyncio.run(run())
    wire = b"".join(seen)
    assert len(wire) > 1000  # the request and the response did cross this tap
    needles = [SECRET_SENTENCE.encode(), b"zebra-quartz-7f3a91", SECRET_SENTENCE.encode("utf-16-le")]
    assert not any(n in wire for n in needles)
    for path in stack.state.rglob("*"):
        if path.is_file() and not path.is_socket():
            data = path.read_bytes()
            assert not any(n in data for n in needles), path


def test_gateway_counts_requests_in_its_metrics(stack: _Stack) -> None:
    import httpx

    async def run() -> None:
        async with _client(stack) as client:
            await client.embed(["counted"])

    asyncio.run(run())
    text = httpx.get(stack.local["gateway_metrics"], timeout=10).text
    answered = next(
        line for line in text.splitlines() if line.startswith("enclavekit_inference_gateway_answered_total")
    )
    assert int(answered.split()[1]) >= 2  # info + embed
    assert "enclavekit_inference_gateway_in_flight 0" in text


def test_info_names_the_model_and_binds_the_receipt_key(stack: _Stack) -> None:
    async def run() -> Any:
        async with AttestedClient.nitro(stack.local["gateway"], _policy(stack.local)) as raw:
            return await raw.call(INFO, InfoRequest())

    info = asyncio.run(run())
    assert info.ready and info.error is None
    assert info.model_hash == stack.local["model_hash"]
    from enclavekit.attestation import nitro

    attestation = nitro.verify(base64.b64decode(info.receipt_document), _policy(stack.local), now=_now())
    assert attestation.user_data == bytes.fromhex(info.receipt_public_key)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_cli_embed_prints_verified_json_and_the_receipt_verifies_offline(stack: _Stack, tmp_path: Path) -> None:
    nonce = os.urandom(16).hex()
    command = [sys.executable, "-m", "enclavekit.cli", "inference", "embed", "A man is playing a guitar.", "hi"]
    done = subprocess.run(
        [*command, "--nonce", nonce, "--state", str(stack.state), "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) >= {"model_id", "embeddings", "receipt", "attestation_document"}
    assert len(out["embeddings"]) == 2 and len(out["embeddings"][0]) == 384
    (tmp_path / "receipt.b64").write_text(out["receipt"])
    (tmp_path / "doc.bin").write_bytes(base64.b64decode(out["attestation_document"]))
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "enclavekit.cli",
            "receipt",
            "verify",
            str(tmp_path / "receipt.b64"),
            "--attestation",
            str(tmp_path / "doc.bin"),
            "--nonce",
            nonce,
            "--model-hash",
            stack.local["model_hash"],
            "--platform",
            "nitro",
            "--trust-sim-root",
            str(stack.state),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["valid"] is True


def test_enclave_with_a_tampered_model_refuses_to_serve_anything(stack: _Stack, tmp_path: Path) -> None:
    """The enclave boots, says why it refuses, and answers every embed with model_refused."""
    import shutil

    from enclavekit.services.inference.chunks import HEADER_SIZE
    from enclavekit.services.inference.loader import WEIGHTS_FILE

    package = tmp_path / "package"
    shutil.copytree(stack.state / "inference" / "package", package)
    weights = bytearray((package / WEIGHTS_FILE).read_bytes())
    weights[HEADER_SIZE + 3 * ((1 << 20) + 16) + 5] ^= 0x01  # inside chunk 3 (1 MiB + a 16-byte tag each)
    (package / WEIGHTS_FILE).write_bytes(bytes(weights))
    socket_path = tmp_path / "bad.sock"
    process = _enclave_process(stack, socket_path, "--set", f"package={package}")
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline() or b"{}")
        assert ready.get("ready"), process.stderr.read().decode()[-2000:] if process.stderr else ""

        async def run() -> tuple[Any, str]:
            async with AttestedClient.nitro(f"unix://{socket_path}", _policy(stack.local)) as raw:
                info = await raw.call(INFO, InfoRequest())
                try:
                    await raw.call(EMBED, EmbedRequest(texts=["hello"]))
                except Error as exc:
                    return info, exc.code
                return info, "served"

        info, code = asyncio.run(run())
        assert not info.ready and info.model_hash is None
        assert info.error is not None and info.error["code"] == "model_refused"
        assert "chunk 3 does not authenticate" in info.error["message"]
        assert code == "model_refused"
    finally:
        process.terminate()
        process.wait(30)


def _enclave_process(stack: _Stack, socket_path: Path, *args: str, config: Path | None = None) -> Any:
    """An inference enclave process on ``socket_path`` with the stack's measured configuration (or ``config``)."""
    measured = config or stack.state / "inference" / "config.json"
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "enclavekit.enclave", "enclavekit.services.inference.enclave_app:app"),
            *("--name", "inference", "--listen", f"unix://{socket_path}", "--state", str(stack.state)),
            *("--config", str(measured)),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _refusal(stack: _Stack, process: Any, socket_path: Path) -> str:
    """Why the enclave does not serve: its boot failure (stderr), or, when it boots, the error ``inference.info``
    answers (it then refuses every embed with ``model_refused``)."""
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline() or b"{}")
    if not ready.get("ready"):
        return _boot_failure(process)
    policy = NitroPolicy.from_measurements(
        {0: bytes.fromhex(ready["pcr0"])}, roots=(load_root(stack.local["simulator_root"]),)
    )

    async def ask() -> tuple[Any, str]:
        async with AttestedClient.nitro(f"unix://{socket_path}", policy) as raw:
            info = await raw.call(INFO, InfoRequest())
            try:
                await raw.call(EMBED, EmbedRequest(texts=["hello"]))
            except Error as exc:
                return info, exc.code
            return info, "served"

    try:
        info, code = asyncio.run(ask())
    finally:
        process.kill()
        process.wait(30)
    assert not info.ready and info.error is not None and code == "model_refused"
    return json.dumps(info.error)


def _boot_failure(process: Any) -> str:
    """The enclave must not come up: its exit status and its stderr (why)."""
    try:
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert b'"ready": true' not in out, "the enclave booted"
    assert process.returncode != 0
    return str(err.decode(errors="replace"))


def test_host_cannot_give_the_inference_enclave_its_config_or_kms_url_by_launch_setting(
    stack: _Stack, tmp_path: Path
) -> None:
    """The configuration (publisher key, KMS key and endpoint) is measured: launch settings naming one are refused."""
    package = stack.state / "inference" / "package"
    host_config = tmp_path / "host-config.json"
    host_config.write_bytes((stack.state / "inference" / "config.json").read_bytes())
    for extra, expected in (
        (("--set", f"config={host_config}"), "config is not a launch setting"),
        (("--set", "kms_url=http://127.0.0.1:9"), "kms_url is not a launch setting"),
    ):
        process = _enclave_process(stack, tmp_path / "setting.sock", "--set", f"package={package}", *extra)
        assert expected in _boot_failure(process)


def test_host_cannot_route_the_inference_enclave_to_its_own_kms(stack: _Stack, tmp_path: Path) -> None:
    """A fake KMS at the host's route would seal a model key of the host's choosing: TLS to the pinned CA stops it."""
    from enclavekit.stack.tls import ensure_provider_tls
    from tests.test_kms_measured_endpoint import FakeKms

    fake = FakeKms(ensure_provider_tls(tmp_path / "host-ca", "127.0.0.1"))
    port = fake.start()
    try:
        package = stack.state / "inference" / "package"
        route = ("--set", f"kms_route=127.0.0.1:{port}")
        process = _enclave_process(stack, tmp_path / "routed.sock", "--set", f"package={package}", *route)
        assert "kms_endpoint_untrusted" in _refusal(stack, process, tmp_path / "routed.sock")
        assert fake.connections >= 1 and fake.requests == 0
    finally:
        fake.stop()


def test_an_inference_enclave_with_another_config_gets_no_model_key(stack: _Stack, tmp_path: Path) -> None:
    """One changed byte of the configuration is another PCR0: the key policy releases nothing to it."""
    from enclavekit.services.inference.config import InferenceConfig
    from enclavekit.services.inference.stack import expected_pcr0

    genuine = (stack.state / "inference" / "config.json").read_bytes()
    document = InferenceConfig.from_bytes(genuine).to_json()
    document["limits"]["max_batch"] = 1  # harmless-looking, still another measurement
    variant = tmp_path / "variant.json"
    variant.write_bytes(json.dumps(document).encode())
    assert expected_pcr0(variant.read_bytes()) != expected_pcr0(genuine)
    assert expected_pcr0(genuine).hex() == stack.local["enclave_pcr0"]
    package = stack.state / "inference" / "package"
    process = _enclave_process(stack, tmp_path / "variant.sock", "--set", f"package={package}", config=variant)
    assert "kms_access_denied" in _refusal(stack, process, tmp_path / "variant.sock")
