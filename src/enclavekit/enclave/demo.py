"""A small enclave app for trying the platform: a per-enclave secret notebook.

Notes sent to it exist only in this enclave's memory; the host relays ciphertext. ``enclavekit up`` runs it
as ``demo`` so a new user can call it with ``enclavekit demo put/get`` and watch the relay see nothing readable.

A note belongs to the client identity that wrote it (``CallContext.client_key``, proven in the handshake):
``put_note`` and ``get_note`` refuse an anonymous caller (``identity_required``) — the host reaching the enclave
through its own relay is one — and a caller with another key finds nothing (``note_not_found``, the same answer
as for a key never written, so it cannot even learn which note names exist).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from enclavekit.enclave.app import EnclaveApp
from enclavekit.errors import Rejected
from enclavekit.rpc import CallContext, Route

__all__ = ["ECHO", "GET_NOTE", "PUT_NOTE", "Echo", "IdentityRequired", "Note", "NoteKey", "app"]

MAX_NOTES = 10_000


class Echo(BaseModel):
    model_config = {"extra": "forbid"}
    text: str = Field(max_length=1 << 20)


class Note(BaseModel):
    model_config = {"extra": "forbid"}
    key: str = Field(min_length=1, max_length=128)
    text: str = Field(max_length=64 * 1024)


class NoteKey(BaseModel):
    model_config = {"extra": "forbid"}
    key: str = Field(min_length=1, max_length=128)


class IdentityRequired(Rejected):
    """The route needs a caller that proved a client identity in the handshake; this one is anonymous."""

    code = "identity_required"


class NoteNotFound(Rejected):
    code = "note_not_found"


class NotebookFull(Rejected):
    code = "notebook_full"


ECHO = Route("demo.echo", Echo, Echo)
PUT_NOTE = Route("demo.put_note", Note, NoteKey)
GET_NOTE = Route("demo.get_note", NoteKey, Note)

app = EnclaveApp("demo")
_notes: dict[tuple[bytes, str], str] = {}
"""(owner's client key, note key) -> text."""


def _owner(call: CallContext) -> bytes:
    if call.client_key is None:
        raise IdentityRequired(f"{call.route} needs a client identity (AttestedClient(identity=...))")
    return call.client_key


@app.route(ECHO)
async def echo(request: Echo, call: CallContext) -> Echo:
    return request


@app.route(PUT_NOTE)
async def put_note(request: Note, call: CallContext) -> NoteKey:
    slot = (_owner(call), request.key)
    if slot not in _notes and len(_notes) >= MAX_NOTES:
        raise NotebookFull(f"this enclave holds at most {MAX_NOTES} notes")
    _notes[slot] = request.text
    return NoteKey(key=request.key)


@app.route(GET_NOTE)
async def get_note(request: NoteKey, call: CallContext) -> Note:
    try:
        return Note(key=request.key, text=_notes[_owner(call), request.key])
    except KeyError:
        raise NoteNotFound(f"no note {request.key!r}") from None
