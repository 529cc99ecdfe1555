"""A small enclave app for trying the platform: a per-enclave secret notebook.

Notes sent to it exist only in this enclave's memory; the host relays ciphertext. ``enclavekit up`` runs it
as ``demo`` so a new user can call it with ``enclavekit call`` and watch the relay see nothing readable.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from enclavekit.enclave.app import EnclaveApp
from enclavekit.errors import Rejected
from enclavekit.rpc import CallContext, Route

__all__ = ["ECHO", "GET_NOTE", "PUT_NOTE", "Echo", "Note", "NoteKey", "app"]

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


class NoteNotFound(Rejected):
    code = "note_not_found"


class NotebookFull(Rejected):
    code = "notebook_full"


ECHO = Route("demo.echo", Echo, Echo)
PUT_NOTE = Route("demo.put_note", Note, NoteKey)
GET_NOTE = Route("demo.get_note", NoteKey, Note)

app = EnclaveApp("demo")
_notes: dict[str, str] = {}


@app.route(ECHO)
async def echo(request: Echo, call: CallContext) -> Echo:
    return request


@app.route(PUT_NOTE)
async def put_note(request: Note, call: CallContext) -> NoteKey:
    if request.key not in _notes and len(_notes) >= MAX_NOTES:
        raise NotebookFull(f"this enclave holds at most {MAX_NOTES} notes")
    _notes[request.key] = request.text
    return NoteKey(key=request.key)


@app.route(GET_NOTE)
async def get_note(request: NoteKey, call: CallContext) -> Note:
    try:
        return Note(key=request.key, text=_notes[request.key])
    except KeyError:
        raise NoteNotFound(f"no note {request.key!r}") from None
