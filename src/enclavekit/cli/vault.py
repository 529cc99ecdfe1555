"""``enclavekit vault ...``: the vault's host bridge, and commands that act as a user's app against a running stack.

``vault enroll USER --pin PIN``, ``vault secret put USER NAME --pin PIN`` (value on stdin), ``vault secret get
USER NAME --pin PIN``, ``vault secret list USER --pin PIN``, ``vault pin change USER --pin OLD --new-pin NEW``,
``vault audit USER --pin PIN`` (verifies the hash chain), ``vault credentials USER`` (issues the user's NATS
credentials and reloads the server). Each takes ``--state DIR`` and ``--json``. A vault error exits 1 and, with
``--json``, prints ``{"error": {"code", "message", "attempts_left"?}}`` (``pin_invalid``, ``vault_locked``...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import typer

from enclavekit.cli._app import app
from enclavekit.errors import Error
from enclavekit.stack.state import DEFAULT_STATE_DIR, StateDir

__all__ = ["vault_app"]

vault_app = typer.Typer(help="Personal vaults in enclaves: the host bridge and a user's commands.")
secret_app = typer.Typer(help="Named secrets with versions.")
pin_app = typer.Typer(help="The vault PIN.")
vault_app.add_typer(secret_app, name="secret")
vault_app.add_typer(pin_app, name="pin")
app.add_typer(vault_app, name="vault")

STATE = typer.Option(DEFAULT_STATE_DIR, "--state", help="State folder of the local stack.")
JSON = typer.Option(False, "--json", help="Print JSON.")
PIN = typer.Option(..., "--pin", help="The vault PIN (4 to 8 digits).")


def _emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    typer.echo(json.dumps(result) if as_json else text)


def _fail(error: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"error": error}))
    else:
        message = str(error.get("message"))
        if "attempts_left" in error and "attempts left" not in message:
            message += f" ({error['attempts_left']} attempts left)"
        typer.echo(f"vault: {error.get('code')}: {message}", err=True)
    raise typer.Exit(1)


def _run_as_user(
    state: Path, user: str, as_json: bool, action: Callable[[Any], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    from enclavekit.nsm import load_root
    from enclavekit.services.vault.client import VaultClient
    from enclavekit.services.vault.nats_auth import add_user, credentials
    from enclavekit.services.vault.stack import load_local

    try:
        local = load_local(state)
    except FileNotFoundError:
        _fail({"code": "no_stack", "message": f"no running vault in {state} (enclavekit up)"}, as_json)
    stack = StateDir(state).read_stack() or {}
    users_file = state / "vault" / "users" / f"{user}.json"
    issued = users_file.exists()
    try:
        creds = (
            credentials(state, user)
            if issued
            else add_user(state, user, server_pid=stack.get("services", {}).get("nats", {}).get("pid"))
        )
    except Error as exc:
        _fail(exc.to_json(), as_json)
    roots = [load_root(folder) for folder in local["simulator_roots"]]

    async def go() -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # a just-issued user waits for the server's reload
            try:
                client = VaultClient(
                    creds.url(local["nats_url"]), user, [bytes.fromhex(p) for p in local["pcr0"]], roots
                )
                async with client:
                    return await action(client)
            except Exception as exc:
                if issued or asyncio.get_running_loop().time() > deadline or "uthorization" not in str(exc):
                    raise
                await asyncio.sleep(0.2)

    try:
        return asyncio.run(go())
    except Error as exc:
        _fail(exc.to_json(), as_json)
    except Exception as exc:  # NATS or the vault did not answer: still one JSON error, never a traceback
        _fail({"code": "vault_unreachable", "message": f"{type(exc).__name__}: {exc}"[:500]}, as_json)
    raise AssertionError("unreachable")


@vault_app.command("bridge")
def bridge_command(
    nats_url: str | None = typer.Option(None, "--nats", help="NATS URL with the bridge's credentials."),
    enclave: list[str] = typer.Option([], "--enclave", help="A vault enclave's address (repeatable)."),
    pcr0: list[str] = typer.Option([], "--pcr0", help="The vault enclave's PCR0 (hex; repeatable)."),
    trust_sim_root: list[Path] = typer.Option([], "--trust-sim-root", help="Trust this state folder's simulator CA."),
    sets: list[str] = typer.Option([], "--set", help="A setting KEY=VALUE of the bridge (repeatable)."),
) -> None:
    """Relay envelopes between NATS and the vault enclave (host side; sees only ciphertext).

    Settings: ``ENCLAVEKIT_VAULT_<KEY>`` < ``--set KEY=VALUE`` < the options above (lists comma-separated)."""
    from enclavekit.attestation.roots import aws_nitro_root
    from enclavekit.hostkit.process import run_until_stopped
    from enclavekit.hostkit.settings import load_settings
    from enclavekit.nsm import load_root
    from enclavekit.services.vault.host import VaultBridge
    from enclavekit.services.vault.settings import BridgeSettings

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = load_settings(
            BridgeSettings,
            service="vault",
            sets=sets,
            nats_url=nats_url,
            enclaves=tuple(enclave) or None,
            pcr0=tuple(pcr0) or None,
            simulator_roots=tuple(trust_sim_root) or None,
        )
        roots = [aws_nitro_root(), *(load_root(folder) for folder in settings.simulator_roots)]
    except Error as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc

    bridge = VaultBridge(settings.nats_url, settings.enclaves, [bytes.fromhex(p) for p in settings.pcr0], roots)

    async def start() -> dict[str, Any]:
        await bridge.start()
        return {"enclaves": list(settings.enclaves)}

    asyncio.run(run_until_stopped(start, bridge.close))


@vault_app.command("credentials")
def credentials_command(user: str = typer.Argument(...), state: Path = STATE, as_json: bool = JSON) -> None:
    """Issue USER's NATS credentials (publish only to their forVault, subscribe only to their forApp)."""
    from enclavekit.services.vault.nats_auth import add_user

    stack = StateDir(state).read_stack() or {}
    try:
        issued = add_user(state, user, server_pid=stack.get("services", {}).get("nats", {}).get("pid"))
    except Error as exc:
        _fail(exc.to_json(), as_json)
    _emit({"user": issued.user, "file": str(state / "vault" / "users" / f"{user}.json")}, as_json, f"issued {user}")


