"""``enclavekit notify ...``: run notify's host parts, and the local commands that drive a running stack.

Contracts (other tools rely on them):

* ``notify dev-proof --signal S --json`` prints ``{proof, nullifier_hash, merkle_root, credential_type}``
  that the local World ID stand-in accepts;
* ``notify ingest --topic T --data-b64 B --sender-hmac HEX [--no-push]`` injects a chat message into the
  ingest path of the running stack;
* ``notify captured --json`` prints what the capture provider delivered, one JSON object per line
  ``{message_id, topic, push_ids, payload}``;
* ``notify seal PUSH_ID`` prints PUSH_ID sealed (hex) to the push key of the running enclave, after verifying
  its attestation — the ``encrypted_push_id`` the HTTP API takes;
* ``notify send-test`` initialises the enclave, checks its health and sends one test notification
  (``--every 30s`` repeats it).

Each takes ``--state DIR`` (default ``.enclavekit/``) and finds the running stack through ``stack.json``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import typer

from enclavekit.cli._app import app, no_stack_message, running_stack
from enclavekit.errors import ConfigurationError, Error
from enclavekit.stack.state import DEFAULT_STATE_DIR, StateDir

__all__ = ["notify_app"]

notify_app = typer.Typer(help="Confidential push notifications: the notify service and its local tools.")
app.add_typer(notify_app, name="notify")

STATE = typer.Option(DEFAULT_STATE_DIR, "--state", help="State folder of the local stack.")
HOST = typer.Option("127.0.0.1", "--host")
PORT = typer.Option(0, "--port", help="Port (0: any free port).")
SETS = typer.Option([], "--set", help="A setting KEY=VALUE (repeatable; lists comma-separated).")


def _settings(state: Path | None, sets: list[str]) -> Any:
    """Settings as every service's CLI takes them (:func:`enclavekit.hostkit.settings.load_settings`): defaults <
    ``ENCLAVEKIT_NOTIFY_<KEY>`` < ``--set KEY=VALUE`` (< ``--state``, unless ``--set state_dir=`` is given)."""
    from enclavekit.hostkit.settings import load_settings
    from enclavekit.services.notify.settings import NotifySettings

    given_state = any(item.partition("=")[0].strip() == "state_dir" for item in sets)
    try:
        return load_settings(NotifySettings, service="notify", sets=sets, state_dir=None if given_state else state)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc


def _run(coroutine: Any) -> None:
    try:
        asyncio.run(coroutine)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    except Error as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


# --- the services -----------------------------------------------------------------------------------------------


@notify_app.command("api")
def api_command(state: Path = STATE, host: str = HOST, port: int = PORT, sets: list[str] = SETS) -> None:
    """Serve the HTTP API until SIGTERM. Prints {"ready": true, "url": ...} when listening."""
    from enclavekit.log import configure_logging
    from enclavekit.services.notify.runtime import run_api

    configure_logging()
    _run(run_api(_settings(state, sets), host=host, port=port))


@notify_app.command("ingest-worker")
def ingest_worker_command(state: Path = STATE, host: str = HOST, port: int = PORT, sets: list[str] = SETS) -> None:
    """Run the ingest worker (inbox stream → notifications) with its HTTP endpoint POST /v1/messages."""
    from enclavekit.log import configure_logging
    from enclavekit.services.notify.runtime import run_ingest_worker

    configure_logging()
    _run(run_ingest_worker(_settings(state, sets), host=host, port=port))


@notify_app.command("dispatcher")
def dispatcher_command(state: Path = STATE, host: str = HOST, port: int = PORT, sets: list[str] = SETS) -> None:
    """Run the dispatcher (notifications → the enclave), serving /metrics."""
    from enclavekit.log import configure_logging
    from enclavekit.services.notify.runtime import run_dispatcher

    configure_logging()
    _run(run_dispatcher(_settings(state, sets), host=host, port=port))


@notify_app.command("capture-server")
def capture_server_command(
    api_key: str | None = typer.Option(None, "--api-key", help="The Braze API key it accepts."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="A file holding that key (off argv)."),
    record: Path | None = typer.Option(None, "--record", help="Append each delivery to this JSON-lines file."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Serve HTTPS with this certificate chain (PEM)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="... and this private key (PEM)."),
    host: str = HOST,
    port: int = PORT,
) -> None:
    """The capture provider: a fake Braze that validates requests and records deliveries."""
    from enclavekit.log import configure_logging
    from enclavekit.services.notify.runtime import run_capture_server

    configure_logging()
    key = api_key if api_key is not None else (api_key_file.read_text().strip() if api_key_file else "")
    if not key:
        raise typer.BadParameter("give --api-key or --api-key-file")
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    tls = (str(tls_cert), str(tls_key)) if tls_cert is not None and tls_key is not None else None
    _run(run_capture_server(key, record, host=host, port=port, tls=tls))


@notify_app.command("world-id")
def world_id_command(state: Path = STATE, host: str = HOST, port: int = PORT) -> None:
    """The local World ID stand-in: POST /v2/semaphore-proof/verify for proofs from `notify dev-proof`."""
    from enclavekit.log import configure_logging
    from enclavekit.services.notify.runtime import run_world_id

    configure_logging()
    _run(run_world_id(state, host=host, port=port))


@notify_app.command("local-s3")
def local_s3_command(
    root: Path = typer.Option(..., "--root", help="Folder that holds the objects (BUCKET/KEY)."),
    host: str = HOST,
    port: int = PORT,
) -> None:
    """A local S3 stand-in for media uploads (HEAD, GET, presigned PUT with length, type and checksum)."""
    from enclavekit.log import configure_logging
    from enclavekit.services.notify.runtime import run_local_s3

    configure_logging()
    _run(run_local_s3(root, host=host, port=port))


@notify_app.command("migrate")
def migrate_command(state: Path = STATE, sets: list[str] = SETS) -> None:
    """Create or upgrade notify's tables (SQLite in the state folder, or --set database_url=...)."""
    from enclavekit.services.notify.store import open_store

    settings = _settings(state, sets)
    open_store(settings.effective_database_url).engine.dispose()
    typer.echo("notify schema is up to date")


