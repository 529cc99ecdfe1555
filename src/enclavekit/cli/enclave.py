"""``enclavekit enclave run APP``: boot an enclave app and serve it."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import typer

from enclavekit.cli._app import app
from enclavekit.enclave.runtime import RuntimeOptions, load_app, serve_app
from enclavekit.errors import ConfigurationError, Error
from enclavekit.log import log_level

__all__ = ["run_command"]

enclave_app = typer.Typer(help="Enclave apps: run one (in a Nitro Enclave, or simulated).")
app.add_typer(enclave_app, name="enclave")


@enclave_app.command("run")
def run_command(
    spec: str = typer.Argument(..., help="The app as module:attribute, e.g. enclavekit.enclave.demo:app"),
    listen: str = typer.Option("vsock://any:5000", "--listen", help="vsock://any:PORT, unix:///PATH, tcp://H:P"),
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
    logging.basicConfig(level=log_level(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        enclave, _ = load_app(spec)
        if name:
            enclave.name = name
        settings = dict(item.split("=", 1) for item in setting if "=" in item)
        if len(settings) != len(setting):
            raise ConfigurationError("--set takes KEY=VALUE")
        if advertise:
            settings["advertise"] = advertise
        options = RuntimeOptions(
            listen=listen,
            state_dir=state,
            device=device,
            refresh_interval=refresh,
            settings=settings,
            config=config,
        )
        asyncio.run(serve_app(enclave, spec, options, on_ready=lambda r: print(json.dumps(r), flush=True)))
    except ConfigurationError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    except Error as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