@vault_app.command("enroll")
def enroll_command(
    user: str = typer.Argument(...),
    pin: str = PIN,
    limit: int = typer.Option(10, "--limit", min=1, max=255, help="Wrong PINs before the vault locks."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Create USER's vault with PIN."""
    result = _run_as_user(state, user, as_json, lambda c: c.enroll(pin, limit=limit))
    result.pop("session", None)
    _emit({"user": user, **result}, as_json, f"enrolled {user} ({result['attempts_left']} attempts)")


@secret_app.command("put")
def secret_put(
    user: str = typer.Argument(...),
    name: str = typer.Argument(...),
    pin: str = PIN,
    critical: bool = typer.Option(False, "--critical", help="Reading it needs the PIN every time."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Store a new version of NAME; the value is read from stdin."""
    value = sys.stdin.buffer.read(64 * 1024 + 1)

    async def put(client: Any) -> dict[str, Any]:
        return {"version": await client.put_secret(name, value, pin=pin, critical=critical)}

    result = _run_as_user(state, user, as_json, put)
    _emit({"name": name, **result}, as_json, f"{name} version {result['version']}")


@secret_app.command("get")
def secret_get(
    user: str = typer.Argument(...),
    name: str = typer.Argument(...),
    pin: str = PIN,
    version: int | None = typer.Option(None, "--version"),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Print NAME's value (latest, or --version)."""
    import base64

    async def get(client: Any) -> dict[str, Any]:
        return {"value": await client.get_secret(name, pin=pin, version=version)}

    result = _run_as_user(state, user, as_json, get)
    value: bytes = result["value"]
    if as_json:
        text = value.decode("utf-8", errors="replace")
        typer.echo(json.dumps({"name": name, "value": text, "value_b64": base64.b64encode(value).decode()}))
    else:
        sys.stdout.buffer.write(value)
        sys.stdout.flush()


@secret_app.command("list")
def secret_list(user: str = typer.Argument(...), pin: str = PIN, state: Path = STATE, as_json: bool = JSON) -> None:
    """List the secrets' names, version counts and whether they are critical."""

    async def names(client: Any) -> dict[str, Any]:
        return {"secrets": await client.list_secrets(pin=pin)}

    result = _run_as_user(state, user, as_json, names)
    lines = [f"{s['name']}\t{s['versions']}\t{'critical' if s['critical'] else ''}" for s in result["secrets"]]
    _emit(result, as_json, "\n".join(lines))


@pin_app.command("change")
def pin_change(
    user: str = typer.Argument(...),
    pin: str = PIN,
    new_pin: str = typer.Option(..., "--new-pin"),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Change the PIN: new material and re-encrypted state are written before the old is removed."""
    result = _run_as_user(state, user, as_json, lambda c: c.change_pin(pin, new_pin))
    _emit({"user": user, **result}, as_json, f"PIN changed (generation {result['generation']})")


@vault_app.command("audit")
def audit_command(user: str = typer.Argument(...), pin: str = PIN, state: Path = STATE, as_json: bool = JSON) -> None:
    """Fetch USER's audit feed and verify its hash chain."""
    from enclavekit.services.vault.secret_store import verify_audit

    async def audit(client: Any) -> dict[str, Any]:
        records, head = await client.audit(pin=pin)
        verify_audit(records, head)
        return {"records": records, "head": head, "verified": True}

    result = _run_as_user(state, user, as_json, audit)
    lines = [f"{r['seq']}\t{r['op']}\t{r.get('name', '')}" for r in result["records"]]
    _emit(result, as_json, "\n".join([*lines, f"head {result['head']} (chain verified)"]))