@notify_app.command("up")
def up_command(state: Path = STATE, host: str = HOST) -> None:
    """Run only the notify stack (NATS, KMS, stand-ins, enclave, API, workers) until Ctrl-C; writes stack.json.

    ``enclavekit up`` runs the same pieces beside the rest of the platform.
    """
    from enclavekit.services.notify.stack import start_notify
    from enclavekit.stack.state import StackAlreadyRunning
    from enclavekit.stack.up import Stack, serve

    folder = StateDir(state.resolve())
    try:
        lock = folder.lock()
    except StackAlreadyRunning as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc

    async def start(stack: Stack) -> None:
        await stack.start_nats()
        await start_notify(stack)

    def ready(data: dict[str, Any]) -> None:
        for name, service in data["services"].items():
            typer.echo(f"{name:18} {service['url']}")
        typer.echo(f"stack.json: {folder.stack_file}   logs: {folder.logs}   stop: Ctrl-C")

    try:
        status = asyncio.run(serve(Stack(folder, host), start, ready))
    finally:
        lock.close()
    raise typer.Exit(status)


# --- local tools ------------------------------------------------------------------------------------------------


def _stack(state: Path) -> dict[str, Any]:
    data = running_stack(state)
    if data is None:
        typer.echo(f"error: {no_stack_message(state)}", err=True)
        raise typer.Exit(1)
    return data


def _local(state: Path) -> dict[str, Any]:
    """``STATE/notify/local.json`` of the running stack; exits 1 saying which folder was looked in."""
    from enclavekit.services.notify.stack import load_local

    _stack(state)
    try:
        return load_local(state.resolve())
    except (OSError, ValueError) as exc:
        typer.echo(f"error: the stack running in {state.resolve()} has no notify service", err=True)
        raise typer.Exit(1) from exc


