"""``enclavekit vault ...``: the vault's host bridge and object service (``vault objects serve``), and commands
that act as a user's app against a running stack.

``vault enroll USER --pin PIN --invite CODE``, ``vault secret put USER NAME --pin PIN`` (value on stdin),
``vault secret get USER NAME --pin PIN``, ``vault secret list USER --pin PIN``, ``vault pin change USER --pin OLD
--new-pin NEW``, ``vault audit USER --pin PIN`` (verifies the hash chain), ``vault credentials USER`` (issues the
user's NATS credentials and reloads the server). The operator's commands: ``vault invite create [--user U]
[--ttl 7d]``, ``vault invite list``, ``vault members`` (what the bridge's member registry holds; never data or
PINs). Each takes ``--state DIR`` and ``--json``. A vault error exits 1 and, with ``--json``, prints ``{"error":
{"code", "message", "attempts_left"?}}`` (``pin_invalid``, ``vault_locked``, ``invitation_used``...).
``vault recover start|status|watch|cancel|token|complete USER``: delayed, cancellable recovery (``--qr`` shows the
claim or token as a QR code in the terminal).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import typer

from enclavekit.cli._app import app
from enclavekit.cli._vault_vote import proposal_app, vote_app
from enclavekit.errors import Error
from enclavekit.stack.state import DEFAULT_STATE_DIR, StateDir

__all__ = ["vault_app"]

vault_app = typer.Typer(help="Personal vaults in enclaves: the host bridge and a user's commands.")
secret_app = typer.Typer(help="Named secrets with versions.")
pin_app = typer.Typer(help="The vault PIN.")
objects_app = typer.Typer(help="The host's object service for vault enclaves (stores ciphertext).")
vault_app.add_typer(secret_app, name="secret")
vault_app.add_typer(pin_app, name="pin")
vault_app.add_typer(objects_app, name="objects")
recover_app = typer.Typer(help="Delayed, cancellable recovery (a forgotten PIN, a locked vault, a lost ledger).")
vault_app.add_typer(recover_app, name="recover")
vault_app.add_typer(vote_app, name="vote")
vault_app.add_typer(proposal_app, name="proposal")
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
        reissued = not issued
        while True:  # a just-issued user waits for the server's reload
            try:
                client = VaultClient(
                    creds.url(local["nats_url"]), user, [bytes.fromhex(p) for p in local["pcr0"]], roots
                )
                async with client:
                    return await action(client)
            except Exception as exc:
                if asyncio.get_running_loop().time() > deadline or "uthorization" not in str(exc):
                    raise
                if not reissued:  # credentials on file the server does not know (an interrupted issue): once more
                    add_user(state, user, server_pid=stack.get("services", {}).get("nats", {}).get("pid"))
                    reissued = True
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
    registry: str | None = typer.Option(
        None, "--registry", help="Member registry database URL (the operator's view; sqlite:///STATE/vault/members.db)."
    ),
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
            registry=registry,
        )
        roots = [aws_nitro_root(), *(load_root(folder) for folder in settings.simulator_roots)]
    except Error as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc

    bridge = VaultBridge(settings.nats_url, settings.enclaves, [bytes.fromhex(p) for p in settings.pcr0], roots)

    async def start() -> dict[str, Any]:
        await bridge.start()
        return {"enclaves": list(settings.enclaves)}

    if settings.registry:
        from enclavekit.services.vault.members import MemberRegistry

        bridge.registry = MemberRegistry(settings.registry)

    asyncio.run(run_until_stopped(start, bridge.close))


@objects_app.command("serve")
def objects_serve(
    listen: str = typer.Option(..., "--listen", help="Where vault enclaves reach it (unix://, tcp://, vsock://)."),
    store: str = typer.Option(..., "--store", help="file:///FOLDER or s3://BUCKET."),
    s3_endpoint: str | None = typer.Option(None, "--s3-endpoint", help="An S3-compatible endpoint URL."),
    s3_region: str | None = typer.Option(None, "--s3-region", help="The S3 region."),
) -> None:
    """Store the vault enclaves' encrypted objects in a folder or S3 (host side; sees only ciphertext)."""
    from enclavekit.hostkit.process import run_until_stopped
    from enclavekit.services.vault.object_service import ObjectService
    from enclavekit.services.vault.objects import object_store

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    service = ObjectService(object_store(store, s3_endpoint_url=s3_endpoint, s3_region=s3_region))

    async def start() -> dict[str, Any]:
        return {"address": await service.start(listen)}

    asyncio.run(run_until_stopped(start, service.close))


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
    invite: str = typer.Option(..., "--invite", help="The invitation code the operator issued (vault invite)."),
    limit: int = typer.Option(10, "--limit", min=1, max=255, help="Wrong PINs before the vault locks."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Create USER's vault with PIN, admitted by an operator's invitation code (single use, expiring)."""
    result = _run_as_user(
        state, user, as_json, lambda c: _with_device(c, state, c.enroll(pin, invitation=invite, limit=limit))
    )
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


# --- the operator's commands: invitations and members (ADR 0021) ----------------------------------------------

invite_app = typer.Typer(help="Invitation codes (single use, expiring) that admit a user's enrollment.")
vault_app.add_typer(invite_app, name="invite")

_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_TTL = 365 * 86400


def parse_ttl(text: str) -> int:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w`` (or plain seconds) → seconds, 60 s to 365 d."""
    import re

    match = re.fullmatch(r"(\d{1,9})([smhdw]?)", text.strip())
    if match is None:
        raise typer.BadParameter("a duration like 90s, 15m, 12h, 7d or 2w")
    seconds = int(match.group(1)) * _TTL_UNITS[match.group(2) or "s"]
    if not 60 <= seconds <= MAX_TTL:
        raise typer.BadParameter("between 60 seconds and 365 days")
    return seconds


def _when(moment: float | None) -> str:
    from datetime import UTC, datetime

    return "-" if moment is None else datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _read_registry(state: Path, read: Callable[[Any], list[Any]]) -> list[Any]:
    """``read(registry)`` over the member registry of ``state``, or nothing when there is none yet."""
    from enclavekit.services.vault.members import MemberRegistry

    registry = MemberRegistry.open_existing(state)
    if registry is None:
        return []
    try:
        return read(registry)
    finally:
        registry.close()


@invite_app.command("create")
def invite_create(
    user: str | None = typer.Option(None, "--user", help="Admit only this user (else anyone, once)."),
    ttl: str = typer.Option("7d", "--ttl", help="Valid for (90s, 15m, 12h, 7d, 2w)."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Issue an invitation code signed with the operator's key (STATE/vault/operator.key). The code is printed
    once and not stored: hand it to the user (the host keeps only its id, binding and expiry)."""
    import time

    from enclavekit.client.identity import IdentityNotFound, load
    from enclavekit.services.vault.invitation import issue
    from enclavekit.services.vault.members import MemberRegistry
    from enclavekit.services.vault.stack import operator_key_path

    try:
        seconds = parse_ttl(ttl)
        key = load(operator_key_path(state))
        now = time.time()
        invitation, code = issue(key, ttl=seconds, now=now, user=user)
        registry = MemberRegistry.open(state)
        try:
            registry.add_invitation(invitation, created_at=now)
        finally:
            registry.close()
    except typer.BadParameter as exc:
        _fail({"code": "bad_ttl", "message": str(exc)}, as_json)
    except IdentityNotFound:
        message = f"no operator key at {operator_key_path(state)}: `enclavekit up` makes one for its state folder"
        _fail({"code": "no_operator_key", "message": message}, as_json)
    except Error as exc:
        _fail(exc.to_json(), as_json)
    except ValueError as exc:  # a user id that is not one
        _fail({"code": "invalid_user", "message": str(exc)}, as_json)
    result = {"code": code, "id": invitation.id_hex, "user": invitation.user, "expires_at": invitation.expires_at}
    _emit(result, as_json, f"{code}\n(invitation {invitation.id_hex}, expires {_when(invitation.expires_at)})")


@invite_app.command("list")
def invite_list(state: Path = STATE, as_json: bool = JSON) -> None:
    """Invitations issued here and the uses the ledger shows: open, used (by whom) or expired."""
    import time

    records = _read_registry(state, lambda registry: registry.invitations())
    now = time.time()
    rows = [record.to_json(now) for record in records]
    lines = [
        f"{r.id}\t{r.status(now)}\t{r.user or '(anyone)'}\texpires {_when(r.expires_at)}"
        + (f"\tused by {', '.join(r.used_by)}" if r.used_by else "")
        for r in records
    ]
    _emit({"invitations": rows}, as_json, "\n".join(lines) or "no invitations")


@vault_app.command("members")
def members_command(state: Path = STATE, as_json: bool = JSON) -> None:
    """Members and their vault state as the host knows it (enrolled, locked, attempts left; never data or PINs)."""
    members = _read_registry(state, lambda registry: registry.members())
    rows = [member.to_json() for member in members]
    lines = [
        f"{m.user}\t{m.status}\t"
        + (f"{m.attempts_left}/{m.guess_limit} attempts left" if m.attempts_left is not None else "-")
        + f"\tlast {m.last_op or '-'} {_when(m.last_activity)}"
        for m in members
    ]
    _emit({"members": rows}, as_json, "\n".join(lines) or "no members")


# --- devices and recovery (ADR 0022) ------------------------------------------------------------------------------


def _device_path(state: Path, user: str) -> Path:
    """This CLI's device key for USER's vault (Ed25519, 0600): enrolled at ``vault enroll``; signs cancels."""
    return state / "vault" / "apps" / f"{user}.device.key"


def _claim_path(state: Path, user: str) -> Path:
    """The claim of the recovery this CLI started for USER (0600): only it gets the token."""
    return state / "vault" / "apps" / f"{user}.recovery.json"


async def _with_device(client: Any, state: Path, enrolled: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    from enclavekit.client.identity import load_or_create

    result = await enrolled
    device, _ = load_or_create(_device_path(state, client.user))
    await client.add_device(device.public_key)  # with the session enrollment opened
    return {**result, "device": device.public_key.hex()}


def _qr(text: str, as_json: bool) -> None:
    import segno

    segno.make(text, error="m").terminal(out=sys.stderr if as_json else sys.stdout, compact=True)


@recover_app.command("start")
def recover_start(
    user: str = typer.Argument(...),
    qr: bool = typer.Option(False, "--qr", help="Also show the claim as a QR code (to carry to another device)."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Start a recovery of USER's vault: it completes after the measured delay unless an enrolled device cancels."""
    from enclavekit.stack.files import write_private

    result = _run_as_user(state, user, as_json, lambda c: c.recover_start())
    claim = result.pop("claim")
    write_private(_claim_path(state, user), json.dumps({"recovery": result["recovery"], "claim": claim}).encode())
    if qr:
        _qr(f"enclavekit-vault:recover?user={user}&claim={claim}", as_json)
    _emit(
        {"user": user, **result, "claim_file": str(_claim_path(state, user))},
        as_json,
        f"recovery {result['recovery']} started; due at {_when(result['due'])} (enrolled devices can cancel it)",
    )


@recover_app.command("status")
def recover_status(user: str = typer.Argument(...), state: Path = STATE, as_json: bool = JSON) -> None:
    """Is a recovery of USER's vault pending, and when is it due."""
    result = _run_as_user(state, user, as_json, lambda c: c.recover_status())
    text = f"recovery {result['recovery']} pending, due at {_when(result['due'])}" if result["pending"] else "none"
    _emit({"user": user, **result}, as_json, text)


@recover_app.command("watch")
def recover_watch(
    user: str = typer.Argument(...),
    timeout: float = typer.Option(0, "--timeout", min=0, help="Stop after this many seconds (0: until Ctrl-C)."),
    interval: float = typer.Option(30, "--interval", min=1, help="Ask the vault at least this often (seconds)."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Print USER's recovery status at once and on every change: on each notice, and every --interval seconds (a
    host that drops notices delays the news by at most that)."""

    async def watch(client: Any) -> dict[str, Any]:
        notices: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await client.watch_recovery(notices.put)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        last: dict[str, Any] | None = None
        while True:
            status = await client.recover_status()
            if status != last:
                pending = f"recovery {status['recovery']} pending, due at {_when(status['due'])}"
                typer.echo(
                    json.dumps({"user": user, **status}) if as_json else (pending if status["pending"] else "none")
                )
                last = status
            wait = interval if deadline is None else min(interval, deadline - loop.time())
            if wait <= 0:
                return dict(status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(notices.get(), wait)

    _run_as_user(state, user, as_json, watch)


@recover_app.command("cancel")
def recover_cancel(
    user: str = typer.Argument(...),
    pin: str | None = typer.Option(None, "--pin", help="Cancel with the PIN instead of this CLI's device key."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Cancel the pending recovery, signed by this CLI's enrolled device key (or with --pin)."""
    from enclavekit.client.identity import load

    device = None
    if pin is None:
        try:
            device = load(_device_path(state, user))
        except Error as exc:
            _fail(exc.to_json(), as_json)
    result = _run_as_user(state, user, as_json, lambda c: c.recover_cancel(device, pin=pin))
    result.pop("session", None)
    _emit({"user": user, **result}, as_json, "recovery cancelled")


@recover_app.command("token")
def recover_token(
    user: str = typer.Argument(...),
    claim: str | None = typer.Option(None, "--claim", help="The claim (default: the one `recover start` saved)."),
    qr: bool = typer.Option(False, "--qr", help="Show the token as a QR code in the terminal."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Get the single-use, short-lived token of a due recovery (for its starter's claim)."""
    if claim is None:
        try:
            claim = str(json.loads(_claim_path(state, user).read_text())["claim"])
        except (OSError, ValueError, KeyError) as exc:
            _fail({"code": "no_claim", "message": f"no recovery claim for {user} here: {exc}"[:300]}, as_json)
    known = claim
    result = _run_as_user(state, user, as_json, lambda c: c.recover_token(known))
    if qr:
        _qr(f"enclavekit-vault:recover?user={user}&token={result['token']}", as_json)
    _emit({"user": user, **result}, as_json, f"token {result['token']} (single use, until {_when(result['expires'])})")


@recover_app.command("complete")
def recover_complete(
    user: str = typer.Argument(...),
    token: str = typer.Option(..., "--token", help="The token `recover token` showed."),
    new_pin: str = typer.Option(..., "--new-pin", help="The vault's new PIN."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Complete a due recovery: the vault's backup comes back under NEW_PIN; guesses start afresh."""
    result = _run_as_user(state, user, as_json, lambda c: c.recover_complete(token, new_pin))
    result.pop("session", None)
    _claim_path(state, user).unlink(missing_ok=True)
    _emit({"user": user, **result}, as_json, f"vault recovered (generation {result['generation']})")


# Feature groups in their own modules (they use the helpers above).
from enclavekit.cli._vault_connection import connection_app  # noqa: E402
from enclavekit.cli._vault_contract import contract_app  # noqa: E402
from enclavekit.cli._vault_message import message_app  # noqa: E402
from enclavekit.cli._vault_profile import profile_app  # noqa: E402

vault_app.add_typer(connection_app, name="connection")
vault_app.add_typer(profile_app, name="profile")
vault_app.add_typer(message_app, name="message")
vault_app.add_typer(contract_app, name="contract")
