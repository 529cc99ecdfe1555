"""``device.add`` ``{pin|session, device}``; ``recover.start`` ``{}``, ``recover.status`` ``{}``,
``recover.cancel`` ``{device, signature}`` or ``{pin|session}``, ``recover.token`` ``{claim}`` and
``recover.complete`` ``{token, new_pin}`` (:mod:`~enclavekit.services.vault.recovery`). Keys, signatures, claims
and tokens are hex."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from enclavekit.services.vault.operations import Handler, Request, payload_hex, payload_str
from enclavekit.services.vault.recovery import DEFAULT_RECOVERY_DELAY, RecoveryDesk, add_device
from enclavekit.services.vault.secret_store import SecretStore

if TYPE_CHECKING:
    from enclavekit.services.vault.enclave_app import VaultEnclave

__all__ = ["OPERATIONS", "desk"]


def desk(vault: VaultEnclave) -> RecoveryDesk:
    """The enclave's recovery desk (made on first use, with the measured delay and guess limit)."""
    core = vault.require_core()
    if vault.recovery is None or vault.recovery.core is not core:
        config = vault.config
        vault.recovery = RecoveryDesk(
            core,
            delay=DEFAULT_RECOVERY_DELAY if config is None else config.recovery_delay,
            limit=10 if config is None else config.guess_limit,
        )
    return vault.recovery


async def device_add(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    devices = await add_device(opened.store, payload_hex(request.payload, "device", 32))
    head = await SecretStore(opened.store).record("device.add", now=request.now)
    return {"devices": len(devices), "audit_head": head, "session": opened.session}


async def start(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    status, claim = await desk(vault).start(request.user, now=request.now)
    return {**status.to_json(), "claim": claim}


async def status(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    return (await desk(vault).status(request.user)).to_json()


async def cancel(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    if "device" in request.payload:
        device, signature = payload_hex(request.payload, "device", 32), payload_hex(request.payload, "signature", 64)
        return (await desk(vault).cancel(request.user, device=device, signature=signature)).to_json()
    opened = await vault.unlock(request)  # the right PIN closes a pending recovery itself; a session does not
    state = await desk(vault).status(request.user)
    if state.pending:
        state = await desk(vault).cancel(request.user)
    return {**state.to_json(), "session": opened.session}


async def token(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    claim = payload_hex(request.payload, "claim", 32).hex()
    value, expires = await desk(vault).token(request.user, claim, now=request.now)
    return {"token": value, "expires": int(expires)}


async def complete(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    value = payload_hex(request.payload, "token", 16).hex()
    new_pin = payload_str(request.payload, "new_pin", default="")
    unlocked = await desk(vault).complete(request.user, value, new_pin, now=request.now)
    vault.end_sessions(request.user)
    head = await SecretStore(vault.require_core().store(unlocked)).record("recover.complete", now=request.now)
    return {"generation": unlocked.entry.generation, "audit_head": head, "session": vault.open_session(unlocked)}


OPERATIONS: Final[dict[str, Handler]] = {
    "device.add": device_add,
    "recover.start": start,
    "recover.status": status,
    "recover.cancel": cancel,
    "recover.token": token,
    "recover.complete": complete,
}
