"""``enroll`` ``{pin, invitation, limit?}`` and ``pin.change`` ``{pin, new_pin}``.

Enrolling needs an operator's invitation code (:mod:`~enclavekit.services.vault.invitation`): checked, and its use
recorded at a majority of the guess ledger, before the vault is made."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from enclavekit.services.vault.invitation import Invitation, InvitationInvalid, admit
from enclavekit.services.vault.operations import BadPayload, Handler, Request
from enclavekit.services.vault.secret_store import SecretStore

if TYPE_CHECKING:
    from enclavekit.services.vault.enclave_app import VaultEnclave

__all__ = ["OPERATIONS"]


async def enroll(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    core = vault.require_core()
    limit = request.payload.get("limit", vault.config.guess_limit if vault.config is not None else 10)
    if type(limit) is not int or not 1 <= limit <= 255:
        raise BadPayload("limit is 1..255")
    config = vault.config

    def require_signature(message: bytes, signature: bytes) -> bytes:
        if config is None:
            raise InvitationInvalid("this vault has no measured operator keys")
        return config.require_operator_signature(message, signature)

    async def check_invitation() -> Invitation:
        code = request.payload.get("invitation")
        return await admit(
            code, user=request.user, now=request.now, require_signature=require_signature, ledger=core.ledger
        )

    unlocked = await core.enroll(request.user, str(request.payload.get("pin", "")), limit, admit=check_invitation)
    head = await SecretStore(core.store(unlocked)).record("enroll", now=request.now)
    return {
        "attempts_left": unlocked.entry.attempts_left,
        "audit_head": head,
        "session": vault.open_session(unlocked),
    }


async def change(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    core = vault.require_core()
    payload = request.payload
    unlocked = await core.change_pin(request.user, str(payload.get("pin", "")), str(payload.get("new_pin", "")))
    vault.end_sessions(request.user)
    head = await SecretStore(core.store(unlocked)).record("pin.change", now=request.now)
    return {"generation": unlocked.entry.generation, "audit_head": head}


OPERATIONS: Final[dict[str, Handler]] = {"enroll": enroll, "pin.change": change}
