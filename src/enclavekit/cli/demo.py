"""``enclavekit demo``: talk to the local stack's demo enclave as a client would, through the host relay.

Every call proves the user's client identity (``enclavekit.client.identity``; created on first use), so the
notes written are the user's own: another key, or the host calling anonymously, cannot read them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.cli._app import app
from enclavekit.cli.identity import IDENTITY_OPTION
from enclavekit.client import AttestedClient
from enclavekit.client import identity as identity_store
from enclavekit.enclave.demo import ECHO, GET_NOTE, PUT_NOTE, Echo, Note, NoteKey
from enclavekit.errors import Error
from enclavekit.nsm import load_root
from enclavekit.stack.state import DEFAULT_STATE_DIR, StateDir

__all__ = ["demo_app"]

demo_app = typer.Typer(help="The demo enclave of `enclavekit up`: a notebook only the enclave can read.")
app.add_typer(demo_app, name="demo")
STATE = typer.Option(DEFAULT_STATE_DIR, "--state", help="State folder of the running stack.")


def _client(state: Path, identity: Path | None) -> AttestedClient:
    folder = StateDir(state.resolve())
    stack = folder.read_stack()
    if stack is None:
        typer.echo(f"no stack is running with state folder {state} (start one with `enclavekit up`)", err=True)
        raise typer.Exit(1)
    enclave = next((e for e in stack["enclaves"] if e["name"] == "demo"), None)
    relay = stack["services"].get("relay_demo")
    if enclave is None or relay is None:
        typer.echo("the running stack has no demo enclave", err=True)
        raise typer.Exit(1)
    # Pin the code we expect (PCR0 as the stack printed it) and trust this stack's simulated NSM.
    policy = NitroPolicy(measurements=[{0: bytes.fromhex(enclave["pcr0"])}], roots=(load_root(folder.root),))
    key, created = identity_store.load_or_create(identity)
    if created:
        where = identity_store.default_path() if identity is None else identity
        typer.echo(f"created your client identity {key.public_key.hex()} in {where}", err=True)
    return AttestedClient.nitro(relay["url"], policy, identity=key)


def _run(state: Path, work: Any, identity: Path | None = None) -> None:
    async def main() -> Any:
        async with _client(state, identity) as client:
            result = await work(client)
            peer = client.peer
            assert peer is not None
            return result, peer.measurements["pcr0"].hex()

    try:
        result, pcr0 = asyncio.run(main())
    except Error as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps({"result": result.model_dump(), "enclave_pcr0": pcr0}))


@demo_app.command("put")
def put(key: str, text: str, state: Path = STATE, identity: Path | None = IDENTITY_OPTION) -> None:
    """Store TEXT under KEY inside the enclave, as your note (sealed end to end; the relay sees ciphertext)."""
    _run(state, lambda c: c.call(PUT_NOTE, Note(key=key, text=text)), identity)


@demo_app.command("get")
def get(key: str, state: Path = STATE, identity: Path | None = IDENTITY_OPTION) -> None:
    """Read your note KEY back from the enclave."""
    _run(state, lambda c: c.call(GET_NOTE, NoteKey(key=key)), identity)


@demo_app.command("echo")
def echo(text: str, state: Path = STATE, identity: Path | None = IDENTITY_OPTION) -> None:
    """Round-trip TEXT through the enclave."""
    _run(state, lambda c: c.call(ECHO, Echo(text=text)), identity)
