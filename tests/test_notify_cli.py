"""The notify stack under the stack supervisor (``enclavekit notify up``: the same pieces ``enclavekit up``
starts), and the local commands other tools rely on: ``send-test``, ``dev-proof``, ``ingest`` and
``captured``, each finding the stack through ``--state``."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.nsm import load_root
from enclavekit.services.notify.client import NotifyClient
from enclavekit.services.notify.ingest import sender_hmac
from enclavekit.services.notify.testing import CLI


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    state = tmp_path_factory.mktemp("notify-up") / "state"
    process = subprocess.Popen(
        [*CLI, "notify", "up", "--state", str(state)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not (state / "stack.json").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"the notify stack did not start: {process.stderr.read() if process.stderr else ''!r}"
                )
            time.sleep(0.2)
        yield state, json.loads((state / "stack.json").read_text())
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_up_lists_the_notify_pieces(up: tuple[Path, dict[str, Any]]) -> None:
    _, stack = up
    services = stack["services"]
    for name in ("notify_api", "notify_ingest", "notify_dispatcher", "notify_capture", "notify_world_id", "kms"):
        assert services[name]["url"] and services[name]["pid"], name
    assert any(enclave["name"] == "notify" for enclave in stack["enclaves"])


def test_send_test_initialises_checks_health_and_delivers(up: tuple[Path, dict[str, Any]]) -> None:
    state, _ = up
    result = _cli(
        "notify",
        "send-test",
        "--state",
        str(state),
        "--push-id",
        "send-test-device",
        "--every",
        "100ms",
        "--count",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "initialized" in result.stdout and "health: initialized=True" in result.stdout
    assert result.stdout.count(": delivered") == 2
    captured = [
        json.loads(line) for line in _cli("notify", "captured", "--json", "--state", str(state)).stdout.splitlines()
    ]
    assert any(item["push_ids"] == ["send-test-device"] for item in captured)


def test_a_user_can_try_the_whole_flow_with_the_cli_contracts(up: tuple[Path, dict[str, Any]]) -> None:
    state, stack = up
    pcr0 = next(e["pcr0"] for e in stack["enclaves"] if e["name"] == "notify")
    policy = NitroPolicy(measurements=[{0: bytes.fromhex(pcr0)}], roots=(load_root(state),))
    topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
    devices = {}
    for who in ("sender", "reader"):
        client = NotifyClient(stack["services"]["notify_api"]["url"], policy)
        sealed = client.seal(f"{who}-{uuid.uuid4().hex[:8]}", client.enclave_public_key())

        def prove(signal: str, who: str = who) -> dict[str, str]:
            out = _cli("notify", "dev-proof", "--signal", signal, "--json", "--identity", who, "--state", str(state))
            assert out.returncode == 0, out.stderr
            proof: dict[str, str] = json.loads(out.stdout)
            assert set(proof) == {"proof", "nullifier_hash", "merkle_root", "credential_type"}
            return proof

        client.authorize(sealed, prove)
        hmac_key = os.urandom(42).hex()
        client.subscribe([(topic, hmac_key, int(time.time()) + 3600)])
        devices[who] = (client, hmac_key)
    data = os.urandom(32)
    ingested = _cli(
        "notify", "ingest", "--topic", topic, "--data-b64", base64.b64encode(data).decode(),
        "--sender-hmac", sender_hmac(devices["sender"][1], data), "--state", str(state),
    )  # fmt: skip
    assert ingested.returncode == 0, ingested.stderr
    message_id = json.loads(ingested.stdout)["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = _cli("notify", "captured", "--json", "--state", str(state)).stdout.splitlines()
        found = [json.loads(line) for line in lines if json.loads(line)["message_id"] == message_id]
        if found:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the capture provider never got the message")
    assert len(found) == 1
    item = found[0]
    assert set(item) == {"message_id", "topic", "push_ids", "payload"}
    assert item["topic"] == topic and len(item["push_ids"]) == 1 and item["push_ids"][0].startswith("reader-")
    assert item["payload"]["encryptedMessageBase64"] == base64.b64encode(data).decode()
    silent = _cli(
        "notify", "ingest", "--topic", topic, "--data-b64", base64.b64encode(b"x").decode(), "--no-push",
        "--state", str(state),
    )  # fmt: skip
    assert silent.returncode == 0


def test_local_commands_without_a_stack_say_where_they_looked(tmp_path: Path) -> None:
    """Every local command answers a missing stack with the shared message: the folder looked in, how to point."""
    commands = (
        ("captured", "--json"),
        ("send-test",),
        ("ingest", "--topic", "t", "--data-b64", "AA=="),
        ("seal", "device-1"),
    )
    for args in commands:
        result = _cli("notify", *args, "--state", str(tmp_path))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"error: no stack is running with state folder {tmp_path.resolve()}" in result.stderr, args
        assert "--state DIR" in result.stderr, args


RECIPE = re.compile(r"<!-- recipe: notify-http -->\n```sh\n(.*?)```", re.S)


def test_the_documented_curl_recipe_delivers_a_notification(up: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """docs/notify.md's curl recipe, run as written (bash, curl, jq, the enclavekit CLI) against a real stack."""
    state, _ = up
    found = RECIPE.search((Path(__file__).resolve().parents[1] / "docs" / "notify.md").read_text())
    assert found, "docs/notify.md lost its '<!-- recipe: notify-http -->' block"
    env = {**os.environ, "STATE": str(state), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", found.group(1)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"/xmtp/mls/1/g-recipe-\d+  -> recipe-device$", done.stdout, re.M), done.stdout + done.stderr


def test_ingest_names_the_field_it_refuses(up: tuple[Path, dict[str, Any]]) -> None:
    """ingest's 400s name the offending field (they said only "ValidationError"/"BadRequest"), in the API's
    error envelope."""
    _, stack = up
    url = f"{stack['services']['notify_ingest']['url']}/v1/messages"
    good = {"topic": "/xmtp/mls/1/g-fields", "data_b64": "AA=="}
    cases = {
        json.dumps({**good, "topic": ""}): "topic: String should have at least 1 character",
        json.dumps({"data_b64": "AA=="}): "topic: Field required",
        json.dumps({**good, "data_b64": "!!!!"}): "data_b64 is not base64",
        json.dumps({**good, "sender_hmac": "zz"}): "sender_hmac: String should match pattern",
        json.dumps({**good, "admin": True}): "admin: Extra inputs are not permitted",
        json.dumps({**good, "should_push": "maybe"}): "should_push: ",
        json.dumps([good]): "body: ",
        "{not json": "body: not valid JSON",
    }
    for body, named in cases.items():
        answer = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=10)
        payload = answer.json()
        assert answer.status_code == 400 and set(payload) == {"allowRetry", "error"}, (body, payload)
        assert payload["allowRetry"] is False and set(payload["error"]) == {"code", "message"}, (body, payload)
        assert payload["error"]["code"] == "bad_request", (body, payload)
        assert payload["error"]["message"].startswith(named), (body, payload)


def test_seal_refuses_an_enclave_that_is_not_the_pinned_one(up: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """``notify seal`` takes the key only from an attestation that verifies against the pinned PCR0: pinned to
    another measurement, the same running enclave's key is refused and nothing is printed."""
    from enclavekit.services.notify.pushid import EncryptedPushId

    state, _ = up
    sealed = _cli("notify", "seal", "device-s", "--state", str(state))
    assert sealed.returncode == 0, sealed.stderr
    assert EncryptedPushId.parse(sealed.stdout.strip()).hex == sealed.stdout.strip()
    other = tmp_path / "pinned-elsewhere"
    (other / "notify").mkdir(parents=True)
    (other / "stack.json").write_text((state / "stack.json").read_text())
    local = json.loads((state / "notify" / "local.json").read_text())
    (other / "notify" / "local.json").write_text(json.dumps({**local, "enclave_pcr0": ["00" * 48]}))
    refused = _cli("notify", "seal", "device-s", "--state", str(other))
    assert refused.returncode == 1 and refused.stdout == "", refused.stdout
    assert "attestation was refused" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