def _service_url(state: Path, name: str) -> str:
    service = _stack(state).get("services", {}).get(name)
    if not service:
        typer.echo(f"error: the running stack has no {name}", err=True)
        raise typer.Exit(1)
    return str(service["url"])


@notify_app.command("dev-proof")
def dev_proof_command(
    signal: str = typer.Option(..., "--signal", help='The signal, "{encrypted_push_id}:{timestamp}".'),
    identity: str = typer.Option("dev", "--identity", help="Who proves (one nullifier per identity)."),
    credential_type: str = typer.Option("orb", "--credential-type"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    state: Path = STATE,
    sets: list[str] = SETS,
) -> None:
    """Mint a World ID proof that the local stand-in accepts for SIGNAL."""
    from enclavekit.services.notify.worldid import CREDENTIAL_TYPES, load_stand_in_secret, mint_proof

    if credential_type not in CREDENTIAL_TYPES:
        raise typer.BadParameter(f"--credential-type must be one of {', '.join(CREDENTIAL_TYPES)}")
    settings = _settings(state, sets)
    proof = mint_proof(
        load_stand_in_secret(state),
        signal=signal,
        app_id=settings.world_id_app_id,
        action=settings.world_id_action,
        identity=identity,
        credential_type=credential_type,
    )
    if as_json:
        typer.echo(json.dumps(proof.to_json()))
    else:
        for key, value in proof.to_json().items():
            typer.echo(f"{key}: {value}")


@notify_app.command("ingest")
def ingest_command(
    topic: str = typer.Option(..., "--topic"),
    data_b64: str = typer.Option(..., "--data-b64", help="The (encrypted) chat message, base64."),
    sender_hmac: str = typer.Option("", "--sender-hmac", help="HMAC-SHA256(hmac_key, data) of the sender, hex."),
    no_push: bool = typer.Option(False, "--no-push", help="The message says should_push = false."),
    message_id: str | None = typer.Option(None, "--id", help="Idempotency id (default: a digest of the message)."),
    state: Path = STATE,
) -> None:
    """Inject a chat message into the running stack's ingest path; prints {id, traceparent}."""
    if sender_hmac and not re.fullmatch(r"[0-9a-fA-F]+", sender_hmac):
        raise typer.BadParameter("--sender-hmac must be hex")
    url = _service_url(state, "notify_ingest")
    body: dict[str, Any] = {
        "topic": topic,
        "data_b64": data_b64,
        "sender_hmac": sender_hmac,
        "should_push": not no_push,
    }
    if message_id:
        body["id"] = message_id
    answer = httpx.post(f"{url}/v1/messages", json=body, timeout=10)
    if answer.status_code != 202:
        typer.echo(f"error: ingest refused the message: {answer.text}", err=True)
        raise typer.Exit(1)
    typer.echo(answer.text)


@notify_app.command("captured")
def captured_command(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    state: Path = STATE,
) -> None:
    """What the capture provider delivered: {message_id, topic, push_ids, payload} per delivery."""
    local = _local(state)
    if not isinstance(local.get("capture_record"), str):
        typer.echo(f"error: the stack running in {state.resolve()} has no capture provider", err=True)
        raise typer.Exit(1)
    record = Path(local["capture_record"])
    lines = record.read_text().splitlines() if record.exists() else []
    for line in lines:
        if not line.strip():
            continue
        if as_json:
            typer.echo(line)
        else:
            item = json.loads(line)
            typer.echo(f"{item['message_id']}  {item['topic']}  -> {', '.join(item['push_ids'])}")


@notify_app.command("seal")
def seal_command(
    push_id: str = typer.Argument(..., help="The push ID (the device's Braze alias), plaintext."),
    state: Path = STATE,
    url: str | None = typer.Option(None, "--url", help="The notify API (default: the running stack's)."),
) -> None:
    """Seal PUSH_ID to the running notify enclave's push key; prints the hex the API takes as encrypted_push_id.

    The key is taken from the enclave's attestation document, fetched from the API and verified first (the
    stack's pinned PCR0 and roots): a host that swaps the key or the document makes this command fail."""
    from enclavekit.services.notify.client import ApiError, NotifyClient
    from enclavekit.services.notify.enclave_link import enclave_policy
    from enclavekit.services.notify.pushid import MAX_PUSH_ID_BYTES
    from enclavekit.services.notify.settings import NotifySettings

    if not push_id or len(push_id.encode()) > MAX_PUSH_ID_BYTES:
        raise typer.BadParameter(f"PUSH_ID must be 1 to {MAX_PUSH_ID_BYTES} bytes")
    local = _local(state)
    api = url.rstrip("/") if url else _service_url(state, "notify_api")
    try:
        settings = NotifySettings.model_validate(
            {key: local[key] for key in ("state_dir", "enclave_pcr0", "simulator_roots") if key in local}
        )
        client = NotifyClient(api, enclave_policy(settings))
    except (ValueError, ConfigurationError) as exc:
        typer.echo(f"error: the stack's notify record cannot pin the enclave: {exc}", err=True)
        raise typer.Exit(1) from exc
    try:
        key = client.enclave_public_key()
    except ApiError as exc:
        typer.echo(f"error: the notify API at {api} answered {exc.status}: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    except Error as exc:
        typer.echo(f"error: the notify enclave's attestation was refused: {exc}", err=True)
        raise typer.Exit(1) from exc
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        typer.echo(f"error: the notify API at {api} gave no usable attestation document: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        client.close()
    typer.echo(client.seal(push_id, key))


def _duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text.strip())
    if not match:
        raise typer.BadParameter("--every takes a duration like 30s, 500ms or 2m")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value * 60 if match.group(2) == "m" else value


@notify_app.command("send-test")
def send_test_command(
    state: Path = STATE,
    push_id: str = typer.Option("test-device", "--push-id", help="The device alias to notify (plaintext)."),
    every: str | None = typer.Option(None, "--every", help="Repeat, e.g. 30s."),
    count: int = typer.Option(0, "--count", help="With --every: stop after N (0: until Ctrl-C)."),
) -> None:
    """The prototype's flow: initialize, health-check, one test notification (and --every 30s)."""
    local = _local(state)
    interval = _duration(every) if every else None
    _run(_send_test(local, push_id, interval, count))


async def _send_test(local: dict[str, Any], push_id: str, interval: float | None, count: int) -> None:
    from enclavekit.services.notify.enclave_link import enclave_client, initialize_enclave
    from enclavekit.services.notify.pushid import seal_push_id
    from enclavekit.services.notify.settings import NotifySettings
    from enclavekit.services.notify.wire import (
        HEALTH_CHECK,
        NOTIFICATION,
        HealthCheckRequest,
        NotificationBatch,
        Recipient,
    )

    settings = NotifySettings.model_validate(
        {
            key: local[key]
            for key in (
                "state_dir",
                "enclave",
                "enclave_pcr0",
                "simulator_roots",
            )
        }
    )
    client = enclave_client(settings)
    try:
        initialized = await initialize_enclave(client, settings)
        typer.echo(f"initialized: push key {initialized.public_key[:16]}…")
        health = await client.call(HEALTH_CHECK, HealthCheckRequest())
        typer.echo(f"health: initialized={health.initialized} delivered={health.delivered}")
        sent = 0
        while True:
            message_id = f"test-{uuid.uuid4().hex[:12]}"
            batch = NotificationBatch(
                message_id=message_id,
                topic="/xmtp/mls/1/g-enclavekit-test",
                encrypted_message_base64=base64.b64encode(b"enclavekit test notification").decode(),
                recipients=(Recipient(encrypted_push_id=seal_push_id(push_id, bytes.fromhex(health.public_key))),),
            )
            result = await client.call(NOTIFICATION, batch)
            outcome = result.outcomes[0].outcome
            typer.echo(f"{time.strftime('%H:%M:%S')} test notification {message_id}: {outcome}")
            if outcome not in ("delivered", "duplicate"):
                raise typer.Exit(1)
            sent += 1
            if interval is None or (count and sent >= count):
                return
            await asyncio.sleep(interval)
    finally:
        await client.close()
