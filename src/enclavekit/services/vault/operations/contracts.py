"""Business (B2C) data contracts (:mod:`~enclavekit.services.vault.data_contract`). The owner's:
``contract.accept`` ``{contract, signature}``, ``contract.revoke`` ``{contract}`` (an id; at once) and
``contract.list``. A business reads through the peer path (``profile.get`` with an authorization of kind
``contract``): :func:`through_contract` is the check, made on every request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from enclavekit.services.vault.connection_book import ConnectionBook
from enclavekit.services.vault.data_contract import DataContract
from enclavekit.services.vault.operations import BadPayload, Handler, Request, payload_str
from enclavekit.services.vault.operations.connections import peer_book

if TYPE_CHECKING:
    from enclavekit.services.vault.enclave_app import VaultEnclave

__all__ = ["OPERATIONS", "PEER_OPERATIONS", "through_contract"]


async def through_contract(vault: VaultEnclave, request: Request) -> tuple[ConnectionBook, DataContract]:
    """For a business's request: the user's open state and the contract, checked (operations on one user run one
    at a time: ``VaultEnclave.state_lock``)."""
    book, authorization, bound = await peer_book(vault, request)
    return book, await book.check_contract(authorization, **bound)


async def accept(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    contract = DataContract.from_json(request.payload.get("contract"))
    try:
        signature = bytes.fromhex(payload_str(request.payload, "signature"))
    except ValueError as exc:
        raise BadPayload("signature is hex") from exc
    await ConnectionBook(opened.store).accept_contract(contract, signature, now=request.now)
    return {"contract": contract.id, "business": contract.business, "session": opened.session}


async def revoke(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    await ConnectionBook(opened.store).revoke_contract(payload_str(request.payload, "contract"), now=request.now)
    return {"revoked": True, "session": opened.session}


async def listing(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    return {"contracts": await ConnectionBook(opened.store).contracts(request.now), "session": opened.session}


OPERATIONS: Final[dict[str, Handler]] = {"contract.accept": accept, "contract.revoke": revoke, "contract.list": listing}
PEER_OPERATIONS: Final[dict[str, Handler]] = {}
