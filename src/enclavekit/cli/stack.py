"""``enclavekit up`` and ``enclavekit status``."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from enclavekit.cli._app import app, no_stack_message, running_stack
from enclavekit.stack.default import start_default
from enclavekit.stack.state import DEFAULT_STATE_DIR, StackAlreadyRunning, StateDir
from enclavekit.stack.up import Stack, serve

__all__ = ["status_command", "up_command"]

STATE_OPTION = typer.Option(DEFAULT_STATE_DIR, "--state", help="State folder of the local stack.")


def _restarts(piece: dict[str, Any]) -> str:
    """How often the supervisor restarted a piece, and how it ended last (``2 (killed by SIGKILL)``)."""
    count = int(piece.get("restarts", 0))
    return f"{count} ({piece['last_exit']})" if count and piece.get("last_exit") else str(count)


def _print_stack(console: Console, data: dict[str, Any], *, title: str) -> None:
    """What runs where, then each enclave's whole PCR0 on a line of its own (the value a client pins)."""
    table = Table(title=title, title_justify="left")
    table.add_column("piece")
    table.add_column("where")
    table.add_column("pid", justify="right")
    table.add_column("restarts", justify="right")
    for name, service in data.get("services", {}).items():
        table.add_row(name, service["url"], str(service["pid"]), _restarts(service))
    for enclave in data.get("enclaves", []):
        table.add_row(f"enclave {enclave['name']}", enclave["address"], str(enclave["pid"]), _restarts(enclave))
    console.print(table)
    for enclave in data.get("enclaves", []):
        if enclave.get("pcr0"):  # never wrapped nor cut: it is copied into policies
            console.print(f"PCR0 of enclave {enclave['name']}: {enclave['pcr0']}", soft_wrap=True, markup=False)


@app.command("up")
def up_command(
    state: Path = STATE_OPTION,
    host: str = typer.Option("127.0.0.1", "--host", help="Address the stack's services listen on."),
) -> None:
    """Run the whole stack locally (simulated NSM, SQLite, local NATS, local KMS) until Ctrl-C."""
    console = Console(highlight=False)
    folder = StateDir(state.resolve())
    try:
        lock = folder.lock()
    except StackAlreadyRunning as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    stack = Stack(folder, host)

    def ready(data: dict[str, Any]) -> None:
        _print_stack(console, data, title=f"enclavekit stack is up (state {folder.root})")
        console.print(f"stack.json: {folder.stack_file}   logs: {folder.logs}   stop: Ctrl-C")

    try:
        status = asyncio.run(serve(stack, start_default, ready))
    finally:
        lock.close()
    if status == 0:
        console.print("stack stopped")
    raise typer.Exit(status)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@app.command("status")
def status_command(
    state: Path = STATE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print stack.json with a live 'alive' flag per piece."),
) -> None:
    """Show what the local stack runs, live. Exit 1 if it is not running."""
    data = running_stack(state)
    if data is None:
        if as_json:
            typer.echo(json.dumps({"running": False, "state": str(state.resolve())}))
        else:
            typer.echo(no_stack_message(state), err=True)
        raise typer.Exit(1)
    for service in data.get("services", {}).values():
        service["alive"] = _alive(int(service["pid"]))
    for enclave in data.get("enclaves", []):
        enclave["alive"] = _alive(int(enclave["pid"]))
    if as_json:
        typer.echo(json.dumps({"running": True, **data}))
    else:
        _print_stack(Console(highlight=False), data, title=f"enclavekit stack (pid {data['pid']})")
