"""``enclavekit enclave run APP`` and ``enclavekit enclave tcb APP``.

``run`` is a thin wrapper around the minimal entry point (:mod:`enclavekit.enclave.launch`, also
``python -m enclavekit.enclave``), which is how ``enclavekit up`` and the enclave image start enclaves: an enclave
process never loads the CLI. ``tcb`` prints the inventory of what runs inside an app (``docs/tcb.md``).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from enclavekit.cli._app import app
from enclavekit.enclave.launch import DEFAULT_LISTEN, parse_settings, run
from enclavekit.errors import ConfigurationError

__all__ = ["DEFAULT_LOCKFILE", "run_command", "tcb_command"]

DEFAULT_LOCKFILE = Path(__file__).resolve().parents[3] / "requirements-enclave.lock"
"""The enclave image's lockfile in a source checkout (absent from an installed wheel)."""

enclave_app = typer.Typer(help="Enclave apps: run one (in a Nitro Enclave, or simulated), list what runs inside one.")
app.add_typer(enclave_app, name="enclave")


@enclave_app.command("run")
def run_command(
    spec: str = typer.Argument(..., help="The app as module:attribute, e.g. enclavekit.enclave.demo:app"),
    listen: str = typer.Option(DEFAULT_LISTEN, "--listen", help="vsock://any:PORT, unix:///PATH, tcp://H:P"),
    state: Path = typer.Option(Path(".enclavekit"), "--state", help="State folder (the simulator's CA)."),
    name: str | None = typer.Option(None, "--name", help="Name in logs (default: the app's)."),
    device: bool = typer.Option(False, "--device", help="Use /dev/nsm (inside a real Nitro Enclave)."),
    refresh: float = typer.Option(600.0, "--refresh-interval", help="Seconds between attestation refreshes."),
    advertise: str | None = typer.Option(None, "--advertise", help="Address other enclaves reach this one at."),
    setting: list[str] = typer.Option([], "--set", help="KEY=VALUE handed to the app (repeatable)."),
    config: Path | None = typer.Option(
        None, "--config", help="The app's configuration file; measured into PCR0 (baked into the EIF on Nitro)."
    ),
) -> None:
    """Run an enclave app until SIGTERM/SIGINT. Prints one JSON line {"ready": true, ...} when serving."""
    try:
        settings = parse_settings(setting)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    status = run(
        spec,
        listen=listen,
        state=state,
        name=name,
        device=device,
        refresh=refresh,
        advertise=advertise,
        settings=settings,
        config=config,
    )
    if status:
        raise typer.Exit(status)


@enclave_app.command("tcb")
def tcb_command(
    spec: str = typer.Argument(..., help="The app as module:attribute, e.g. enclavekit.enclave.demo:app"),
    as_json: bool = typer.Option(False, "--json", help="Print the inventory as one JSON object."),
    lockfile: Path | None = typer.Option(
        None, "--lock", help="The enclave lockfile whose hashes to show (default: requirements-enclave.lock)."
    ),
) -> None:
    """List what runs inside the enclave of APP: third-party distributions, enclavekit modules, line count."""
    from enclavekit.enclave.tcb import inventory

    lock = lockfile if lockfile is not None else (DEFAULT_LOCKFILE if DEFAULT_LOCKFILE.is_file() else None)
    try:
        found = inventory(spec, lockfile=lock)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(found.to_json(), indent=2))
        return
    typer.echo(f"{found.app}: {len(found.distributions)} distributions, {len(found.modules)} enclavekit modules")
    typer.echo(f"{found.lines} lines of enclavekit code")
    for dist in found.distributions:
        pinned = f"  ({len(dist.hashes)} hashes pinned)" if dist.hashes else ""
        typer.echo(f"  {dist.name}=={dist.version}{pinned}")
    for module in found.modules:
        typer.echo(f"  {module}")
