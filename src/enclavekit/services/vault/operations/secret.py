"""``secret.put`` ``{pin|session, name, value (base64), critical?}``, ``secret.get`` ``{pin|session, name,
version?}`` (a critical secret needs ``pin``, every time), ``secret.list`` ``{pin|session}`` and ``audit.get``
``{pin|session}``."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, Final

from enclavekit.services.vault.errors import VaultRejected
from enclavekit.services.vault.operations import (
    Handler,
    Request,
    optional_bool,
    optional_int,
    payload_bytes,
)
from enclavekit.services.vault.secret_store import SecretStore

if TYPE_CHECKING:
    from enclavekit.services.vault.enclave_app import VaultEnclave

__all__ = ["OPERATIONS", "PinRequired"]


class PinRequired(VaultRejected):
    """A critical secret is read with the PIN, every time; a session is not enough."""

    code = "pin_required"


async def put(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    critical = optional_bool(request.payload, "critical")
    book = SecretStore(opened.store)
    name = str(request.payload.get("name", ""))
    version = await book.put(name, payload_bytes(request.payload, "value"), critical=critical, now=request.now)
    return {"version": version, "session": opened.session}


async def get(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    wanted = optional_int(request.payload, "version")
    book = SecretStore(opened.store)
    name = str(request.payload.get("name", ""))
    if (await book.describe(name))["critical"] and not opened.with_pin:
        raise PinRequired(f"{name} is critical: send the PIN to read it")
    value, number, critical = await book.get(name, wanted, now=request.now)
    return {
        "value": base64.b64encode(value).decode(),
        "version": number,
        "critical": critical,
        "session": opened.session,
    }


async def names(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    return {"secrets": await SecretStore(opened.store).names(), "session": opened.session}


async def audit(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    records, head = await SecretStore(opened.store).audit()
    return {"records": records, "head": head, "session": opened.session}


OPERATIONS: Final[dict[str, Handler]] = {
    "secret.put": put,
    "secret.get": get,
    "secret.list": names,
    "audit.get": audit,
}
