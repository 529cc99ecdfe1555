"""Call signalling between connected users, through their vaults (the media itself is out of scope).

A peer's operations — ``call.offer`` ``{call, sdp, auth}``, ``call.answer`` ``{call, sdp, auth}``, ``call.ice``
``{call, candidate, auth}``, ``call.hangup`` ``{call, auth}`` — are accepted only through an active connection
that grants the sender ``calls``; they wait in the enclave's memory (not in stored state: signalling is
ephemeral; at most 256 per user, 120 s) until the owner's app fetches them with ``call.signals``. The owner's
``call.turn`` ``{connection, call}`` issues short-lived TURN relay credentials for one call (coturn's REST API,
:mod:`~enclavekit.services.vault.turn`) from the vault's measured configuration.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

from enclavekit.services.vault.connection import Capabilities, CapabilityDenied, check_field
from enclavekit.services.vault.connection_book import ConnectionBook
from enclavekit.services.vault.errors import VaultRejected
from enclavekit.services.vault.operations import BadPayload, Handler, Request, payload_str
from enclavekit.services.vault.operations.connections import through_connection
from enclavekit.services.vault.turn import turn_credentials

if TYPE_CHECKING:
    from enclavekit.services.vault.enclave_app import VaultEnclave

__all__ = ["MAX_SIGNALS", "OPERATIONS", "PEER_OPERATIONS", "SIGNAL_TTL", "SignalsFull", "TurnUnavailable"]

MAX_SIGNALS: Final = 256
SIGNAL_TTL: Final = 120.0
MAX_SDP: Final = 16 * 1024
MAX_CANDIDATE: Final = 1024
_CALL: Final = re.compile(r"[0-9a-f]{32}")
_CARRIES: Final = {"call.offer": "sdp", "call.answer": "sdp", "call.ice": "candidate", "call.hangup": None}


class SignalsFull(VaultRejected):
    """The callee's app has not fetched its signalling: too many are waiting."""

    code = "signals_full"


class TurnUnavailable(VaultRejected):
    """The vault's measured configuration names no TURN relay."""

    code = "turn_unavailable"


def _call_id(request: Request) -> str:
    ident = payload_str(request.payload, "call")
    if not _CALL.fullmatch(ident):
        raise BadPayload("call is 32 lowercase hex digits")
    return ident


def _waiting(vault: VaultEnclave, user: str, now: float) -> list[dict[str, Any]]:
    """``user``'s unexpired signals; queues of vaults no longer open here are dropped (so at most ``MAX_OPEN``)."""
    for other in [u for u in vault.signals if u not in vault.open_vaults]:
        del vault.signals[other]
    queue = [s for s in vault.signals.get(user, []) if s["at"] > now - SIGNAL_TTL]
    vault.signals[user] = queue
    return queue


async def peer_signal(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    call = _call_id(request)
    carries = _CARRIES[request.op]
    signal: dict[str, Any] = {"kind": request.op.removeprefix("call."), "call": call}
    if carries is not None:
        value = payload_str(request.payload, carries)
        if not value or len(value.encode()) > (MAX_SDP if carries == "sdp" else MAX_CANDIDATE):
            raise BadPayload(f"{carries} is too large (or empty)")
        signal[carries] = value
    _, connection, record = await through_connection(vault, request)
    if not Capabilities.from_json(record["granted"]).calls:
        raise CapabilityDenied("this connection may not call here")
    queue = _waiting(vault, request.user, request.now)
    if len(queue) >= MAX_SIGNALS:
        raise SignalsFull("too much call signalling is waiting for this user's app")
    queue.append({**signal, "connection": connection, "from": request.sender, "at": request.now})
    return {"queued": True}


async def signals(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    waiting = _waiting(vault, request.user, request.now)
    vault.signals.pop(request.user, None)
    return {"signals": waiting, "session": opened.session}


async def turn(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    call = _call_id(request)
    connection = check_field(payload_str(request.payload, "connection"), "connection")
    record = await ConnectionBook(opened.store).connection(connection)
    if record["status"] != "active":
        raise CapabilityDenied("no active connection to call through")
    if vault.config is None or vault.config.turn is None:
        raise TurnUnavailable("the vault's configuration names no TURN relay")
    credentials = turn_credentials(vault.config.turn, f"{call}:{request.user}", now=request.now)
    return {"turn": credentials, "session": opened.session}


OPERATIONS: Final[dict[str, Handler]] = {"call.signals": signals, "call.turn": turn}
PEER_OPERATIONS: Final[dict[str, Handler]] = dict.fromkeys(_CARRIES, peer_signal)
